"""The sans-IO client connection: framing byte by byte, tags, flush bookkeeping."""

from __future__ import annotations

import pytest

from p9share.protocol import messages as m
from p9share.protocol.client import MAX_TAGS, ClientConnection, Reply, StreamError, TagsExhausted


def test_replies_split_anywhere_are_reassembled() -> None:
    conn = ClientConnection(8192)
    data = m.Rread(b"abc").encode(5) + m.Rclunk().encode(6)
    got = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        while (ev := conn.next_reply()) is not None:
            got.append(ev)
    assert [(r.tag, type(r.msg)) for r in got if isinstance(r, Reply)] == [
        (5, m.Rread), (6, m.Rclunk)]  # fmt: skip


def test_oversized_frame_is_a_stream_error_and_stops_input() -> None:
    conn = ClientConnection(8192)
    conn.receive_data((9000).to_bytes(4, "little") + b"\x00" * 20)
    ev = conn.next_reply()
    assert isinstance(ev, StreamError) and "9000" in ev.reason
    conn.receive_data(m.Rclunk().encode(1))
    assert conn.next_reply() is None


def test_request_type_from_server_fails_only_that_tag() -> None:
    conn = ClientConnection(8192)
    conn.receive_data(m.Tclunk(1).encode(3))
    ev = conn.next_reply()
    assert isinstance(ev, Reply) and ev.tag == 3 and ev.msg is None and "request" in ev.error


def test_tags_lowest_free_first_and_flush_holds_both() -> None:
    conn = ClientConnection(8192)
    a, b, c = conn.alloc_tag(), conn.alloc_tag(), conn.alloc_tag()
    assert (a, b, c) == (0, 1, 2)
    conn.release_tag(b)
    assert conn.alloc_tag() == 1
    f = conn.start_flush(a)
    conn.release_tag(a)  # ignored: a flushed tag is freed only by its Rflush
    assert {a, f} <= conn.tags_in_use
    assert conn.finish_flush(f) == a
    assert a not in conn.tags_in_use and f not in conn.tags_in_use


def test_tags_run_out_clearly() -> None:
    conn = ClientConnection(8192)
    for _ in range(MAX_TAGS):
        conn.alloc_tag()
    with pytest.raises(TagsExhausted):
        conn.alloc_tag()


def test_version_checks() -> None:
    conn = ClientConnection(65536)
    with pytest.raises(ConnectionError, match="does not speak"):
        conn.accept_version(m.Rversion(8192, "9P2000.u"))
    with pytest.raises(ConnectionError, match="msize"):
        conn.accept_version(m.Rversion(1 << 20, "9P2000.L"))  # larger than offered
    conn.accept_version(m.Rversion(8192, "9P2000.L"))
    assert conn.msize == 8192
    with pytest.raises(ValueError, match="exceeds msize"):
        conn.encode(1, m.Twrite(0, 0, b"x" * 9000))
