"""The connection's fast paths keep the protocol's rules: the read-ahead buffer
frames requests however the bytes arrive, and a tag is free again the moment
its (pooled) reply is out; only requests that move many bytes are pooled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from p9share.backend.base import DirEntry, OpenFile
from p9share.backend.hostfs import HostBackend
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


def test_a_big_count_on_a_small_file_runs_inline_a_big_read_pooled(
    make_server: Callable[..., LiveServer],
) -> None:
    # The kernel asks for msize bytes from any file: only the bytes actually
    # there to read decide whether a read goes to the worker pool.
    threads: list[tuple[str, str]] = []

    class Recording(HostBackend):
        def read(self, file: OpenFile, offset: int, count: int) -> bytes:
            threads.append(("read", threading.current_thread().name))
            return super().read(file, offset, count)

        def readdir(self, file: OpenFile, cookie: int) -> Iterator[DirEntry]:
            threads.append(("readdir", threading.current_thread().name))
            return super().readdir(file, cookie)

    live = make_server(backend_factory=lambda exp: Recording(exp.path))
    (live.root / "small").write_bytes(b"x" * 1000)
    (live.root / "big").write_bytes(b"y" * 300_000)
    c = live.client(msize=1024 * 1024 + 24)
    for fid, name in ((1, "small"), (2, "big")):
        c.walk(0, fid, [name])
        assert isinstance(c.rpc(m.Tlopen(fid, 0)), m.Rlopen)
    c.walk(0, 3, [])
    assert isinstance(c.rpc(m.Tlopen(3, 0)), m.Rlopen)
    small = c.rpc(m.Tread(1, 0, 1024 * 1024))
    big_tail = c.rpc(m.Tread(2, 250_000, 1024 * 1024))  # 50,000 bytes left: inline
    big = c.rpc(m.Tread(2, 0, 1024 * 1024))
    listing = c.rpc(m.Treaddir(3, 0, 1024 * 1024))  # a 3-entry directory
    assert isinstance(small, m.Rread) and bytes(small.data) == b"x" * 1000
    assert isinstance(big_tail, m.Rread) and len(big_tail.data) == 50_000
    assert isinstance(big, m.Rread) and len(big.data) == 300_000
    assert isinstance(listing, m.Rreaddir)
    where = [(op, name.split()[0].split("_")[0]) for op, name in threads]
    assert where == [
        ("read", "p9share-conn"),
        ("read", "p9share-conn"),
        ("read", "p9share-io"),
        ("readdir", "p9share-conn"),
    ], threads
