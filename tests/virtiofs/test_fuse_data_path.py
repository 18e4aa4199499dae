"""READ and WRITE in place: file data straight between the host file and the
chains' buffers (guest memory), through the whole device with the fake front
end (real socket, memfd guest memory, rings) against a real temporary
directory. Byte-exact data over buffers split every which way, and every
policy rule of the operations layer on this path."""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.backend.hostfs import HostBackend
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.policy.peer import Peer
from p9share.policy.quota import QuotaLedger
from p9share.virtiofs import fuse as f
from p9share.virtiofs.device import VhostUserListener
from p9share.virtiofs.service import FuseRequestHandler
from p9share.virtiofs.session import MAX_WRITE, FuseSession

from .frontend import FakeQueue, Frontend

UID, GID = os.getuid(), os.getgid()
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
PEER = Peer("vm1", "vhost-user")
PATTERN = random.Random(12).randbytes(3 * MAX_WRITE)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """data cut into pieces of sizes (the last piece takes the rest)."""
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return [p for p in out if p]


class Device:
    """One export served by a vhost-user-fs device, mounted by the fake guest."""

    def __init__(
        self,
        tmp: Path,
        *,
        export: Export | None = None,
        rights: Rights | None = None,
        quotas: bool = False,
    ) -> None:
        root = tmp / "export"
        root.mkdir(exist_ok=True)
        self.root = root
        exp = export or Export("share", str(root))
        clients = {"vm1": Client("vm1", (Match(listener="vm1"),), {exp.name: rights or Rights()})}
        policy = Policy({exp.name: exp}, clients)
        self.backend = HostBackend(exp.path)
        self.ledger = QuotaLedger(exp, *self.backend.usage()) if quotas else None
        ledgers = {exp.name: self.ledger} if self.ledger is not None else None
        self.seen: list[tuple[str, int, int, int]] = []  # what the metrics observer is told

        def observe(op: str, err: int, seconds: float, nread: int, nwritten: int) -> None:
            self.seen.append((op, err, nread, nwritten))

        def handler() -> FuseRequestHandler:
            session = FuseSession(policy, {exp.name: self.backend}, exp.name, PEER,
                                  quotas=ledgers, cache="none")  # fmt: skip
            return FuseRequestHandler(session, observe)

        self.listener = VhostUserListener(str(tmp / "fs.sock"), handler)
        self.listener.start()
        self.fe = Frontend(self.listener.path, mem_size=16 << 20, queue_size=512)
        self.fe.start()
        self.q: FakeQueue = self.fe.queues[1]
        self.unique = 0
        r = self.call(f.Init(0, 0, UID, GID, 1, 7, 38, 1 << 20, f.MAX_PAGES))
        assert r.error == 0

    def close(self) -> None:
        self.fe.close()
        self.listener.stop()
        self.backend.shutdown()

    # requests
    def next_unique(self) -> int:
        self.unique += 2
        return self.unique

    def raw(self, request: bytes, out: list[int] | None = None, room: list[int] | None = None,
            ) -> tuple[bytes, int]:  # fmt: skip
        """One chain: request split at `out`, writable buffers of `room`;
        (the bytes the device wrote, the used length it reported)."""
        head = self.q.add(
            split(request, out or []), [4096] if room is None else room, indirect=True
        )
        used: dict[int, int] = {}
        while head not in used:
            assert self.q.wait_call(10)
            used.update(self.q.take_used())
        return self.q.reply(head, used[head]), used[head]

    def call(self, req: f.Request, room: int = 8192) -> f.Reply:
        data, _ = self.raw(f.encode_request(req), room=[room])
        return f.decode_reply(data)

    def open(self, name: str, flags: int, uid: int = UID) -> tuple[int, int]:
        r = self.call(f.Lookup(self.next_unique(), f.ROOT_ID, uid, GID, 1, name))
        assert r.error == 0, os.strerror(r.error)
        nodeid = f.parse_entry_out(r.body).nodeid
        r = self.call(f.Open(self.next_unique(), nodeid, uid, GID, 1, flags, 0))
        assert r.error == 0, os.strerror(r.error)
        return nodeid, f.parse_open_out(r.body)[0]

    def write(self, nodeid: int, fh: int, offset: int, data: bytes,
              out: list[int] | None = None, uid: int = UID) -> f.Reply:  # fmt: skip
        req = f.Write(self.next_unique(), nodeid, uid, GID, 1, fh, offset, 0, 0, 0, data)
        reply, n = self.raw(f.encode_request(req), out, [f.OUT_HEADER_SIZE + 8])
        assert n == len(reply)
        return f.decode_reply(reply)

    def read(self, nodeid: int, fh: int, offset: int, size: int,
             room: list[int] | None = None, uid: int = UID) -> f.Reply:  # fmt: skip
        req = f.Read(self.next_unique(), nodeid, uid, GID, 1, fh, offset, size, 0, 0, 0)
        reply, n = self.raw(f.encode_request(req), None, room or [16, size])
        r = f.decode_reply(reply)
        assert n == len(reply) == f.OUT_HEADER_SIZE + len(r.body)  # the used length: header + data
        return r


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path)
    yield d
    d.close()


def written(r: f.Reply) -> int:
    assert r.error == 0, os.strerror(r.error)
    return f.parse_write_out(r.body)


# ------------------------------------------------------------------ data --


@pytest.mark.parametrize(
    ("offset", "size", "out", "room"),
    [
        (0, 4096, [], [16, 4096]),  # the kernel's layout: header, then a page
        (0, 128 << 10, [40, 40] + [4096] * 32, [16] + [4096] * 32),  # page by page
        (12345, 1 << 20, [80, 1, 4095, 300000], [16, 1, 77777, 1 << 20]),  # odd cuts
        (7, 5000, [3, 37, 20, 20, 3], [5, 11, 2, 4998]),  # headers split too
    ],
)
def test_write_then_read_byte_exact(
    dev: Device, offset: int, size: int, out: list[int], room: list[int]
) -> None:
    (dev.root / "f").write_bytes(b"")
    nodeid, fh = dev.open("f", O_RDWR)
    data = PATTERN[:size]
    assert written(dev.write(nodeid, fh, offset, data, out)) == size
    on_disk = (dev.root / "f").read_bytes()
    assert on_disk == bytes(offset) + data
    r = dev.read(nodeid, fh, offset, size, room)
    assert r.error == 0 and r.body == data
    r = dev.read(nodeid, fh, 0, min(size + offset, MAX_WRITE))
    assert r.body == on_disk[:MAX_WRITE]
    assert ("write", 0, 0, size) in dev.seen and ("read", 0, size, 0) in dev.seen


def test_reads_at_the_end_of_short_files(dev: Device) -> None:
    (dev.root / "short").write_bytes(b"thirteen byte")
    nodeid, fh = dev.open("short", O_RDONLY)
    assert dev.read(nodeid, fh, 0, 4096).body == b"thirteen byte"  # used length 16 + 13
    assert dev.read(nodeid, fh, 9, 4096, [16, 2, 4094]).body == b"byte"
    assert dev.read(nodeid, fh, 13, 4096).body == b""  # at EOF
    assert dev.read(nodeid, fh, 1 << 40, 4096).body == b""  # far past it
    assert dev.read(nodeid, fh, 0, 0, [16]).body == b""
    (dev.root / "empty").write_bytes(b"")
    nodeid, fh = dev.open("empty", O_RDONLY)
    assert dev.read(nodeid, fh, 0, 1 << 20).body == b""


def test_a_read_never_goes_past_its_size_or_max_pages(dev: Device) -> None:
    (dev.root / "big").write_bytes(PATTERN[: MAX_WRITE + 5000])
    nodeid, fh = dev.open("big", O_RDONLY)
    # room for more than asked: the device reads the size asked, writes nothing after it
    req = f.Read(dev.next_unique(), nodeid, UID, GID, 1, fh, 0, 100, 0, 0, 0)
    head = dev.q.add([f.encode_request(req)], [16, 100, 4096], indirect=True)
    room_off = dev.q.inflight[head][1][2][0]
    dev.fe.ram.mem[room_off : room_off + 4096] = b"\xee" * 4096
    used: dict[int, int] = {}
    while head not in used:
        assert dev.q.wait_call(10)
        used.update(dev.q.take_used())
    n = used[head]
    assert n == 116
    assert bytes(dev.fe.ram.mem[room_off : room_off + 4096]) == b"\xee" * 4096
    assert f.decode_reply(dev.q.reply(head, n)).body == PATTERN[:100]
    # asked for more than negotiated: MAX_WRITE at most, whatever the room
    r = dev.read(nodeid, fh, 0, 2 * MAX_WRITE, [16, 2 * MAX_WRITE])
    assert r.body == PATTERN[:MAX_WRITE]


# ------------------------------------------------------------- bad chains --


def test_short_chains_get_error_replies_not_crashes(dev: Device) -> None:
    (dev.root / "f").write_bytes(PATTERN[:8192])
    nodeid, fh = dev.open("f", O_RDWR)
    read = f.encode_request(f.Read(dev.next_unique(), nodeid, UID, GID, 1, fh, 0, 4096, 0, 0, 0))
    # less room than the size asked: EIO (a guest bug), not a short reply
    reply, n = dev.raw(read, room=[16, 100])
    assert n == 16 and f.decode_reply(reply).error == errno.EIO
    # no room for even a header: nothing written, the chain still comes back
    assert dev.raw(read, room=[15])[1] == 0
    assert dev.raw(read, room=[])[1] == 0
    # a WRITE whose fuse_write_in.size says more than the chain holds
    write = f.encode_request(f.Write(dev.next_unique(), nodeid, UID, GID, 1, fh, 0, 0, 0, 0,
                                     b"y" * 500))  # fmt: skip
    bad = bytearray(write)
    bad[56:60] = (501).to_bytes(4, "little")  # fuse_write_in.size
    reply, _ = dev.raw(bytes(bad), out=[80, 200], room=[24])
    assert f.decode_reply(reply).error == errno.EPROTO
    # ... and one whose fuse_in_header.len is not the chain's length
    bad = bytearray(write)
    bad[0:4] = (len(write) + 4096).to_bytes(4, "little")
    reply, _ = dev.raw(bytes(bad), room=[24])
    assert f.decode_reply(reply).error == errno.EPROTO
    # a READ with a body of the wrong length
    reply, _ = dev.raw(read[:40] + read[40:] + b"\0" * 8, room=[24])
    assert f.decode_reply(reply).error == errno.EPROTO  # len mismatch first
    longer = bytearray(read + b"\0" * 8)
    longer[0:4] = (88).to_bytes(4, "little")
    reply, _ = dev.raw(bytes(longer), room=[24])
    assert f.decode_reply(reply).error == errno.EPROTO
    # a WRITE with no room for its reply
    assert dev.raw(write, room=[8])[1] == 0
    assert (dev.root / "f").read_bytes()[:500] == b"y" * 500  # that write happened
    # the device serves on, byte-exact
    assert dev.read(nodeid, fh, 0, 4096).body == b"y" * 500 + PATTERN[500:4096]


def test_read_and_write_of_unknown_handles_and_before_init(tmp_path: Path) -> None:
    dev = Device(tmp_path)
    try:
        assert dev.read(1, 999, 0, 10).error == errno.EBADF
        assert dev.write(1, 999, 0, b"x").error == errno.EBADF
    finally:
        dev.close()
    # a fresh connection, no INIT: EIO as for every request (as libfuse)
    backend = HostBackend(str(tmp_path))
    lst = VhostUserListener(str(tmp_path / "fs2.sock"), lambda: FuseRequestHandler(
        FuseSession(Policy({"s": Export("s", str(tmp_path))}), {"s": backend}, "s", PEER)))  # fmt: skip
    lst.start()
    try:
        with Frontend(lst.path) as fe:
            fe.start()
            q = fe.queues[1]
            r = f.decode_reply(q.roundtrip([f.encode_request(
                f.Read(2, 1, UID, GID, 1, 1, 0, 10, 0, 0, 0))], [4096]))  # fmt: skip
            assert r.error == errno.EIO
            r = f.decode_reply(q.roundtrip([f.encode_request(
                f.Write(4, 1, UID, GID, 1, 1, 0, 0, 0, 0, b"data"))], [4096]))  # fmt: skip
            assert r.error == errno.EIO
    finally:
        lst.stop()
        backend.shutdown()


# ----------------------------------------------------------------- policy --


def test_read_only_grant(tmp_path: Path) -> None:
    dev = Device(tmp_path, rights=Rights(readonly=True))
    try:
        (dev.root / "f").write_bytes(b"keep me")
        r = dev.call(f.Lookup(dev.next_unique(), f.ROOT_ID, UID, GID, 1, "f"))
        nodeid = f.parse_entry_out(r.body).nodeid
        r = dev.call(f.Open(dev.next_unique(), nodeid, UID, GID, 1, O_RDWR, 0))
        assert r.error == errno.EROFS
        nodeid, fh = dev.open("f", O_RDONLY)
        assert dev.write(nodeid, fh, 0, b"changed").error == errno.EBADF
        assert dev.read(nodeid, fh, 0, 100).body == b"keep me"
        assert (dev.root / "f").read_bytes() == b"keep me"
        assert ("write", errno.EBADF, 0, 0) in dev.seen
    finally:
        dev.close()


def test_open_mode_is_checked(dev: Device) -> None:
    (dev.root / "f").write_bytes(b"abc")
    nodeid, fh = dev.open("f", O_WRONLY)
    assert dev.read(nodeid, fh, 0, 3).error == errno.EBADF
    assert ("read", errno.EBADF, 0, 0) in dev.seen
    nodeid, fh = dev.open("f", O_RDONLY)
    assert dev.write(nodeid, fh, 0, b"x").error == errno.EBADF


def test_max_file_size(tmp_path: Path) -> None:
    root = tmp_path / "export"
    dev = Device(tmp_path, export=Export("share", str(root), max_file_size=10000))
    try:
        (root / "f").write_bytes(b"")
        nodeid, fh = dev.open("f", O_RDWR)
        assert dev.write(nodeid, fh, 9000, PATTERN[:1001], [80, 500]).error == errno.EFBIG
        assert (root / "f").read_bytes() == b""
        assert written(dev.write(nodeid, fh, 9000, PATTERN[:1000], [80, 500])) == 1000
        assert (root / "f").stat().st_size == 10000
    finally:
        dev.close()


def test_quota_bytes(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    (root / "f").write_bytes(b"")
    dev = Device(tmp_path, export=Export("share", str(root), quota_bytes=200000), quotas=True)
    try:
        assert dev.ledger is not None
        nodeid, fh = dev.open("f", O_RDWR)
        assert written(dev.write(nodeid, fh, 0, PATTERN[:150000], [80, 4096])) == 150000
        assert dev.ledger.bytes_used == 150000
        r = dev.write(nodeid, fh, 100000, PATTERN[:100001], [80, 4096])
        assert r.error == errno.EDQUOT
        assert (root / "f").stat().st_size == 150000
        assert dev.ledger.bytes_used == 150000
        # rewriting what is there charges nothing
        assert written(dev.write(nodeid, fh, 0, PATTERN[:150000])) == 150000
        assert written(dev.write(nodeid, fh, 150000, PATTERN[:50000])) == 50000
        assert dev.ledger.bytes_used == 200000
        assert (root / "f").read_bytes() == PATTERN[:150000] + PATTERN[:50000]
    finally:
        dev.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root server cannot keep set-id bits to drop")
@pytest.mark.parametrize(("rights", "uid", "kept"), [
    (Rights(), 0, False),  # not granted: dropped even for the guest's root
    (Rights(setid=True), 1000, False),  # granted, but a user writes
    (Rights(setid=True), 0, True),  # granted and the guest's root writes
])  # fmt: skip
def test_setid_dropped_on_the_first_write(tmp_path: Path, rights: Rights, uid: int,
                                          kept: bool) -> None:  # fmt: skip
    root = tmp_path / "export"
    root.mkdir()
    p = root / "suid"
    p.write_bytes(b"")
    os.chmod(p, 0o6755)
    dev = Device(tmp_path, rights=rights)
    try:
        nodeid, fh = dev.open("suid", O_WRONLY, uid)
        assert stat.S_IMODE(p.stat().st_mode) == 0o6755  # the open changes nothing
        assert written(dev.write(nodeid, fh, 0, b"x" * 5000, [80, 7], uid=uid)) == 5000
        assert stat.S_IMODE(p.stat().st_mode) == (0o6755 if kept else 0o755)
        os.chmod(p, 0o6755)  # once per open file: a second write leaves it
        assert written(dev.write(nodeid, fh, 0, b"y", uid=uid)) == 1
        assert stat.S_IMODE(p.stat().st_mode) == 0o6755
    finally:
        dev.close()


# ------------------------------------------------------------ no copies --


def _peak_during(dev: Device, fn: Any) -> int:
    """The Python heap's peak growth (every thread: the device's queue
    thread serves the chain) while fn runs."""
    threading.Event().wait(0.05)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_megabyte_moves_without_a_python_copy(dev: Device) -> None:
    """READ and WRITE of 1 MiB allocate no Python object near their size:
    the data goes between the file and guest memory by preadv/pwritev."""
    (dev.root / "f").write_bytes(b"")
    nodeid, fh = dev.open("f", O_RDWR)
    data = PATTERN[:MAX_WRITE]
    write = f.encode_request(f.Write(dev.next_unique(), nodeid, UID, GID, 1, fh, 0, 0, 0, 0, data))
    read = f.encode_request(
        f.Read(dev.next_unique(), nodeid, UID, GID, 1, fh, 0, MAX_WRITE, 0, 0, 0)
    )
    # the guest's buffers are filled before the measurement: only the device counts
    whead = dev.q.add(split(write, [80] + [4096] * 256), [24], indirect=True, kick=False)
    rhead = dev.q.add([read], [16] + [4096] * 256, indirect=True, kick=False)

    def serve() -> None:
        dev.q.do_kick()
        seen: dict[int, int] = {}
        while len(seen) < 2:
            assert dev.q.wait_call(10)
            seen.update(dev.q.take_used())
        assert seen[whead] == 24 and seen[rhead] == 16 + MAX_WRITE

    peak = _peak_during(dev, serve)
    # what remains is a memoryview per guest buffer (~180 KiB for these 514)
    assert peak < MAX_WRITE // 4, f"{peak} bytes of Python objects for 1 MiB moved"
    assert (dev.root / "f").read_bytes() == data
