"""The fuzzer: its generator makes valid sessions, its checks catch what they
claim to, and a short fixed-seed run against a live server finds nothing."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from p9share.fuzz.gen import FidState, Frame, Options, SessionGen, known_bug
from p9share.fuzz.harness import (
    EXPORTS,
    IDMAP_OF,
    Fuzzer,
    Hang,
    drain_to_eof,
    parse_tracebacks,
    recv_frame,
    summary_line,
)
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect


@pytest.mark.parametrize("dialect", list(Dialect))
def test_unmutated_sessions_are_valid_9p(dialect: Dialect) -> None:
    """With no mutation, every frame decodes with the project's codec as the
    message it was built from (so the fuzzer starts from valid sessions)."""
    types: set[str] = set()
    for seed in range(30):
        gen = SessionGen(
            random.Random(seed), dialect, "pass", Options(mutate_rate=0.0, fatal_rate=0.0)
        )
        while (fr := gen.next_frame()) is not None:
            tag, msg = m.decode_message(fr.data, dialect)
            assert tag == fr.tag and fr.msg is not None and not fr.fatal
            assert m.encode_message(msg, tag, dialect) == fr.data
            types.add(type(msg).__name__)
            if isinstance(msg, m.Tattach) and not gen.fids:
                gen.fids[msg.fid] = FidState(True)  # as if the server had answered
    common = {"Tversion", "Tattach", "Twalk", "Tread", "Twrite", "Tclunk", "Tremove"}
    assert common <= types
    if dialect is Dialect.P9P2000L:
        assert {
            "Tlcreate",
            "Tlopen",
            "Txattrcreate",
            "Txattrwalk",
            "Tlock",
            "Trenameat",
            "Tmknod",
        } <= types
    else:
        assert {"Tcreate", "Topen", "Tstat", "Twstat"} <= types


def test_mutations_cover_values_framing_and_types() -> None:
    seen: list[Frame] = []
    gen = SessionGen(
        random.Random(7),
        Dialect.P9P2000L,
        "pass",
        Options(mutate_rate=1.0, fatal_rate=1.0, ops_min=400, ops_max=400),
    )
    gen.fids[0] = FidState(True)
    gen._version_sent = gen._started = True
    while (fr := gen.next_frame()) is not None:
        seen.append(fr)
    muts = " ".join(f.mutation for f in seen)
    for word in (
        "=0x80000000",
        "=0xffffffff",
        "type=",
        "truncated",
        "trailing junk",
        "lies",
        "=bad",
    ):
        assert word in muts, word
    assert seen[-1].fatal  # the session ended with a broken frame


def test_an_msize_changed_by_a_mangled_frame_is_followed() -> None:
    """A byte mutation can turn a frame into a Tversion the server accepts:
    the session must follow the new msize (else it sends frames the server
    rightly refuses and reports the close as a finding)."""
    gen = SessionGen(random.Random(1), Dialect.P9P2000L, "pass")
    gen.fids[0] = FidState(True)
    raw = Frame(b"\x13\x00\x00\x00\x64\x26\x00" + bytes(12), 38, None, "bytes flipped")
    gen.on_reply(raw, m.Rversion(5656, "9P2000"))
    assert gen.msize == 5656 and gen.dialect is Dialect.P9P2000 and not gen.fids


def test_known_bug_predicate() -> None:
    assert known_bug(m.Tmknod(0, "n", 0o20600, 1 << 31, 0, 0))
    assert known_bug(m.Tmknod(0, "n", 0o20600, 0, 0xFFFFFFFF, 0))
    assert not known_bug(m.Tmknod(0, "n", 0o20600, (1 << 31) - 1, 0, 0))
    assert known_bug(m.Tcreate(0, "n", 0x00800000, 2, "c 2147483648 0"))
    assert not known_bug(m.Tcreate(0, "n", 0x00800000, 2, "c 1 3"))
    assert not known_bug(m.Tcreate(0, "n", 0x00800000, 2, "c 4294967296 0"))  # refused: EINVAL


def test_skip_known_never_sends_them() -> None:
    opts = Options(mutate_rate=1.0, skip_known=True, ops_min=300, ops_max=300)
    for dialect in (Dialect.P9P2000L, Dialect.P9P2000U):
        for seed in range(5):
            gen = SessionGen(random.Random(seed), dialect, "mapped", opts)
            while (fr := gen.next_frame()) is not None:
                assert not fr.known and not known_bug(fr.msg)


def test_tracebacks_are_grouped_by_where_they_were_raised() -> None:
    log = (
        "2026-12-04 17:11:50,490 p9share.server ERROR x: internal error handling Tmknod(...)\n"
        "Traceback (most recent call last):\n"
        '  File "/a/src/p9share/server/session.py", line 137, in handle\n'
        "    return handler(msg)\n"
        '  File "/a/src/p9share/server/session.py", line 677, in mknod\n'
        "    rdev = os.makedev(msg.major, msg.minor)\n"
        "OverflowError: signed integer is greater than maximum\n"
        "2026-12-04 17:11:51 p9share.server WARNING y: refused\n"
    )
    ((sig, text),) = parse_tracebacks(log)
    assert sig == "OverflowError at p9share/server/session.py:677 in mknod"
    assert "makedev" in text
    assert parse_tracebacks("2026 p9share.server WARNING closing: size field 0\n") == []


def test_a_silent_server_is_a_hang() -> None:
    a, b = socket.socketpair()
    try:
        a.settimeout(0.2)
        with pytest.raises(Hang):
            recv_frame(a)
        b.sendall(b"\x20\x00\x00\x00\x65\xff")  # a frame that never completes
        with pytest.raises(Hang):
            recv_frame(a)
        with pytest.raises(Hang):
            drain_to_eof(a)  # a broken connection the peer keeps open
        b.close()
        drain_to_eof(a)
    finally:
        a.close()


def test_short_fuzz_run_against_a_live_server(tmp_path: Path) -> None:
    """A fixed seed, every dialect and id-map mode: no internal error (the
    known bugs' device numbers included: the operations layer answers them
    EINVAL), no hang, no crash, no malformed reply, the canary always served."""
    fz = Fuzzer(tmp_path, seed=11, opts=Options(), deadline=10.0, canary_every=250)
    fz.run(max_messages=4000, max_seconds=60)
    rep = fz.report()
    print(summary_line(rep))
    assert rep["messages"] >= 4000
    assert set(rep["by_dialect"]) == {d.value for d in Dialect}
    assert {IDMAP_OF[e] for e in rep["by_export"]} == {"passthrough", "squash", "range", "mapped"}
    assert set(rep["by_export"]) == set(EXPORTS)
    assert rep["mutated"] > 500 and rep["fatal_frames"] > 0 and rep["bursts"] > 0
    assert rep["findings"] == []
    assert rep["internal_errors"] == rep["hangs"] == rep["crashes"] == 0
    assert rep["bad_replies"] == rep["unexpected_closes"] == 0
    assert rep["canary_checks"] >= 10 and rep["canary_failures"] == 0


def _planted(tmp_path: Path, body: str) -> dict[str, str]:
    """A sitecustomize for the server process that plants a bug in the host
    backend's statfs (reached only by 9P2000.L Tstatfs)."""
    d = tmp_path / "plant"
    d.mkdir()
    (d / "sitecustomize.py").write_text(
        "import time\n"
        "from p9share.backend.hostfs import HostBackend\n"
        f"def statfs(self, node):\n    {body}\n"
        "HostBackend.statfs = statfs\n"
    )
    return {"PYTHONPATH": str(d)}


def test_a_planted_internal_error_is_caught_and_shrunk(tmp_path: Path) -> None:
    """The detection is live: an exception in a handler is counted, grouped
    and shrunk to the three messages that raise it."""
    env = _planted(tmp_path, "raise ValueError('planted')")
    fz = Fuzzer(tmp_path / "w", seed=4, dialects=(Dialect.P9P2000L,), exports=("pass",),
                opts=Options(skip_known=True), server_env=env)  # fmt: skip
    fz.run(max_messages=1500, max_seconds=60)
    rep = fz.report()
    assert rep["internal_errors"] > 0 and rep["internal_errors_known"] == 0
    (f,) = [f for f in rep["findings"] if f["kind"] == "internal-error"]
    assert f["signature"].startswith("ValueError at p9share/")
    assert f["reproduced"] is True
    repro = f["reproducer"]  # shrunk from a whole session: the walks its fid needs
    assert len(repro) <= 5, repro
    assert "Tversion" in repro[0] and "Tattach" in repro[1] and "Tstatfs" in repro[-1]


def test_a_planted_hang_is_caught_and_others_are_still_served(tmp_path: Path) -> None:
    env = _planted(tmp_path, "time.sleep(3); raise OSError(5, 'late')")
    fz = Fuzzer(tmp_path / "w", seed=4, dialects=(Dialect.P9P2000L,), exports=("pass",),
                opts=Options(skip_known=True), deadline=1.0, server_env=env)  # fmt: skip
    fz.run(max_messages=2000, max_seconds=90)
    rep = fz.report()
    assert rep["hangs"] > 0
    assert any(f["kind"] == "hang" and "Tstatfs" in f["reproducer"][-1] for f in rep["findings"])
    assert rep["canary_failures"] == 0 and rep["canary_checks"] > 0
