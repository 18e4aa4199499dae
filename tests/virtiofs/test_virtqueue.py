"""The split-virtqueue engine over a real memfd, driven as a guest would (no sockets)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from p9share.virtiofs.memory import GuestMemory, MemoryAccessError, MemoryMapError, map_region
from p9share.virtiofs.vhost_user import MemoryRegionSpec
from p9share.virtiofs.virtqueue import ChainError, RingError, Virtqueue

from .frontend import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    GPA_BASE,
    VA_BASE,
    FakeQueue,
    GuestRam,
    make_memfd,
)

SIZE = 8


@pytest.fixture
def ram() -> Iterator[GuestRam]:
    r = GuestRam(1 << 21)
    yield r
    r.close()


@pytest.fixture
def memory(ram: GuestRam) -> Iterator[GuestMemory]:
    m = GuestMemory.map([ram.region()], [ram.memfd])
    yield m
    m.close()


@pytest.fixture
def fq(ram: GuestRam) -> Iterator[FakeQueue]:
    q = FakeQueue(ram, 0, SIZE)
    yield q
    q.close()


def engine(memory: GuestMemory, fq: FakeQueue, **kw: object) -> Virtqueue:
    a = fq.addr()
    opts: dict[str, object] = {"event_idx": True, "indirect": True, **kw}
    return Virtqueue(memory, size=fq.size, desc=a.desc, avail=a.avail, used=a.used, **opts)  # type: ignore[arg-type]


def test_chain_round_trip(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    assert vq.pop() is None
    head = fq.add([b"hello ", b"world"], [3, 100], kick=False)
    chain = vq.pop()
    assert chain is not None and chain.head == head
    r, w = chain.reader, chain.writer
    assert r.remaining == 11 and w.available == 103
    assert r.read(3) == b"hel"
    assert r.read(5) == b"lo wo"  # across two descriptors
    buf = bytearray(10)
    assert r.readinto(buf) == 3 and bytes(buf[:3]) == b"rld"
    assert r.read(10) == b"" and r.remaining == 0
    w.write(b"abcd")  # crosses from the 3-byte into the 100-byte buffer
    views = w.views(5)
    assert [len(v) for v in views] == [5]
    views[0][:] = b"EFGHI"
    w.advance(5)
    assert w.written == 9 and w.available == 94
    vq.push(chain.head, w.written)
    chain.release()
    assert fq.take_used() == [(head, 9)]
    assert fq.reply(head, 9) == b"abcdEFGHI"
    assert vq.pop() is None


def test_reader_views_are_zero_copy_slices(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    fq.add([b"a" * 10, b"b" * 20], [], kick=False)
    chain = vq.pop()
    assert chain is not None
    views = list(chain.reader)
    assert [bytes(v) for v in views] == [b"a" * 10, b"b" * 20]
    views[0][0:1] = b"Z"  # a slice of guest memory, not a copy
    assert b"Zaaaaaaaaa" in fq.fe.mem[:]


def test_writer_refuses_more_than_available_and_writes_nothing(
    memory: GuestMemory, fq: FakeQueue
) -> None:
    vq = engine(memory, fq)
    head = fq.add([b"q"], [4], kick=False)
    chain = vq.pop()
    assert chain is not None
    with pytest.raises(ChainError):
        chain.writer.write(b"12345")
    assert chain.writer.written == 0
    with pytest.raises(ChainError):
        chain.writer.advance(5)
    vq.push(head, chain.writer.written)
    assert fq.take_used() == [(head, 0)]


def test_indirect_chain(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    head = fq.add([b"in", b"direct"], [8], indirect=True, kick=False)
    chain = vq.pop()
    assert chain is not None and chain.head == head
    assert chain.reader.read(100) == b"indirect"
    assert chain.writer.available == 8


def test_base_and_wrap_of_16_bit_indices(memory: GuestMemory, fq: FakeQueue) -> None:
    fq.avail_idx = 0xFFFE
    fq.used_seen = 0xFFFE
    struct.pack_into("<H", fq.fe.mem, fq.used_off + 2, 0xFFFE)  # where the last run stopped
    a = fq.addr()
    vq = Virtqueue(memory, size=SIZE, desc=a.desc, avail=a.avail, used=a.used, base=0xFFFE)
    for _ in range(4):  # crosses 0xFFFF -> 0
        head = fq.add([b"x"], [1], kick=False)
        chain = vq.pop()
        assert chain is not None and chain.head == head
        vq.push(head, 0)
        assert fq.take_used() == [(head, 0)]
        fq.reply(head, 0)
    assert vq.last_avail == 2  # what GET_VRING_BASE reports


def test_event_idx_notification(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    for _ in range(3):
        fq.add([b"x"], [1], kick=False)
    assert vq.arm_notification() is True  # chains are waiting: do not sleep
    fq.set_used_event(1)  # "interrupt me when you pass used index 1"
    notes = []
    for _ in range(3):
        chain = vq.pop()
        assert chain is not None
        vq.push(chain.head, 0)
        notes.append(vq.should_notify())
    assert notes == [True, True, False]  # the first ever, then crossing used_event 1
    assert vq.arm_notification() is False
    assert fq.avail_event() == 3  # kick me when avail passes 3


def test_no_interrupt_flag_without_event_idx(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq, event_idx=False)
    fq.add([b"x"], [1], kick=False)
    struct.pack_into("<H", fq.fe.mem, fq.avail_off, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    chain = vq.pop()
    assert chain is not None
    vq.push(chain.head, 0)
    assert vq.should_notify() is False
    struct.pack_into("<H", fq.fe.mem, fq.avail_off, 0)
    assert vq.should_notify() is True


# -- hostile rings ----------------------------------------------------------------


def publish_raw(fq: FakeQueue, descs: list[tuple[int, int, int, int]], head: int = 0) -> None:
    for i, d in enumerate(descs):
        fq.write_desc(i, *d)
    fq.publish(head)


def buf(fq: FakeQueue, n: int = 16) -> int:
    return fq.gpa(fq.fe.alloc(n))


def hostile_cases(fq: FakeQueue, ram: GuestRam) -> dict[str, tuple[object, str]]:
    b = buf(fq)
    table = ram.alloc(16 * 4)
    return {
        "loop": ([(b, 4, DESC_F_NEXT, 1), (b, 4, DESC_F_NEXT, 0)], "loop"),
        "self loop": ([(b, 4, DESC_F_NEXT, 0)], "loop"),
        "next outside table": ([(b, 4, DESC_F_NEXT, SIZE)], "outside a table"),
        "outside memory": ([(GPA_BASE + ram.size, 4, 0, 0)], "outside guest memory"),
        "below memory": ([(GPA_BASE - 4096, 16, 0, 0)], "outside guest memory"),
        "straddles end": ([(GPA_BASE + ram.size - 8, 16, 0, 0)], "outside guest memory"),
        "huge length": ([(b, 0xFFFFFFFF, DESC_F_WRITE, 0)], "outside guest memory"),
        "onto used ring": ([(fq.gpa(fq.used_off), 8, DESC_F_WRITE, 0)], "overlaps"),
        "onto avail ring": ([(fq.gpa(fq.avail_off) + 2, 2, 0, 0)], "overlaps"),
        "onto desc table": ([(fq.gpa(fq.desc_off) + 8, 32, DESC_F_WRITE, 0)], "overlaps"),
        "read after write": (
            [(b, 4, DESC_F_WRITE | DESC_F_NEXT, 1), (b, 4, 0, 0)],
            "after a writable",
        ),
        "indirect len 0": ([(fq.gpa(table), 0, DESC_F_INDIRECT, 0)], "indirect table of 0"),
        "indirect len 17": ([(fq.gpa(table), 17, DESC_F_INDIRECT, 0)], "indirect table of 17"),
        "indirect longer than queue": (
            [(fq.gpa(table), 16 * (SIZE + 1), DESC_F_INDIRECT, 0)],
            "indirect table of",
        ),
        "indirect with next": (
            [(fq.gpa(table), 16, DESC_F_INDIRECT | DESC_F_NEXT, 1), (b, 4, 0, 0)],
            "NEXT or WRITE",
        ),
        "indirect not at head": (
            [(b, 4, DESC_F_NEXT, 1), (fq.gpa(table), 16, DESC_F_INDIRECT, 0)],
            "not at the head",
        ),
        "indirect table outside memory": (
            [(GPA_BASE + ram.size, 64, DESC_F_INDIRECT, 0)],
            "outside guest memory",
        ),
        "indirect table on the rings": (
            [(fq.gpa(fq.desc_off), 64, DESC_F_INDIRECT, 0)],
            "overlaps",
        ),
    }


CASES = [
    "loop",
    "self loop",
    "next outside table",
    "outside memory",
    "below memory",
    "straddles end",
    "huge length",
    "onto used ring",
    "onto avail ring",
    "onto desc table",
    "read after write",
    "indirect len 0",
    "indirect len 17",
    "indirect longer than queue",
    "indirect with next",
    "indirect not at head",
    "indirect table outside memory",
    "indirect table on the rings",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_chain_is_refused(
    case: str, memory: GuestMemory, fq: FakeQueue, ram: GuestRam
) -> None:
    vq = engine(memory, fq)
    descs, match = hostile_cases(fq, ram)[case]
    publish_raw(fq, descs)  # type: ignore[arg-type]
    with pytest.raises(RingError, match=match):
        vq.pop()


def test_loop_inside_an_indirect_table(memory: GuestMemory, fq: FakeQueue, ram: GuestRam) -> None:
    vq = engine(memory, fq)
    table = ram.alloc(32)
    b = buf(fq)
    struct.pack_into("<QIHHQIHH", ram.mem, table, b, 4, DESC_F_NEXT, 1, b, 4, DESC_F_NEXT, 0)
    publish_raw(fq, [(fq.gpa(table), 32, DESC_F_INDIRECT, 0)])
    with pytest.raises(RingError, match="loop"):
        vq.pop()


def test_nested_indirect(memory: GuestMemory, fq: FakeQueue, ram: GuestRam) -> None:
    vq = engine(memory, fq)
    table = ram.alloc(16)
    struct.pack_into("<QIHH", ram.mem, table, fq.gpa(table), 16, DESC_F_INDIRECT, 0)
    publish_raw(fq, [(fq.gpa(table), 16, DESC_F_INDIRECT, 0)])
    with pytest.raises(RingError, match="not at the head"):
        vq.pop()


def test_indirect_not_negotiated(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq, indirect=False)
    fq.add([b"x"], [4], indirect=True, kick=False)
    with pytest.raises(RingError, match="not negotiated"):
        vq.pop()


def test_head_outside_table(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    fq.publish(SIZE)
    with pytest.raises(RingError, match="names descriptor"):
        vq.pop()


def test_avail_index_running_ahead(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    fq.set_avail_idx(SIZE + 1)
    with pytest.raises(RingError, match="moved 9 entries"):
        vq.pop()


def test_chain_as_long_as_the_queue_is_fine(memory: GuestMemory, fq: FakeQueue) -> None:
    vq = engine(memory, fq)
    b = buf(fq)
    publish_raw(fq, [(b, 1, DESC_F_NEXT, i + 1) for i in range(SIZE - 1)] + [(b, 1, 0, 0)])
    chain = vq.pop()
    assert chain is not None and chain.reader.remaining == SIZE


def test_rings_outside_or_overlapping_are_refused(memory: GuestMemory, fq: FakeQueue) -> None:
    a = fq.addr()
    with pytest.raises(RingError, match="outside"):
        Virtqueue(memory, size=SIZE, desc=VA_BASE - 4096, avail=a.avail, used=a.used)
    with pytest.raises(RingError, match="overlap"):
        Virtqueue(memory, size=SIZE, desc=a.desc, avail=a.desc + 16, used=a.used)
    with pytest.raises(RingError, match="misaligned"):
        Virtqueue(memory, size=SIZE, desc=a.desc + 8, avail=a.avail, used=a.used)


# -- memory -----------------------------------------------------------------------


def test_translation_bounds(memory: GuestMemory, ram: GuestRam) -> None:
    assert memory.translate_gpa(GPA_BASE, ram.size) == (0, 0)
    assert memory.translate_va(VA_BASE + 10, 6) == (0, 10)
    for addr, n in [(GPA_BASE - 1, 1), (GPA_BASE + ram.size, 1), (GPA_BASE + ram.size - 1, 2)]:
        with pytest.raises(MemoryAccessError):
            memory.translate_gpa(addr, n)
    with pytest.raises(MemoryAccessError):
        memory.translate_va(GPA_BASE, 1)  # a guest-physical address is not a front-end VA


def test_region_past_end_of_file_is_refused() -> None:
    fd = make_memfd(8192)
    try:
        with pytest.raises(MemoryMapError, match="file has"):
            map_region(MemoryRegionSpec(0, 8192, 0, 4096), fd)
        r = map_region(MemoryRegionSpec(0, 4096, 0, 4096), fd)
        assert r.sealed and len(r.view) == 4096
        r.view.release()
        with pytest.raises(MemoryMapError, match="sealed"):
            map_region(MemoryRegionSpec(0, 4096, 0, 0), _unsealed(), require_sealed=True)
    finally:
        os.close(fd)


def _unsealed() -> int:
    return make_memfd(4096, seal=False)


def test_region_fd_that_cannot_be_mapped() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(MemoryMapError):
            map_region(MemoryRegionSpec(0, 4096, 0, 0), r)
    finally:
        os.close(r)
        os.close(w)


def test_new_memory_table_with_chain_in_flight(
    memory: GuestMemory, fq: FakeQueue, ram: GuestRam
) -> None:
    """The old mapping stays valid for a chain popped before the table changed."""
    vq = engine(memory, fq)
    head = fq.add([b"request"], [16], kick=False)
    chain = vq.pop()
    assert chain is not None
    new = GuestMemory.map([ram.region()], [ram.memfd])
    vq.remap(new)
    memory.close()  # cannot unmap yet: the chain holds slices
    chain.writer.write(b"still mapped")
    assert chain.reader.read(7) == b"request"
    vq.push(head, chain.writer.written)
    chain.release()
    assert fq.take_used() == [(head, 12)]
    assert fq.reply(head, 12) == b"still mapped"
    head = fq.add([b"next"], [4], kick=False)
    chain = vq.pop()  # through the new table
    assert chain is not None and chain.reader.read(4) == b"next"
    chain.release()
    vq.release()
    new.close()


def test_preadv_and_pwritev_go_straight_to_guest_memory(
    memory: GuestMemory, fq: FakeQueue, tmp_path: object
) -> None:
    vq = engine(memory, fq)
    head = fq.add([b"to the ", b"file"], [5, 100], kick=False)
    chain = vq.pop()
    assert chain is not None
    path = f"{tmp_path}/data"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert os.pwritev(fd, chain.reader.views(), 0) == 11  # guest buffers -> file
        os.pwrite(fd, b" and back", 11)
        views = chain.writer.views(20)
        assert [len(v) for v in views] == [5, 15]  # spans both writable buffers
        n = os.preadv(fd, views, 0)  # file -> guest buffers
        chain.writer.advance(n)
    finally:
        os.close(fd)
    assert n == 20 and chain.writer.written == 20
    vq.push(head, chain.writer.written)
    chain.release()
    assert fq.take_used() == [(head, 20)]
    assert fq.reply(head, 20) == b"to the file and back"
