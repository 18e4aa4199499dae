"""A grant the host backend or the sandbox would cancel in silence is refused
when the policy is loaded: check-config, start and SIGHUP reload say the same
line. And a device grant that is accepted (a mapped export) really works
from inside the sandboxed root server."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from p9share.client.raw import ServerError
from p9share.protocol import constants as c
from p9share.protocol import messages as m

from ..test_cli import P9SHARE, one_error_line, serve, wait_listening
from ..test_cli_policy import audit, connect

NOFID = 0xFFFFFFFF


def policy(tmp_path: Path, src_grant: str, src_idmap: str = "passthrough") -> str:
    return f"""
[server]
listen = [{{ address = "unix:{tmp_path}/vm1.sock", name = "vm1" }}]
audit_log = "{tmp_path}/audit.jsonl"

[exports.src]
path = "{tmp_path}/src"
idmap = "{src_idmap}"

[exports.scratch]
path = "{tmp_path}/scratch"
idmap = "mapped"

[clients.vm1]
match = {{ listener = "vm1" }}
exports = {{ src = {src_grant}, scratch = {{ access = "rw", devices = true }} }}
"""


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    for d in ("src", "scratch"):
        (tmp_path / d).mkdir()
    (tmp_path / "src" / "readme").write_text("src\n")
    return tmp_path


DEVICES = (
    "devices = true cannot be honoured: export 'src' (idmap {mode}) stores real files, and "
    'p9share never creates device nodes on the host; use idmap = "mapped" for it (a device '
    "is then a placeholder file) or drop the grant"
)


@pytest.mark.parametrize("mode", ["passthrough", "squash"])
def test_device_grant_on_a_host_export_is_refused_by_check_config_and_serve(
    setup: Path, mode: str
) -> None:
    p = setup / "policy.toml"
    p.write_text(policy(setup, '{ access = "rw", devices = true }', mode))
    expect = f"p9share: error: {p}: clients.vm1.exports.src: " + DEVICES.format(mode=mode)
    assert one_error_line("check-config", str(p)) == expect
    assert one_error_line("serve", "--config", str(p)) == expect
    # the same grant given to all the client's exports through [allow]
    text = policy(setup, '"rw"', mode).replace(
        "exports = {", "allow = { devices = true }\nexports = {"
    )
    p.write_text(text)
    assert one_error_line("check-config", str(p)) == expect


@pytest.mark.parametrize(
    ("grant", "said"),
    [
        ('{ access = "ro", xattrs = ["user", "trusted"] }', 'xattrs "trusted" cannot be honoured'),
        ('{ access = "rw", xattrs = ["security"] }', 'xattrs "security" can only be read'),
    ],
)
def test_xattr_grants_the_kernel_keeps_for_cap_sys_admin_are_refused(
    setup: Path, grant: str, said: str
) -> None:
    p = setup / "policy.toml"
    p.write_text(policy(setup, grant))
    assert said in one_error_line("check-config", str(p))


def test_grants_the_sandbox_can_honour_pass(setup: Path) -> None:
    p = setup / "policy.toml"
    p.write_text(policy(setup, '{ access = "ro", xattrs = ["user", "security", "system"] }'))
    r = subprocess.run([*P9SHARE, "check-config", str(p)], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_reload_that_adds_a_device_grant_is_refused_and_the_old_policy_stays(
    setup: Path,
) -> None:
    p = setup / "policy.toml"
    p.write_text(policy(setup, '"rw"'))
    proc = serve("--config", str(p))
    try:
        wait_listening(proc)
        p.write_text(policy(setup, '{ access = "rw", devices = true }'))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not [r for r in audit(setup) if r["event"] == "reload"]:
            assert time.monotonic() < deadline, "no reload record"
            time.sleep(0.05)
        # the old policy serves on: src read-write, and no devices there
        vm1 = connect(setup / "vm1.sock", "src")
        vm1.rpc(m.Tlcreate(0, "after-reload", c.L_O_RDWR, 0o644, 0))
        vm1.attach(1, "src")
        with pytest.raises(ServerError) as ei:
            vm1.rpc(m.Tmknod(1, "dev", stat.S_IFCHR | 0o600, 1, 3, 0))
        assert ei.value.errno == errno.EPERM
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    (reload,) = [r for r in audit(setup) if r["event"] == "reload"]
    assert reload["ok"] is False
    assert reload["reason"] == f"{p}: clients.vm1.exports.src: " + DEVICES.format(
        mode="passthrough"
    )
    denied = [r for r in audit(setup) if r.get("rule") == "devices"]
    assert denied, "the old policy's refusal of the device node is audited"
    assert (setup / "src" / "after-reload").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the finding is about a root server")
def test_root_server_honours_an_accepted_device_grant(setup: Path) -> None:
    """mknod c and b through a raw client on the mapped export, under the
    sandbox (Landlock, capabilities, seccomp): what the policy accepts works."""
    p = setup / "policy.toml"
    p.write_text(policy(setup, '"rw"'))
    proc = serve("--config", str(p))
    try:
        wait_listening(proc)
        vm1 = connect(setup / "vm1.sock", "scratch")
        q = vm1.rpc(m.Tmknod(0, "null", stat.S_IFCHR | 0o666, 1, 3, 0))
        assert isinstance(q, m.Rmknod)
        vm1.rpc(m.Tmknod(0, "sda", stat.S_IFBLK | 0o660, 8, 0, 0))
        vm1.walk(0, 1, ["null"])
        attr = vm1.rpc(m.Tgetattr(1, 0x7FF))
        assert isinstance(attr, m.Rgetattr)
        assert stat.S_ISCHR(attr.mode) and attr.rdev == os.makedev(1, 3)
        vm1.walk(0, 2, ["sda"])
        attr = vm1.rpc(m.Tgetattr(2, 0x7FF))
        assert isinstance(attr, m.Rgetattr)
        assert stat.S_ISBLK(attr.mode) and attr.rdev == os.makedev(8, 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    # on the host they are placeholder files, never devices
    for name in ("null", "sda"):
        assert stat.S_ISREG(os.lstat(setup / "scratch" / name).st_mode)
    assert not [r for r in audit(setup) if r["event"] == "denied"]


@pytest.mark.skipif(os.geteuid() != 0, reason="what a root server keeps")
def test_what_the_refused_grants_would_meet_inside_the_sandbox(setup: Path) -> None:
    """The reasons given above, measured: a root server under the sandbox
    cannot make a device node, nor read or write trusted.*, nor write
    security.*; it can write user.* and system.* (ACLs) on others' files."""
    from .test_sandbox import child

    f = setup / "src" / "readme"
    os.chown(f, 4321, 4321)
    os.setxattr(f, "trusted.before", b"1")
    acl = bytes.fromhex("0200000001000600ffffffff04000400ffffffff20000400ffffffff")
    res = child(
        """
        f = args["f"]
        sb.apply_sandbox(sb.SandboxConfig(rw_paths=[args["src"]], keep_root_caps=True))
        attempt("mknod_chr", lambda: os.mknod(args["src"] + "/c", 0o20600, os.makedev(1, 3)))
        attempt("get_trusted", lambda: os.getxattr(f, "trusted.before"))
        attempt("set_trusted", lambda: os.setxattr(f, "trusted.x", b"1"))
        attempt("set_security", lambda: os.setxattr(f, "security.x", b"1"))
        attempt("set_user", lambda: os.setxattr(f, "user.x", b"1"))
        attempt("set_acl", lambda: os.setxattr(f, "system.posix_acl_access", bytes.fromhex(args["acl"])))
        out["listed"] = sorted(os.listxattr(f))
        """,
        {"f": str(f), "src": str(setup / "src"), "acl": acl.hex()},
    )
    assert res["mknod_chr"] in ("EACCES", "EPERM")  # Landlock first, CAP_MKNOD behind it
    assert res["get_trusted"] == "ENODATA" and res["set_trusted"] == "EPERM"
    assert res["set_security"] == "EPERM"
    assert res["set_user"] == "ok"
    assert res["set_acl"] in ("ok", "EOPNOTSUPP")  # ok where the file system has ACLs
    assert "trusted.before" not in res["listed"] and "user.x" in res["listed"]


def test_a_burst_of_reloads_never_deadlocks_the_server(setup: Path) -> None:
    """Reloads run from the main loop, not inside the signal handler: a
    handler that reloads can interrupt another one (or the start-up) holding
    the audit queue's lock, and the server then hung for good."""
    p = setup / "policy.toml"
    p.write_text(policy(setup, '"rw"'))
    proc = serve("--config", str(p))
    try:
        wait_listening(proc)
        for _ in range(300):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.001)
        vm1 = connect(setup / "vm1.sock", "src")
        vm1.walk(0, 1, ["readme"])
        vm1.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            proc.kill()
    reloads = [r for r in audit(setup) if r["event"] == "reload"]
    assert reloads and all(r["ok"] for r in reloads)
