"""The benchmark tools (benchmarks/): stream format, replay against a live
p9share, the in-process hot path, guest output parsing and the result
tables, and one quick guest run (marked vm)."""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from p9share.protocol import messages as m
from p9share.protocol.constants import NOFID, NOTAG

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import hotpath  # noqa: E402
import machine  # noqa: E402
import replay  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402


def _frames() -> list[tuple[int, bytes]]:
    """A small session: attach, create and write a file, read it back, one bad fid."""
    msgs: list[tuple[m.Message, int]] = [
        (m.Tversion(65536, "9P2000.L"), NOTAG),
        (m.Tattach(0, NOFID, "root", "/recorded/export", 0), 1),
        (m.Twalk(0, 1, []), 1),
        (m.Tlcreate(1, "f", os.O_RDWR, 0o644, 0), 1),
        (m.Twrite(1, 0, b"hello replay"), 1),
        (m.Tread(1, 0, 100), 2),
        (m.Tgetattr(77, 0x7FF), 3),  # unknown fid: an error reply, not fatal
        (m.Tclunk(1), 1),
    ]
    # replies seen before each request: the recorded client waited for each one
    return [(i, m.encode_message(msg, tag)) for i, (msg, tag) in enumerate(msgs)]


def test_with_aname_rewrites_only_the_aname() -> None:
    frame = m.encode_message(m.Tattach(5, NOFID, "nobody", "/tmp/x", 65534), 9)
    out = replay.with_aname(frame, "bench")
    tag, msg = m.decode_message(out)
    assert tag == 9
    assert msg == m.Tattach(5, NOFID, "nobody", "bench", 65534)
    assert struct.unpack_from("<I", out)[0] == len(out)


def test_stream_roundtrip_and_limit(tmp_path: Path) -> None:
    conns = [replay.Conn(0, _frames()), replay.Conn(3, _frames()[:2])]
    path = tmp_path / "s.p9r.xz"
    replay.save_stream(path, {"client": "test"}, conns)
    meta, back = replay.load_stream(path)
    assert meta == {"client": "test"}
    assert [(c.number, c.frames) for c in back] == [(c.number, c.frames) for c in conns]
    _, first = replay.load_stream(path, limit=3)
    assert sum(len(c.frames) for c in first) == 3


def test_corrupt_stream_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.p9r.xz"
    with lzma.open(path, "wb") as f:
        f.write(b"{}\nC\x00\x00\x00\x00F" + struct.pack("<II", 0, 3))
    with pytest.raises(ValueError, match="bad frame size 3"):
        replay.load_stream(path)
    with lzma.open(path, "wb") as f:
        f.write(b"{}\nX")
    with pytest.raises(ValueError, match="bad record"):
        replay.load_stream(path)


def test_convert_recorder_jsonl(tmp_path: Path) -> None:
    lines = [
        '{"meta": {"server": "diod"}}',
        '{"conn": 0, "event": "open"}',
        '{"conn": 0, "dir": "c2s", "type": 100, "name": "Tversion", "tag": 65535, "hex": "aa"}',
        '{"conn": 0, "dir": "s2c", "type": 101, "name": "Rversion", "tag": 65535, "hex": "bb"}',
        '{"conn": 0, "dir": "c2s", "type": 104, "name": "Tattach", "tag": 0, "hex": "cc"}',
    ]
    src = tmp_path / "rec.jsonl"
    src.write_text("\n".join(lines) + "\n")
    meta, conns = replay.convert_jsonl(src)
    assert meta == {"server": "diod"}
    assert conns[0].frames == [(0, b"\xaa"), (1, b"\xcc")]


def test_replay_against_live_p9share(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    with replay.server("p9share", "unix", export, tmp_path) as (addr, pid, aname):
        tally = replay.Tally()
        replay.replay_conn(replay._connect(addr), replay.Conn(0, _frames()), aname, tally)
        assert replay.cpu_seconds(pid) > 0
        assert replay.rss_bytes(pid) > 1 << 20
    assert tally.requests == 8
    assert tally.errors == 1 and tally.error_types == {"24": 1}  # the Tgetattr
    assert tally.payload == 2 * len(b"hello replay")  # written, then read back
    assert (export / "f").read_bytes() == b"hello replay"


def test_rss_with_fids_counts_fids() -> None:
    r = replay.rss_with_fids("p9share", nfids=300)
    assert r["fids"] == 300
    assert isinstance(r["rss_with_fids"], int) and r["rss_with_fids"] > 1 << 20


def test_guest_output_parsing() -> None:
    out = (
        "noise\n"
        "RESULT seq-write/none/524288 10.50 12.75 16777216 bytes 524288\n"
        "RESULT files-create 1.00 3.00 500 ops 65536\n"
        "FAIL tree-untar\n"
        "RESULT short 1\n"
    )
    samples, failures = run.parse_output(out)
    assert samples == [
        {"workload": "seq-write/none/524288", "seconds": 2.25, "amount": 16777216,
         "unit": "bytes", "msize": 524288},
        {"workload": "files-create", "seconds": 2.0, "amount": 500, "unit": "ops",
         "msize": 65536},
    ]  # fmt: skip
    assert failures == ["tree-untar"]


def test_tree_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    p1, n1 = run.make_tree(tmp_path / "a", 120)
    p2, n2 = run.make_tree(tmp_path / "b", 120)
    assert p1.read_bytes() == p2.read_bytes() and n1 == n2
    with tarfile.open(fileobj=io.BytesIO(p1.read_bytes())) as tar:
        files = [i for i in tar.getmembers() if i.isfile()]
    assert len(files) == 120 and sum(i.size for i in files) == n1
    assert all(i.name.startswith("tree/") for i in files)


def _guest_doc() -> dict:
    def run_(server: str, r: int, secs: float) -> dict:
        return {
            "server": server, "round": r, "failures": [], "server_cpu_seconds": secs,
            "samples": [
                {"workload": "seq-read/none/524288", "seconds": secs, "amount": 8 << 20,
                 "unit": "bytes", "msize": 524288},
                {"workload": "files-stat", "seconds": secs, "amount": 100, "unit": "ops",
                 "msize": 524288},
            ],
        }  # fmt: skip

    runs = [run_("p9share-tcp", r, s) for r, s in enumerate((1.0, 2.0, 4.0))]
    runs += [run_("diod-tcp", r, s) for r, s in enumerate((2.0, 4.0, 8.0))]
    return {
        "kind": "guest", "started": "2026-01-01T00:00:00", "rounds": 3, "runs": runs,
        "machine": {"cpu_model": "cpu", "cpus": 2}, "sizes": {"seq_mib": 8, "files": 100,
        "tree_files": 10, "par_mib": 1}, "load_before": [1, 1, 1], "load_after": [2, 2, 2],
    }  # fmt: skip


def test_guest_table_median_range_and_ratio() -> None:
    md = report.guest_markdown(_guest_doc())
    row = next(line for line in md.splitlines() if line.startswith("| sequential read"))
    # p9share: times 1, 2, 4 s -> 8, 4, 2 MiB/s; diod half of that: the ranges overlap
    assert row == (
        "| sequential read, cache=none, msize 512K | MiB/s | 4.00 [2.00-8.00] | "
        "2.00 [1.00-4.00] | 2.00x (within noise) |"
    )
    assert (
        "| stat files | ops/s | 50.0 [25.0-100] | 25.0 [12.5-50.0] | 2.00x (within noise) |" in md
    )
    assert (
        "| server CPU seconds per guest run | s | 2.00 [1.00-4.00] | 4.00 [2.00-8.00] | "
        "0.50x (within noise) |"
    ) in md


def test_guest_table_ratio_outside_noise() -> None:
    doc = _guest_doc()
    for r in doc["runs"]:
        if r["server"] == "diod-tcp":
            r["server_cpu_seconds"] *= 10
            for smp in r["samples"]:
                smp["seconds"] *= 10  # 0.4, 0.2, 0.1 MiB/s: below p9share's every round
    md = report.guest_markdown(doc)
    assert "| 4.00 [2.00-8.00] | 0.20 [0.10-0.40] | 20.00x |" in md
    assert "| s | 2.00 [1.00-4.00] | 40.0 [20.0-80.0] | 0.05x |" in md


def test_guest_table_virtiofs_rows_ratios_and_skips() -> None:
    doc = _guest_doc()
    for r in doc["runs"]:
        r["server"] = r["server"].replace("p9share-tcp", "p9share-virtiofs-auto")
        r["server"] = r["server"].replace("diod-tcp", "virtiofsd-auto")
        r["samples"].append({"workload": "seq-write/virtio-fs", "seconds": 0.000512,
                             "amount": 1 << 20, "unit": "bytes", "msize": None})  # fmt: skip
    doc["runs"].append({"server": "p9share-virtiofs-none", "skipped": "unknown transport",
                        "samples": [], "failures": []})  # fmt: skip
    md = report.guest_markdown(doc)
    header = next(line for line in md.splitlines() if line.startswith("| workload"))
    assert header == (
        "| workload | unit | p9share-virtiofs-auto | virtiofsd-auto | "
        "p9share-virtiofs-auto / virtiofsd-auto |"
    )  # no p9share-tcp/diod-tcp column without those runs; the skipped server has none
    assert (
        "| stat files | ops/s | 50.0 [25.0-100] | 25.0 [12.5-50.0] | 2.00x (within noise) |" in md
    )
    # a microsecond interval is a rate, not a 10 ms floor: 1 MiB / 512 us
    assert (
        "| sequential write, virtio-fs | MiB/s | 1953 [1953-1953] | 1953 [1953-1953] | "
        "1.00x (within noise) |"
    ) in md
    assert "- p9share-virtiofs-none: unknown transport" in md


_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_tree_cpu_seconds_counts_forked_children() -> None:
    # a server that forks (virtiofsd's sandbox does): a reaped child's time is in
    # the parent's cutime, a live one's in its own /proc entry; both are counted
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n" + "".join(f"    {ln}\n" for ln in _BURN.splitlines())
        + "    os._exit(0)\n"
        "os.wait()\n"
        "if os.fork() == 0:\n" + "".join(f"    {ln}\n" for ln in _BURN.splitlines())
        + "    print('burnt', flush=True); time.sleep(60); os._exit(0)\n"
        "time.sleep(60)\n"
    )  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"burnt\n"
        own = machine.cpu_seconds(proc.pid)
        total = machine.tree_cpu_seconds(proc.pid)
        assert total - own >= 0.55, (own, total)
        proc.kill()
        assert machine.wait_exited(proc.pid, timeout=10)
        assert machine.tree_cpu_seconds(proc.pid) >= 0.25  # the reaped one, still readable
    finally:
        proc.kill()
        proc.wait()


def test_wait_exited_times_out_on_a_running_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert not machine.wait_exited(proc.pid, timeout=0.2)
        assert time.monotonic() - t0 >= 0.2
    finally:
        proc.kill()
        proc.wait()


def test_replay_table() -> None:
    runs = [
        {"server": s, "transport": "unix", "requests": 10000, "errors": 2, "error_types": {},
         "payload_bytes": 1 << 30, "wall_seconds": w, "cpu_seconds": c, "cpu_per_10k": c,
         "wall_per_10k": w, "cpu_per_gib": c, "round": 0}
        for s, w, c in (("p9share", 3.0, 1.5), ("diod", 2.0, 1.0))
    ]  # fmt: skip
    doc = {
        "kind": "replay", "started": "2026-01-01T00:00:00", "rounds": 1, "runs": runs,
        "machine": {}, "stream": {"requests": 10000}, "rss": [
            {"server": "p9share", "fids": 10000, "rss_idle": 20 << 20, "rss_with_fids": 40 << 20}],
    }  # fmt: skip
    md = report.replay_markdown(doc)
    assert (
        "| p9share | unix | 3.00 (3.00) | 3000 | 1.50 (1.50) | 1.50x (1.50-1.50) | 1.50 | 2 |" in md
    )
    assert "| diod | unix | 2.00 (2.00) | 2000 | 1.00 (1.00) | 1.00x (1.00-1.00) | 1.00 | 2 |" in md
    assert "| p9share | 20.0 MiB | 40.0 MiB |" in md


def test_replay_ratio_is_the_median_of_paired_rounds() -> None:
    # Each round's p9share run is compared with that round's diod run: the
    # host's state swings both; the ratio of the medians would mix states.
    cpu = {  # round: (p9share, diod)
        0: (3.0, 1.0), 1: (2.0, 2.0), 2: (4.0, 2.0),
    }  # fmt: skip
    runs = [
        {"server": s, "transport": "tcp", "requests": 10000, "errors": 0, "error_types": {},
         "payload_bytes": 0, "wall_seconds": 1.0, "cpu_seconds": c, "cpu_per_10k": c,
         "wall_per_10k": 1.0, "cpu_per_gib": None, "round": r}
        for r, pair in cpu.items() for s, c in zip(("p9share", "diod"), pair, strict=True)
    ]  # fmt: skip
    assert sorted(report.paired_ratios({"runs": runs}, "p9share", "tcp")) == [1.0, 2.0, 3.0]
    doc = {"kind": "replay", "started": "2026-01-01T00:00:00", "rounds": 3, "runs": runs,
           "machine": {}, "stream": {"requests": 10000}, "rss": []}  # fmt: skip
    md = report.replay_markdown(doc)
    # medians: p9share 3.0, diod 2.0 (1.50x); paired: 3.0, 1.0, 2.0 -> 2.00x
    assert "| p9share | tcp | 1.00 (1.00) | 1000 | 3.00 (2.00) | 2.00x (1.00-3.00) |" in md


def test_report_rejects_other_json(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text('{"kind": "other"}')
    assert report.main([str(f), "--no-latest"]) == 2


def test_hotpath_prints_cpu_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    # os.times() counts in 10 ms ticks: 2,000 requests (about 20 ms of user
    # time) could read as 0 ticks. 20,000 requests take 20 or more ticks, so a
    # zero can only mean the figure is not measured.
    assert hotpath.main(["--limit", "20000", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^round 1: 20000 requests, ", out, re.M), out
    found = re.search(r"best: ([0-9.]+) us user, ([0-9.]+) us total per request", out)
    assert found, out
    user, total = float(found[1]), float(found[2])
    assert 0 < user <= total


@pytest.mark.vm
def test_guest_benchmark_quick_run(tmp_path: Path) -> None:
    # The benchmark command itself, end to end, on the smallest sizes: a
    # guest boots, runs every workload against p9share and the JSON records them.
    # Over 9P and over virtio-fs (virtiofsd; p9share's row is skipped, saying
    # why, while the server refuses a vhost-user listener).
    rc = run.main(["--quick", "--servers", "p9share-tcp,virtiofsd-auto,p9share-virtiofs-auto",
                   "--files", "10", "--tree-files", "10", "--out", str(tmp_path), "--no-report"])  # fmt: skip
    assert rc == 0
    (result,) = tmp_path.glob("guest-quick-*.json")
    doc = json.loads(result.read_text())
    runs = {r["server"]: r for r in doc["runs"]}
    for name, seq in (("p9share-tcp", "seq-write/none/524288"),
                      ("virtiofsd-auto", "seq-write/virtio-fs")):  # fmt: skip
        one = runs[name]
        assert one["server_cpu_seconds"] > 0, one
        assert not one["failures"], one["failures"]
        done = {s["workload"] for s in one["samples"]}
        assert seq in done, done
        assert {"files-create", "files-stat", "files-unlink", "tree-untar", "tree-find",
                "tree-du", "tree-read", "tree-rm", "par-read"} <= done  # fmt: skip
        assert all(s["seconds"] > 0 for s in one["samples"])
    p9vu = runs["p9share-virtiofs-auto"]
    if p9vu.get("skipped"):
        assert "vhost-user" in p9vu["skipped"] or "--cache" in p9vu["skipped"], p9vu
    else:
        assert not p9vu["failures"] and p9vu["server_cpu_seconds"] > 0, p9vu


def test_guest_table_reports_the_load_of_each_run() -> None:
    doc = _guest_doc()
    assert "at the start of each run" not in report.guest_markdown(doc)  # older results
    for i, r in enumerate(doc["runs"]):
        r["load_before"] = [1.5 + i, 1.0, 1.0]
    assert "1-minute load at the start of each run 1.50-6.50." in report.guest_markdown(doc)
