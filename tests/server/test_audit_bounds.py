"""The audit log cannot be filled by a guest (issue 11: 65,000-byte names in
denial records filled it at 50-200 MiB/s): fields are cut, and each client's
records are rate-limited with what was held back counted."""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p9share import audit
from p9share.audit import AuditLog
from p9share.client.raw import ServerError
from p9share.protocol import messages as m

from ..conftest import LiveServer

DENIALS = 2000
LONG = "n" * 65000


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_flood_of_long_denied_names_is_cut_and_rate_limited(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(str(log_path))
    ro = tmp_path / "ro"
    ro.mkdir()
    live = make_server(exports={"export": (ro, True)}, audit=log)
    c = live.client(msize=1024 * 1024 + 24)
    start = time.monotonic()
    for _ in range(DENIALS):
        with pytest.raises(ServerError) as ei:
            c.rpc(m.Tmkdir(0, LONG, 0o755, 0))
        assert ei.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    took = time.monotonic() - start
    c.close()
    live.server.stop()
    log.close()
    size = log_path.stat().st_size
    recs = records(log_path)
    denied = [r for r in recs if r["event"] == "denied"]
    held = [r for r in recs if r["event"] == "suppressed"]
    # what one client may write: the burst, then the rate, each record cut
    allowed = audit.BURST + audit.RATE * (took + 1)
    assert 0 < len(denied) <= allowed
    assert size < (allowed + 50) * 2 * audit.MAX_FIELD, f"{size} bytes for {len(denied)} denials"
    assert all(len(r["name"]) == audit.MAX_FIELD for r in denied)
    assert all(r["truncated"] == {"name": len(LONG)} for r in denied)
    # nothing is lost without a trace: the held-back ones are counted
    assert held and sum(r["count"] for r in held) + len(denied) == DENIALS
    assert all(r["events"].keys() <= audit.GUEST_EVENTS for r in held)


def test_clients_have_budgets_of_their_own(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(str(log_path))
    for _ in range(int(audit.BURST) * 3):
        log.emit("denied", client="noisy", name="x")
    log.emit("denied", client="quiet", name="y")
    log.emit("denied", name="z")  # unidentified peers share a bucket of their own
    log.emit("reload", ok=True)  # the server's own records are not limited
    log.close()
    recs = records(log_path)
    by = {k: [r for r in recs if r.get("client") == k and r["event"] == "denied"]
          for k in ("noisy", "quiet")}  # fmt: skip
    assert len(by["noisy"]) <= audit.BURST + 5 and len(by["quiet"]) == 1
    assert any(r["event"] == "denied" and r.get("name") == "z" for r in recs)
    assert any(r["event"] == "reload" for r in recs)
    (held,) = [r for r in recs if r["event"] == "suppressed"]
    assert held["client"] == "noisy" and held["count"] + len(by["noisy"]) == audit.BURST * 3


def test_short_fields_and_other_types_pass_unchanged(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(str(log_path))
    log.emit("start", listeners=["tcp:127.0.0.1:1"], exports=["e"], note="ok")
    log.close()
    (rec,) = records(log_path)
    assert rec["listeners"] == ["tcp:127.0.0.1:1"] and rec["note"] == "ok"
    assert "truncated" not in rec
