"""The vhost-user-fs device over real Unix sockets, memfds and eventfds.

Each hostile case ends with the listener alive (a fresh front end gets served
on the same socket) and a second fake VM on another socket served throughout.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.virtiofs.device import VhostUserListener
from p9share.virtiofs.vhost_user import (
    ProtocolFeature,
    Request,
    encode_message,
    encode_u64,
    encode_vring_state,
)
from p9share.virtiofs.virtqueue import ChainReader, ChainWriter

from .frontend import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GPA_BASE, Frontend, FrontendClosed


class Echo:
    """Writes back what it read; counts handlers made and closed."""

    made = 0
    closed = 0

    def __init__(self) -> None:
        type(self).made += 1

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        data = reader.read(reader.remaining)
        writer.write(data[: writer.available])

    def close(self) -> None:
        type(self).closed += 1


class Gate(Echo):
    """An echo that waits for the test to open the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        self.entered.set()
        self.gate.wait(30)
        super().handle(reader, writer)


@pytest.fixture
def make_listener(tmp_path: Path) -> Iterator[Callable[..., VhostUserListener]]:
    made: list[VhostUserListener] = []

    def make(
        name: str = "vm.sock", factory: Callable[[], object] = Echo, **kw: object
    ) -> VhostUserListener:
        lst = VhostUserListener(str(tmp_path / name), factory, **kw)  # type: ignore[arg-type]
        lst.start()
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.stop()


@pytest.fixture
def other_vm(make_listener: Callable[..., VhostUserListener]) -> Iterator[Frontend]:
    """A second VM on its own socket that must keep working through every test."""
    lst = make_listener("other.sock")
    fe = Frontend(lst.path)
    fe.start()
    assert fe.queues[1].roundtrip([b"before"], [16]) == b"before"
    yield fe
    assert fe.queues[1].roundtrip([b"after"], [16]) == b"after"
    fe.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def still_serves(path: str) -> None:
    """A fresh front end on the same socket gets a working device."""
    with Frontend(path) as fe:
        fe.start()
        assert fe.queues[1].roundtrip([b"fresh ", b"start"], [32]) == b"fresh start"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the happy path -------------------------------------------------------------


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_echo_on_every_queue(
    make_listener: Callable[..., VhostUserListener], max_inflight: int
) -> None:
    lst = make_listener(max_inflight=max_inflight)
    with Frontend(lst.path, queues=3) as fe:
        fe.start()
        for q in fe.queues:
            assert (
                q.roundtrip([b"queue ", str(q.index).encode()], [4, 4])
                == b"queue " + str(q.index).encode()
            )
            assert q.roundtrip([b"x" * 3000], [1000, 2000], indirect=True) == b"x" * 3000
        many = [fe.queues[1].add([b"%d" % i], [8]) for i in range(8)]
        got: dict[int, bytes] = {}
        while len(got) < 8:
            assert fe.queues[1].wait_call()
            for head, n in fe.queues[1].take_used():
                got[head] = fe.queues[1].reply(head, n)
        assert sorted(got.values()) == sorted(b"%d" % i for i in range(8))
        assert set(got) == set(many)


def test_stop_returns_avail_index_and_restart_resumes(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        for i in range(5):
            q.roundtrip([b"%d" % i], [4])
        assert fe.stop_queue(q) == 5
        # a chain made available while stopped is not served...
        head = q.add([b"while stopped"], [32])
        assert q.stays_unserved(0.3)
        # ...until the front end restarts the ring from the base it was given
        fe.start_queue(q, base=5)
        assert q.wait_call()
        assert q.take_used() == [(head, 13)]
        q.reply(head, 13)
        assert fe.stop_queue(q) == 6


def test_reconnect_after_disconnect(make_listener: Callable[..., VhostUserListener]) -> None:
    made, closed = Echo.made, Echo.closed
    threads = threading.active_count()
    lst = make_listener()
    for round_ in range(3):
        with Frontend(lst.path) as fe:
            fe.start()
            assert fe.queues[1].roundtrip([b"boot %d" % round_], [16]) == b"boot %d" % round_
        assert wait_for(lambda: lst.connection is None)
    assert lst.connections == 3
    assert Echo.made - made == 3 and Echo.closed - closed == 3  # one handler per connection
    assert wait_for(lambda: threading.active_count() <= threads + 1)  # only the accept thread


def test_second_front_end_is_refused_while_one_is_served(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        intruder = socket.socket(socket.AF_UNIX)
        intruder.connect(lst.path)
        intruder.settimeout(5)
        assert intruder.recv(1) == b""  # closed at once
        intruder.close()
        assert fe.queues[1].roundtrip([b"still mine"], [16]) == b"still mine"


def test_stale_socket_file_is_replaced_and_other_files_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    lst = VhostUserListener(str(path), Echo)
    lst.start()
    try:
        still_serves(str(path))
    finally:
        lst.stop()
    assert not path.exists()
    (tmp_path / "file").write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        VhostUserListener(str(tmp_path / "file"), Echo).start()


def test_pool_runs_handlers_side_by_side(make_listener: Callable[..., VhostUserListener]) -> None:
    gates: list[Gate] = []
    lock = threading.Lock()

    class Shared(Gate):
        def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
            with lock:
                gates.append(self)
            super().handle(reader, writer)

    shared = Shared()
    lst = make_listener(factory=lambda: shared, max_inflight=2)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        q.add([b"one"], [8])
        q.add([b"two"], [8])
        assert wait_for(lambda: len(gates) == 2)  # both in the handler at once
        shared.gate.set()
        got: list[tuple[int, int]] = []
        while len(got) < 2:
            assert q.wait_call()
            got += q.take_used()
        assert sorted(n for _, n in got) == [3, 3]


# -- hostile guest ----------------------------------------------------------------


def raw_chain(fe: Frontend, descs: list[tuple[int, int, int, int]]) -> None:
    q = fe.queues[1]
    for i, d in enumerate(descs):
        q.write_desc(i, *d)
    q.publish(0)
    q.do_kick()


def hostile(fe: Frontend) -> dict[str, list[tuple[int, int, int, int]]]:
    q = fe.queues[1]
    b = q.gpa(fe.ram.alloc(64))
    table = fe.ram.alloc(64)
    return {
        "loop": [(b, 4, DESC_F_NEXT, 1), (b, 4, DESC_F_NEXT, 0)],
        "longer than queue": [(q.gpa(table), 16 * (q.size + 1), DESC_F_INDIRECT, 0)],
        "outside memory": [(GPA_BASE + fe.ram.size + 4096, 64, DESC_F_WRITE, 0)],
        "overlaps used ring": [(b, 4, DESC_F_NEXT, 1), (q.gpa(q.used_off), 64, DESC_F_WRITE, 0)],
        "indirect bad length": [(q.gpa(table), 24, DESC_F_INDIRECT, 0)],
        "readable after writable": [(b, 4, DESC_F_WRITE | DESC_F_NEXT, 1), (b, 4, 0, 0)],
    }


@pytest.mark.parametrize(
    "case",
    [
        "loop",
        "longer than queue",
        "outside memory",
        "overlaps used ring",
        "indirect bad length",
        "readable after writable",
    ],
)
def test_hostile_ring_breaks_only_that_queue(
    case: str, make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        raw_chain(fe, hostile(fe)[case])
        assert q.err_signalled()  # SET_VRING_ERR's eventfd
        assert fe.queues[1].used_idx() == 0  # nothing returned from a bad chain
        conn = lst.connection
        assert conn is not None and conn.queues[1].broken
        # the broken queue is not processed any more...
        q.add([b"ignored"], [8])
        assert q.stays_unserved(0.3)
        # ...the other queue of the same device still is
        assert fe.queues[0].roundtrip([b"hiprio"], [8]) == b"hiprio"
        # and a front end reset of the ring (stop, start) brings it back
        os.eventfd_read(q.err)
        fe.stop_queue(q)
        fe.start_queue(q, base=q.avail_idx)
        assert q.roundtrip([b"again"], [8]) == b"again"
    still_serves(lst.path)


def test_avail_index_jump_breaks_the_queue(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        q.set_avail_idx(1000)
        q.do_kick()
        assert q.err_signalled()
    still_serves(lst.path)


def test_guest_that_never_consumes_used_entries(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        b = q.gpa(fe.ram.alloc(64))
        q.write_desc(0, b, 16, 0, 0)
        rounds = 40 * q.size  # the used ring wraps 40 times, never read
        for _ in range(rounds):
            if (q.avail_idx - q.used_idx()) & 0xFFFF >= q.size:
                assert wait_for(lambda: (q.avail_idx - q.used_idx()) & 0xFFFF < q.size)
            q.publish(0)
            q.do_kick()
        assert wait_for(lambda: q.used_idx() == rounds & 0xFFFF)
        conn = lst.connection
        assert conn is not None and not conn.queues[1].broken
        assert conn.queues[1].processed == rounds
    still_serves(lst.path)


def test_new_memory_table_while_a_request_is_in_flight(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    gates: list[Gate] = []

    def factory() -> Gate:
        gates.append(Gate())
        if len(gates) > 1:
            gates[-1].gate.set()  # only the first connection's handler is slow
        return gates[-1]

    lst = make_listener(factory=factory)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        head = q.add([b"slow request"], [32])
        assert gates[0].entered.wait(5)
        # the slow handler does not hold up control messages: a new table is acked
        t0 = time.monotonic()
        fe.set_mem_table()
        fe.acked(Request.SET_VRING_CALL, encode_u64(1), [q.call])
        assert time.monotonic() - t0 < 2
        gates[0].gate.set()
        assert q.wait_call()
        assert q.take_used() == [(head, 12)]
        assert q.reply(head, 12) == b"slow request"
        assert q.roundtrip([b"through the new table"], [32]) == b"through the new table"


def test_stop_with_a_stuck_handler_is_bounded(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    gates: list[Gate] = []

    def factory() -> Gate:
        gates.append(Gate())
        if len(gates) > 1:
            gates[-1].gate.set()  # only the first connection's handler is slow
        return gates[-1]

    lst = make_listener(factory=factory, stop_timeout=0.5)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        q.add([b"stuck"], [8])
        assert gates[0].entered.wait(5)
        t0 = time.monotonic()
        assert fe.stop_queue(q) == 1  # GET_VRING_BASE answered although the handler hangs
        assert time.monotonic() - t0 < 10  # stop_timeout 0.5 s twice, on a loaded host; not 30
        gates[0].gate.set()
        time.sleep(0.2)
        assert q.used_idx() == 0  # the late reply did not touch the stopped ring
    still_serves(lst.path)


# -- hostile front end ------------------------------------------------------------


def bad_messages(fe: Frontend) -> dict[str, Callable[[], None]]:
    q = fe.queues[1]
    r, w = os.pipe()
    fe.pipe = (r, w)  # type: ignore[attr-defined]
    table = struct.pack("<II", 1, 0) + struct.pack(
        "<QQQQ", GPA_BASE, fe.ram.size, 0x7F00_0000_0000, 0
    )
    too_big = struct.pack("<II", 1, 0) + struct.pack(
        "<QQQQ", GPA_BASE, fe.ram.size * 2, 0x7F00_0000_0000, 0
    )
    return {
        "mem table without fd": lambda: fe.send(Request.SET_MEM_TABLE, table),
        "mem table with 2 fds": lambda: fe.send(Request.SET_MEM_TABLE, table, [fe.memfd, fe.memfd]),
        "call with 2 fds": lambda: fe.send(Request.SET_VRING_CALL, encode_u64(1), [q.call, q.err]),
        "kick without fd": lambda: fe.send(Request.SET_VRING_KICK, encode_u64(1)),
        "kick that is a pipe": lambda: fe.send(Request.SET_VRING_KICK, encode_u64(1), [r]),
        "region past end of memfd": lambda: fe.send(Request.SET_MEM_TABLE, too_big, [fe.memfd]),
        "region fd is a pipe": lambda: fe.send(Request.SET_MEM_TABLE, table, [r]),
        "truncated header": lambda: (
            fe.send_raw(b"\x01\0\0\0\x01\0"),
            fe.sock.shutdown(socket.SHUT_WR),
        ),
        "truncated payload": lambda: (
            fe.send_raw(struct.pack("<III", 2, 1, 8) + b"\0\0"),
            fe.sock.shutdown(socket.SHUT_WR),
        ),
        "unknown request": lambda: fe.send_raw(struct.pack("<III", 99, 1, 0)),
        "bad size": lambda: fe.send_raw(struct.pack("<III", 2, 1, 4) + b"\0" * 4),
        "huge size": lambda: fe.send_raw(struct.pack("<III", 5, 1, 0xFFFFFFFF)),
        "bad version": lambda: fe.send_raw(struct.pack("<III", 1, 2, 0)),
        "refused log fd": lambda: fe.send(Request.SET_LOG_FD, b"", [q.err]),
        "queue index": lambda: fe.send(Request.SET_VRING_NUM, encode_vring_state(200, 8)),
        "nine fds": lambda: fe.send_raw(
            encode_message(Request.SET_VRING_CALL, encode_u64(1)), [q.call] * 9
        ),
    }


BAD = [
    "mem table without fd",
    "mem table with 2 fds",
    "call with 2 fds",
    "kick without fd",
    "kick that is a pipe",
    "region past end of memfd",
    "region fd is a pipe",
    "truncated header",
    "truncated payload",
    "unknown request",
    "bad size",
    "huge size",
    "bad version",
    "refused log fd",
    "queue index",
    "nine fds",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_front_end_message_closes_the_connection(
    case: str, make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener()
    before = open_fds()
    fe = Frontend(lst.path)
    try:
        fe.start()
        bad_messages(fe)[case]()
        assert fe.closed_by_backend()
    finally:
        fe.close()
        for fd in getattr(fe, "pipe", ()):
            os.close(fd)
    assert wait_for(lambda: lst.connection is None)
    still_serves(lst.path)
    # every fd the front end passed, and every per-connection one, is closed again
    assert wait_for(lambda: open_fds() <= before)


def test_bad_message_before_any_set_up(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.send_raw(b"\xff" * 12)
        assert fe.closed_by_backend()
        with pytest.raises((FrontendClosed, OSError)):
            fe.call(Request.GET_FEATURES)
    still_serves(lst.path)


# -- deferred completion, handler failures, in-flight bound --------------------------


class Deferring(Echo):
    """Defers chains that start with b"wait" until the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[bytes, ChainWriter]] = []

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        data = reader.read(reader.remaining)
        if data.startswith(b"wait"):
            writer.defer()
            self.waiting.append((data, writer))
            return
        if data == b"boom":
            writer.write(b"partial")
            raise RuntimeError("handler bug")
        writer.write(data[: writer.available])

    def release_all(self) -> None:
        items, self.waiting = self.waiting, []
        for data, writer in items:
            writer.write(b"done " + data)
            threading.Thread(target=writer.complete).start()


@pytest.mark.internal_error_expected  # its handler fails on purpose
def test_deferred_chain_does_not_stall_the_queue(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    handlers: list[Deferring] = []

    def factory() -> Deferring:
        handlers.append(Deferring())
        return handlers[-1]

    lst = make_listener(factory=factory)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        head = q.add([b"wait for a lock"], [32])
        assert q.roundtrip([b"meanwhile"], [16]) == b"meanwhile"  # same queue, served
        assert wait_for(lambda: len(handlers[0].waiting) == 1)
        handlers[0].release_all()
        assert q.wait_call()
        used = q.take_used()
        assert used == [(head, 20)]
        assert q.reply(head, 20) == b"done wait for a lock"
        # a handler that raises: its chain goes back with what it wrote
        assert q.roundtrip([b"boom"], [16]) == b"partial"
        assert q.roundtrip([b"fine"], [16]) == b"fine"


def test_in_flight_chains_are_bounded_by_the_queue_size(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    handlers: list[Deferring] = []

    def factory() -> Deferring:
        handlers.append(Deferring())
        return handlers[-1]

    lst = make_listener(factory=factory)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        q.add([b"wait"], [16])
        # the guest republishes the same (still in flight) head: a queue's worth...
        for _ in range(q.size - 1):
            q.publish(0)
        q.do_kick()
        assert wait_for(lambda: len(handlers[0].waiting) == q.size)
        # ...and another queue's worth, legal as far as the avail ring goes
        for _ in range(q.size):
            q.publish(0)
        q.do_kick()
        time.sleep(0.3)
        conn = lst.connection
        assert conn is not None and not conn.queues[1].broken
        assert len(handlers[0].waiting) == q.size  # not popped past the cap
        assert conn.queues[1].inflight == q.size
        handlers[0].release_all()
        assert wait_for(lambda: len(handlers[0].waiting) == q.size)  # the second batch
        handlers[0].release_all()
        assert wait_for(lambda: conn.queues[1].inflight == 0)
        assert wait_for(lambda: q.used_idx() == 2 * q.size)
    still_serves(lst.path)


# -- memory slots, reset, bounds ----------------------------------------------------


def test_add_and_remove_memory_regions(
    make_listener: Callable[..., VhostUserListener], other_vm: Frontend
) -> None:
    lst = make_listener(offer_mem_slots=True)
    with Frontend(lst.path) as fe:
        fe.init(extra_protocol=1 << ProtocolFeature.CONFIGURE_MEM_SLOTS)
        (slots,) = struct.unpack("<Q", fe.call(Request.GET_MAX_MEM_SLOTS))
        assert slots == 32
        fe.acked(Request.SET_FEATURES, encode_u64(fe.features))
        fe.acked(Request.ADD_MEM_REG, fe.single_region(), [fe.memfd])
        for q in fe.queues:
            fe.start_queue(q)
        q = fe.queues[1]
        assert q.roundtrip([b"slot"], [8]) == b"slot"
        # the region holding the rings goes away under a running queue: broken, not a crash
        fe.acked(Request.REM_MEM_REG, fe.single_region())
        assert q.err_signalled()
        os.eventfd_read(q.err)
        fe.acked(Request.ADD_MEM_REG, fe.single_region(), [fe.memfd])
        fe.stop_queue(q)
        fe.start_queue(q, base=q.avail_idx)
        assert q.roundtrip([b"back"], [8]) == b"back"
        # one region twice is refused (overlap), and closes the connection
        fe.send(Request.ADD_MEM_REG, fe.single_region(), [fe.memfd], need=True)
        assert fe.closed_by_backend()
    still_serves(lst.path)


def test_reset_owner_stops_the_queues(make_listener: Callable[..., VhostUserListener]) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        assert q.roundtrip([b"before reset"], [16]) == b"before reset"
        fe.acked(Request.RESET_OWNER)
        head = q.add([b"after reset"], [16])
        assert q.stays_unserved(0.3)  # a reset ring is not served
        fe.acked(Request.SET_FEATURES, encode_u64(fe.features))
        fe.start_queue(q, base=q.avail_idx - 1)  # the driver re-offers its pending chain
        assert q.wait_call()
        assert q.take_used() == [(head, 11)]


def test_queue_count_and_threads_are_bounded(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    base = threading.active_count()
    lst = make_listener(max_queues=3)
    with Frontend(lst.path, queues=3) as fe:
        fe.start()
        (nq,) = struct.unpack("<Q", fe.call(Request.GET_QUEUE_NUM))
        assert nq == 3
        for q in fe.queues:
            assert q.roundtrip([b"n"], [4]) == b"n"
        # accept thread + control thread + one per started queue
        assert threading.active_count() <= base + 2 + 3
        fe.send(Request.SET_VRING_NUM, encode_vring_state(3, 8))
        assert fe.closed_by_backend()
    assert wait_for(lambda: threading.active_count() <= base + 1)


def test_new_kick_fd_on_a_running_ring_does_not_replay_it(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        for i in range(3):
            assert q.roundtrip([b"%d" % i], [4]) == b"%d" % i
        new_kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.acked(Request.SET_VRING_KICK, encode_u64(1), [new_kick])
        os.close(q.kick)
        q.kick = new_kick
        assert q.roundtrip([b"after"], [8]) == b"after"
        time.sleep(0.2)
        assert q.take_used() == []  # the three earlier chains were not served again
        conn = lst.connection
        assert conn is not None and conn.queues[1].processed == 4


def test_a_stuck_handler_thread_ends_after_a_restart(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    gates: list[Gate] = []

    def factory() -> Gate:
        gates.append(Gate())
        return gates[-1]

    lst = make_listener(factory=factory, stop_timeout=0.3)
    with Frontend(lst.path) as fe:
        fe.start()
        q = fe.queues[1]
        q.add([b"stuck"], [8])
        assert gates[0].entered.wait(5)
        fe.stop_queue(q)
        fe.start_queue(q, base=q.avail_idx)
        threads = threading.active_count()
        gates[0].gate.set()  # the old queue thread returns from its handler...
        assert wait_for(lambda: threading.active_count() == threads - 1)  # ...and ends
        assert q.roundtrip([b"new"], [8]) == b"new"


def test_fds_from_the_front_end_are_close_on_exec(
    make_listener: Callable[..., VhostUserListener],
) -> None:
    lst = make_listener()
    with Frontend(lst.path) as fe:
        fe.start()
        conn = lst.connection
        assert conn is not None
        q = conn.queues[1]
        fds = [q.kick_fd, q.call_fd, q.err_fd]
        assert all(fd is not None and not os.get_inheritable(fd) for fd in fds)
