"""A short soak: good raw and asyncio clients beside hostile ones, a kill -9
of the server in the middle, and the checks that follow it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _soak() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(240)
def test_short_soak_with_a_kill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    soak = _soak()
    st = soak.Settings(
        duration=24,
        clients=6,
        floods=1,
        slow_readers=1,
        half_senders=1,
        crash_at=0.5,
        quota_bytes=6 << 20,
        quota_files=2000,
        seed=3,
    )
    r = soak.run(st, tmp_path)
    print(soak.summary_line(r))
    assert r["ops"].get("raw", 0) > 0 and r["ops"].get("aio", 0) > 0
    assert r["read_back_mismatches"] == []
    assert r["server"]["internal_errors"] == 0
    assert r["samples"] and all("rss_mib" in s and "threads" in s for s in r["samples"])
    assert r["hostile"].get("half-send connections closed by the server", 0) > 0
    crash = r["crash"]
    acked = crash["acked_writes"]
    assert acked["acknowledged"] > 0
    assert acked["lost"] == [] and acked["corrupt"] == []
    assert acked["on_disk_ok"] + acked["delete_in_flight"] == acked["acknowledged"]
    led = crash["ledger_after_restart"]
    assert led["files_match"] and led["bytes_match"], led
    assert crash["clients_resumed"] == crash["clients"] == 6
    assert r["final_ledger"]["files_match"] and r["final_ledger"]["bytes_match"], r["final_ledger"]
    assert r["final_acked"]["lost"] == [] and r["final_acked"]["corrupt"] == []
    assert sum(r["expected_errors"].values()) > 0  # the quota was reached: EDQUOT, counted apart
