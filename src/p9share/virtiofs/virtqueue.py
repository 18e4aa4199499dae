"""A split virtqueue (virtio 1.2 §2.7) over guest memory, for the device side.

Everything in the rings is written by the guest and may change under us, so
each value is read once, checked, and used from the local copy.  A chain is
walked into two lists of memoryview slices (the readable part, then the
writable part); `ChainReader` and `ChainWriter` are the only way the request
handler touches guest memory.

What is refused (RingError, after which the edge marks the queue broken):
 - the avail index moving more than the queue size past the last one seen;
 - a head or `next` index outside the table, a chain with more descriptors
   than its table (the only way to loop, so this is the loop check);
 - a buffer not wholly inside one memory region, or overlapping the
   descriptor table, the avail ring or the used ring;
 - a readable descriptor after a writable one;
 - INDIRECT when not negotiated, anywhere but the head, together with NEXT or
   WRITE, with a table length of 0 or not a multiple of 16, or longer than the
   queue size.

Memory order (§2.7.13, 2.7.14): a used element is written before the used
index that publishes it; the avail index is read before the ring entries it
covers.  CPython performs each struct.pack_into / unpack_from as one C call in
program order; on x86-64 (TSO) stores stay ordered with stores and loads with
loads.  Where a store must be visible before a later load (publishing
avail_event, then re-reading avail idx) a lock round trip, an atomic
read-modify-write, serves as the full fence.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator

from .memory import GuestMemory, MemoryAccessError

__all__ = ["Chain", "ChainReader", "ChainWriter", "RingError", "Virtqueue"]

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_DESC_SIZE = 16


class RingError(Exception):
    """The guest broke the ring; the queue must stop."""


class ChainError(Exception):
    """A handler asked for more of a chain than it holds."""


_fence_lock = threading.Lock()


def _fence() -> None:
    # pthread mutex lock/unlock are atomic read-modify-writes: a full barrier on x86-64.
    with _fence_lock:
        pass


class ChainReader:
    """The device-readable part of a chain, consumed front to back."""

    __slots__ = ("_i", "_off", "_segs", "remaining")

    def __init__(self, segments: list[memoryview]) -> None:
        self._segs = segments
        self._i = 0
        self._off = 0
        self.remaining = sum(len(s) for s in segments)

    def read(self, n: int) -> bytes:
        """Up to `n` bytes (fewer only at the end of the chain)."""
        if n <= 0:
            return b""
        segs, i, off = self._segs, self._i, self._off
        if i < len(segs):
            seg = segs[i]
            if off + n <= len(seg):  # the common case: one segment
                out = bytes(seg[off : off + n])
                self._advance(n)
                return out
        return b"".join(bytes(v) for v in self.views(n))

    def readinto(self, buf: bytearray | memoryview) -> int:
        dst = memoryview(buf).cast("B")
        pos = 0
        for v in self.views(len(dst)):
            dst[pos : pos + len(v)] = v
            pos += len(v)
        return pos

    def skip(self, n: int) -> int:
        return sum(len(v) for v in self.views(n))

    def views(self, n: int | None = None) -> list[memoryview]:
        """The next `n` bytes (default: all) as slices of guest memory, consumed."""
        want = self.remaining if n is None else min(n, self.remaining)
        out: list[memoryview] = []
        segs = self._segs
        while want > 0:
            seg = segs[self._i]
            take = min(len(seg) - self._off, want)
            if take == len(seg):
                out.append(seg)  # a whole buffer: no new view
            elif take:
                out.append(seg[self._off : self._off + take])
            self._advance(take)
            want -= take
        return out

    def _advance(self, n: int) -> None:
        self.remaining -= n
        self._off += n
        segs = self._segs
        while self._i < len(segs) and self._off >= len(segs[self._i]):
            self._off -= len(segs[self._i])
            self._i += 1

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self.views())

    def release(self) -> None:
        for s in self._segs:
            s.release()
        self._segs = []
        self._i = self._off = self.remaining = 0


class ChainWriter:
    """The device-writable part of a chain, filled front to back.

    A handler that cannot answer at once (a lock wait) calls `defer()`, returns,
    and later calls `complete()` from any thread: only then does the chain go
    back to the guest, and the queue keeps serving other chains meanwhile.
    """

    __slots__ = ("_finish", "_i", "_off", "_segs", "available", "deferred", "written")

    def __init__(self, segments: list[memoryview]) -> None:
        self._segs = segments
        self._i = 0
        self._off = 0
        self.available = sum(len(s) for s in segments)
        self.written = 0
        self.deferred = False
        self._finish: Callable[[], None] | None = None  # set by whoever returns the chain

    def on_finish(self, finish: Callable[[], None] | None) -> None:
        """What `complete()` runs (the edge sets this before calling the handler)."""
        self._finish = finish

    def defer(self) -> None:
        """The reply comes later, through `complete()`."""
        if self._finish is None:
            raise ChainError("this chain cannot be completed later")
        self.deferred = True

    def complete(self) -> None:
        """Return a deferred chain to the guest (once; later calls do nothing)."""
        if not self.deferred:
            raise ChainError("complete() without defer()")
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data`, or raise ChainError and write nothing."""
        src = memoryview(data).cast("B")
        n = len(src)
        if n > self.available:
            raise ChainError(f"reply of {n} bytes, the chain has {self.available} writable")
        i, off = self._i, self._off
        if i < len(self._segs) and off + n <= len(self._segs[i]):
            self._segs[i][off : off + n] = src  # one segment: the common case
        else:
            pos = 0
            for v in self.views(n):
                v[:] = src[pos : pos + len(v)]
                pos += len(v)
        self.advance(n)

    def views(self, n: int | None = None) -> list[memoryview]:
        """Slices for the next `n` writable bytes (default: all); not consumed:
        call `advance` with what was actually filled (e.g. preadv's result)."""
        want = self.available if n is None else min(n, self.available)
        out: list[memoryview] = []
        i, off = self._i, self._off
        segs = self._segs
        while want > 0:
            seg = segs[i]
            take = min(len(seg) - off, want)
            if take == len(seg):
                out.append(seg)  # a whole buffer: no new view
            elif take:
                out.append(seg[off : off + take])
            want -= take
            i += 1
            off = 0
        return out

    def advance(self, n: int) -> None:
        if n < 0 or n > self.available:
            raise ChainError(f"advance by {n} with {self.available} writable")
        self.available -= n
        self.written += n
        self._off += n
        segs = self._segs
        while self._i < len(segs) and self._off >= len(segs[self._i]):
            self._off -= len(segs[self._i])
            self._i += 1

    def release(self) -> None:
        for s in self._segs:
            s.release()
        self._segs = []
        self._i = self._off = self.available = 0


class Chain:
    """One popped descriptor chain: its head index and its two parts."""

    __slots__ = ("head", "reader", "writer")

    def __init__(self, head: int, reader: ChainReader, writer: ChainWriter) -> None:
        self.head = head
        self.reader = reader
        self.writer = writer

    def release(self) -> None:
        self.reader.release()
        self.writer.release()


class Virtqueue:
    """The ring engine for one queue.  Not thread-safe: the edge serialises
    pop/push/reconfigure with its own lock."""

    def __init__(
        self,
        memory: GuestMemory,
        *,
        size: int,
        desc: int,
        avail: int,
        used: int,
        base: int = 0,
        event_idx: bool = False,
        indirect: bool = False,
    ) -> None:
        if size == 0 or size & (size - 1) or size > 32768:
            raise RingError(f"queue size {size} is not a power of two up to 32768")
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.last_avail = base & 0xFFFF  # next avail ring slot to read (SET_VRING_BASE)
        self._signalled: int | None = None  # used index at the last notification
        self._addrs = (desc, avail, used)
        self.remap(memory)
        # Resume where the used ring says (as libvhost-user does): it differs from
        # the base when requests were still in flight at the last stop.
        self.used_idx: int = _U16.unpack_from(self._used, 2)[0]

    def remap(self, memory: GuestMemory) -> None:
        """Locate the rings in (new) memory: front-end virtual addresses."""
        desc, avail, used = self._addrs
        n = self.size
        extra = 2 if self.event_idx else 0
        if desc % 16 or avail % 2 or used % 4:
            raise RingError("misaligned ring address")
        spans = ((desc, 16 * n), (avail, 4 + 2 * n + extra), (used, 4 + 8 * n + extra))
        located = []
        try:
            for addr, length in spans:
                i, off = memory.translate_va(addr, length)
                located.append((i, off, off + length))
        except MemoryAccessError as e:
            raise RingError(f"ring outside guest memory: {e}") from None
        self._memory = memory
        self._views = memory.regions  # tuple of Region: index -> .view
        self._desc = memory.regions[located[0][0]].view[located[0][1] : located[0][2]]
        self._avail = memory.regions[located[1][0]].view[located[1][1] : located[1][2]]
        self._used = memory.regions[located[2][0]].view[located[2][1] : located[2][2]]
        # Ring spans per region, for the overlap check on every buffer.
        self._ring_spans: dict[int, tuple[tuple[int, int], ...]] = {}
        for i, start, end in located:
            self._ring_spans[i] = (*self._ring_spans.get(i, ()), (start, end))
        # Overlapping rings would let the guest make us write our own input.
        for (ai, a0, a1), (bi, b0, b1) in (
            (located[0], located[1]),
            (located[0], located[2]),
            (located[1], located[2]),
        ):
            if ai == bi and a0 < b1 and b0 < a1:
                raise RingError("virtqueue rings overlap each other")

    def release(self) -> None:
        """Drop the ring views (before the memory is unmapped)."""
        for v in (self._desc, self._avail, self._used):
            v.release()

    # -- avail side -------------------------------------------------------------

    def pending(self) -> int:
        """How many chains the guest has made available that we have not popped."""
        avail_idx: int = _U16.unpack_from(self._avail, 2)[0]
        n = (avail_idx - self.last_avail) & 0xFFFF
        if n > self.size:
            raise RingError(f"avail index moved {n} entries ahead, queue size {self.size}")
        return n

    def pop(self) -> Chain | None:
        """The next available chain, walked and checked, or None."""
        if self.pending() == 0:
            return None
        slot = 4 + 2 * (self.last_avail % self.size)
        head = _U16.unpack_from(self._avail, slot)[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.size:
            raise RingError(f"avail ring names descriptor {head}, queue size {self.size}")
        readable, writable = self._walk(head)
        return Chain(head, ChainReader(readable), ChainWriter(writable))

    def _buffer(self, addr: int, length: int) -> memoryview:
        mem = self._memory
        try:
            i, off = mem.translate_gpa(addr, length)
        except MemoryAccessError as e:
            raise RingError(str(e)) from None
        end = off + length
        for lo, hi in self._ring_spans.get(i, ()):
            if off < hi and lo < end:
                raise RingError(f"buffer {addr:#x}+{length:#x} overlaps a virtqueue ring")
        return self._views[i].view[off:end]

    def _walk(self, head: int) -> tuple[list[memoryview], list[memoryview]]:
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        table = self._desc
        table_len = self.size
        unpack = _DESC.unpack_from
        idx = head
        count = 0
        indirect_seen = False
        while True:
            if idx >= table_len:
                raise RingError(f"descriptor index {idx} outside a table of {table_len}")
            addr, length, flags, nxt = unpack(table, idx * _DESC_SIZE)
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("INDIRECT descriptor, feature not negotiated")
                if indirect_seen or count:
                    raise RingError("INDIRECT descriptor not at the head of the chain")
                if flags & (DESC_F_NEXT | DESC_F_WRITE):
                    raise RingError("INDIRECT descriptor with NEXT or WRITE")
                if length == 0 or length % _DESC_SIZE or length // _DESC_SIZE > self.size:
                    raise RingError(f"indirect table of {length} bytes")
                table = self._buffer(addr, length)
                table_len = length // _DESC_SIZE
                indirect_seen = True
                idx = 0
                continue
            count += 1
            if count > table_len:
                raise RingError(f"descriptor chain longer than its table ({table_len}): a loop")
            if flags & DESC_F_WRITE:
                if length:
                    writable.append(self._buffer(addr, length))
            else:
                if writable:
                    raise RingError("readable descriptor after a writable one")
                if length:
                    readable.append(self._buffer(addr, length))
            if not flags & DESC_F_NEXT:
                break
            idx = nxt
        if indirect_seen:
            table.release()
        return readable, writable

    def arm_notification(self) -> bool:
        """Before sleeping: ask the guest to kick for the next chain, then check
        again.  True if chains arrived meanwhile (do not sleep)."""
        if self.event_idx:
            # avail_event lives after the used ring's elements.
            _U16.pack_into(self._used, 4 + 8 * self.size, self.last_avail)
            _fence()
        return self.pending() > 0

    # -- used side --------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Return a chain to the guest: element first, then the index."""
        slot = 4 + 8 * (self.used_idx % self.size)
        _USED_ELEM.pack_into(self._used, slot, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)

    def should_notify(self) -> bool:
        """Whether the guest wants an interrupt for what was pushed since the last one."""
        _fence()  # the used index store before reading the guest's suppression field
        new = self.used_idx
        old = self._signalled
        if self.event_idx:
            used_event: int = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
            self._signalled = new
            if old is None:
                return True
            # vring_need_event(): did new pass used_event since old?
            return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        self._signalled = new
        flags: int = _U16.unpack_from(self._avail, 0)[0]
        return not flags & AVAIL_F_NO_INTERRUPT
