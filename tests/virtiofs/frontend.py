"""A fake vhost-user front end (what QEMU does) and a fake guest driver.

It speaks vhost-user over a real Unix socket, passes a sealed memfd as guest
memory and eventfds for kick/call/err with SCM_RIGHTS, and builds descriptor
tables and split rings inside that memfd the way a virtio driver does.  The
raw helpers let a test write any descriptor it likes.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import struct
import time

from p9share.virtiofs.vhost_user import (
    FEATURE_EVENT_IDX,
    FEATURE_INDIRECT_DESC,
    FEATURE_PROTOCOL_FEATURES,
    FEATURE_VERSION_1,
    MemoryRegionSpec,
    ProtocolFeature,
    Request,
    VringAddr,
    encode_mem_table,
    encode_message,
    encode_single_region,
    encode_u64,
    encode_vring_addr,
    encode_vring_state,
)

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4

GPA_BASE = 0x1_0000_0000  # guest-physical base of the one region
VA_BASE = 0x7F00_0000_0000  # "QEMU's" virtual address of the same region
QUEUE_AREA = 0x8000  # per queue: desc, avail, used at +0, +0x2000, +0x4000
DATA_START = 0x10_0000


class FrontendClosed(Exception):
    pass


def make_memfd(size: int, *, seal: bool = True) -> int:
    fd = os.memfd_create("fake-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


class GuestRam:
    """The fake guest's memory: one sealed memfd, mapped here too."""

    def __init__(self, size: int = 4 << 20) -> None:
        self.size = size
        self.memfd = make_memfd(size)
        self.mem = mmap.mmap(self.memfd, size)
        self.next_data = DATA_START

    def region(self) -> MemoryRegionSpec:
        return MemoryRegionSpec(GPA_BASE, self.size, VA_BASE, 0)

    def alloc(self, n: int) -> int:
        n = (n + 15) & ~15
        if self.next_data + n > self.size:
            self.next_data = DATA_START
        off = self.next_data
        self.next_data += n
        return off

    def close(self) -> None:
        self.mem.close()
        os.close(self.memfd)


class FakeQueue:
    """The driver side of one split virtqueue in the fake guest's memory."""

    def __init__(self, fe: GuestRam, index: int, size: int) -> None:
        self.fe = fe
        self.index = index
        self.size = size
        base = 0x1000 + index * QUEUE_AREA
        self.desc_off, self.avail_off, self.used_off = base, base + 0x2000, base + 0x4000
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.err = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.avail_idx = 0
        self.used_seen = 0
        self.free = list(range(size))
        self.inflight: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}

    # addresses
    def gpa(self, off: int) -> int:
        return GPA_BASE + off

    def addr(self) -> VringAddr:
        return VringAddr(
            self.index,
            0,
            VA_BASE + self.desc_off,
            VA_BASE + self.used_off,
            VA_BASE + self.avail_off,
            0,
        )

    # raw ring writes
    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        struct.pack_into("<QIHH", self.fe.mem, self.desc_off + 16 * i, addr, length, flags, nxt)

    def publish(self, head: int) -> None:
        """Put `head` in the avail ring and advance the avail index."""
        m = self.fe.mem
        struct.pack_into("<H", m, self.avail_off + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", m, self.avail_off + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        struct.pack_into("<H", self.fe.mem, self.avail_off + 2, idx & 0xFFFF)

    def used_idx(self) -> int:
        return int(struct.unpack_from("<H", self.fe.mem, self.used_off + 2)[0])

    def avail_event(self) -> int:
        return int(struct.unpack_from("<H", self.fe.mem, self.used_off + 4 + 8 * self.size)[0])

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.fe.mem, self.avail_off + 4 + 2 * self.size, value)

    # driver operations
    def add(
        self, out: list[bytes], in_lens: list[int], *, indirect: bool = False, kick: bool = True
    ) -> int:
        """Make a chain of readable buffers `out` then writable ones of `in_lens`."""
        bufs: list[tuple[int, int, int]] = []
        for data in out:
            off = self.fe.alloc(len(data))
            self.fe.mem[off : off + len(data)] = data
            bufs.append((self.gpa(off), len(data), 0))
        writable = []
        for n in in_lens:
            off = self.fe.alloc(n)
            bufs.append((self.gpa(off), n, DESC_F_WRITE))
            writable.append((off, n))
        if indirect:
            table = self.fe.alloc(16 * len(bufs))
            for j, (a, n, f) in enumerate(bufs):
                nf = f | (DESC_F_NEXT if j + 1 < len(bufs) else 0)
                struct.pack_into("<QIHH", self.fe.mem, table + 16 * j, a, n, nf, j + 1)
            head = self.free.pop(0)
            self.write_desc(head, self.gpa(table), 16 * len(bufs), DESC_F_INDIRECT, 0)
            used_descs = [head]
        else:
            used_descs = [self.free.pop(0) for _ in bufs]
            for j, (a, n, f) in enumerate(bufs):
                last = j + 1 == len(bufs)
                nxt = 0 if last else used_descs[j + 1]
                self.write_desc(used_descs[j], a, n, f | (0 if last else DESC_F_NEXT), nxt)
            head = used_descs[0]
        self.inflight[head] = (used_descs, writable)
        self.publish(head)
        if kick:
            self.do_kick()
        return head

    def do_kick(self) -> None:
        os.eventfd_write(self.kick, 1)

    def wait_call(self, timeout: float = 5.0) -> bool:
        # As Linux's virtqueue_enable_cb: interrupt me once you pass what I saw.
        self.set_used_event(self.used_seen)
        if self.used_seen != self.used_idx():
            try:  # consume the notification that came with it, if any
                os.eventfd_read(self.call)
            except BlockingIOError:
                pass
            return True
        r, _, _ = select.select([self.call], [], [], timeout)
        if not r:
            return False
        os.eventfd_read(self.call)
        return True

    def stays_unserved(self, seconds: float = 0.3) -> bool:
        """No used entry appears for `seconds`."""
        before = self.used_idx()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.used_idx() != before:
                return False
            time.sleep(0.01)
        return True

    def err_signalled(self, timeout: float = 5.0) -> bool:
        r, _, _ = select.select([self.err], [], [], timeout)
        return bool(r)

    def take_used(self) -> list[tuple[int, int]]:
        """New used elements since the last call (head, written length)."""
        out = []
        while self.used_seen != self.used_idx():
            slot = self.used_off + 4 + 8 * (self.used_seen % self.size)
            head, n = struct.unpack_from("<II", self.fe.mem, slot)
            out.append((head, n))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def reply(self, head: int, length: int) -> bytes:
        """What the device wrote into chain `head`'s writable buffers; frees it."""
        descs, writable = self.inflight.pop(head)
        self.free.extend(descs)
        data = b"".join(bytes(self.fe.mem[o : o + n]) for o, n in writable)
        return data[:length]

    def roundtrip(
        self, out: list[bytes], in_lens: list[int], *, indirect: bool = False, timeout: float = 5.0
    ) -> bytes:
        head = self.add(out, in_lens, indirect=indirect)
        deadline = timeout
        while deadline > 0:
            for h, n in self.take_used():
                if h == head:
                    return self.reply(head, n)
                self.reply(h, n)
            if not self.wait_call(0.2):
                deadline -= 0.2
        raise TimeoutError(f"no used element for chain {head}")

    def close(self) -> None:
        for fd in (self.kick, self.call, self.err):
            os.close(fd)


class Frontend:
    """QEMU's part: the vhost-user connection and the guest memory."""

    def __init__(
        self,
        path: str,
        *,
        mem_size: int = 4 << 20,
        queues: int = 2,
        queue_size: int = 16,
        features: int = (
            FEATURE_VERSION_1
            | FEATURE_PROTOCOL_FEATURES
            | FEATURE_EVENT_IDX
            | FEATURE_INDIRECT_DESC
        ),
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.ram = GuestRam(mem_size)
        self.memfd = self.ram.memfd
        self.features = features
        self.queues = [FakeQueue(self.ram, i, queue_size) for i in range(queues)]

    def region(self) -> MemoryRegionSpec:
        return self.ram.region()

    # wire
    def send(
        self,
        request: int,
        payload: bytes = b"",
        fds: list[int] | None = None,
        *,
        need: bool = False,
    ) -> None:
        data = encode_message(request, payload, need_reply=need)
        if fds:
            self.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            )
        else:
            self.sock.sendall(data)

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        anc = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            if fds
            else []
        )
        self.sock.sendmsg([data], anc)

    def recv_reply(self, request: int) -> bytes:
        head = self._recv_exact(12)
        req, flags, size = struct.unpack("<III", head)
        if req != request or flags != 0x5:
            raise AssertionError(f"reply {req} flags {flags:#x} to request {request}")
        return self._recv_exact(size)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise FrontendClosed("back end closed the connection")
            buf += chunk
        return buf

    def call(self, request: int, payload: bytes = b"", fds: list[int] | None = None) -> bytes:
        """A request with a reply of its own (GET_*)."""
        self.send(request, payload, fds)
        return self.recv_reply(request)

    def acked(self, request: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
        """A request sent with NEED_REPLY; the back end must ack with 0."""
        self.send(request, payload, fds, need=True)
        (status,) = struct.unpack("<Q", self.recv_reply(request))
        if status != 0:
            raise AssertionError(f"request {request} acked with {status}")

    def closed_by_backend(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    # the sequence QEMU 7.2 drives (shared/reference/virtiofs-notes.md)
    def init(self, extra_protocol: int = 0) -> None:
        (offered,) = struct.unpack("<Q", self.call(Request.GET_FEATURES))
        assert offered & FEATURE_PROTOCOL_FEATURES
        (proto,) = struct.unpack("<Q", self.call(Request.GET_PROTOCOL_FEATURES))
        want = proto & (
            (1 << ProtocolFeature.REPLY_ACK) | (1 << ProtocolFeature.MQ) | extra_protocol
        )
        self.send(Request.SET_PROTOCOL_FEATURES, encode_u64(want))
        (nq,) = struct.unpack("<Q", self.call(Request.GET_QUEUE_NUM))
        assert nq >= len(self.queues)
        self.acked(Request.SET_OWNER)
        for q in self.queues:
            self.acked(Request.SET_VRING_CALL, encode_u64(q.index), [q.call])
            self.acked(Request.SET_VRING_ERR, encode_u64(q.index), [q.err])

    def set_mem_table(self) -> None:
        self.acked(Request.SET_MEM_TABLE, encode_mem_table([self.region()]), [self.memfd])

    def start_queue(self, q: FakeQueue, *, base: int = 0) -> None:
        self.acked(Request.SET_VRING_NUM, encode_vring_state(q.index, q.size))
        self.acked(Request.SET_VRING_BASE, encode_vring_state(q.index, base))
        self.acked(Request.SET_VRING_ADDR, encode_vring_addr(q.addr()))
        self.acked(Request.SET_VRING_KICK, encode_u64(q.index), [q.kick])
        self.acked(Request.SET_VRING_ENABLE, encode_vring_state(q.index, 1))
        self.acked(Request.SET_VRING_CALL, encode_u64(q.index), [q.call])

    def start(self) -> None:
        self.init()
        self.acked(Request.SET_FEATURES, encode_u64(self.features))
        self.set_mem_table()
        for q in self.queues:
            self.start_queue(q)

    def stop_queue(self, q: FakeQueue) -> int:
        self.acked(Request.SET_VRING_ENABLE, encode_vring_state(q.index, 0))
        reply = self.call(Request.GET_VRING_BASE, encode_vring_state(q.index, 0))
        index, num = struct.unpack("<II", reply)
        assert index == q.index
        return int(num)

    def single_region(self) -> bytes:
        return encode_single_region(self.region())

    def close(self) -> None:
        self.sock.close()
        for q in self.queues:
            q.close()
        self.ram.close()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
