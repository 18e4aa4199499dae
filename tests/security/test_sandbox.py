"""The self-sandbox, checked from inside a sandboxed child process.

Landlock cannot be undone, so apply_sandbox never runs in the pytest process:
each test starts a child python that applies it, tries things, and reports
JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.client.raw import RawClient
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.security.sandbox import landlock_abi, probe_open

SRC = str(Path(__file__).resolve().parents[2] / "src")
ABI = landlock_abi()  # a probe only: nothing is applied here

needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

# Helpers every child gets: `args` (the JSON argument), `out` (reported at the
# end) and attempt(), which records "ok" or the errno name of one operation.
PRELUDE = """
import errno, json, os, sys
from p9share.security import sandbox as sb
args = json.loads(sys.argv[1])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def write(path, data=b"x"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
def read(path):
    with open(path, "rb") as f:
        return f.read()
"""


def child(body: str, args: dict[str, Any], *, wait: bool = True) -> Any:
    """Run PRELUDE + body in a fresh interpreter (cwd /, so no '' path is
    granted by accident); return the JSON of its last line, or the Popen."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out), flush=True)\n"
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-c", code, json.dumps(args)]
    if not wait:
        return subprocess.Popen(
            cmd, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
    p = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def dirs() -> Iterator[dict[str, str]]:
    """rw export A, ro export B (with a file), secret C/secret beside them,
    all world-accessible so that only Landlock can be what denies access."""
    top = tempfile.mkdtemp(prefix="p9share-sandbox-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        d = {k: os.path.join(top, k) for k in ("A", "B", "C")}
        for k, p in d.items():
            os.mkdir(p)
            os.chmod(p, 0o777 if k == "A" else 0o755)
        Path(d["B"], "readme").write_text("read me")
        Path(d["C"], "secret").write_text("secret")
        os.chmod(os.path.join(d["C"], "secret"), 0o644)
        yield d
    finally:
        shutil.rmtree(top)


# ------------------------------------------------------------- filesystem --
@needs_landlock
def test_exports_reachable_everything_else_denied(dirs: dict[str, str]) -> None:
    # Full root, no uid switch: Landlock alone has to stop it.
    res = child(
        """
        from p9share.backend.hostfs import HostBackend
        before = HostBackend(args["A"])  # opens /proc/self/fd before the sandbox
        out["fractions_preloaded"] = "fractions" in sys.modules
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], ro_paths=[args["B"]],
                                                 seccomp="off"))  # Landlock alone
        out["summary"] = rep.summary()
        A, B, C = args["A"], args["B"], args["C"]
        attempt("a_create", lambda: write(A + "/f", b"data"))
        out["a_read"] = read(A + "/f").decode()
        attempt("a_rename", lambda: os.rename(A + "/f", A + "/g"))
        attempt("a_mkdir", lambda: os.mkdir(A + "/d"))
        attempt("a_rename_across_dirs", lambda: os.rename(A + "/g", A + "/d/g"))
        attempt("a_symlink", lambda: os.symlink("d/g", A + "/l"))
        attempt("a_mkfifo", lambda: os.mkfifo(A + "/p"))
        attempt("a_mknod_chr", lambda: os.mknod(A + "/null", 0o20666, os.makedev(1, 3)))
        attempt("a_unlink", lambda: os.unlink(A + "/d/g"))
        attempt("a_rmdir", lambda: os.rmdir(A + "/d"))
        out["b_read"] = read(B + "/readme").decode()
        attempt("b_list", lambda: os.listdir(B))
        attempt("b_write", lambda: write(B + "/readme"))
        attempt("b_create", lambda: write(B + "/new"))
        attempt("b_mkdir", lambda: os.mkdir(B + "/d"))
        attempt("c_read", lambda: read(C + "/secret"))
        attempt("c_write", lambda: write(C + "/new"))
        out["probe"] = sb.probe_open([A, B + "/readme", C + "/secret", "/etc/shadow",
                                      "/etc/passwd", "/tmp", "/root", "/proc/self/status"])
        import fractions  # a lazy import of a module not loaded before
        out["lazy_import"] = str(fractions.Fraction(1, 3) * 3)
        # The host backend, made before the sandbox and after, still works.
        for name, be in (("before", before), ("after", HostBackend(A))):
            root = be.root()
            _, f = be.create(root, name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644, None)
            be.write(f, 0, b"via backend")
            be.close(f)
            f = be.open(be.walk(root, name), os.O_RDONLY)
            out["backend_" + name] = be.read(f, 0, 100).decode()
            be.close(f)
        """,
        dirs,
    )
    assert res["fractions_preloaded"] is False
    assert res["summary"].startswith(f"landlock ABI {ABI}: 1 exports rw, 1 ro, 0 state;")
    assert "no_new_privs" in res["summary"]
    for op in ("a_create", "a_rename", "a_mkdir", "a_symlink", "a_mkfifo", "a_unlink", "a_rmdir"):
        assert res[op] == "ok", op
    assert res["a_read"] == "data"
    # REFER (ABI 2) lets renames cross directories inside one export.
    assert res["a_rename_across_dirs"] == ("ok" if ABI >= 2 else "EXDEV")
    assert res["a_mknod_chr"] == "EACCES"  # device nodes: denied even to root
    assert res["b_read"] == "read me" and res["b_list"] == "ok"
    assert res["b_write"] == res["b_create"] == res["b_mkdir"] == "EACCES"
    assert res["c_read"] == res["c_write"] == "EACCES"
    assert res["probe"] == {
        dirs["A"]: "ok",
        dirs["B"] + "/readme": "ok",
        dirs["C"] + "/secret": "EACCES",
        "/etc/shadow": "EACCES",
        "/etc/passwd": "EACCES",
        "/tmp": "EACCES",
        "/root": "EACCES",
        "/proc/self/status": "EACCES",
    }
    assert res["lazy_import"] == "1"
    assert res["backend_before"] == res["backend_after"] == "via backend"
    assert Path(dirs["A"], "before").read_text() == "via backend"
    assert not Path(dirs["B"], "new").exists()


@needs_landlock
def test_state_paths_take_plain_files_only(dirs: dict[str, str]) -> None:
    res = child(
        """
        state = args["C"]
        sb.apply_sandbox(sb.SandboxConfig(write_paths=[state], seccomp="off"))
        attempt("log_create", lambda: write(state + "/audit.log", b"line\\n"))
        attempt("log_append", lambda: os.close(os.open(state + "/audit.log", os.O_APPEND | os.O_WRONLY)))
        attempt("mkdir", lambda: os.mkdir(state + "/d"))
        attempt("symlink", lambda: os.symlink("/etc/shadow", state + "/l"))
        """,
        dirs,
    )
    assert res == {"log_create": "ok", "log_append": "ok", "mkdir": "EACCES", "symlink": "EACCES"}


# --------------------------------------------------------------- identity --
@needs_root
def test_drop_to_service_account_is_irreversible(dirs: dict[str, str]) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")
    res = child(
        """
        status = os.open("/proc/self/status", os.O_RDONLY)  # re-read after the sandbox
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], user="nobody", seccomp="off"))
        out["summary"] = rep.summary()
        out["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
        attempt("setuid0", lambda: os.setuid(0))
        attempt("setgid0", lambda: os.setgid(0))
        attempt("create_in_A", lambda: write(args["A"] + "/mine"))
        out["owner"] = os.stat(args["A"] + "/mine").st_uid
        attempt("read_C", lambda: read(args["C"] + "/secret"))  # mode 0644: only Landlock denies
        os.lseek(status, 0, 0)
        out["status"] = dict(l.split(":\\t", 1) for l in os.read(status, 8192).decode().splitlines())
        """,
        dirs,
    )
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert res["ids"] == [[uid] * 3, [gid] * 3, []]
    assert res["setuid0"] == res["setgid0"] == "EPERM"
    assert res["create_in_A"] == "ok" and res["owner"] == uid
    assert res["read_C"] == ("EACCES" if ABI >= 1 else "ok")
    st = res["status"]
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert st[key] == "0000000000000000", key
    assert st["NoNewPrivs"] == "1"
    assert f"uid {uid} gid {gid}" in res["summary"]


@needs_root
def test_keep_root_caps_leaves_exactly_the_file_server_set(dirs: dict[str, str]) -> None:
    Path(dirs["A"], "private").write_text("guest data")
    os.chown(os.path.join(dirs["A"], "private"), 4321, 4321)
    os.chmod(os.path.join(dirs["A"], "private"), 0o600)
    res = child(
        """
        import socket
        status = os.open("/proc/self/status", os.O_RDONLY)
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], keep_root_caps=True,
                                                 seccomp="off"))  # capabilities alone
        out["summary"] = rep.summary()
        out["caps"] = list(rep.caps)
        out["uid"] = os.getresuid()
        os.lseek(status, 0, 0)
        out["status"] = dict(l.split(":\\t", 1) for l in os.read(status, 8192).decode().splitlines())
        # CAP_SYS_ADMIN is gone (setting the same hostname would be harmless)
        attempt("sethostname", lambda: socket.sethostname(socket.gethostname()))
        # CAP_SYS_CHROOT and CAP_NET_RAW are gone (chroot("/") would be harmless)
        attempt("chroot", lambda: os.chroot("/"))
        attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())
        # what is kept works: chown (CHOWN), a 0600 file of another uid (DAC_OVERRIDE)
        attempt("chown", lambda: write(args["A"] + "/f") or os.chown(args["A"] + "/f", 1000, 1000))
        out["read_private"] = read(args["A"] + "/private").decode()
        attempt("read_shadow", lambda: read("/etc/shadow"))
        """,
        dirs,
    )
    kept = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4)  # chown dac_override fowner fsetid
    st = res["status"]
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert int(st[key], 16) == kept, key
    assert int(st["CapInh"], 16) == int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"] == "1"
    assert res["uid"] == [0, 0, 0]
    assert res["caps"] == ["chown", "dac_override", "fowner", "fsetid"]
    assert res["sethostname"] == res["chroot"] == res["raw_socket"] == "EPERM"
    assert res["chown"] == "ok" and os.stat(os.path.join(dirs["A"], "f")).st_uid == 1000
    assert res["read_private"] == "guest data"
    assert res["read_shadow"] == ("EACCES" if ABI >= 1 else "ok")
    assert "caps chown,dac_override,fowner,fsetid" in res["summary"]


@needs_landlock
def test_daemon_threads_at_exit_do_not_abort_the_process(dirs: dict[str, str]) -> None:
    # CPython ends daemon threads at shutdown with pthread_exit, for which glibc
    # dlopens libgcc_s.so.1: unreachable under Landlock unless preloaded.
    res = child(
        """
        import threading
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]]))
        out["libgcc_note"] = [n for n in rep.notes if "libgcc" in n]
        never = threading.Event()  # waits are futexes, as in the server (no sleep call)
        def spin():
            while True:
                never.wait(0.0005)
        for _ in range(4):
            threading.Thread(target=spin, daemon=True).start()
        never.wait(0.05)
        """,
        dirs,
    )
    assert res == {"libgcc_note": []}  # and child() checked the exit status is 0


# ---------------------------------------------------------------- network --
@pytest.mark.skipif(ABI < 4, reason="Landlock network rules need ABI 4")
def test_no_new_tcp_but_bound_listener_keeps_serving(dirs: dict[str, str]) -> None:
    p = child(
        """
        import socket
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], seccomp="off"))  # Landlock alone
        attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
        attempt("connect", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
        out["port"] = port
        print(json.dumps(out), flush=True)
        lsock.settimeout(10)
        conn, _ = lsock.accept()
        conn.sendall(b"still serving")
        conn.close()
        out = {"done": True}
        """,
        dirs,
        wait=False,
    )
    try:
        assert p.stdout is not None
        res = json.loads(p.stdout.readline())
        assert res["bind"] == res["connect"] == "EACCES"
        with socket.create_connection(("127.0.0.1", res["port"]), timeout=10) as s:
            assert s.recv(100) == b"still serving"
        assert json.loads(p.stdout.readline()) == {"done": True}
        assert p.wait(10) == 0
    finally:
        p.kill()
        p.wait()


@needs_landlock
def test_server_serves_its_exports_from_inside_the_sandbox(dirs: dict[str, str]) -> None:
    """The start-up sequence the CLI is to follow: open the exports, bind the
    listeners, sandbox, then start serving (threads) on the bound sockets."""
    p = child(
        """
        from p9share.policy import Export, Policy
        from p9share.server.server import Server
        from p9share.server.transport import open_listener, parse_address
        policy = Policy(exports={"a": Export("a", args["A"]), "b": Export("b", args["B"], True)})
        server = Server(policy)
        lsock, _ = open_listener(parse_address("tcp:127.0.0.1:0"))
        port = lsock.getsockname()[1]
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], ro_paths=[args["B"]]))
        server.listen(parse_address(f"fd:{lsock.detach()}"))
        out["port"] = port
        out["probe"] = sb.probe_open(["/etc/shadow"])
        print(json.dumps(out), flush=True)
        sys.stdin.readline()  # the test is done
        server.stop()
        out = {"stopped": True}
        """,
        dirs,
        wait=False,
    )
    try:
        assert p.stdout is not None
        res = json.loads(p.stdout.readline())
        assert res["probe"] == {"/etc/shadow": "EACCES"}
        cl = RawClient.connect(f"tcp:127.0.0.1:{res['port']}", timeout=10)
        cl.version()
        cl.attach(0, "b")
        cl.walk(0, 1, ["readme"])
        cl.rpc(m.Tlopen(1, c.L_O_RDONLY))
        assert cl.rpc(m.Tread(1, 0, 100)) == m.Rread(b"read me")
        cl.attach(2, "a")
        cl.rpc(m.Tlcreate(2, "new", c.L_O_RDWR | c.L_O_EXCL, 0o644, 0))
        assert cl.rpc(m.Twrite(2, 0, b"written")) == m.Rwrite(7)
        cl.close()
        assert Path(dirs["A"], "new").read_bytes() == b"written"
        assert p.stdin is not None
        p.stdin.close()
        assert json.loads(p.stdout.readline()) == {"stopped": True}
        assert p.wait(10) == 0
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------- errors, reporting --
def test_landlock_unavailable_is_reported_and_required_refuses(dirs: dict[str, str]) -> None:
    res = child(
        """
        sb.landlock_abi = lambda: 0  # as on a kernel without Landlock
        try:
            sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]], required=True))
        except sb.SandboxError as e:
            out["required"] = str(e)
        out["nnp_after_refusal"] = open("/proc/self/status").read().count("NoNewPrivs:\\t1")
        rep = sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]]))
        out["landlock"] = rep.landlock
        out["summary"] = rep.summary()
        out["probe"] = sb.probe_open([args["C"] + "/secret"])
        """,
        dirs,
    )
    assert "landlock unavailable" in res["required"] and "required" in res["required"]
    assert res["nnp_after_refusal"] == 0  # refused before changing anything
    assert res["landlock"] is False
    assert res["summary"].startswith("landlock unavailable: ")
    assert "no_new_privs" in res["summary"]
    assert res["probe"] == {dirs["C"] + "/secret": "ok"}  # honestly unconfined


def test_bad_configurations_are_refused_before_any_change(dirs: dict[str, str]) -> None:
    res = child(
        """
        import threading
        cases = {
            "missing_export": sb.SandboxConfig(rw_paths=[args["A"] + "/nope"]),
            "unknown_user": sb.SandboxConfig(user="no-such-user-p9share"),
            "unknown_group": sb.SandboxConfig(user="65534", group="no-such-group-p9share"),
            "root_user": sb.SandboxConfig(user="root"),
            "caps_and_user": sb.SandboxConfig(user="65534", keep_root_caps=True),
        }
        for name, cfg in cases.items():
            try:
                sb.apply_sandbox(cfg)
                out[name] = "applied"
            except sb.SandboxError as e:
                out[name] = str(e)
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["A"]]))
            out["threads"] = "applied"
        except sb.SandboxError as e:
            out["threads"] = str(e)
        stop.set()
        t.join()
        out["probe"] = sb.probe_open(["/etc/passwd"])
        """,
        dirs,
    )
    assert "no such file or directory" in res["missing_export"]
    assert "no such user 'no-such-user-p9share'" in res["unknown_user"]
    assert "no such group" in res["unknown_group"]
    assert "must not be root" in res["root_user"]
    assert "cannot be combined" in res["caps_and_user"]
    assert "2 threads" in res["threads"] and "before starting any thread" in res["threads"]
    assert res["probe"] == {"/etc/passwd": "ok"}  # nothing was applied


def test_probe_open_names_the_errno(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to("file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # O_NONBLOCK: opening a FIFO with no writer must not hang
    got = probe_open(
        [
            str(tmp_path / "file"),
            str(tmp_path / "missing"),
            str(tmp_path / "link"),
            str(fifo),
            "bad\0path",
        ]
    )
    assert got == {
        str(tmp_path / "file"): "ok",
        str(tmp_path / "missing"): "ENOENT",
        str(tmp_path / "link"): "ELOOP",
        str(fifo): "ok",
        "bad\0path": "EINVAL",
    }


def test_landlock_abi_matches_the_kernel() -> None:
    # 0 only where the kernel has none; otherwise a version the module knows how to use
    assert ABI >= 0
    if os.path.exists("/sys/kernel/security/lsm"):
        lsms = Path("/sys/kernel/security/lsm").read_text().split(",")
        assert (ABI > 0) == ("landlock" in lsms)
