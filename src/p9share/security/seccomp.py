"""The server's system-call filter: a classic-BPF seccomp program.

Installed by apply_sandbox as its last step, once no_new_privs is set (which
an unprivileged seccomp filter needs) and before any thread exists; threads
started later inherit it, and SECCOMP_FILTER_FLAG_TSYNC puts it on any thread
that exists already, so no thread can stay outside it.

What the program does, for x86_64 and aarch64:

1. A system call of another architecture (the i386 or arm32 entry points)
   kills the process: nothing in a Python file server makes one, so only an
   exploit can get there. On x86_64 the x32 range (nr >= 0x40000000) is refused.
2. clone is allowed only to make a thread (CLONE_THREAD set, no namespace
   flag): the server never forks. clone3 is refused, because its flags sit in
   memory a filter cannot read; glibc then falls back to clone. That refusal
   comes from a second, quiet filter, so that it is not logged (below).
3. The calls in ALLOWED pass. Every other call returns ENOSYS, and is logged by
   the kernel (SECCOMP_FILTER_FLAG_LOG) where the kernel supports it.

Why ENOSYS, not EPERM and not a kill: a call the list misses must cost one
failed request, not the server (and every VM it serves); ENOSYS is what an
older kernel says for a call it does not have, so glibc and the backend take
their fallbacks (clone3 -> clone, statx -> fstatat) instead of failing; and
"function not implemented" is never what a file system answers for a policy
or permission problem, so a missed call stands out in the server's log and the
guest's error.

Why not libseccomp's binding: Debian's python3-seccomp is built for the
system interpreter and does not reach a venv; the PyPI packages that wrap it
(pyseccomp 0.1.2, 2021) are not maintained. The program is about 150
instructions and the numbers are checked against libseccomp by the tests.

ALLOWED comes from traces of real servers, not from reading the code: see
scripts/seccomp_trace.py and docs/security.md ("System-call filter").
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from collections.abc import Iterable

# AUDIT_ARCH_* (include/uapi/linux/audit.h): what seccomp_data.arch holds.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# name -> (x86_64 number, aarch64 number); None where the architecture has no
# such call (aarch64 has only the *at and p* forms). Checked against
# libseccomp's tables by tests/security/test_seccomp.py.
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "accept4": (288, 242),
    "close": (3, 57),
    "exit": (60, 93),
    "exit_group": (231, 94),
    "fchmod": (91, 52),
    "fchmodat": (268, 53),
    "fchown": (93, 55),
    "fchownat": (260, 54),
    "fcntl": (72, 25),
    "fdatasync": (75, 83),
    "fstatfs": (138, 44),
    "fsync": (74, 82),
    "ftruncate": (77, 46),
    "futex": (202, 98),
    "getdents64": (217, 61),
    "geteuid": (107, 175),
    "getpeername": (52, 205),
    "getpid": (39, 172),
    "getrandom": (318, 278),
    "getsockname": (51, 204),
    "getsockopt": (55, 209),
    "gettid": (186, 178),
    "getxattr": (191, 8),
    "ioctl": (16, 29),
    "linkat": (265, 37),
    "listxattr": (194, 11),
    "llistxattr": (195, 12),
    "lseek": (8, 62),
    "madvise": (28, 233),
    "mkdirat": (258, 34),
    "mknodat": (259, 33),
    "mmap": (9, 222),
    "mprotect": (10, 226),
    "munmap": (11, 215),
    "newfstatat": (262, 79),
    "openat": (257, 56),
    "poll": (7, None),
    "pread64": (17, 67),
    "prlimit64": (302, 261),
    "pwrite64": (18, 68),
    "read": (0, 63),
    "readlinkat": (267, 78),
    "recvfrom": (45, 207),
    "removexattr": (197, 14),
    "renameat": (264, 38),
    "restart_syscall": (219, 128),
    "rseq": (334, 293),
    "rt_sigaction": (13, 134),
    "rt_sigprocmask": (14, 135),
    "rt_sigreturn": (15, 139),
    "sched_getaffinity": (204, 123),
    "sendmsg": (46, 211),
    "sendto": (44, 206),
    "set_robust_list": (273, 99),
    "setsockopt": (54, 208),
    "setxattr": (188, 5),
    "shutdown": (48, 210),
    "statx": (332, 291),
    "symlinkat": (266, 36),
    "unlinkat": (263, 35),
    "utimensat": (280, 88),
    "write": (1, 64),
    # added to what the traces show, each for a reason given in ALLOWED
    "clone": (56, 220),
    "ppoll": (271, 73),
    "lgetxattr": (192, 9),
    "lsetxattr": (189, 6),
    "lremovexattr": (198, 15),
    "brk": (12, 214),
    "mremap": (25, 216),
    "clock_gettime": (228, 113),
    # the virtio-fs device (vhost-user), not in the 9P traces
    "recvmsg": (47, 212),
    "pipe2": (293, 59),
    "clock_nanosleep": (230, 115),
    "preadv": (295, 69),
    "pwritev": (296, 70),
    "preadv2": (327, 286),
    "pwritev2": (328, 287),
    "readlink": (89, None),
    "unlink": (87, None),
    # never allowed; named for the probe and the tests
    "clone3": (435, 435),
    "execve": (59, 221),
    "ptrace": (101, 117),
    "mount": (165, 40),
    "unshare": (272, 97),
    "seccomp": (317, 277),
}

_NEVER = ("clone3", "execve", "ptrace", "mount", "unshare", "seccomp")
# Every call a traced server made after its sandbox (scripts/seccomp_trace.py;
# the traces and the numbers are in docs/security.md §S9.1), and:
#   clone         what glibc falls back to when clone3 is refused (threads)
#   ppoll         aarch64's only poll (select.poll in server/connection.py)
#   l*xattr       xattrs of a symlink, named in its parent (hostfs
#                 _xattr_path, follow_symlinks=False); lgetxattr and lsetxattr
#                 are in the in-process trace, lremovexattr is their remove
#   brk, mremap   the C allocator growing the heap or a large block (both in
#                 the in-process trace; a long-running server will need them)
#   recvmsg       vhost-user messages carry fds (SCM_RIGHTS): memory, eventfds
#   pipe2         a vhost-user listener's wake pipe (made when it starts serving)
#   clock_nanosleep  time.sleep: the FUSE lock waiter's retry, an accept backoff
#   preadv, pwritev  reads and writes straight into and out of guest memory
#   preadv2, pwritev2  what CPython's os.preadv/os.pwritev call (glibc falls
#                 back to preadv/pwritev on ENOSYS, but each refusal would be
#                 a failed call and a kernel log line per virtio-fs READ/WRITE)
#   readlink      /proc/self/fd/N tells an eventfd from other fds (x86_64's
#                 os.readlink without dir_fd; aarch64 has only readlinkat)
#   unlink        a vhost-user listener removes its socket file at stop
#                 (x86_64's os.unlink; aarch64 has only unlinkat)
ALLOWED: tuple[str, ...] = tuple(n for n in SYSCALLS if n not in _NEVER)

# What the probe hook tries (P9SHARE_SECCOMP_PROBE): harmless even unfiltered
# (bad arguments or a no-op), and ENOSYS only when the filter refuses them.
PROBES = ("execve", "ptrace", "mount", "unshare")

# ----------------------------------------------------------------- BPF --
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
DENY = RET_ERRNO | errno.ENOSYS
_X32_SYSCALL_BIT = 0x40000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data (little endian)
_CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (and NEWTIME
# 0x80 is only in clone3/unshare): all in the low word of the flags.
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
_CLONE_NAMESPACES |= 0x20000000 | 0x40000000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_program(arch: str, names: Iterable[str]) -> bytes:
    """The filter for `arch` ("x86_64" or "aarch64") allowing `names` (clone
    only for threads), as struct sock_filter[]. Pure: the tests decode it."""
    col = ("x86_64", "aarch64").index(arch)
    nrs: set[int] = set()
    for name in names:
        nr = SYSCALLS[name][col]
        if nr is not None and name != "clone":
            nrs.add(nr)
    clone_nr = SYSCALLS["clone"][col]
    assert clone_nr is not None
    prog = [
        _insn(_BPF_LD_W_ABS, _OFF_ARCH),
        _insn(_BPF_JEQ_K, AUDIT_ARCH[arch], jt=1),
        _insn(_BPF_RET_K, RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if arch == "x86_64":
        prog += [_insn(_BPF_JGE_K, _X32_SYSCALL_BIT, jf=1), _insn(_BPF_RET_K, DENY)]
    if "clone" in names:
        prog += [
            _insn(_BPF_JEQ_K, clone_nr, jf=5),
            _insn(_BPF_LD_W_ABS, _OFF_ARG0),  # the low word of the flags
            _insn(_BPF_JSET_K, _CLONE_NAMESPACES, jt=2),
            _insn(_BPF_JSET_K, _CLONE_THREAD, jf=1),
            _insn(_BPF_RET_K, RET_ALLOW),
            _insn(_BPF_RET_K, DENY),
        ]
    # clone3 is refused by the quiet program (build_quiet_program), not here
    clone3_nr = SYSCALLS["clone3"][col]
    assert clone3_nr is not None
    for nr in sorted(nrs | {clone3_nr}):
        prog += [_insn(_BPF_JEQ_K, nr, jf=1), _insn(_BPF_RET_K, RET_ALLOW)]
    prog.append(_insn(_BPF_RET_K, DENY))
    return b"".join(prog)


def build_quiet_program(arch: str) -> bytes:
    """The second filter: clone3 -> ENOSYS, everything else allowed (the main
    program decides). It is installed without SECCOMP_FILTER_FLAG_LOG, and
    the kernel logs a refusal only if the filter that made it asked to: glibc
    tries clone3 before clone for every new thread, and a log line per
    connection would bury the refusals that matter."""
    col = ("x86_64", "aarch64").index(arch)
    clone3_nr = SYSCALLS["clone3"][col]
    assert clone3_nr is not None
    return b"".join(
        [
            _insn(_BPF_LD_W_ABS, _OFF_ARCH),
            _insn(_BPF_JEQ_K, AUDIT_ARCH[arch], jf=3),  # the main program kills it
            _insn(_BPF_LD_W_ABS, _OFF_NR),
            _insn(_BPF_JEQ_K, clone3_nr, jf=1),
            _insn(_BPF_RET_K, DENY),
            _insn(_BPF_RET_K, RET_ALLOW),
        ]
    )


# ------------------------------------------------------------- install --
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_FILTER_FLAG_TSYNC = 1
_SECCOMP_FILTER_FLAG_LOG = 2
_PR_GET_SECCOMP = 21


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _nr(name: str, arch: str | None = None) -> int:
    arch = arch or platform.machine()
    nr = SYSCALLS[name][("x86_64", "aarch64").index(arch)]
    if nr is None:
        raise KeyError(f"{name} on {arch}")
    return nr


def unavailable_reason() -> str:
    """Why no filter can be installed here, or "" when one can."""
    arch = platform.machine()
    if arch not in AUDIT_ARCH:
        return f"no system-call table for {arch} (x86_64 and aarch64 only)"
    if int(_libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)) < 0:
        return "this kernel has no seccomp (CONFIG_SECCOMP)"
    action = ctypes.c_uint32(DENY & 0xFFFF0000)
    ret = int(
        _syscall(
            ctypes.c_long(_nr("seccomp")),
            ctypes.c_uint(_SECCOMP_GET_ACTION_AVAIL),
            ctypes.c_uint(0),
            ctypes.byref(action),
        )
    )
    if ret < 0:
        e = ctypes.get_errno()
        return f"seccomp filters unavailable: {errno.errorcode.get(e, str(e))}"
    return ""


def _set_filter(code: bytes, flags: int) -> None:
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p).value)
    ret = int(
        _syscall(
            ctypes.c_long(_nr("seccomp")),
            ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(flags),
            ctypes.byref(prog),
        )
    )
    if ret > 0:  # TSYNC: the id of a thread that could not take the filter
        raise OSError(errno.EBUSY, f"thread {ret} cannot take the seccomp filter")
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SET_MODE_FILTER): {errno.errorcode.get(e, e)}")


def install(names: Iterable[str] = ALLOWED) -> bool:
    """Install the filters on every thread of the process: the quiet one
    (clone3), then the main one. Returns whether the kernel logs refusals
    (SECCOMP_FILTER_FLAG_LOG). Raises OSError; needs no_new_privs (or
    CAP_SYS_ADMIN)."""
    arch = platform.machine()
    main = build_program(arch, tuple(names))
    _set_filter(build_quiet_program(arch), _SECCOMP_FILTER_FLAG_TSYNC)
    try:
        _set_filter(main, _SECCOMP_FILTER_FLAG_TSYNC | _SECCOMP_FILTER_FLAG_LOG)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _set_filter(main, _SECCOMP_FILTER_FLAG_TSYNC)  # before 4.14: no FLAG_LOG
        return False
    return True


def probe(names: Iterable[str]) -> dict[str, str]:
    """Make each named call with arguments that make it fail or do nothing
    without the filter: "ok" or the errno name. ENOSYS means the filter
    refused it (all of PROBES exist on every kernel the server supports)."""
    null = ctypes.c_void_p(None)
    args = {
        "execve": (null, null, null),  # EFAULT unfiltered
        "ptrace": (ctypes.c_long(-1), ctypes.c_long(0), null, null),  # EIO/ESRCH unfiltered
        "mount": (null, null, null, ctypes.c_ulong(0), null),  # EPERM/EFAULT unfiltered
        "unshare": (ctypes.c_int(0),),  # a no-op unfiltered
    }
    out: dict[str, str] = {}
    for name in names:
        if name not in args:
            out[name] = "unknown probe"
            continue
        ret = int(_syscall(ctypes.c_long(_nr(name)), *args[name]))
        e = ctypes.get_errno()
        out[name] = "ok" if ret >= 0 else errno.errorcode.get(e, str(e))
    return out
