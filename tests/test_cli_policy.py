"""`p9share serve --config`, `check-config`, `keygen`, SIGHUP reload and the
self-sandbox, each run as a real process."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.security.auth import load_key

from .test_cli import P9SHARE, one_error_line, serve, wait_listening


def policy_text(tmp_path: Path, vm1_exports: str) -> str:
    return textwrap.dedent(f"""
        [server]
        listen = [{{ address = "unix:{tmp_path}/vm1.sock", name = "vm1" }},
                  {{ address = "unix:{tmp_path}/other.sock", name = "other" }}]
        audit_log = "{tmp_path}/audit.jsonl"

        [exports.docs]
        path = "{tmp_path}/docs"

        [exports.src]
        path = "{tmp_path}/src"

        [clients.vm1]
        match = {{ listener = "vm1" }}
        exports = {vm1_exports}
    """)


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    for d in ("docs", "src"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "readme").write_text(f"{d}\n")
    (tmp_path / "secret").write_text("outside\n")
    (tmp_path / "policy.toml").write_text(policy_text(tmp_path, '{ docs = "ro", src = "rw" }'))
    return tmp_path


def audit(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_check_config_accepts_a_good_file(setup: Path) -> None:
    r = subprocess.run([*P9SHARE, "check-config", str(setup / "policy.toml")],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        f"{setup}/policy.toml: OK: 2 exports (docs, src), 1 clients (vm1), 2 listeners"
    )


def test_check_config_refuses_a_bad_file_in_one_line(setup: Path) -> None:
    bad = setup / "bad.toml"
    bad.write_text(policy_text(setup, '{ docs = "ro", nope = "rw" }'))
    line = one_error_line("check-config", str(bad))
    assert (
        line
        == f"p9share: error: {bad}: clients.vm1.exports.nope: no such export (define it under [exports])"
    )
    bad.write_text(policy_text(setup, '{ docs = "ro" }') + "\n[limits]\nmax_fids = 0.5\n")
    assert "limits" in one_error_line("check-config", str(bad))
    assert "cannot read" in one_error_line("check-config", str(setup / "missing.toml"))
    # serve refuses it the same way, and refuses mixing --config with exports
    assert one_error_line("serve", "--config", str(setup / "policy.toml"), str(setup)) == (
        "p9share: error: --config names the exports: give no PATH, --export or --cache with it"
    )


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    out = tmp_path / "vm1.key"
    r = subprocess.run([*P9SHARE, "keygen", "--id", "vm1", "-o", str(out)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_key(out)
    assert key.key_id == "vm1" and len(key.secret) == 32
    r = subprocess.run([*P9SHARE, "keygen", "--id", "vm1", "-o", str(out)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "p9share: error:" in r.stderr  # never overwrites
    r = subprocess.run([*P9SHARE, "keygen", "--id", "x"], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("p9share-key-v1 x ")


def connect(sock: Path, aname: str) -> RawClient:
    cl = RawClient.connect(f"unix:{sock}", timeout=10)
    cl.version()
    cl.attach(0, aname)
    return cl


def test_policy_file_serves_identities_and_sighup_reloads(setup: Path) -> None:
    proc = serve("--config", str(setup / "policy.toml"))
    try:
        wait_listening(proc)
        wait_listening(proc)
        vm1 = connect(setup / "vm1.sock", "docs")
        vm1.walk(0, 1, ["readme"])
        with pytest.raises(ServerError) as ei:
            vm1.rpc(m.Tlopen(1, c.L_O_RDWR))
        assert ei.value.errno == errno.EROFS  # docs is read-only for vm1
        vm1_src = connect(setup / "vm1.sock", "src")
        vm1_src.rpc(m.Tmkdir(0, "made", 0o755, 0))
        # the "other" listener is nobody's: closed at once
        with pytest.raises((ConnectionError, OSError)):
            connect(setup / "other.sock", "docs")

        # a broken policy: refused, the old one stays
        good = (setup / "policy.toml").read_text()
        (setup / "policy.toml").write_text(good.replace("[clients.vm1]", "[clients.vm1"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any(r["event"] == "reload" for r in audit(setup)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert isinstance(vm1.rpc(m.Tgetattr(1, 0x7FF)), m.Rgetattr)

        # vm1 loses src: its src session is closed, its docs session carries on
        (setup / "policy.toml").write_text(policy_text(setup, '{ docs = "ro" }'))
        proc.send_signal(signal.SIGHUP)
        vm1_src.sock.settimeout(10)
        assert vm1_src.sock.recv(1) == b""
        assert isinstance(vm1.rpc(m.Tgetattr(1, 0x7FF)), m.Rgetattr)
        with pytest.raises(ServerError) as ei:
            connect(setup / "vm1.sock", "src")
        assert ei.value.errno == errno.EACCES
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    recs = audit(setup)
    reloads = [r for r in recs if r["event"] == "reload"]
    assert [r["ok"] for r in reloads] == [False, True]
    assert "line" in str(reloads[0]["reason"])  # the TOML error names its line
    assert len(reloads[1]["closed"]) == 1  # type: ignore[arg-type]
    assert any(r["event"] == "refused" for r in recs)
    assert any(r["event"] == "attach-denied" and r["aname"] == "src" for r in recs)
    assert (setup / "src" / "made").is_dir()


def test_server_cannot_open_files_outside_its_exports(setup: Path) -> None:
    """Asked from inside the running server (the probe hook), after start-up."""
    probes = [str(setup / "secret"), "/etc/shadow", str(setup / "src" / "readme"),
              str(setup / "docs" / "readme")]  # fmt: skip
    env = dict(os.environ, P9SHARE_SANDBOX_PROBE=os.pathsep.join(probes))
    proc = serve("--config", str(setup / "policy.toml"), "--landlock", "required", env=env)
    try:
        wait_listening(proc)
        # and it still serves its exports
        vm1 = connect(setup / "vm1.sock", "src")
        vm1.walk(0, 1, ["readme"])
        vm1.rpc(m.Tlopen(1, c.L_O_RDONLY))
        assert vm1.rpc(m.Tread(1, 0, 100)) == m.Rread(b"src\n")
        vm1.rpc(m.Tlcreate(0, "new", c.L_O_RDWR, 0o644, 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    got = {
        r["probe"]: r["result"] for r in audit(setup) if r["event"] == "sandbox" and "probe" in r
    }
    assert got == {probes[0]: "EACCES", probes[1]: "EACCES", probes[2]: "ok", probes[3]: "ok"}
    sandbox = next(r for r in audit(setup) if r["event"] == "sandbox" and "summary" in r)
    assert sandbox["landlock"] is True
