"""The system-call filter: the BPF program run by a small interpreter (both
architectures), the numbers checked against libseccomp, and the filter
installed for real in child processes and in a live `p9share serve`."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.security import seccomp as sc

from ..test_cli import serve, wait_listening
from ..test_cli_policy import audit, connect
from .test_sandbox import child

ARCHES = ("x86_64", "aarch64")
NATIVE = os.uname().machine
needs_filter = pytest.mark.skipif(
    bool(sc.unavailable_reason()), reason=f"no seccomp here: {sc.unavailable_reason()}"
)
CLONE_THREAD_FLAGS = 0x3D0F00  # what glibc's pthread_create passes to clone
CLONE_NEWUSER = 0x10000000


def run_bpf(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Classic BPF, only the instructions build_program emits."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns)):  # forward jumps only: never more steps than insns
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            hit = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError(f"unexpected BPF code {code:#x}")
    raise AssertionError("the program ran off its end")


def action(ret: int) -> int:
    """What the kernel ranks filters' answers by: the action as a signed
    32-bit number, lowest wins (KILL_PROCESS < ERRNO < ALLOW)."""
    return int(struct.unpack("<i", struct.pack("<I", ret & 0xFFFF0000))[0])


def both(arch: str) -> Callable[..., int]:
    """The two filters as the kernel runs them: each one, the strictest answer."""
    main, quiet = sc.build_program(arch, sc.ALLOWED), sc.build_quiet_program(arch)

    def run(nr: int, arch_value: int, args: tuple[int, ...] = ()) -> int:
        return min(run_bpf(main, nr, arch_value, args), run_bpf(quiet, nr, arch_value, args),
                   key=action)  # fmt: skip

    return run


@pytest.mark.parametrize("arch", ARCHES)
def test_quiet_program_refuses_clone3_only(arch: str) -> None:
    col = ARCHES.index(arch)
    quiet = sc.build_quiet_program(arch)
    for name, nrs in sc.SYSCALLS.items():
        nr = nrs[col]
        if nr is not None:
            expect = sc.RET_ERRNO | errno.ENOSYS if name == "clone3" else sc.RET_ALLOW
            assert run_bpf(quiet, nr, sc.AUDIT_ARCH[arch]) == expect, name
    assert run_bpf(quiet, 0, 0x40000003) == sc.RET_ALLOW  # the main program kills it


@pytest.mark.parametrize("arch", ARCHES)
def test_program_allows_the_list_and_refuses_the_rest(arch: str) -> None:
    col = ARCHES.index(arch)
    prog = sc.build_program(arch, sc.ALLOWED)
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096  # BPF_MAXINSNS
    audit_arch = sc.AUDIT_ARCH[arch]
    run_both = both(arch)
    for name, nrs in sc.SYSCALLS.items():
        nr = nrs[col]
        if nr is None or name == "clone":
            continue
        expect = sc.RET_ALLOW if name in sc.ALLOWED else sc.RET_ERRNO | errno.ENOSYS
        assert run_both(nr, audit_arch) == expect, name
        if name == "clone3":  # refused by the quiet filter only: not logged
            assert run_bpf(prog, nr, audit_arch) == sc.RET_ALLOW
    for name in ("execve", "ptrace", "mount", "unshare", "clone3", "seccomp"):
        assert name not in sc.ALLOWED
    # a number in no table at all
    assert run_both(1000, audit_arch) == sc.RET_ERRNO | errno.ENOSYS
    # another architecture's entry point (i386 / arm32): the process dies
    assert run_both(0, 0x40000003) == sc.RET_KILL_PROCESS
    clone = sc.SYSCALLS["clone"][col]
    assert clone is not None
    assert run_both(clone, audit_arch, (CLONE_THREAD_FLAGS,)) == sc.RET_ALLOW
    refused = sc.RET_ERRNO | errno.ENOSYS
    assert run_both(clone, audit_arch, (0x11,)) == refused  # fork: SIGCHLD only
    assert run_both(clone, audit_arch, (CLONE_THREAD_FLAGS | CLONE_NEWUSER,)) == refused
    if arch == "x86_64":  # x32 numbers carry bit 30 on the x86_64 arch value
        assert run_both(0x40000000 | 0, audit_arch) == refused


def test_numbers_match_libseccomp() -> None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 is not installed")
    resolve = lib.seccomp_syscall_resolve_name_arch
    resolve.argtypes, resolve.restype = [ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int
    for name, nrs in sc.SYSCALLS.items():
        for arch, nr in zip(ARCHES, nrs, strict=True):
            got = resolve(sc.AUDIT_ARCH[arch], name.encode())
            assert (got if got >= 0 else None) == nr, (name, arch)  # < 0: not on that arch


def test_every_allowed_call_exists_on_both_architectures_or_has_a_twin() -> None:
    # aarch64 lacks the old path calls; the list must carry what glibc uses there
    twins = {"open": "openat", "stat": "newfstatat", "lstat": "newfstatat",
             "poll": "ppoll", "select": "pselect6", "epoll_wait": "epoll_pwait",
             "access": "faccessat", "readlink": "readlinkat", "unlink": "unlinkat"}  # fmt: skip
    for name in sc.ALLOWED:
        if sc.SYSCALLS[name][1] is None:
            assert twins.get(name) in sc.ALLOWED, name
        assert sc.SYSCALLS[name][0] is not None, name


@needs_filter
def test_filter_refuses_forbidden_calls_and_threads_still_start() -> None:
    res = child(
        """
        import subprocess, threading
        from p9share.security import seccomp
        before = seccomp.probe(seccomp.PROBES)
        rep = sb.apply_sandbox(sb.SandboxConfig(landlock=False, seccomp="required"))
        out["summary"] = rep.summary()
        out["before"], out["after"] = before, seccomp.probe(seccomp.PROBES)
        # a thread after the filter: glibc's clone3 gets ENOSYS and falls back to clone
        box = []
        t = threading.Thread(target=lambda: box.append(seccomp.probe(["unshare"])))
        t.start(); t.join()
        out["thread"] = box[0]
        attempt("fork", os.fork)
        attempt("spawn", lambda: subprocess.run(["/bin/true"]))
        out["status"] = [l for l in open("/proc/self/status") if l.startswith("Seccomp")]
        """,
        {},
    )
    assert "ENOSYS" not in res["before"].values()  # each probe reaches the kernel unfiltered
    assert res["after"] == {name: "ENOSYS" for name in sc.PROBES}
    assert res["thread"] == {"unshare": "ENOSYS"}  # the new thread inherited it
    assert res["fork"] == "ENOSYS" and res["spawn"] == "ENOSYS"
    assert res["status"] == ["Seccomp:\t2\n", "Seccomp_filters:\t2\n"]  # main, quiet
    assert f"seccomp: {len(set(sc.ALLOWED))} system calls, others ENOSYS" in res["summary"]


@needs_filter
def test_the_calls_of_os_preadv_and_os_pwritev_pass() -> None:
    """CPython's os.preadv/os.pwritev make preadv2/pwritev2 (the virtio-fs
    READ/WRITE path): refused, each would cost a failed call and a kernel
    log line before glibc's fallback. Probed with a bad fd: EBADF when the
    call reaches the kernel, ENOSYS when the filter refuses it."""
    res = child(
        """
        import ctypes
        from p9share.security import seccomp
        libc = ctypes.CDLL(None, use_errno=True)
        def probe(name):
            r = libc.syscall(ctypes.c_long(seccomp._nr(name)), ctypes.c_int(-1),
                             ctypes.c_void_p(None), ctypes.c_int(0), ctypes.c_long(0),
                             ctypes.c_long(0), ctypes.c_int(0))
            return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
        fd = os.memfd_create("probe")
        sb.apply_sandbox(sb.SandboxConfig(landlock=False, seccomp="required"))
        out["calls"] = {n: probe(n) for n in ("preadv", "pwritev", "preadv2", "pwritev2")}
        out["io"] = [os.pwritev(fd, [b"ab", b"cd"], 0), os.preadv(fd, [bytearray(4)], 0)]
        """,
        {},
    )
    assert res["calls"] == dict.fromkeys(("preadv", "pwritev", "preadv2", "pwritev2"), "EBADF")
    assert res["io"] == [4, 4]


@needs_filter
def test_tsync_puts_the_filter_on_threads_that_already_run() -> None:
    res = child(
        """
        import ctypes, threading
        from p9share.security import seccomp
        sb._prctl_call(sb._PR_SET_NO_NEW_PRIVS, 1)
        go, done = threading.Event(), threading.Event()
        box = []
        def early():
            go.wait()
            box.append(seccomp.probe(["unshare"]))
            done.set()
        threading.Thread(target=early).start()  # started before the filter
        seccomp.install(seccomp.ALLOWED)
        go.set(); done.wait(10)
        out["early_thread"] = box[0]
        out["tasks"] = sorted(
            open(f"/proc/self/task/{t}/status").read().split("Seccomp:\\t")[1][0]
            for t in os.listdir("/proc/self/task"))
        """,
        {},
    )
    assert res["early_thread"] == {"unshare": "ENOSYS"}
    assert set(res["tasks"]) == {"2"}


def test_required_refuses_before_changing_anything() -> None:
    res = child(
        """
        from p9share.security import seccomp
        seccomp.unavailable_reason = lambda: "this kernel has no seccomp (CONFIG_SECCOMP)"
        try:
            sb.apply_sandbox(sb.SandboxConfig(landlock=False, seccomp="required"))
        except sb.SandboxError as e:
            out["required"] = str(e)
        out["nnp"] = open("/proc/self/status").read().count("NoNewPrivs:\\t1")
        rep = sb.apply_sandbox(sb.SandboxConfig(landlock=False, seccomp="auto"))
        out["auto"] = [rep.seccomp, rep.summary()]
        try:
            sb.apply_sandbox(sb.SandboxConfig(landlock=False, seccomp="yes"))
        except sb.SandboxError as e:
            out["bad"] = str(e)
        """,
        {},
    )
    assert res["required"] == (
        "seccomp unavailable: this kernel has no seccomp (CONFIG_SECCOMP); "
        "refusing to start because the filter is required"
    )
    assert res["nnp"] == 0
    assert res["auto"][0] is False
    assert res["auto"][1].endswith("no seccomp: this kernel has no seccomp (CONFIG_SECCOMP)")
    assert "'yes' is not one of auto, required, off" in res["bad"]


# ---------------------------------------------------------- a live server --
@pytest.fixture
def setup(tmp_path: Path) -> Path:
    from ..test_cli_policy import policy_text

    for d in ("docs", "src"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "readme").write_text(f"{d}\n")
    (tmp_path / "policy.toml").write_text(policy_text(tmp_path, '{ docs = "ro", src = "rw" }'))
    return tmp_path


@needs_filter
def test_live_server_refuses_forbidden_calls_and_keeps_serving(setup: Path) -> None:
    """Asked from inside the running server (the probe hook), after start-up."""
    env = dict(os.environ, P9SHARE_SECCOMP_PROBE="execve,ptrace,mount,unshare")
    proc = serve("--config", str(setup / "policy.toml"), "--seccomp", "required", env=env)
    try:
        wait_listening(proc)
        vm1 = connect(setup / "vm1.sock", "src")
        vm1.walk(0, 1, ["readme"])
        vm1.rpc(m.Tlopen(1, c.L_O_RDONLY))
        assert vm1.rpc(m.Tread(1, 0, 100)) == m.Rread(b"src\n")
        vm1.rpc(m.Tlcreate(0, "new", c.L_O_RDWR, 0o644, 0))
        assert vm1.rpc(m.Twrite(0, 0, b"after the filter")) == m.Rwrite(16)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    recs = audit(setup)
    got = {r["probe"]: r["result"] for r in recs if r["event"] == "sandbox" and "probe" in r}
    assert got == {"execve()": "ENOSYS", "ptrace()": "ENOSYS", "mount()": "ENOSYS",
                   "unshare()": "ENOSYS"}  # fmt: skip
    sandbox = next(r for r in recs if r["event"] == "sandbox" and "summary" in r)
    assert sandbox["seccomp"] is True and sandbox["seccomp_reason"] == ""
    assert sandbox["seccomp_allowed"] == len(set(sc.ALLOWED))
    assert "seccomp: " in str(sandbox["summary"])
    assert (setup / "src" / "new").read_bytes() == b"after the filter"


def test_seccomp_off_is_said_at_start_and_in_the_audit(setup: Path) -> None:
    text = (setup / "policy.toml").read_text()
    (setup / "policy.toml").write_text(text.replace("[server]\n", '[server]\nseccomp = "off"\n'))
    proc = serve("--config", str(setup / "policy.toml"))
    assert proc.stderr is not None
    start: list[str] = []
    try:
        while not start or not start[-1].startswith("p9share: serving on"):
            line = proc.stderr.readline()
            assert line, f"server did not start: {start}"
            start.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
    summary = next(ln for ln in start if ln.startswith("p9share: sandbox: "))
    assert summary.rstrip().endswith("; no seccomp: turned off by configuration")
    assert start[start.index(summary) + 1 + ("no Landlock" in "".join(start))] == (
        "p9share: warning: no system-call filter (turned off by configuration): a server "
        "bug could make any system call this account can\n"
    )
    sandbox = next(r for r in audit(setup) if r["event"] == "sandbox" and "summary" in r)
    assert sandbox["seccomp"] is False
    assert sandbox["seccomp_reason"] == "turned off by configuration"
    assert json.dumps(sandbox)  # a plain JSON record
    assert "no seccomp: turned off by configuration" in str(sandbox["summary"])


def test_seccomp_setting_is_checked() -> None:
    from p9share.policy.config import ConfigError, parse_config

    raw = {"server": {"seccomp": "sometimes"}, "exports": {}, "clients": {}}
    with pytest.raises(ConfigError, match=r"server.seccomp: 'sometimes' is not one of"):
        parse_config(raw, "p.toml")


@needs_filter
def test_required_refuses_to_start_in_one_line_where_no_filter_can_be_installed(
    setup: Path,
) -> None:
    """A parent filter that answers ENOSYS to seccomp(2) (as a kernel without
    it would), then exec the server: `--seccomp required` stops it with one
    line; auto starts and says why it has no filter."""
    nr = sc.SYSCALLS["seccomp"][ARCHES.index(NATIVE)]
    ins = "struct.pack('=HBBI', {}, {}, {}, {})"
    prog = " + ".join(ins.format(*i) for i in [
        (0x20, 0, 0, 4), (0x15, 1, 0, sc.AUDIT_ARCH[NATIVE]), (0x06, 0, 0, sc.RET_ALLOW),
        (0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, sc.RET_ERRNO | errno.ENOSYS),
        (0x06, 0, 0, sc.RET_ALLOW),
    ])  # fmt: skip
    wrapper = (
        "import ctypes, os, struct, sys\n"
        f"code = {prog}\n"
        "buf = ctypes.create_string_buffer(code, len(code))\n"
        "class F(ctypes.Structure):\n"
        "    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.prctl(38, 1, 0, 0, 0) == 0\n"  # no_new_privs
        "f = F(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p).value)\n"
        f"assert libc.syscall({nr}, 1, 0, ctypes.byref(f)) == 0\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'p9share', *sys.argv[1:]])\n"
    )
    args = ["serve", "--config", str(setup / "policy.toml")]
    r = subprocess.run([sys.executable, "-c", wrapper, *args, "--seccomp", "required"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "p9share: error: self-sandbox: seccomp unavailable: seccomp filters unavailable: "
        "ENOSYS; refusing to start because the filter is required"
    ]
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        wait_listening(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    sandbox = next(r for r in audit(setup) if r["event"] == "sandbox" and "summary" in r)
    assert sandbox["seccomp"] is False
    assert sandbox["seccomp_reason"] == "seccomp filters unavailable: ENOSYS"
