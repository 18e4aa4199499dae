"""vhost-user codec and back-end state machine, byte for byte, without sockets.

The vectors are written out as QEMU 7.2's hw/virtio/vhost-user.c puts them on
the wire (VhostUserHeader then the payload union member, little endian),
independently of the encoder under test.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p9share.virtiofs.vhost_user import (
    FEATURE_EVENT_IDX,
    FEATURE_INDIRECT_DESC,
    FEATURE_PROTOCOL_FEATURES,
    FEATURE_VERSION_1,
    BackendState,
    MemoryRegionSpec,
    Request,
    VhostUserError,
    VringAddr,
    encode_mem_table,
    encode_message,
    encode_vring_addr,
    parse_header,
)

FEATURES = FEATURE_VERSION_1 | FEATURE_PROTOCOL_FEATURES | FEATURE_EVENT_IDX | FEATURE_INDIRECT_DESC


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


def feed(st_: BackendState, wire: bytes, fds: tuple[int, ...] = ()):  # type: ignore[no-untyped-def]
    header = parse_header(wire[:12])
    return st_.receive(header, wire[12:], fds)


def negotiated(num_queues: int = 2, **kw: object) -> BackendState:
    s = BackendState(num_queues=num_queues, **kw)  # type: ignore[arg-type]
    feed(s, h("10000000 01000000 08000000 0900000000000000"))  # SET_PROTOCOL_FEATURES MQ|REPLY_ACK
    feed(s, h("02000000 01000000 08000000") + struct.pack("<Q", FEATURES))
    return s


# -- byte-for-byte vectors -------------------------------------------------------


def test_get_features_request_and_reply() -> None:
    s = BackendState(num_queues=2)
    ev = feed(s, h("01000000 01000000 00000000"))  # QEMU: .flags = VHOST_USER_VERSION, size 0
    assert ev.request == Request.GET_FEATURES
    # reply: same request, flags VERSION|REPLY (0x5), 8-byte u64
    assert s.reply(ev) == h("01000000 05000000 08000000 00000070 01000000")


def test_get_protocol_features_offers_mq_reply_ack_reset_device() -> None:
    s = BackendState(num_queues=2)
    ev = feed(s, h("0f000000 01000000 00000000"))
    # bits 0 (MQ), 3 (REPLY_ACK), 13 (RESET_DEVICE) = 0x2009
    assert s.reply(ev) == h("0f000000 05000000 08000000 0920000000000000")
    s2 = BackendState(num_queues=2, offer_mem_slots=True)
    ev = feed(s2, h("0f000000 01000000 00000000"))
    assert s2.reply(ev)[12:] == struct.pack("<Q", 0x2009 | 1 << 15)


def test_set_features_acks_with_need_reply() -> None:
    s = negotiated()
    ev = feed(s, h("02000000 09000000 08000000 00000070 01000000"))  # flags 0x9: NEED_REPLY
    assert ev.value == FEATURES and s.features == FEATURES
    assert s.event_idx and s.indirect
    assert s.reply(ev) == h("02000000 05000000 08000000 0000000000000000")


def test_no_ack_without_reply_ack_negotiated() -> None:
    s = BackendState(num_queues=2)
    ev = feed(s, h("03000000 09000000 00000000"))  # SET_OWNER asking for a reply
    assert s.reply(ev) == b""


def test_set_mem_table_as_qemu_sends_it() -> None:
    s = negotiated()
    wire = h(
        "05000000 09000000 28000000"  # SET_MEM_TABLE, need reply, 8 + 32 bytes
        "01000000 00000000"  # nregions 1, padding
        "0000000000000000 0000004000000000"  # guest_phys_addr 0, memory_size 1 GiB
        "00000040ff7f0000 0000000000000000"  # userspace_addr 0x7fff40000000, mmap_offset 0
    )
    ev = feed(s, wire, (7,))
    assert ev.value == (MemoryRegionSpec(0, 1 << 30, 0x7FFF40000000, 0),)
    assert ev.fds == (7,)
    assert s.reply(ev) == h("05000000 05000000 08000000 0000000000000000")
    assert (
        encode_message(Request.SET_MEM_TABLE, encode_mem_table(ev.value), need_reply=True) == wire
    )


def test_vring_set_up_and_get_vring_base() -> None:
    s = negotiated()
    feed(s, h("08000000 01000000 08000000 01000000 80000000"))  # SET_VRING_NUM q1 128
    feed(s, h("0a000000 01000000 08000000 01000000 00000000"))  # SET_VRING_BASE q1 0
    wire = h(
        "09000000 01000000 28000000"
        "01000000 00000000"  # index 1, flags 0
        "0000a0ff7f000000 0020a0ff7f000000 0010a0ff7f000000 0000000000000000"
    )  # desc, used, avail, log
    ev = feed(s, wire)
    assert ev.value == VringAddr(1, 0, 0x7FFFA00000, 0x7FFFA02000, 0x7FFFA01000, 0)
    assert encode_message(Request.SET_VRING_ADDR, encode_vring_addr(ev.value)) == wire
    ev = feed(s, h("0c000000 01000000 08000000 0100000000000000"), (9,))  # SET_VRING_KICK q1
    assert ev.index == 1 and ev.fd == 9
    assert not s.ring_ready(1)  # with protocol features a ring starts disabled
    feed(s, h("12000000 01000000 08000000 01000000 01000000"))  # SET_VRING_ENABLE q1 1
    assert s.ring_ready(1)
    ev = feed(s, h("0b000000 01000000 08000000 01000000 00000000"))  # GET_VRING_BASE q1
    assert not s.ring_ready(1)
    assert s.reply(ev, 0x1234) == h("0b000000 05000000 08000000 01000000 34120000")


def test_vring_call_without_fd_flag() -> None:
    s = negotiated()
    ev = feed(s, h("0d000000 01000000 08000000 0001000000000000"))  # q0 | NOFD (0x100)
    assert ev.index == 0 and ev.fds == ()


def test_get_queue_num_and_reset() -> None:
    s = negotiated(num_queues=3)
    ev = feed(s, h("11000000 01000000 00000000"))
    assert s.reply(ev) == h("11000000 05000000 08000000 0300000000000000")
    feed(s, h("04000000 01000000 00000000"))  # RESET_OWNER
    assert s.features == 0


def test_add_and_remove_mem_reg() -> None:
    s = BackendState(num_queues=1, offer_mem_slots=True)
    feed(s, h("10000000 01000000 08000000") + struct.pack("<Q", 1 << 15 | 1 << 3))
    ev = feed(s, h("24000000 01000000 00000000"))
    assert s.reply(ev) == h("24000000 05000000 08000000 2000000000000000")
    region = h("0000000000000000 0000100000000000 0000000000100000 0000000000000000")
    ev = feed(s, h("25000000 01000000 28000000 0000000000000000") + region, (5,))
    assert ev.value == MemoryRegionSpec(0, 0x100000, 0x100000000000, 0)
    assert s.regions == [ev.value]
    feed(s, h("26000000 01000000 28000000 0000000000000000") + region)
    assert s.regions == []
    with pytest.raises(VhostUserError, match="unknown region"):
        feed(s, h("26000000 01000000 28000000 0000000000000000") + region)


# -- what is refused --------------------------------------------------------------

REFUSALS = [
    ("truncated header", h("01000000 01000000"), (), "truncated header"),
    ("version 0", h("01000000 00000000 00000000"), (), "version"),
    ("version 2", h("01000000 02000000 00000000"), (), "version"),
    ("reply flag from front end", h("01000000 05000000 00000000"), (), "reply flag"),
    ("unknown flag", h("01000000 11000000 00000000"), (), "flags"),
    ("unknown request", h("63000000 01000000 00000000"), (), "unknown"),
    ("request 0", h("00000000 01000000 00000000"), (), "unknown"),
    ("SET_LOG_BASE", h("06000000 01000000 10000000") + bytes(16), (3,), "logging"),
    ("SET_LOG_FD", h("07000000 01000000 00000000"), (3,), "logging"),
    ("SET_BACKEND_REQ_FD", h("15000000 01000000 08000000") + bytes(8), (3,), "BACKEND_REQ"),
    ("GET_CONFIG", h("18000000 01000000 0c000000") + bytes(12), (), "CONFIG"),
    ("GET_INFLIGHT_FD", h("1f000000 01000000 00000000"), (), "INFLIGHT"),
    ("SET_FEATURES short", h("02000000 01000000 04000000 00000000"), (), "payload of 4"),
    ("GET_FEATURES with payload", h("01000000 01000000 08000000") + bytes(8), (), "payload"),
    ("SET_MEM_TABLE odd size", h("05000000 01000000 29000000") + bytes(41), (3,), "payload"),
    ("SET_MEM_TABLE 9 regions", h("05000000 01000000 28010000") + bytes(296), (), "payload"),
    ("SET_VRING_ADDR short", h("09000000 01000000 20000000") + bytes(32), (), "payload"),
]


@pytest.mark.parametrize(("name", "wire", "fds", "match"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_messages(name: str, wire: bytes, fds: tuple[int, ...], match: str) -> None:
    with pytest.raises(VhostUserError, match=match):
        feed(negotiated(), wire, fds)


def region(gpa: int, size: int, uaddr: int, off: int = 0) -> bytes:
    return struct.pack("<QQQQ", gpa, size, uaddr, off)


STATE_REFUSALS = [
    (
        "mem table without fd",
        Request.SET_MEM_TABLE,
        b"\1\0\0\0\0\0\0\0" + region(0, 4096, 0),
        (),
        "0 fds",
    ),
    (
        "mem table extra fd",
        Request.SET_MEM_TABLE,
        b"\1\0\0\0\0\0\0\0" + region(0, 4096, 0),
        (3, 4),
        "2 fds",
    ),
    ("mem table 0 regions", Request.SET_MEM_TABLE, bytes(8), (), "0 regions"),
    (
        "mem table count mismatch",
        Request.SET_MEM_TABLE,
        b"\2\0\0\0\0\0\0\0" + region(0, 4096, 0),
        (3,),
        "2 regions in 40",
    ),
    ("region size 0", Request.SET_MEM_TABLE, b"\1\0\0\0\0\0\0\0" + region(0, 0, 0), (3,), "size 0"),
    (
        "region wraps",
        Request.SET_MEM_TABLE,
        b"\1\0\0\0\0\0\0\0" + region(2**64 - 4096, 8192, 0),
        (3,),
        "wraps",
    ),
    (
        "regions overlap",
        Request.SET_MEM_TABLE,
        b"\2\0\0\0\0\0\0\0" + region(0, 8192, 0) + region(4096, 8192, 1 << 40),
        (3, 4),
        "overlap",
    ),
    ("kick without fd", Request.SET_VRING_KICK, struct.pack("<Q", 0), (), "0 fds"),
    ("call NOFD with fd", Request.SET_VRING_CALL, struct.pack("<Q", 0x100), (3,), "1 fds"),
    ("kick polling", Request.SET_VRING_KICK, struct.pack("<Q", 0x100), (), "polling"),
    (
        "vring fd unknown bits",
        Request.SET_VRING_ERR,
        struct.pack("<Q", 0x200),
        (3,),
        "unknown bits",
    ),
    ("queue index", Request.SET_VRING_CALL, struct.pack("<Q", 2), (3,), "queue 2"),
    ("num 0", Request.SET_VRING_NUM, struct.pack("<II", 0, 0), (), "power of two"),
    ("num 100", Request.SET_VRING_NUM, struct.pack("<II", 0, 100), (), "power of two"),
    ("num too big", Request.SET_VRING_NUM, struct.pack("<II", 0, 2048), (), "power of two"),
    ("base > 16 bits", Request.SET_VRING_BASE, struct.pack("<II", 0, 65536), (), "split-ring"),
    ("enable 2", Request.SET_VRING_ENABLE, struct.pack("<II", 0, 2), (), "ENABLE 2"),
    (
        "addr log flag",
        Request.SET_VRING_ADDR,
        struct.pack("<IIQQQQ", 0, 1, 0, 0, 0, 0),
        (),
        "logging",
    ),
    ("addr flags", Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 4, 0, 0, 0, 0), (), "flags"),
    ("kick before addr", Request.SET_VRING_KICK, struct.pack("<Q", 1), (3,), "before queue 1"),
    ("unoffered feature", Request.SET_FEATURES, struct.pack("<Q", FEATURES | 1 << 26), (), "never"),
    (
        "unoffered protocol",
        Request.SET_PROTOCOL_FEATURES,
        struct.pack("<Q", 1 << 5),
        (),
        "unoffered",
    ),
    ("add region unoffered", Request.ADD_MEM_REG, bytes(8) + region(0, 4096, 0), (3,), "MEM_SLOTS"),
    ("max slots unoffered", Request.GET_MAX_MEM_SLOTS, b"", (), "MEM_SLOTS"),
]


@pytest.mark.parametrize(
    ("name", "req", "payload", "fds", "match"), STATE_REFUSALS, ids=[r[0] for r in STATE_REFUSALS]
)
def test_refused_by_state(
    name: str, req: Request, payload: bytes, fds: tuple[int, ...], match: str
) -> None:
    with pytest.raises(VhostUserError, match=match):
        feed(negotiated(max_queue_size=1024), encode_message(req, payload), fds)


def test_enable_needs_protocol_features_and_ring_starts_enabled_without() -> None:
    s = BackendState(num_queues=1)
    feed(s, encode_message(Request.SET_FEATURES, struct.pack("<Q", FEATURE_VERSION_1)))
    with pytest.raises(VhostUserError, match="PROTOCOL_FEATURES"):
        feed(s, encode_message(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1)))
    feed(s, encode_message(Request.SET_VRING_NUM, struct.pack("<II", 0, 8)))
    feed(s, encode_message(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0, 4096, 2048, 0)))
    feed(s, encode_message(Request.SET_VRING_KICK, struct.pack("<Q", 0)), (3,))
    assert s.ring_ready(0)


def test_running_ring_cannot_be_reconfigured() -> None:
    s = negotiated()
    feed(s, encode_message(Request.SET_VRING_NUM, struct.pack("<II", 0, 8)))
    feed(s, encode_message(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0, 4096, 2048, 0)))
    feed(s, encode_message(Request.SET_VRING_KICK, struct.pack("<Q", 0)), (3,))
    for req, payload in [
        (Request.SET_VRING_NUM, struct.pack("<II", 0, 16)),
        (Request.SET_VRING_BASE, struct.pack("<II", 0, 5)),
        (Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0, 8192, 2048, 0)),
        (Request.SET_FEATURES, struct.pack("<Q", FEATURE_VERSION_1 | FEATURE_PROTOCOL_FEATURES)),
    ]:
        with pytest.raises(VhostUserError, match=r"running|runs"):
            feed(s, encode_message(req, payload))
    feed(s, encode_message(Request.GET_VRING_BASE, struct.pack("<II", 0, 0)))
    feed(s, encode_message(Request.SET_VRING_NUM, struct.pack("<II", 0, 16)))  # stopped: fine


def test_payload_shorter_than_header_says() -> None:
    s = negotiated()
    header = parse_header(h("02000000 01000000 08000000"))
    with pytest.raises(VhostUserError, match="truncated payload"):
        s.receive(header, b"\0" * 4, ())


@settings(max_examples=800, deadline=None)
@given(st.binary(min_size=12, max_size=300), st.lists(st.integers(0, 64), max_size=9))
def test_any_bytes_give_an_event_or_a_vhost_user_error(data: bytes, fds: list[int]) -> None:
    s = negotiated()
    try:
        header = parse_header(data[:12])
        s.receive(header, data[12 : 12 + header.size], fds)
    except VhostUserError:
        pass


@settings(max_examples=800, deadline=None)
@given(
    st.sampled_from(sorted(Request)),
    st.integers(0, 15),
    st.binary(max_size=300),
    st.lists(st.integers(0, 64), max_size=9),
)
def test_known_requests_with_any_payload(
    req: Request, flags: int, payload: bytes, fds: list[int]
) -> None:
    s = negotiated()
    wire = struct.pack("<III", req, flags, len(payload)) + payload
    try:
        ev = feed(s, wire, tuple(fds))
        s.reply(ev, 7)
    except VhostUserError:
        pass
