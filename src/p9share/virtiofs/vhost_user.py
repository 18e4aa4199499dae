"""vhost-user, the back-end side: a sans-IO message codec and state machine.

The front end (QEMU, cloud-hypervisor, ...) drives a vhost-user-fs device over a
Unix socket: a 12-byte header (u32 request, u32 flags, u32 payload size), the
payload, and file descriptors as SCM_RIGHTS ancillary data.  This module never
touches a socket, an fd or guest memory: the edge (device.py) reads a header,
asks `expected_payload` how many bytes follow, reads them, and hands
(header, payload, fds) to `BackendState.receive`, which validates everything the
front end controls and returns one typed event.  The edge acts on the event and
sends back `BackendState.reply(event, ...)`.

Anything malformed or out of order raises `VhostUserError`; the edge closes the
connection (and the fds it was given) and listens for the next front end.
Nothing here raises another exception type for any input.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "FEATURE_EVENT_IDX",
    "FEATURE_INDIRECT_DESC",
    "FEATURE_PROTOCOL_FEATURES",
    "FEATURE_VERSION_1",
    "HEADER_SIZE",
    "MAX_MEM_REGIONS",
    "BackendState",
    "Event",
    "Header",
    "MemoryRegionSpec",
    "ProtocolFeature",
    "Request",
    "VhostUserError",
    "VringAddr",
    "encode_message",
    "parse_header",
]


class VhostUserError(Exception):
    """The front end broke the protocol; the connection is closed."""


class Request(IntEnum):
    """Front-end to back-end request codes (vhost-user spec, "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(IntEnum):
    """Bit numbers of vhost-user protocol features."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# Virtio feature bits this back end can offer (virtio 1.2 §6, vhost-user spec).
FEATURE_INDIRECT_DESC = 1 << 28
FEATURE_EVENT_IDX = 1 << 29
FEATURE_PROTOCOL_FEATURES = 1 << 30  # VHOST_USER_F_PROTOCOL_FEATURES
FEATURE_VERSION_1 = 1 << 32
FEATURE_LOG_ALL = 1 << 26  # dirty logging for migration: never offered

HEADER_SIZE = 12
_HEADER = struct.Struct("<III")
_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")
_ADDR = struct.Struct("<IIQQQQ")
_REGION = struct.Struct("<QQQQ")
_MEMHDR = struct.Struct("<II")

VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
_KNOWN_FLAGS = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100  # SET_VRING_KICK/CALL/ERR: no fd rides with the message
VRING_F_LOG = 0x1  # SET_VRING_ADDR flags: log used-ring writes (migration)

MAX_MEM_REGIONS = 8  # SET_MEM_TABLE carries at most 8 (VHOST_MEMORY_BASELINE_NREGIONS)
MAX_QUEUE_SIZE = 32768  # virtio 1.2 §2.7: split queue size is at most 2^15

# Payload size each accepted request must carry exactly.  SET_MEM_TABLE is
# 8 + 32 * nregions and is checked against its own count.
_FIXED_SIZE: dict[int, int] = {
    Request.GET_FEATURES: 0,
    Request.SET_FEATURES: 8,
    Request.SET_OWNER: 0,
    Request.RESET_OWNER: 0,
    Request.SET_VRING_NUM: 8,
    Request.SET_VRING_ADDR: _ADDR.size,
    Request.SET_VRING_BASE: 8,
    Request.GET_VRING_BASE: 8,
    Request.SET_VRING_KICK: 8,
    Request.SET_VRING_CALL: 8,
    Request.SET_VRING_ERR: 8,
    Request.GET_PROTOCOL_FEATURES: 0,
    Request.SET_PROTOCOL_FEATURES: 8,
    Request.GET_QUEUE_NUM: 0,
    Request.SET_VRING_ENABLE: 8,
    Request.RESET_DEVICE: 0,
    Request.GET_MAX_MEM_SLOTS: 0,
    Request.ADD_MEM_REG: 8 + _REGION.size,
    Request.REM_MEM_REG: 8 + _REGION.size,
}
# Requests that are understood but refused unless a feature we never offer was
# negotiated: the reason is the error text.
_REFUSED: dict[int, str] = {
    Request.SET_LOG_BASE: "dirty logging (LOG_SHMFD, VHOST_F_LOG_ALL) is not offered",
    Request.SET_LOG_FD: "dirty logging (LOG_SHMFD, VHOST_F_LOG_ALL) is not offered",
    Request.SET_BACKEND_REQ_FD: "the back-end request channel (BACKEND_REQ) is not offered",
    Request.GET_CONFIG: "device config space (CONFIG) is not offered: QEMU keeps it",
    Request.SET_CONFIG: "device config space (CONFIG) is not offered: QEMU keeps it",
    Request.GET_INFLIGHT_FD: "INFLIGHT_SHMFD is not offered",
    Request.SET_INFLIGHT_FD: "INFLIGHT_SHMFD is not offered",
    Request.VRING_KICK: "INBAND_NOTIFICATIONS is not offered",
    Request.SET_STATUS: "STATUS is not offered",
    Request.GET_STATUS: "STATUS is not offered",
    Request.IOTLB_MSG: "IOMMU_PLATFORM is not offered",
    Request.SET_VRING_ENDIAN: "CROSS_ENDIAN is not offered",
    Request.POSTCOPY_ADVISE: "PAGEFAULT (postcopy) is not offered",
    Request.POSTCOPY_LISTEN: "PAGEFAULT (postcopy) is not offered",
    Request.POSTCOPY_END: "PAGEFAULT (postcopy) is not offered",
}
MAX_PAYLOAD = 8 + MAX_MEM_REGIONS * _REGION.size  # the largest accepted payload (264)


@dataclass(frozen=True, slots=True)
class Header:
    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(frozen=True, slots=True)
class MemoryRegionSpec:
    """One region of the front end's memory table (VhostUserMemoryRegion)."""

    guest_phys_addr: int
    size: int
    user_addr: int  # the front end's virtual address: vring addresses use these
    mmap_offset: int  # where the region starts in the fd


@dataclass(frozen=True, slots=True)
class VringAddr:
    index: int
    flags: int
    desc: int  # front-end virtual addresses
    used: int
    avail: int
    log: int


@dataclass(slots=True)
class Event:
    """One validated front-end request.

    `value` carries the request's argument: an int (features, vring num/base,
    enable), a VringAddr, a tuple of MemoryRegionSpec (SET_MEM_TABLE), one
    MemoryRegionSpec (ADD/REM_MEM_REG) or None.  `fd` is the file descriptor the
    request carries, if any; `fds` all of them (SET_MEM_TABLE: one per region).
    The edge owns the fds from here on and must close them.
    """

    request: Request
    need_reply: bool
    index: int = 0  # vring index for vring requests
    value: object = None
    fds: tuple[int, ...] = field(default=())

    @property
    def fd(self) -> int | None:
        return self.fds[0] if self.fds else None


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Decode and check a 12-byte header; `expected_payload` then says how much follows."""
    if len(data) != HEADER_SIZE:
        raise VhostUserError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    request, flags, size = _HEADER.unpack(data)
    if flags & FLAG_VERSION_MASK != VERSION:
        raise VhostUserError(f"unsupported vhost-user version {flags & FLAG_VERSION_MASK}")
    if flags & ~_KNOWN_FLAGS:
        raise VhostUserError(f"unknown header flags {flags:#x}")
    if flags & FLAG_REPLY:
        raise VhostUserError("a front-end request carries the reply flag")
    if request in _REFUSED:
        raise VhostUserError(f"{Request(request).name} refused: {_REFUSED[request]}")
    if request == Request.SET_MEM_TABLE:
        if size < _MEMHDR.size or size > MAX_PAYLOAD or (size - _MEMHDR.size) % _REGION.size:
            raise VhostUserError(f"SET_MEM_TABLE with a payload of {size} bytes")
    elif request in _FIXED_SIZE:
        want = _FIXED_SIZE[request]
        if size != want:
            name = Request(request).name
            raise VhostUserError(f"{name} with a payload of {size} bytes, expected {want}")
    else:
        raise VhostUserError(f"unknown or unsupported request {request}")
    return Header(request, flags, size)


def encode_message(
    request: int, payload: bytes = b"", *, reply: bool = False, need_reply: bool = False
) -> bytes:
    """A whole message as it goes on the wire (fds travel beside it)."""
    flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
    return _HEADER.pack(request, flags, len(payload)) + payload


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def encode_vring_state(index: int, num: int) -> bytes:
    return _STATE.pack(index, num)


def encode_vring_addr(addr: VringAddr) -> bytes:
    return _ADDR.pack(addr.index, addr.flags, addr.desc, addr.used, addr.avail, addr.log)


def encode_region(region: MemoryRegionSpec) -> bytes:
    return _REGION.pack(region.guest_phys_addr, region.size, region.user_addr, region.mmap_offset)


def encode_mem_table(regions: list[MemoryRegionSpec] | tuple[MemoryRegionSpec, ...]) -> bytes:
    return _MEMHDR.pack(len(regions), 0) + b"".join(encode_region(r) for r in regions)


def encode_single_region(region: MemoryRegionSpec) -> bytes:
    return _U64.pack(0) + encode_region(region)


def _decode_region(payload: bytes, offset: int) -> MemoryRegionSpec:
    gpa, size, uaddr, mmap_offset = _REGION.unpack_from(payload, offset)
    if size == 0:
        raise VhostUserError("memory region of size 0")
    end = 1 << 64
    if gpa + size > end or uaddr + size > end or mmap_offset + size > end:
        raise VhostUserError("memory region wraps around the 64-bit address space")
    return MemoryRegionSpec(gpa, size, uaddr, mmap_offset)


def _check_disjoint(regions: list[MemoryRegionSpec]) -> None:
    """Two regions may not claim the same guest-physical or front-end address."""
    for key in ("guest_phys_addr", "user_addr"):
        ranges = sorted((getattr(r, key), getattr(r, key) + r.size) for r in regions)
        for (_, end), (start, _) in itertools.pairwise(ranges):
            if start < end:
                raise VhostUserError(f"memory regions overlap ({key} {start:#x})")


@dataclass(slots=True)
class _Vring:
    num: int = 0
    addr: VringAddr | None = None
    base: int = 0
    started: bool = False  # SET_VRING_KICK starts, GET_VRING_BASE stops
    enabled: bool = False


class BackendState:
    """The back end's view of one front-end connection.

    It knows what was offered and negotiated, the memory table's shape and each
    vring's configuration, and refuses requests that do not fit.  The ring
    engine's own state (the avail index it reached) lives with the edge, which
    passes it to `reply` for GET_VRING_BASE.
    """

    def __init__(
        self,
        *,
        num_queues: int,
        max_queue_size: int = 1024,
        offer_mem_slots: bool = False,
        max_mem_slots: int = 32,
    ) -> None:
        if not 1 <= num_queues <= 255:
            raise ValueError("num_queues must be 1..255")
        if max_queue_size & (max_queue_size - 1) or not 1 <= max_queue_size <= MAX_QUEUE_SIZE:
            raise ValueError("max_queue_size must be a power of two up to 32768")
        self.num_queues = num_queues
        self.max_queue_size = max_queue_size
        self.max_mem_slots = max_mem_slots
        self.offered_features = (
            FEATURE_VERSION_1
            | FEATURE_PROTOCOL_FEATURES
            | FEATURE_EVENT_IDX
            | FEATURE_INDIRECT_DESC
        )
        self.offered_protocol = (
            (1 << ProtocolFeature.MQ)
            | (1 << ProtocolFeature.REPLY_ACK)
            | (1 << ProtocolFeature.RESET_DEVICE)
            | ((1 << ProtocolFeature.CONFIGURE_MEM_SLOTS) if offer_mem_slots else 0)
        )
        self.features = 0
        self.protocol_features = 0
        self.owner = False
        self.regions: list[MemoryRegionSpec] = []
        self.vrings = [_Vring() for _ in range(num_queues)]

    # -- queries the edge uses ------------------------------------------------

    def has_protocol(self, feature: ProtocolFeature) -> bool:
        return bool(self.protocol_features & (1 << feature))

    @property
    def event_idx(self) -> bool:
        return bool(self.features & FEATURE_EVENT_IDX)

    @property
    def indirect(self) -> bool:
        return bool(self.features & FEATURE_INDIRECT_DESC)

    def ring_ready(self, index: int) -> bool:
        """Whether the edge should be processing this ring now."""
        v = self.vrings[index]
        return v.started and v.enabled and v.addr is not None and v.num > 0

    def vring(self, index: int) -> tuple[int, VringAddr | None, int]:
        v = self.vrings[index]
        return v.num, v.addr, v.base

    # -- decoding -------------------------------------------------------------

    def receive(self, header: Header, payload: bytes, fds: tuple[int, ...] | list[int]) -> Event:
        """Validate one request against the protocol and this connection's state.

        On VhostUserError the caller still owns (and must close) `fds`.
        """
        if len(payload) != header.size:
            raise VhostUserError(f"truncated payload: {len(payload)} of {header.size} bytes")
        handler = _HANDLERS.get(header.request)
        if handler is None:
            raise VhostUserError(f"unknown or unsupported request {header.request}")
        return handler(self, Request(header.request), header.need_reply, payload, tuple(fds))

    def _want_fds(self, req: Request, fds: tuple[int, ...], n: int) -> None:
        if len(fds) != n:
            raise VhostUserError(f"{req.name} carries {len(fds)} fds, expected {n}")

    def _queue_index(self, req: Request, index: int) -> int:
        if index >= self.num_queues:
            raise VhostUserError(f"{req.name} for queue {index}, device has {self.num_queues}")
        return index

    def _on_get(self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]) -> Event:
        self._want_fds(req, fds, 0)
        if req == Request.GET_QUEUE_NUM and not self.has_protocol(ProtocolFeature.MQ):
            raise VhostUserError("GET_QUEUE_NUM without the MQ protocol feature")
        if req == Request.GET_MAX_MEM_SLOTS and not self.has_protocol(
            ProtocolFeature.CONFIGURE_MEM_SLOTS
        ):
            raise VhostUserError("GET_MAX_MEM_SLOTS without CONFIGURE_MEM_SLOTS")
        return Event(req, need)

    def _on_set_features(
        self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]
    ) -> Event:
        self._want_fds(req, fds, 0)
        (value,) = _U64.unpack(payload)
        if req == Request.SET_FEATURES:
            if value & ~self.offered_features:
                extra = value & ~self.offered_features
                raise VhostUserError(f"SET_FEATURES acks features never offered: {extra:#x}")
            if any(v.started for v in self.vrings) and (
                (value ^ self.features) & (FEATURE_EVENT_IDX | FEATURE_INDIRECT_DESC)
            ):
                raise VhostUserError("SET_FEATURES changes ring features while a ring runs")
            self.features = value
        else:
            if value & ~self.offered_protocol:
                extra = value & ~self.offered_protocol
                raise VhostUserError(f"SET_PROTOCOL_FEATURES acks unoffered bits {extra:#x}")
            self.protocol_features = value
        return Event(req, need, value=value)

    def _on_owner(self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]) -> Event:
        self._want_fds(req, fds, 0)
        if req == Request.SET_OWNER:
            self.owner = True
            return Event(req, need)
        if req == Request.RESET_DEVICE and not self.has_protocol(ProtocolFeature.RESET_DEVICE):
            raise VhostUserError("RESET_DEVICE without the RESET_DEVICE protocol feature")
        # RESET_OWNER / RESET_DEVICE: rings and acked features go back to their
        # initial state; the memory table and protocol features stay.
        self.features = 0
        self.vrings = [_Vring() for _ in range(self.num_queues)]
        return Event(req, need)

    def _on_mem_table(
        self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]
    ) -> Event:
        nregions, _padding = _MEMHDR.unpack_from(payload)
        if nregions == 0 or nregions > MAX_MEM_REGIONS:
            raise VhostUserError(f"SET_MEM_TABLE with {nregions} regions")
        if _MEMHDR.size + nregions * _REGION.size != len(payload):
            raise VhostUserError(f"SET_MEM_TABLE: {nregions} regions in {len(payload)} bytes")
        self._want_fds(req, fds, nregions)
        regions = [
            _decode_region(payload, _MEMHDR.size + i * _REGION.size) for i in range(nregions)
        ]
        _check_disjoint(regions)
        self.regions = regions
        return Event(req, need, value=tuple(regions), fds=fds)

    def _on_mem_reg(self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]) -> Event:
        if not self.has_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            raise VhostUserError(f"{req.name} without CONFIGURE_MEM_SLOTS")
        region = _decode_region(payload, 8)
        if req == Request.ADD_MEM_REG:
            self._want_fds(req, fds, 1)
            if len(self.regions) >= self.max_mem_slots:
                raise VhostUserError(f"ADD_MEM_REG past the {self.max_mem_slots} slots offered")
            _check_disjoint([*self.regions, region])
            self.regions.append(region)
        else:
            # QEMU 7.2 may pass the region's fd along; it is not needed.
            if len(fds) > 1:
                raise VhostUserError(f"REM_MEM_REG carries {len(fds)} fds")
            key = (region.guest_phys_addr, region.size, region.user_addr)
            kept = [r for r in self.regions if (r.guest_phys_addr, r.size, r.user_addr) != key]
            if len(kept) == len(self.regions):
                raise VhostUserError(f"REM_MEM_REG of an unknown region {key[0]:#x}")
            self.regions = kept
        return Event(req, need, value=region, fds=fds)

    def _on_vring_state(
        self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]
    ) -> Event:
        self._want_fds(req, fds, 0)
        index, num = _STATE.unpack(payload)
        index = self._queue_index(req, index)
        v = self.vrings[index]
        if req == Request.SET_VRING_NUM:
            if v.started:
                raise VhostUserError(f"SET_VRING_NUM on running queue {index}")
            if num == 0 or num & (num - 1) or num > self.max_queue_size:
                raise VhostUserError(
                    f"SET_VRING_NUM {num}: not a power of two up to {self.max_queue_size}"
                )
            v.num = num
        elif req == Request.SET_VRING_BASE:
            if v.started:
                raise VhostUserError(f"SET_VRING_BASE on running queue {index}")
            if num > 0xFFFF:
                raise VhostUserError(f"SET_VRING_BASE {num} is not a split-ring index")
            v.base = num
        elif req == Request.GET_VRING_BASE:
            v.started = False
        else:  # SET_VRING_ENABLE
            if not self.features & FEATURE_PROTOCOL_FEATURES:
                raise VhostUserError("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
            if num > 1:
                raise VhostUserError(f"SET_VRING_ENABLE {num}")
            v.enabled = bool(num)
        return Event(req, need, index=index, value=num)

    def _on_vring_addr(
        self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]
    ) -> Event:
        self._want_fds(req, fds, 0)
        addr = VringAddr(*_ADDR.unpack(payload))
        self._queue_index(req, addr.index)
        if addr.flags & ~VRING_F_LOG:
            raise VhostUserError(f"SET_VRING_ADDR flags {addr.flags:#x}")
        if addr.flags & VRING_F_LOG:
            raise VhostUserError("SET_VRING_ADDR asks for used-ring logging, not offered")
        v = self.vrings[addr.index]
        if v.started:
            raise VhostUserError(f"SET_VRING_ADDR on running queue {addr.index}")
        v.addr = addr
        return Event(req, need, index=addr.index, value=addr)

    def _on_vring_fd(self, req: Request, need: bool, payload: bytes, fds: tuple[int, ...]) -> Event:
        (u64,) = _U64.unpack(payload)
        if u64 & ~(VRING_IDX_MASK | VRING_NOFD):
            raise VhostUserError(f"{req.name} payload {u64:#x} has unknown bits")
        index = self._queue_index(req, u64 & VRING_IDX_MASK)
        nofd = bool(u64 & VRING_NOFD)
        self._want_fds(req, fds, 0 if nofd else 1)
        if req == Request.SET_VRING_KICK:
            if nofd:
                raise VhostUserError("SET_VRING_KICK without an fd (polling) is not supported")
            v = self.vrings[index]
            if v.addr is None or v.num == 0:
                raise VhostUserError(f"SET_VRING_KICK before queue {index} has a size and address")
            v.started = True
            if not self.features & FEATURE_PROTOCOL_FEATURES:
                v.enabled = True  # without protocol features a ring starts enabled
        return Event(req, need, index=index, fds=fds)

    # -- replies --------------------------------------------------------------

    def reply(self, event: Event, vring_base: int = 0) -> bytes:
        """The bytes to send back for `event` once the edge has acted on it.

        GET_VRING_BASE needs the avail index the ring engine reached.  Requests
        without a reply of their own are acknowledged (u64 0) when REPLY_ACK was
        negotiated and the front end asked; otherwise nothing is sent.
        """
        req = event.request
        if req == Request.GET_FEATURES:
            return encode_message(req, _U64.pack(self.offered_features), reply=True)
        if req == Request.GET_PROTOCOL_FEATURES:
            return encode_message(req, _U64.pack(self.offered_protocol), reply=True)
        if req == Request.GET_QUEUE_NUM:
            return encode_message(req, _U64.pack(self.num_queues), reply=True)
        if req == Request.GET_MAX_MEM_SLOTS:
            return encode_message(req, _U64.pack(self.max_mem_slots), reply=True)
        if req == Request.GET_VRING_BASE:
            return encode_message(req, _STATE.pack(event.index, vring_base & 0xFFFF), reply=True)
        if event.need_reply and self.has_protocol(ProtocolFeature.REPLY_ACK):
            return encode_message(req, _U64.pack(0), reply=True)
        return b""


_HANDLERS: dict[int, Callable[[BackendState, Request, bool, bytes, tuple[int, ...]], Event]] = {
    Request.GET_FEATURES: BackendState._on_get,
    Request.GET_PROTOCOL_FEATURES: BackendState._on_get,
    Request.GET_QUEUE_NUM: BackendState._on_get,
    Request.GET_MAX_MEM_SLOTS: BackendState._on_get,
    Request.SET_FEATURES: BackendState._on_set_features,
    Request.SET_PROTOCOL_FEATURES: BackendState._on_set_features,
    Request.SET_OWNER: BackendState._on_owner,
    Request.RESET_OWNER: BackendState._on_owner,
    Request.RESET_DEVICE: BackendState._on_owner,
    Request.SET_MEM_TABLE: BackendState._on_mem_table,
    Request.ADD_MEM_REG: BackendState._on_mem_reg,
    Request.REM_MEM_REG: BackendState._on_mem_reg,
    Request.SET_VRING_NUM: BackendState._on_vring_state,
    Request.SET_VRING_BASE: BackendState._on_vring_state,
    Request.GET_VRING_BASE: BackendState._on_vring_state,
    Request.SET_VRING_ENABLE: BackendState._on_vring_state,
    Request.SET_VRING_ADDR: BackendState._on_vring_addr,
    Request.SET_VRING_KICK: BackendState._on_vring_fd,
    Request.SET_VRING_CALL: BackendState._on_vring_fd,
    Request.SET_VRING_ERR: BackendState._on_vring_fd,
}
