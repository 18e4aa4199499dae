"""ServerConnection: framing, validation, version negotiation, error replies."""

from __future__ import annotations

import errno
import itertools
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p9share.protocol import messages as m
from p9share.protocol.connection import (
    BadRequest,
    Event,
    FatalError,
    Request,
    ServerConnection,
    negotiate_version,
    parse_version,
)
from p9share.protocol.constants import (
    DEFAULT_MAX_MSIZE,
    MIN_MSIZE,
    NOFID,
    NOTAG,
    Dialect,
    MsgType,
)
from p9share.protocol.wire import Qid

from .strategies import (
    CLASS_DIALECTS,
    FUZZ,
    expected_after_roundtrip,
    frame,
    message_strategy,
    u16,
)

L, U, P = Dialect.P9P2000L, Dialect.P9P2000U, Dialect.P9P2000


def drain(conn: ServerConnection) -> list[Event]:
    out: list[Event] = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def negotiated(version: str = "9P2000.L", msize: int = 8192, **kw: object) -> ServerConnection:
    conn = ServerConnection(**kw)  # type: ignore[arg-type]
    conn.receive_data(m.Tversion(msize, version).encode(NOTAG, P))
    (ev,) = drain(conn)
    assert isinstance(ev, Request)
    assert isinstance(ev.msg, m.Tversion)
    reply = conn.version(ev.msg)
    assert reply.version == version
    return conn


def joined(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(parts)


# ---------------------------------------------------------------- framing --


def test_frames_split_byte_by_byte() -> None:
    conn = negotiated()
    msgs: list[m.Message] = [
        m.Tattach(0, NOFID, "u", "", 0),
        m.Twalk(0, 1, ["a", "b"]),
        m.Tlopen(1, 0),
        m.Twrite(1, 0, b"x" * 300),
        m.Tclunk(1),
    ]
    frames = [msg.encode(i + 1, L) for i, msg in enumerate(msgs)]
    stream = b"".join(frames)
    events: list[Event] = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        events.extend(drain(conn))
        # an event comes out exactly when its last byte goes in
        assert sum(len(f) for f in frames[: len(events)]) + conn.buffered == i + 1
        assert conn.buffered < len(frames[min(len(events), len(frames) - 1)])
    assert events == [Request(i + 1, msg) for i, msg in enumerate(msgs)]
    assert conn.buffered == 0


def test_partial_frame_waits() -> None:
    conn = negotiated()
    raw = m.Tclunk(7).encode(2)
    conn.receive_data(raw[:3])
    assert conn.next_event() is None  # not even a size field yet
    conn.receive_data(raw[3:-1])
    assert conn.next_event() is None
    assert conn.buffered == len(raw) - 1
    conn.receive_data(raw[-1:])
    assert conn.next_event() == Request(2, m.Tclunk(7))
    assert conn.next_event() is None


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_several_frames_in_one_call(kind: type) -> None:
    conn = negotiated()
    msgs = [m.Tclunk(i) for i in range(10)] + [m.Tgetattr(3, 0x7FF), m.Tflush(4)]
    stream = b"".join(msg.encode(100 + i) for i, msg in enumerate(msgs))
    tail = m.Tclunk(99).encode(50)
    conn.receive_data(kind(stream + tail[:5]))
    assert drain(conn) == [Request(100 + i, msg) for i, msg in enumerate(msgs)]
    assert conn.buffered == 5
    conn.receive_data(tail[5:])
    assert drain(conn) == [Request(50, m.Tclunk(99))]


@pytest.mark.parametrize("size", [0, 1, 4, 6])
def test_size_smaller_than_header_is_fatal(size: int) -> None:
    conn = negotiated()
    good = m.Tclunk(1).encode(1)
    conn.receive_data(good + struct.pack("<I", size) + good * 3)
    events = drain(conn)
    assert events[0] == Request(1, m.Tclunk(1))
    assert isinstance(events[1], FatalError)
    assert len(events) == 2
    conn.receive_data(good)
    assert conn.next_event() is None  # nothing more, ever


def test_size_larger_than_msize_is_fatal() -> None:
    conn = negotiated(msize=8192)
    # exactly msize is fine
    big = m.Twrite(1, 0, b"x" * (8192 - 7 - 16)).encode(1)
    assert len(big) == 8192
    conn.receive_data(big)
    assert isinstance(conn.next_event(), Request)
    # one byte more is fatal, as soon as the size field is in, before the body
    conn.receive_data(struct.pack("<I", 8193))
    ev = conn.next_event()
    assert isinstance(ev, FatalError)
    assert "8193" in ev.reason
    conn.receive_data(m.Tclunk(1).encode(1))
    assert drain(conn) == []


def test_size_limit_before_negotiation_is_max_msize() -> None:
    conn = ServerConnection(max_msize=MIN_MSIZE)
    conn.receive_data(struct.pack("<I", MIN_MSIZE + 1))
    assert isinstance(conn.next_event(), FatalError)
    assert conn.next_event() is None
    with pytest.raises(ValueError):
        ServerConnection(max_msize=MIN_MSIZE - 1)


def test_negotiated_msize_limits_incoming_frames() -> None:
    conn = negotiated(msize=MIN_MSIZE, max_msize=65536)
    assert conn.msize == MIN_MSIZE
    conn.receive_data(m.Twrite(1, 0, b"x" * MIN_MSIZE).encode(1))
    assert isinstance(conn.next_event(), FatalError)


# --------------------------------------------------------- bad requests --


def test_request_before_tversion() -> None:
    conn = ServerConnection()
    conn.receive_data(m.Tattach(0, NOFID, "u", "", 0).encode(1) + m.Tclunk(0).encode(2))
    events = drain(conn)
    assert [type(e) for e in events] == [BadRequest, BadRequest]
    assert isinstance(events[0], BadRequest)
    assert (events[0].tag, events[0].mtype) == (1, MsgType.TATTACH)
    assert conn.dialect is None
    # the connection survives and still accepts a Tversion
    conn.receive_data(m.Tversion(8192, "9P2000.L").encode(NOTAG))
    (ev,) = drain(conn)
    assert ev == Request(NOTAG, m.Tversion(8192, "9P2000.L"))


def test_notag_on_other_requests() -> None:
    conn = negotiated()
    conn.receive_data(m.Tclunk(1).encode(NOTAG) + m.Tclunk(1).encode(NOTAG - 1))
    bad, good = drain(conn)
    assert isinstance(bad, BadRequest)
    assert bad.tag == NOTAG
    assert bad.errno == errno.EINVAL
    assert good == Request(NOTAG - 1, m.Tclunk(1))


NOT_REQUESTS = {
    L: [MsgType.TOPEN, MsgType.TCREATE, MsgType.TSTAT, MsgType.TWSTAT, MsgType.TLERROR,
        MsgType.TERROR, MsgType.RLERROR, MsgType.RVERSION, MsgType.RGETATTR, MsgType.RWALK,
        MsgType.RERROR, 0, 1, 99, 200, 255],
    U: [MsgType.TLOPEN, MsgType.TGETATTR, MsgType.TREADDIR, MsgType.TLCREATE, MsgType.TLERROR,
        MsgType.TERROR, MsgType.RERROR, MsgType.RSTAT, MsgType.RLERROR, 0, 99, 200],
    P: [MsgType.TLOPEN, MsgType.TSTATFS, MsgType.TERROR, MsgType.ROPEN, MsgType.RERROR, 42],
}  # fmt: skip


def _sample(cls: type[m.Message]) -> m.Message:
    """A simple well-formed instance of cls."""
    if cls is m.Tversion:
        return m.Tversion(8192, "9P2000.L")
    values = {
        "u8": 1, "u16": 1, "u32": 1, "u64": 1, "s": "x", "qid": Qid(0, 0, 1), "wnames": ["a"],
        "qids": [], "data": b"d", "stat": m.Stat(), "n_uname": 0, "ext": "", "errno": 1,
    }  # fmt: skip
    return cls(**{n: values[k] for n, k in cls.FIELDS})


@pytest.mark.parametrize(
    ("dialect", "mtype"), [(d, t) for d, ts in NOT_REQUESTS.items() for t in ts], ids=str
)
def test_not_a_request_of_the_dialect(dialect: Dialect, mtype: int) -> None:
    conn = negotiated(dialect.value)
    # a well-formed body where a class exists, so only the type is wrong
    cls = m.MESSAGE_BY_TYPE.get(mtype)
    body = _sample(cls).encode(0, dialect)[7:] if cls else b""
    conn.receive_data(frame(mtype, 5, body) + m.Tclunk(1).encode(6))
    bad, good = drain(conn)
    assert isinstance(bad, BadRequest)
    assert (bad.tag, bad.mtype, bad.errno) == (5, mtype, errno.EOPNOTSUPP)
    assert good == Request(6, m.Tclunk(1))


REQUESTS = [(c, d) for c, d in CLASS_DIALECTS if c.TYPE % 2 == 0 and c is not m.Tlerror]


@pytest.mark.parametrize(
    ("cls", "dialect"), REQUESTS, ids=lambda p: getattr(p, "__name__", None) or p.value
)
def test_every_request_of_the_dialect_is_accepted(cls: type[m.Message], dialect: Dialect) -> None:
    conn = negotiated(dialect.value)
    msg = _sample(cls)
    conn.receive_data(msg.encode(9, dialect))
    assert drain(conn) == [Request(9, expected_after_roundtrip(msg, dialect))]


def test_tlerror_is_rejected_even_though_it_has_a_codec() -> None:
    conn = negotiated()
    conn.receive_data(m.Tlerror().encode(1))
    (ev,) = drain(conn)
    assert isinstance(ev, BadRequest)
    assert ev.errno == errno.EOPNOTSUPP


def test_malformed_body_is_a_bad_request_and_the_connection_survives() -> None:
    conn = negotiated()
    walk = m.Twalk(1, 2, ["a"]).encode(3)
    conn.receive_data(walk[:-1] + b"\x00" + m.Tclunk(1).encode(4))  # NUL in a name
    bad, good = drain(conn)
    assert isinstance(bad, BadRequest)
    assert (bad.tag, bad.mtype, bad.errno) == (3, MsgType.TWALK, errno.EPROTO)
    assert good == Request(4, m.Tclunk(1))
    # a body with trailing bytes
    conn.receive_data(frame(MsgType.TCLUNK, 5, b"\x01\x00\x00\x00\x00"))
    (ev,) = drain(conn)
    assert isinstance(ev, BadRequest)
    assert ev.errno == errno.EPROTO


def test_malformed_tversion() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(MsgType.TVERSION, NOTAG, b"\x00\x20\x00\x00\x09\x00abc"))
    (ev,) = drain(conn)
    assert isinstance(ev, BadRequest)
    assert (ev.tag, ev.mtype) == (NOTAG, MsgType.TVERSION)


def test_dialect_fields_follow_the_negotiated_dialect() -> None:
    att = m.Tattach(0, NOFID, "user", "/x", 1234)
    for d in Dialect:
        conn = negotiated(d.value)
        conn.receive_data(att.encode(1, d))
        (ev,) = drain(conn)
        expected = att if d.has_n_uname else m.Tattach(0, NOFID, "user", "/x")
        assert ev == Request(1, expected)
        # the .L encoding under 9P2000 has 4 trailing bytes
        conn.receive_data(att.encode(2, L))
        (ev,) = drain(conn)
        if d is P:
            assert isinstance(ev, BadRequest)
        else:
            assert isinstance(ev, Request)


# ------------------------------------------------------ version handling --


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        (8192, DEFAULT_MAX_MSIZE, 8192),
        (DEFAULT_MAX_MSIZE * 4, DEFAULT_MAX_MSIZE, DEFAULT_MAX_MSIZE),
        (131072 + 24, 65536, 65536),
        (MIN_MSIZE, MIN_MSIZE, MIN_MSIZE),
        (0xFFFFFFFF, 500000, 500000),
    ],
)
def test_msize_is_the_minimum(client: int, server: int, expected: int) -> None:
    conn = ServerConnection(max_msize=server)
    reply = conn.version(m.Tversion(client, "9P2000.L"))
    assert reply == m.Rversion(expected, "9P2000.L")
    assert conn.msize == expected
    assert conn.dialect is L


@pytest.mark.parametrize("client", [0, 1, 512, MIN_MSIZE - 1])
def test_msize_below_4096_is_unknown(client: int) -> None:
    conn = ServerConnection()
    reply = conn.version(m.Tversion(client, "9P2000.L"))
    assert reply.version == "unknown"
    assert reply.msize <= client
    assert conn.dialect is None
    conn.receive_data(m.Tclunk(1).encode(1))
    (ev,) = drain(conn)
    assert isinstance(ev, BadRequest)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("9P2000.L", "9P2000.L"),
        ("9P2000.u", "9P2000.u"),
        ("9P2000", "9P2000"),
        ("9P2000.foo", "9P2000"),
        ("9P2000.l", "9P2000"),
        ("9P2000.U", "9P2000"),
        ("9P2000.L.x", "9P2000"),
        ("9P2000.", "9P2000"),
        ("9P", "unknown"),
        ("9P1999", "unknown"),
        ("9P20000", "unknown"),
        ("9p2000.L", "unknown"),
        ("", "unknown"),
        ("unknown", "unknown"),
        ("9P2000 ", "unknown"),
    ],
)
def test_version_strings(version: str, expected: str) -> None:
    reply = negotiate_version(m.Tversion(8192, version), DEFAULT_MAX_MSIZE)
    assert reply == m.Rversion(8192, expected)
    conn = ServerConnection()
    conn.version(m.Tversion(8192, version))
    assert conn.dialect == (None if expected == "unknown" else Dialect(expected))


def test_parse_version() -> None:
    assert parse_version("9P2000.L") is L
    assert parse_version("9P2000.u") is U
    assert parse_version("9P2000") is P
    assert parse_version("9P2000.bar") is P
    assert parse_version("9P") is None


def test_dialects_the_server_does_not_offer() -> None:
    only_l = frozenset({L})
    conn = ServerConnection(dialects=only_l)
    assert conn.version(m.Tversion(8192, "9P2000.u")).version == "unknown"
    assert conn.version(m.Tversion(8192, "9P2000")).version == "unknown"
    assert conn.version(m.Tversion(8192, "9P2000.L")).version == "9P2000.L"


def test_tversion_resets_the_dialect() -> None:
    conn = negotiated("9P2000.L", msize=65536)
    # Tversion is accepted at any time and decodes the same in every dialect
    conn.receive_data(m.Tversion(8192, "9P2000.u").encode(NOTAG))
    (ev,) = drain(conn)
    assert isinstance(ev, Request)
    assert isinstance(ev.msg, m.Tversion)
    assert conn.version(ev.msg) == m.Rversion(8192, "9P2000.u")
    assert (conn.dialect, conn.msize) == (U, 8192)
    conn.receive_data(m.Tlopen(1, 0).encode(1, L) + m.Topen(1, 0).encode(2, U))
    bad, good = drain(conn)
    assert isinstance(bad, BadRequest)
    assert good == Request(2, m.Topen(1, 0))
    # a failed negotiation leaves no dialect and restores the frame limit
    assert conn.version(m.Tversion(8192, "bogus")).version == "unknown"
    assert conn.dialect is None
    assert conn.msize == conn.max_msize
    conn.receive_data(m.Topen(1, 0).encode(3, U))
    (ev,) = drain(conn)
    assert isinstance(ev, BadRequest)


def test_tversion_with_a_tag_other_than_notag_is_still_a_tversion() -> None:
    conn = ServerConnection()
    conn.receive_data(m.Tversion(8192, "9P2000.L").encode(0))
    assert drain(conn) == [Request(0, m.Tversion(8192, "9P2000.L"))]


# ---------------------------------------------------------------- replies --


def test_error_reply_per_dialect() -> None:
    assert negotiated("9P2000.L").error_reply(errno.ENOENT) == m.Rlerror(errno.ENOENT)
    assert negotiated("9P2000.L").error_reply(errno.ENOENT, "text") == m.Rlerror(errno.ENOENT)
    u = negotiated("9P2000.u")
    assert u.error_reply(errno.ENOENT) == m.Rerror(os.strerror(errno.ENOENT), errno.ENOENT)
    assert u.error_reply(errno.EIO, "custom") == m.Rerror("custom", errno.EIO)
    p = negotiated("9P2000")
    assert p.error_reply(errno.EACCES) == m.Rerror(os.strerror(errno.EACCES))
    assert p.error_reply(errno.EACCES, "nope") == m.Rerror("nope")
    # on the wire: errno only in .u
    raw_u = joined(u.encode(4, u.error_reply(errno.ENOENT)))
    assert m.decode_message(raw_u, U) == (4, m.Rerror(os.strerror(errno.ENOENT), errno.ENOENT))
    raw_p = joined(p.encode(4, p.error_reply(errno.ENOENT)))
    assert len(raw_p) == len(raw_u) - 4
    assert m.decode_message(raw_p, P) == (4, m.Rerror(os.strerror(errno.ENOENT)))
    ll = negotiated("9P2000.L")
    assert joined(ll.encode(4, ll.error_reply(errno.ENOENT))) == m.Rlerror(2).encode(4)


def test_error_reply_before_negotiation() -> None:
    conn = ServerConnection()
    reply = conn.error_reply(errno.EPROTO)
    assert isinstance(reply, m.Rerror)
    assert m.decode_message(joined(conn.encode(1, reply)), P)[1] == reply


def test_replies_encode_in_the_negotiated_dialect() -> None:
    conn = negotiated("9P2000.u")
    st_ = m.Stat(name="f", extension="e", n_uid=1)
    assert joined(conn.encode(2, m.Rstat(st_))) == m.Rstat(st_).encode(2, U)


@pytest.mark.parametrize("version", ["9P2000.L", "9P2000.u", "9P2000"])
def test_oversized_reply_becomes_an_error(version: str) -> None:
    conn = negotiated(version, msize=MIN_MSIZE)
    d = Dialect(version)
    fits = m.Rread(b"x" * (MIN_MSIZE - 11))
    assert joined(conn.encode(7, fits)) == fits.encode(7, d)
    assert len(fits.encode(7, d)) == MIN_MSIZE
    too_big = m.Rread(b"x" * (MIN_MSIZE - 10))
    tag, reply = m.decode_message(joined(conn.encode(7, too_big)), d)
    assert tag == 7
    assert reply == conn.error_reply(errno.EMSGSIZE)


def test_rversion_reply_encodes() -> None:
    conn = ServerConnection()
    reply = conn.version(m.Tversion(8192, "9P2000.L"))
    assert joined(conn.encode(NOTAG, reply)) == m.Rversion(8192, "9P2000.L").encode(NOTAG)


# ------------------------------------------------------------------- fuzz --


@st.composite
def chunked_streams(draw: st.DrawFn) -> list[bytes]:
    """A stream that often starts with a good Tversion, then valid requests, framed
    garbage and raw garbage, cut at arbitrary points."""
    parts: list[bytes] = []
    if draw(st.booleans()):
        version = draw(st.sampled_from(["9P2000.L", "9P2000.u", "9P2000", "9P2000.x", "?"]))
        parts.append(m.Tversion(draw(st.integers(0, 70000)), version).encode(NOTAG))
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            cls, dialect = draw(st.sampled_from(CLASS_DIALECTS))
            parts.append(draw(message_strategy(cls)).encode(draw(u16), dialect))
        elif choice == 1:
            body = draw(st.binary(max_size=64))
            parts.append(frame(draw(st.integers(0, 255)), draw(u16), body))
        elif choice == 2:
            parts.append(m.Tversion(draw(st.integers(0, 2**32 - 1)), "9P2000.L").encode(NOTAG))
        else:
            parts.append(draw(st.binary(max_size=16)))
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(chunks=chunked_streams(), max_msize=st.sampled_from([MIN_MSIZE, 65536, DEFAULT_MAX_MSIZE]))
def test_fuzz_connection_never_raises(chunks: list[bytes], max_msize: int) -> None:
    conn = ServerConnection(max_msize=max_msize)
    fatal = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while (ev := conn.next_event()) is not None:
            assert not fatal, "an event after a FatalError"
            if isinstance(ev, FatalError):
                fatal = True
            elif isinstance(ev, BadRequest):
                reply = conn.error_reply(ev.errno)
                assert len(joined(conn.encode(ev.tag, reply))) <= conn.msize
            else:
                assert isinstance(ev, Request)
                if isinstance(ev.msg, m.Tversion):
                    rv = conn.version(ev.msg)
                    assert rv.msize <= ev.msg.msize
                    assert rv.msize <= max_msize
                    assert len(joined(conn.encode(ev.tag, rv))) <= max(conn.msize, 100)
                else:
                    assert conn.dialect is not None
                    assert ev.msg.TYPE in m.DIALECT_MESSAGES[conn.dialect]
                    assert ev.msg.TYPE % 2 == 0
                    assert ev.tag != NOTAG


@FUZZ
@given(raw=st.binary(max_size=300), negotiate=st.sampled_from([None, "9P2000.L", "9P2000.u"]))
def test_fuzz_connection_raw_bytes(raw: bytes, negotiate: str | None) -> None:
    conn = negotiated(negotiate) if negotiate else ServerConnection()
    conn.receive_data(raw)
    events = drain(conn)
    assert all(isinstance(e, Request | BadRequest | FatalError) for e in events)
    assert not any(isinstance(e, FatalError) for e in events[:-1])
