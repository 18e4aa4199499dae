"""The session-wide checks of tests/conftest.py, run on small probe test
files in a pytest subprocess: a skip outside tests/skip-allowlist.txt fails
the session, and a server's internal error fails the test it happened in
(in-process, or in a subprocess server's stderr)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import SKIP_ALLOWLIST, load_allowlist

REPO = Path(__file__).resolve().parents[1]

PROBES = '''
import subprocess
import sys
from pathlib import Path

import pytest

from p9share.client.raw import ServerError
from p9share.protocol import messages as m
from p9share.server.session import Session
from tests.conftest import watch_server_stderr


def broken_statfs(self, msg):
    raise RuntimeError("a probe's bug")


def test_passes():
    pass


def test_skips():
    pytest.skip("a probe's skip")


def statfs_fails(live, monkeypatch):
    monkeypatch.setattr(Session, "statfs", broken_statfs)
    client = live.client()
    with pytest.raises(ServerError):  # answered EIO: the server keeps going
        client.rpc(m.Tstatfs(0))
    client.close()


def test_internal_error_in_process(make_server, monkeypatch):
    statfs_fails(make_server(), monkeypatch)


@pytest.mark.internal_error_expected
def test_internal_error_expected(make_server, monkeypatch, server_errors):
    statfs_fails(make_server(), monkeypatch)
    assert any("internal error handling Tstatfs" in e for e in server_errors.found())


SERVE = """
import sys
from p9share.server.session import Session
def broken(self, msg):
    raise RuntimeError("a probe's bug")
Session.statfs = broken
from p9share.cli import main
sys.exit(main(["serve", sys.argv[1], "--listen", "unix:" + sys.argv[2]]))
"""


def test_internal_error_in_a_subprocess_server(tmp_path):
    from p9share.client.raw import RawClient

    log = tmp_path / "server.log"
    sock = tmp_path / "s.sock"
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path), str(sock)],
                                stdout=f, stderr=f)
    watch_server_stderr(log)
    try:
        import time
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        client = RawClient.connect(f"unix:{sock}", timeout=10)
        client.version()
        client.attach(0, "")
        with pytest.raises(ServerError):
            client.rpc(m.Tstatfs(0))
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
'''


def run_probe(tmp_path: Path, *select: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent(PROBES))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
           "-q", "-rA", "--rootdir", str(tmp_path), *(f"{probe}::{s}" for s in select)]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_outside_the_allowlist_fails_the_session(tmp_path: Path) -> None:
    r = run_probe(tmp_path, "test_passes", "test_skips")
    assert r.returncode == 1, r.stdout
    assert "1 passed, 1 skipped" in r.stdout
    assert "skipped outside tests/skip-allowlist.txt" in r.stdout
    assert "test_probe.py::test_skips: a probe's skip" in r.stdout
    assert run_probe(tmp_path, "test_passes").returncode == 0


def test_an_internal_error_fails_its_test(tmp_path: Path) -> None:
    r = run_probe(tmp_path, "test_internal_error_in_process", "test_internal_error_expected",
                  "test_internal_error_in_a_subprocess_server")  # fmt: skip
    assert r.returncode == 1, r.stdout
    out = r.stdout
    errors = set(re.findall(r"^ERROR .*::(\w+)", out, re.M))
    assert errors == {
        "test_internal_error_in_process",
        "test_internal_error_in_a_subprocess_server",
    }
    # each error block says it (the short summary may repeat it, as wide as the terminal)
    assert out.count("Failed: a server logged an internal error during this test") >= 2, out
    assert "p9share.server: tcp:" in out and "internal error handling Tstatfs" in out
    assert re.search(r"server\.log: .* p9share\.server ERROR .*internal error handling", out), out


def test_allowlist_entries_name_tests_that_exist() -> None:
    entries = load_allowlist()
    assert entries and SKIP_ALLOWLIST.is_file()
    for pattern, reason in entries:
        path, _, name = pattern.partition("::")
        assert (REPO / path).is_file(), pattern
        assert name and f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), pattern
        assert len(reason) > 20, pattern


def test_a_malformed_allowlist_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "list.txt"
    bad.write_text("tests/x.py::test_y\n")
    with pytest.raises(pytest.UsageError, match=r"list\.txt:1: an entry is"):
        load_allowlist(bad)
