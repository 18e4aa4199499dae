"""`p9share conformance` as a real process: report, summary line, exit codes, --json, --only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from p9share.policy import Export, Policy
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address

from .conftest import Served

P9SHARE = [sys.executable, "-m", "p9share", "conformance"]


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*P9SHARE, *args], capture_output=True, text=True, timeout=120)


def test_report_groups_by_section_and_ends_with_the_summary(served: Served) -> None:
    r = conformance(served.address, "--aname", "export", "--only", "walk.")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("conformance: ") and lines[-1].endswith(
        " passed, 0 failed, 0 not applicable (0 of them MUST)"
    )
    assert sum(line.startswith("conformance: ") for line in lines) == 1
    assert "§4.4" in lines and any(line.startswith("  PASS walk.17-names [MUST]") for line in lines)


def test_json_file_matches_the_text(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = conformance(served.address, "--aname", "export", "--only", "§5.16", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["dialect"] == "9P2000.L" and doc["must_failed"] is False
    ids = {c["id"] for c in doc["cases"]}
    assert ids and all(c["section"] == "§5.16" for c in doc["cases"])
    assert all(f"{i} [" in r.stdout for i in ids)
    n = len(ids)
    assert r.stdout.rstrip().endswith(
        f"conformance: {n} passed, 0 failed, 0 not applicable (0 of them MUST)"
    )
    assert doc["summary"]["must_not_applicable"] == 0 and doc["conforms"] is True


def test_only_glob_and_dialect(served: Served) -> None:
    r = conformance(served.address, "--aname", "export", "--dialect", "9P2000", "--only", "wstat.*")
    assert r.returncode == 0, r.stderr
    assert "wstat.rename" in r.stdout and "walk." not in r.stdout


def test_a_must_failure_exits_1(tmp_path: Path) -> None:
    # a server that offers only .L fails the §1.3 cases for the other dialects
    (tmp_path / "x").mkdir()
    policy = Policy()
    policy.exports["x"] = Export("x", str(tmp_path / "x"), False)
    srv = Server(policy, dialects=frozenset({Dialect.P9P2000L}))
    srv.listen(parse_address("tcp:127.0.0.1:0"))
    try:
        r = conformance(str(srv.addresses[0]), "--only", "dialect.served", "--json", "-")
    finally:
        srv.stop()
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    failed = {c["id"] for c in doc["cases"] if c["status"] == "fail"}
    assert failed == {"dialect.served.9P2000", "dialect.served.9P2000.u"}
    assert doc["must_failed"] is True


def test_no_server_and_no_match_exit_2(served: Served) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = conformance(f"tcp:127.0.0.1:{port}")
    assert r.returncode == 2 and "cannot connect" in r.stderr
    r = conformance(served.address, "--aname", "export", "--only", "no-such-case")
    assert r.returncode == 2 and "no 9P2000.L case matches" in r.stderr
    r = conformance(served.address, "--aname", "export", "--only", "wstat.*")  # .u and 9P2000 only
    assert r.returncode == 2 and "no 9P2000.L case matches" in r.stderr
    r = conformance(served.address, "--aname", "no-such-export")
    assert r.returncode == 2 and "cannot attach" in r.stderr


def test_strict_fails_on_a_must_case_left_unchecked(served: Served) -> None:
    # without --ro-aname the §7.6 cases cannot run: not applicable, and MUST
    base = [served.address, "--aname", "export", "--only", "§7.6"]
    r = conformance(*base)
    assert r.returncode == 0, r.stdout
    n = r.stdout.count("  N/A ")
    assert n > 0 and f", {n} not applicable ({n} of them MUST)" in r.stdout
    r = conformance(*base, "--strict")
    assert r.returncode == 1
    assert "--strict: MUST cases not checked count as failed: " in r.stdout
    r = conformance(*base, "--strict", "--ro-aname", "ro")
    assert r.returncode == 0, r.stdout


def test_p9share_passes_strict_in_every_dialect(served: Served) -> None:
    for dialect in ("9P2000.L", "9P2000.u", "9P2000"):
        r = conformance(served.address, "--aname", "export", "--ro-aname", "ro", "--strict",
                        "--dialect", dialect)  # fmt: skip
        assert r.returncode == 0, f"{dialect}:\n{r.stdout[-3000:]}"
        assert r.stdout.rstrip().endswith(" 0 failed, 0 not applicable (0 of them MUST)")
