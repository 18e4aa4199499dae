"""The connection's fast paths keep the protocol's rules: the read-ahead buffer
frames requests however the bytes arrive, and a tag is free again the moment
its (pooled) reply is out."""

from __future__ import annotations

import time

from p9share.protocol import messages as m

from ..conftest import LiveServer


def _open_file(live: LiveServer, size: int) -> tuple[bytes, object]:
    data = bytes(range(256)) * (size // 256)
    (live.root / "data").write_bytes(data)
    c = live.client(msize=1024 * 1024 + 24)
    c.walk(0, 1, ["data"])
    assert isinstance(c.rpc(m.Tlopen(1, 0)), m.Rlopen)
    return data, c


def test_tag_reused_right_after_a_pooled_reply(live: LiveServer) -> None:
    # Reads over 64 KiB run on the pool; the client reuses the tag as soon as
    # the reply arrives, which must never look like a tag still in flight.
    data, c = _open_file(live, 256 * 1024)
    frame = m.encode_message(m.Tread(1, 0, 128 * 1024), 7)
    for _ in range(300):
        c.send_raw(frame)
        tag, reply = c.recv()
        assert tag == 7 and isinstance(reply, m.Rread)
        assert bytes(reply.data) == data[: 128 * 1024]


def test_many_requests_in_one_send_and_one_split_byte_by_byte(live: LiveServer) -> None:
    c = live.client()
    batch = b"".join(m.encode_message(m.Tgetattr(0, 0x7FF), t) for t in range(1, 41))
    c.send_raw(batch)  # 40 frames arrive together: all answered, in order
    assert [c.recv()[0] for _ in range(40)] == list(range(1, 41))
    frame = m.encode_message(m.Twalk(0, 2, ["x"]), 50) + m.encode_message(m.Tclunk(9), 51)
    for i in range(len(frame)):  # every split point, headers included
        c.send_raw(frame[i : i + 1])
        time.sleep(0.001)
    tag, reply = c.recv()
    assert tag == 50 and isinstance(reply, m.Rlerror)  # no such file
    tag, reply = c.recv()
    assert tag == 51 and isinstance(reply, m.Rlerror)  # no such fid


def test_large_write_larger_than_the_read_ahead_buffer(live: LiveServer) -> None:
    c = live.client(msize=1024 * 1024 + 24)
    c.walk(0, 1, [])
    assert isinstance(c.rpc(m.Tlcreate(1, "big", 0o2, 0o644, 0)), m.Rlcreate)
    payload = bytes(range(251)) * 4000  # ~1 MB, not a multiple of anything
    small = m.encode_message(m.Tgetattr(0, 0x7FF), 3)
    # a small request and the head of a big one arrive together
    c.send_raw(small + m.encode_message(m.Twrite(1, 0, payload), 4))
    replies = dict(c.recv() for _ in range(2))
    assert isinstance(replies[3], m.Rgetattr)
    assert isinstance(replies[4], m.Rwrite) and replies[4].count == len(payload)
    assert (live.root / "big").read_bytes() == payload
