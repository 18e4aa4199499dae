"""The server's self-sandbox: Landlock, no_new_privs and a privilege drop.

Called once, after the listeners are bound and the export roots are open, and
before any thread is started. It is irreversible for the process:

1. Resolve the service account (reads /etc/passwd, so before Landlock).
2. Build the Landlock ruleset while every path is still reachable: read-write
   exports, read-only exports, the server's own state paths and, read-only, the
   interpreter's files so that lazy imports keep working. Every other path is
   denied, and with ABI >= 4 so are new TCP binds and connects (listeners that
   are already bound keep accepting).
3. prctl(PR_SET_NO_NEW_PRIVS): no execve can ever gain privileges again.
4. Capabilities: the bounding set is cut to what is kept, ambient caps are
   cleared, securebits are locked, and capset leaves only the kept set.
5. setgroups/setgid/setuid to the service account.
6. landlock_restrict_self, then verify: setuid(0) must fail, no capability
   outside the kept set may remain.
7. The system-call filter (security/seccomp.py), last, so that everything
   above may still use the calls it needs; verified with a call it refuses.

Landlock, prctl and capset act on the calling thread only, so a second thread
would stay unconfined: apply_sandbox refuses to run in a multi-threaded process.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import platform
import pwd
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import seccomp

# --------------------------------------------------------------- syscalls --
# Landlock has the same numbers on every architecture (new syscall table).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_SYS_CAPGET, _SYS_CAPSET = {"x86_64": (125, 126), "aarch64": (90, 91)}.get(
    platform.machine(), (-1, -1)
)

_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem rights (include/uapi/linux/landlock.h), by the ABI that added them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a rule for a non-directory.
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

READ_RIGHTS = FS_READ_FILE | FS_READ_DIR
EXEC_RIGHTS = READ_RIGHTS | FS_EXECUTE
# A read-write export: everything the host backend does, nothing more. Not
# EXECUTE (the server never runs guest files), not MAKE_CHAR/MAKE_BLOCK (device
# nodes are refused by the backend; Landlock makes that a second wall), not
# IOCTL_DEV (the backend never opens devices).
EXPORT_RW_RIGHTS = (
    READ_RIGHTS
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
# The server's own state (audit log directory and the like): plain files only.
STATE_RW_RIGHTS = READ_RIGHTS | FS_WRITE_FILE | FS_MAKE_REG | FS_REMOVE_FILE | FS_TRUNCATE


def _fs_rights_for_abi(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


# prctl and capabilities (include/uapi/linux/prctl.h, capability.h, securebits.h)
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SECBIT_NOROOT = 1 << 0
_SECBIT_NOROOT_LOCKED = 1 << 1
_SECBIT_KEEP_CAPS_LOCKED = 1 << 5
_SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
_SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
_SECUREBITS = (
    _SECBIT_NOROOT
    | _SECBIT_NOROOT_LOCKED
    | _SECBIT_KEEP_CAPS_LOCKED
    | _SECBIT_NO_CAP_AMBIENT_RAISE
    | _SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21
CAP_MKNOD = 27
CAP_NAMES = (
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
)

# What a root server with passthrough id mapping needs, and why:
#   CHOWN        files are created by root and then chowned to the guest's ids
#   DAC_OVERRIDE the server acts for many uids on files root does not own;
#                the policy layer, not file modes, decides what a guest may do
#   FOWNER       chmod, utimes and xattrs on files owned by other uids
#   FSETID       keep set-gid on chmod of files whose group root is not in,
#                and do not strip set-id bits the guest asked for
# Left out on purpose:
#   DAC_READ_SEARCH  subsumed by DAC_OVERRIDE for every open the backend does;
#                its only extra power (open_by_handle_at, linkat AT_EMPTY_PATH)
#                is unused: links go through /proc/self/fd with AT_SYMLINK_FOLLOW
#   MKNOD        the backend refuses device nodes; FIFOs and sockets need no
#                capability; a guest-made device node would be a host hole.
#                A policy granting devices where they would be real nodes is
#                refused at load (policy/config.py, unhonourable_grant)
# Everything else (SYS_ADMIN, SETFCAP, SETUID, NET_*, SYS_MODULE, ...) goes.
ROOT_FILE_SERVER_CAPS: frozenset[int] = frozenset(
    {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID}
)


class SandboxError(Exception):
    """The sandbox could not be applied as configured (the server must not run)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _oserror(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _prctl_call(option: int, arg2: int = 0, arg3: int = 0) -> int:
    ret = int(_prctl(option, arg2, arg3, 0, 0))
    if ret < 0:
        raise _oserror(f"prctl({option})")
    return ret


# ---------------------------------------------------------------- Landlock --
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable
    (not built in, or disabled at boot)."""
    ret = int(
        _syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        )
    )
    if ret < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise _oserror("landlock_create_ruleset")
    return ret


def _landlock_unavailable_reason() -> str:
    _syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    e = ctypes.get_errno()
    if e == errno.EOPNOTSUPP:
        return "Landlock is disabled in this kernel (add landlock to the lsm= boot parameter)"
    if e == errno.ENOSYS:
        return "this kernel has no Landlock (needs Linux 5.13 with CONFIG_SECURITY_LANDLOCK)"
    return "the Landlock ABI probe reported no support"


class _Ruleset:
    """A Landlock ruleset fd, filled while every path is still reachable."""

    def __init__(self, abi: int) -> None:
        self.handled_fs = _fs_rights_for_abi(abi)
        self.handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
        self.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        # Older kernels reject a struct larger than they know with E2BIG.
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        fd = int(
            _syscall(
                ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            )
        )
        if fd < 0:
            raise _oserror("landlock_create_ruleset")
        self.fd = fd

    def add(self, path: str, rights: int) -> None:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= _FILE_RIGHTS
            attr = _PathBeneathAttr(rights & self.handled_fs, fd)
            ret = int(
                _syscall(
                    ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                    ctypes.c_int(self.fd),
                    ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                    ctypes.byref(attr),
                    ctypes.c_uint32(0),
                )
            )
            if ret < 0:
                raise _oserror(f"landlock_add_rule {path}")
        finally:
            os.close(fd)

    def restrict_self(self) -> None:
        ret = int(
            _syscall(
                ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF),
                ctypes.c_int(self.fd),
                ctypes.c_uint32(0),
            )
        )
        if ret < 0:
            raise _oserror("landlock_restrict_self")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------ capabilities --
def _capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread, as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if int(_syscall(ctypes.c_long(_SYS_CAPGET), ctypes.byref(hdr), ctypes.byref(data))) < 0:
        raise _oserror("capget")
    lo, hi = data[0], data[1]
    return (
        int(lo.effective) | int(hi.effective) << 32,
        int(lo.permitted) | int(hi.permitted) << 32,
        int(lo.inheritable) | int(hi.inheritable) << 32,
    )


def _capset(caps: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective, data[i].permitted, data[i].inheritable = word, word, 0
    if int(_syscall(ctypes.c_long(_SYS_CAPSET), ctypes.byref(hdr), ctypes.byref(data))) < 0:
        raise _oserror("capset")


def _bounding_set() -> int:
    caps = 0
    for cap in range(64):
        ret = int(_prctl(_PR_CAPBSET_READ, cap, 0, 0, 0))
        if ret < 0:  # EINVAL: past the kernel's last capability
            break
        if ret:
            caps |= 1 << cap
    return caps


def _mask(caps: Iterable[int]) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


def cap_names(mask: int) -> tuple[str, ...]:
    return tuple(
        CAP_NAMES[c] if c < len(CAP_NAMES) else f"cap{c}" for c in range(64) if mask >> c & 1
    )


# ------------------------------------------------------------------ config --
@dataclass(frozen=True)
class SandboxConfig:
    """What the sandboxed server may still touch, and whom it runs as.

    rw_paths: read-write exports. ro_paths: read-only exports and state files
    the server only reads. write_paths: the server's own state it writes (e.g.
    the audit log's directory). user/group: service account (name or number)
    to switch to; None stays. keep_root_caps: stay uid 0 (passthrough id
    mapping) with only root_caps. required: fail if Landlock is unavailable.
    python_paths: read+execute paths for the interpreter; None derives them
    from sys (prefix, base_prefix and every existing sys.path entry).
    seccomp: "auto" installs the system-call filter where the kernel can,
    "required" refuses to go on without it, "off" leaves it out.
    """

    rw_paths: Sequence[str] = ()
    ro_paths: Sequence[str] = ()
    write_paths: Sequence[str] = ()
    user: str | None = None
    group: str | None = None
    keep_root_caps: bool = False
    required: bool = False
    root_caps: frozenset[int] = ROOT_FILE_SERVER_CAPS
    python_paths: Sequence[str] | None = None
    landlock: bool = True  # False: the rest of the sandbox without Landlock
    seccomp: str = "auto"  # "auto" | "required" | "off"


@dataclass
class SandboxReport:
    """What apply_sandbox did and did not do."""

    landlock_abi: int = 0
    landlock: bool = False
    landlock_reason: str = ""  # why not, when landlock is False
    handled_fs: int = 0
    handled_net: int = 0
    scoped: int = 0
    rw_paths: tuple[str, ...] = ()
    ro_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    python_paths: tuple[str, ...] = ()
    no_new_privs: bool = False
    uid: int = -1
    gid: int = -1
    groups: tuple[int, ...] = ()
    caps: tuple[str, ...] = ()  # effective capabilities left
    bounding: tuple[str, ...] = ()  # capability bounding set left
    seccomp: bool = False  # the system-call filter is installed
    seccomp_reason: str = ""  # why not, when seccomp is False
    seccomp_allowed: int = 0  # system calls the filter lets through
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the start-up message and the audit log."""
        if self.landlock:
            parts = [
                f"landlock ABI {self.landlock_abi}: {len(self.rw_paths)} exports rw, "
                f"{len(self.ro_paths)} ro, {len(self.write_paths)} state"
            ]
            if self.handled_net:
                parts.append("no new tcp")
        else:
            parts = [f"landlock unavailable: {self.landlock_reason}"]
        parts.append(f"uid {self.uid} gid {self.gid}")
        if self.uid == 0:
            parts.append("caps " + (",".join(self.caps) or "none"))
        if self.no_new_privs:
            parts.append("no_new_privs")
        if self.seccomp:
            parts.append(f"seccomp: {self.seccomp_allowed} system calls, others ENOSYS")
        else:
            parts.append(f"no seccomp: {self.seccomp_reason}")
        return "; ".join(parts)


# ------------------------------------------------------------------- apply --
def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _resolve_ids(cfg: SandboxConfig) -> tuple[int, int] | None:
    """(uid, gid) of the service account, or None to stay as we are."""
    if cfg.user is None:
        if cfg.group is not None:
            raise SandboxError("a sandbox group needs a user too")
        return None
    try:
        pw = pwd.getpwuid(int(cfg.user)) if cfg.user.isdigit() else pwd.getpwnam(cfg.user)
        uid, gid = pw.pw_uid, pw.pw_gid
    except KeyError:
        if not cfg.user.isdigit():
            raise SandboxError(f"no such user {cfg.user!r}") from None
        uid, gid = int(cfg.user), int(cfg.user)  # a bare number need not be in passwd
    if cfg.group is not None:
        try:
            gid = int(cfg.group) if cfg.group.isdigit() else grp.getgrnam(cfg.group).gr_gid
        except KeyError:
            raise SandboxError(f"no such group {cfg.group!r}") from None
    if uid == 0:
        raise SandboxError("the service account must not be root (use keep_root_caps)")
    return uid, gid


def default_python_paths() -> list[str]:
    """Where the interpreter may need to read (and map) code from later."""
    seen: list[str] = []
    for p in [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]:
        if not p:
            continue  # '' is the working directory: never implicitly granted
        real = os.path.realpath(p)
        if real not in seen and os.path.exists(real):
            seen.append(real)
    return seen


def _existing(paths: Iterable[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for p in paths:
        real = os.path.realpath(p)
        if not os.path.exists(real):
            raise SandboxError(f"{what} {p}: no such file or directory")
        out.append(real)
    return tuple(out)


# Device files Python or a library may open: reading /dev/null and
# /dev/urandom, writing /dev/null. Nothing else under /dev.
_DEVICE_RULES = (("/dev/null", FS_READ_FILE | FS_WRITE_FILE), ("/dev/urandom", FS_READ_FILE))


# Libraries kept loaded for good: see _preload_libraries.
_preloaded: list[ctypes.CDLL] = []


def _preload_libraries(rep: SandboxReport) -> None:
    """Load now what glibc would dlopen lazily once files are out of reach.
    glibc loads libgcc_s.so.1 on the first pthread_exit or cancellation (and
    CPython calls pthread_exit when a daemon thread meets interpreter
    shutdown); under Landlock that open fails and glibc aborts the process.
    Loaded now, the later dlopen finds it in memory by its soname."""
    try:
        _preloaded.append(ctypes.CDLL("libgcc_s.so.1"))
    except OSError:
        rep.notes.append("libgcc_s.so.1 not loadable: a thread exit may abort the process")


def apply_sandbox(cfg: SandboxConfig) -> SandboxReport:
    """Confine this process for good (see the module doc for the order).
    Raises SandboxError when the configuration cannot be met; the caller must
    then stop rather than serve unconfined."""
    if cfg.keep_root_caps and cfg.user is not None:
        raise SandboxError("keep_root_caps stays uid 0: it cannot be combined with a user")
    if cfg.required and not cfg.landlock:
        raise SandboxError("Landlock cannot be both required and turned off")
    if cfg.seccomp not in ("auto", "required", "off"):
        raise SandboxError(f"seccomp {cfg.seccomp!r} is not one of auto, required, off")
    n = _thread_count()
    if n != 1:
        raise SandboxError(
            f"the process has {n} threads: Landlock, no_new_privs and capabilities are "
            "per-thread, so apply the sandbox before starting any thread"
        )
    rep = SandboxReport()
    ids = _resolve_ids(cfg)
    rw = _existing(cfg.rw_paths, "read-write export")
    ro = _existing(cfg.ro_paths, "read-only path")
    state = _existing(cfg.write_paths, "state path")
    python: list[str] = []
    for p in cfg.python_paths if cfg.python_paths is not None else default_python_paths():
        real = os.path.realpath(p)
        if real == "/":
            rep.notes.append(f"python path {p!r} is the root directory: not granted")
        elif os.path.exists(real):
            python.append(real)
    rep.rw_paths, rep.ro_paths, rep.write_paths = rw, ro, state
    if "/" in rw + ro + state:
        rep.notes.append("a granted path is the root directory: Landlock confines nothing")
    rep.python_paths = tuple(python)

    _preload_libraries(rep)

    # 7 is checked now: "required" must refuse before anything has changed.
    rep.seccomp_reason = (
        "turned off by configuration" if cfg.seccomp == "off" else seccomp.unavailable_reason()
    )
    if cfg.seccomp == "required" and rep.seccomp_reason:
        raise SandboxError(
            f"seccomp unavailable: {rep.seccomp_reason}; "
            "refusing to start because the filter is required"
        )

    # 2. Landlock ruleset, built while the paths are reachable.
    abi = landlock_abi() if cfg.landlock else 0
    rep.landlock_abi = abi
    ruleset: _Ruleset | None = None
    if abi <= 0:
        rep.landlock_reason = (
            _landlock_unavailable_reason() if cfg.landlock else "turned off by configuration"
        )
        if cfg.required:
            raise SandboxError(
                f"landlock unavailable: {rep.landlock_reason}; "
                "refusing to start because the sandbox is required"
            )
    else:
        ruleset = _Ruleset(abi)
        rep.handled_fs, rep.handled_net, rep.scoped = (
            ruleset.handled_fs,
            ruleset.handled_net,
            ruleset.scoped,
        )
        try:
            for p in rw:
                ruleset.add(p, EXPORT_RW_RIGHTS)
            for p in ro:
                ruleset.add(p, READ_RIGHTS)
            for p in state:
                ruleset.add(p, STATE_RW_RIGHTS)
            for p in python:
                ruleset.add(p, EXEC_RIGHTS)
            for p, rights in _DEVICE_RULES:
                if os.path.exists(p):
                    ruleset.add(p, rights)
        except OSError as e:
            ruleset.close()
            raise SandboxError(f"cannot build the Landlock ruleset: {e.strerror}") from None

    try:
        # 3. no_new_privs: required for an unprivileged landlock_restrict_self,
        # and no setuid binary or file capability can ever raise us again.
        _prctl_call(_PR_SET_NO_NEW_PRIVS, 1)
        rep.no_new_privs = _prctl_call(_PR_GET_NO_NEW_PRIVS) == 1

        # 4. Capabilities, while we still hold CAP_SETPCAP.
        keep = _mask(cfg.root_caps) if cfg.keep_root_caps else 0
        eff, _, _ = _capget()
        if eff >> CAP_SETPCAP & 1:
            try:
                _prctl_call(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
            except OSError:
                rep.notes.append("ambient capabilities not supported")
            if ids is not None or cfg.keep_root_caps:
                _prctl_call(_PR_SET_SECUREBITS, _SECUREBITS)
                for cap in range(64):
                    if not keep >> cap & 1 and int(_prctl(_PR_CAPBSET_READ, cap, 0, 0, 0)) == 1:
                        _prctl_call(_PR_CAPBSET_DROP, cap)
        elif cfg.keep_root_caps:
            raise SandboxError("keep_root_caps needs a process with CAP_SETPCAP (run as root)")
        if cfg.keep_root_caps:
            _capset(keep & eff)

        # 5. The service account. setgid before setuid: afterwards we could not.
        if ids is not None:
            uid, gid = ids
            if os.geteuid() == 0:
                os.setgroups([])
            if os.getgid() != gid or os.getegid() != gid:
                os.setgid(gid)
            if os.getuid() != uid or os.geteuid() != uid:
                os.setuid(uid)
    except OSError as e:
        if ruleset is not None:
            ruleset.close()
        raise SandboxError(f"cannot drop privileges: {e.strerror or e}") from None

    # 6. Landlock takes effect; from here on only the granted paths open.
    if ruleset is not None:
        try:
            ruleset.restrict_self()
        except OSError as e:
            raise SandboxError(f"cannot enforce the Landlock ruleset: {e.strerror}") from None
        finally:
            ruleset.close()
        rep.landlock = True

    _verify(cfg, ids, rep)

    # 7. The system-call filter, last: the steps above use calls it refuses.
    if not rep.seccomp_reason:
        try:
            logged = seccomp.install(seccomp.ALLOWED)
        except OSError as e:
            raise SandboxError(f"cannot install the seccomp filter: {e.strerror or e}") from None
        if seccomp.probe(["unshare"]) != {"unshare": "ENOSYS"}:
            raise SandboxError("the seccomp filter is installed but does not refuse unshare")
        rep.seccomp = True
        rep.seccomp_allowed = len(set(seccomp.ALLOWED))
        if not logged:
            rep.notes.append("this kernel does not log seccomp refusals (needs Linux 4.14)")
    return rep


def _verify(cfg: SandboxConfig, ids: tuple[int, int] | None, rep: SandboxReport) -> None:
    """Check that what was dropped stays dropped."""
    eff, perm, inh = _capget()
    bounding = _bounding_set()
    rep.uid, rep.gid, rep.groups = os.geteuid(), os.getegid(), tuple(os.getgroups())
    rep.caps, rep.bounding = cap_names(eff), cap_names(bounding)
    if ids is not None:
        if os.getresuid() != (ids[0],) * 3 or os.getresgid() != (ids[1],) * 3:
            raise SandboxError(f"uid/gid not fully switched: {os.getresuid()} {os.getresgid()}")
        if perm or eff or inh:
            raise SandboxError(f"capabilities left after the uid switch: {cap_names(perm)}")
        # File modes still apply: an interpreter under /root is out of reach
        # for a service account, and a later lazy import would fail there.
        for p in rep.python_paths:
            if not os.access(p, os.R_OK | os.X_OK):
                rep.notes.append(f"python path {p} is not readable by uid {ids[0]}")
    if ids is not None:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SandboxError("the privilege drop is reversible: setuid(0) still succeeds")
    if cfg.keep_root_caps:
        allowed = _mask(cfg.root_caps)
        if perm & ~allowed or bounding & ~allowed:
            raise SandboxError(f"capabilities beyond the kept set remain: {cap_names(perm)}")
        try:
            _capset(perm | 1 << CAP_SYS_ADMIN)
        except PermissionError:
            pass
        else:
            raise SandboxError("the capability drop is reversible: capset still succeeds")
    elif os.geteuid() == 0 and ids is None:
        rep.notes.append("still root with every capability: set a user or keep_root_caps")


def probe_open(paths: Iterable[str]) -> dict[str, str]:
    """Try to open each path read-only, closing at once: "ok" or the errno
    name (EACCES, ENOENT, ...). The in-process check that the sandbox holds."""
    out: dict[str, str] = {}
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            out[p] = errno.errorcode.get(e.errno or 0, str(e.errno))
        except ValueError:
            out[p] = "EINVAL"  # an embedded NUL
        else:
            os.close(fd)
            out[p] = "ok"
    return out
