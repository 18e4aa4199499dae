"""Limits: the token bucket on a fake clock, and live servers on loopback
where one client hits a limit while another connection or client is served
unchanged."""

from __future__ import annotations

import errno
import io
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from p9share.audit import AuditLog
from p9share.client.raw import RawClient, ServerError
from p9share.protocol import messages as m
from p9share.protocol.constants import NOFID, MsgType
from p9share.server.limits import ClientMeter, LimitReporter, Limits, TokenBucket

from ..conftest import LiveServer
from .test_robustness import closed, still_serves


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------ token bucket --
def test_bucket_burst_then_delay() -> None:
    clock = FakeClock()
    b = TokenBucket(10, 5, clock)
    assert [b.take() for _ in range(5)] == [0.0] * 5
    assert b.take() == pytest.approx(0.1)
    assert b.take() == pytest.approx(0.2)  # debt accumulates


def test_bucket_refills_at_rate_up_to_burst() -> None:
    clock = FakeClock()
    b = TokenBucket(8, 4, clock)  # binary fractions: exact arithmetic
    for _ in range(4):
        b.take()
    clock.now += 0.25  # 2 tokens back
    assert [b.take() for _ in range(2)] == [0.0] * 2
    assert b.take() == pytest.approx(0.125)
    clock.now += 3600  # idle for long: still only `burst` saved up
    assert b.full()
    assert [b.take() for _ in range(4)] == [0.0] * 4
    assert b.take() == pytest.approx(0.125)


def test_bucket_large_take_waits_for_what_it_lacks() -> None:
    clock = FakeClock()
    b = TokenBucket(1000, 100, clock)
    assert b.take(1_000_100) == pytest.approx(1000.0)
    assert b.take(1) == pytest.approx(1000.001)  # queued behind it
    clock.now += 1000.001
    assert b.take(0) == 0.0
    assert not b.full()


def test_bucket_unlimited_and_default_burst_and_bad_values() -> None:
    clock = FakeClock()
    assert TokenBucket(0, 0, clock).take(10**12) == 0.0
    b = TokenBucket(4, 0, clock)  # burst 0: one second's worth
    assert b.burst == 4
    assert [b.take() for _ in range(4)] == [0.0] * 4 and b.take() > 0
    with pytest.raises(ValueError):
        TokenBucket(-1, 0)
    with pytest.raises(ValueError):
        TokenBucket(1, float("inf"))
    with pytest.raises(ValueError):
        b.take(-1)


def test_bucket_is_thread_safe() -> None:
    clock = FakeClock()  # frozen: no refill, so every take must be counted
    b = TokenBucket(1, 10, clock)

    def spend() -> None:
        for _ in range(2000):
            b.take()

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.take() == pytest.approx(8000 - 10 + 1)


# ------------------------------------------------------- limits and meters --
def test_limits_defaults_leave_a_normal_guest_alone() -> None:
    lim = Limits()
    assert lim.max_fids >= 100_000  # Linux holds a fid per cached dentry
    assert lim.idle_timeout == 0 and lim.ops_per_second == 0 and lim.bytes_per_second == 0
    assert lim.max_msize >= 1024 * 1024


@pytest.mark.parametrize(
    "kw",
    [
        {"max_fids": -1},
        {"max_inflight": 0},
        {"max_msize": 1000},
        {"max_connections": 1.5},
        {"max_fids": True},
        {"ops_per_second": "10"},
        {"bytes_burst": float("nan")},
        {"header_timeout": -0.1},
    ],
)
def test_limits_reject_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        Limits(**kw)


def test_limits_from_mapping() -> None:
    base = Limits(max_fids=100)
    lim = Limits.from_mapping({"ops_per_second": 50, "ops_burst": 5}, base)
    assert (lim.max_fids, lim.ops_per_second, lim.ops_burst) == (100, 50, 5)
    with pytest.raises(ValueError, match="unknown limit 'max_fid'"):
        Limits.from_mapping({"max_fid": 1})
    with pytest.raises(ValueError, match="max_inflight"):
        Limits.from_mapping({"max_inflight": -3})


def test_meter_counts_connections_and_names_the_limit() -> None:
    clock = FakeClock()
    meter = ClientMeter("c", Limits(max_connections=2, ops_per_second=10, ops_burst=1,
                                    bytes_per_second=100, bytes_burst=100), clock)  # fmt: skip
    assert meter.try_connect() and meter.try_connect() and not meter.try_connect()
    meter.disconnect()
    assert meter.try_connect()
    assert meter.charge(10) == (0.0, "")
    delay, name = meter.charge(0)
    assert name == "ops_per_second" and delay == pytest.approx(0.1)
    delay, name = meter.charge(1090)
    assert name == "bytes_per_second" and delay == pytest.approx(10.0)
    meter.disconnect()
    meter.disconnect()
    assert not meter.idle()  # still in debt
    clock.now += 11
    assert meter.idle()


def test_reporter_records_one_per_interval() -> None:
    out = io.StringIO()
    audit = AuditLog(out)
    clock = FakeClock()
    rep = LimitReporter(audit, "peer", "client", interval=10, clock=clock)
    for _ in range(5):
        rep.hit("max_fids", "EMFILE")
    rep.hit("max_inflight", "paused reading")
    clock.now += 10
    rep.hit("max_fids", "EMFILE")
    audit.close()
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["limit"], r.get("suppressed_since")) for r in recs] == [
        ("max_fids", None),
        ("max_inflight", None),
        ("max_fids", 4),
    ]
    assert all(r["event"] == "limit" and r["client"] == "client" for r in recs)


# ------------------------------------------------------------ live server --
class Audited:
    """An AuditLog into memory and a way to read its records."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.log = AuditLog(self.out)

    def records(self, event: str, **match: object) -> list[dict[str, Any]]:
        self.log.close()  # writes everything queued
        recs = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [
            r for r in recs if r["event"] == event and all(r.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
def audited() -> Iterator[Audited]:
    a = Audited()
    yield a
    a.log.close()


def serve(
    make_server: Callable[..., LiveServer],
    audited: Audited,
    unix_limits: Limits | None = None,
    **limits: Any,
) -> LiveServer:
    """A live server with these limits; with unix_limits, the clients on the
    Unix socket (keyed by uid) get those instead, through the limits_for hook."""
    live: LiveServer = make_server(limits=Limits(**limits), audit=audited.log)
    if unix_limits is not None:
        tcp_limits = live.server.limits
        live.server.limits_for = (  # type: ignore[method-assign]
            lambda client: unix_limits if client.startswith("uid:") else tcp_limits
        )
    return live


def test_fid_limit_gives_emfile_and_clunk_frees(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, max_fids=10)
    other = live.client()
    c = live.client()  # fid 0
    for fid in range(1, 10):
        c.walk(0, fid, [])
    for msg in (m.Twalk(0, 10, []), m.Tattach(10, NOFID, "root", "", 0), m.Txattrwalk(0, 10, "")):
        with pytest.raises(ServerError) as ei:
            c.rpc(msg)
        assert ei.value.errno == errno.EMFILE
    # what does not create a fid keeps working, and so does the other connection
    assert isinstance(c.rpc(m.Tgetattr(5, 0x7FF)), m.Rgetattr)
    c.walk(3, 3, [])  # a walk onto itself replaces, it does not add
    for fid in range(1, 9):
        other.walk(0, fid, [])
    assert isinstance(other.rpc(m.Tgetattr(8, 0x7FF)), m.Rgetattr)
    c.rpc(m.Tclunk(9))
    c.walk(0, 10, [])
    with pytest.raises(ServerError) as ei:
        c.walk(0, 11, [])
    assert ei.value.errno == errno.EMFILE
    still_serves(live)
    recs = audited.records("limit", limit="max_fids")
    assert len(recs) == 1 and recs[0]["action"] == "EMFILE"


def test_msize_is_capped_by_the_limit(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, max_msize=8192)
    c = live.client(msize=1024 * 1024)
    assert c.msize == 8192
    c.send_raw(struct.pack("<IBH", 9000, MsgType.TWRITE, 1) + b"\0" * 20)
    assert closed(c)


@pytest.mark.parametrize("cut", ["header", "body"])
def test_half_sent_message_is_closed_after_header_timeout(
    make_server: Callable[..., LiveServer], audited: Audited, cut: str
) -> None:
    live = serve(make_server, audited, header_timeout=0.3)
    other = live.client()
    c = live.client()
    frame = m.Twalk(0, 1, ["a"]).encode(5)
    start = time.monotonic()
    c.send_raw(frame[:2] if cut == "header" else frame[:-2])
    time.sleep(0.1)
    assert isinstance(other.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)  # not held up
    assert closed(c)
    assert 0.25 <= time.monotonic() - start < 4
    assert isinstance(other.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    still_serves(live)
    recs = audited.records("limit", limit="header_timeout")
    assert len(recs) == 1 and recs[0]["action"] == "closed"


def test_whole_messages_sent_slowly_in_pieces_are_fine(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, header_timeout=0.5)
    c = live.client()
    frame = m.Tgetattr(0, 0x7FF).encode(7)
    for _ in range(3):  # each message completes in time; together they take longer
        for i in range(0, len(frame), 5):
            c.send_raw(frame[i : i + 5])
            time.sleep(0.03)
        tag, r = c.recv()
        assert tag == 7 and isinstance(r, m.Rgetattr)


def test_idle_timeout_closes_idle_not_busy(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, idle_timeout=0.3)
    idle = live.client()
    busy = live.client()
    start = time.monotonic()
    while time.monotonic() - start < 0.9:
        assert isinstance(busy.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
        time.sleep(0.1)
    assert closed(idle)
    assert isinstance(busy.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    recs = audited.records("limit", limit="idle_timeout")
    assert len(recs) == 1 and recs[0]["action"] == "closed"


def test_max_connections_refuses_the_extra_one(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, max_connections=2)
    a, b = live.client(), live.client()
    for _ in range(3):  # refused at once, each time; one audit record
        extra = RawClient.connect(live.tcp, timeout=5)
        assert closed(extra)
        extra.close()
    # another client (the Unix socket peer is keyed by uid) is not affected
    with live.client(live.unix) as u:
        assert isinstance(u.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    assert isinstance(a.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    b.close()
    deadline = time.monotonic() + 3
    while live.server.connection_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with live.client() as again:  # a freed slot can be used again
        assert isinstance(again.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    refused = audited.records("refused")
    assert len(refused) == 1 and refused[0]["limit"] == "max_connections"
    assert refused[0]["client"] == f"unidentified:{live.tcp}"
    assert len(audited.records("connect", client=f"unidentified:{live.tcp}")) == 3


def rpcs_timed(c: RawClient, n: int, msg: m.Message) -> float:
    start = time.monotonic()
    for _ in range(n):
        c.rpc(msg)
    return time.monotonic() - start


def test_ops_per_second_throttles_by_delay_not_others(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, Limits(), ops_per_second=50, ops_burst=5)
    throttled = live.client()  # version and attach: Tversion is free, Tattach costs 1
    other = live.client(live.unix)  # another client: its own buckets
    took: list[float] = []
    t = threading.Thread(target=lambda: took.append(rpcs_timed(throttled, 55, m.Tgetattr(0, 1))))
    t.start()
    time.sleep(0.2)  # the throttled client is in debt now
    assert rpcs_timed(other, 20, m.Tgetattr(0, 1)) < 0.5
    t.join(10)
    assert took and took[0] >= 0.9
    recs = audited.records("limit", limit="ops_per_second")
    assert len(recs) == 1 and recs[0]["action"] == "delayed"


def test_bytes_per_second_throttles_reads_and_writes(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, Limits(), bytes_per_second=200_000, bytes_burst=20_000)
    (live.root / "f").write_bytes(b"x" * 20_000)
    c = live.client()
    other = live.client(live.unix)
    for cl in (c, other):
        cl.walk(0, 1, ["f"])
        cl.rpc(m.Tlopen(1, 2))  # O_RDWR
    took: list[float] = []

    def transfer() -> None:
        start = time.monotonic()
        for _ in range(5):
            c.rpc(m.Twrite(1, 0, b"y" * 20_000))
            c.rpc(m.Tread(1, 0, 20_000))
        took.append(time.monotonic() - start)

    t = threading.Thread(target=transfer)
    t.start()
    time.sleep(0.2)
    start = time.monotonic()
    for _ in range(10):
        r = other.rpc(m.Tread(1, 0, 10_000))
        assert isinstance(r, m.Rread) and len(r.data) == 10_000
    assert time.monotonic() - start < 0.5
    t.join(10)
    assert took and took[0] >= 0.8  # 200,000 bytes, 20,000 free: 0.9 s
    assert len(audited.records("limit", limit="bytes_per_second")) == 1


def test_tflush_cancels_a_delayed_request(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, ops_per_second=10, ops_burst=1)
    c = live.client()
    for tag in range(10, 18):  # pipelined: the last is due ~0.7 s from now
        c.send(m.Tgetattr(0, 1), tag=tag)
    start = time.monotonic()
    c.send(m.Tflush(17), tag=20)
    replies: list[int] = []
    while 20 not in replies:
        replies.append(c.recv()[0])
    assert time.monotonic() - start < 0.5  # the reader was not held up
    c.send(m.Tgetattr(0, 1), tag=21)
    while 21 not in replies:
        replies.append(c.recv()[0])
    assert sorted(replies) == [*range(10, 17), 20, 21]  # no reply for the flushed one
    assert replies.index(21) > replies.index(16)  # delayed ones keep their order


def test_inflight_limit_pauses_reading_and_answers_all(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, ops_per_second=40, ops_burst=1, max_inflight=2)
    c = live.client()
    for tag in range(1, 11):
        c.send(m.Tgetattr(0, 1), tag=tag)
    got = [c.recv() for _ in range(10)]
    assert [tag for tag, _ in got] == list(range(1, 11))
    assert all(isinstance(r, m.Rgetattr) for _, r in got)
    recs = audited.records("limit", limit="max_inflight")
    assert len(recs) == 1 and recs[0]["action"] == "paused reading"


def test_client_leaving_with_throttled_requests_is_cleaned_up(
    make_server: Callable[..., LiveServer], audited: Audited
) -> None:
    live = serve(make_server, audited, bytes_per_second=1000, bytes_burst=1000, max_inflight=2)
    c = live.client()
    c.walk(0, 1, [])
    c.rpc(m.Tlopen(1, 0))
    for tag in range(1, 5):  # hours of debt; the reader waits for room
        c.send(m.Treaddir(1, 0, 60_000), tag=tag)
    time.sleep(0.1)
    c.close()
    deadline = time.monotonic() + 4
    while live.server.connection_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.server.connection_count() == 0
    assert len(audited.records("disconnect", client=f"unidentified:{live.tcp}")) == 1
