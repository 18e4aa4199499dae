"""Strict decoding: every malformed message is a ProtocolError, never anything
else, and never a silently accepted message."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p9share.protocol import messages as m
from p9share.protocol.constants import MAXWELEM, Dialect, MsgType
from p9share.protocol.wire import ProtocolError, Qid, decode_string, encode_string

from .strategies import CLASS_DIALECTS, FUZZ, frame, message_strategy, u16

L, U, P = Dialect.P9P2000L, Dialect.P9P2000U, Dialect.P9P2000

STAT = m.Stat(1, 2, Qid(0x80, 3, 4), 0o755, 5, 6, 7, "n", "u", "g", "m", "ext", 1, 2, 3)

SAMPLES: list[tuple[str, Dialect, m.Message]] = [
    ("Tversion", L, m.Tversion(8192, "9P2000.L")),
    ("Tattach.L", L, m.Tattach(1, 0xFFFFFFFF, "user", "/export", 1000)),
    ("Tattach.u", U, m.Tattach(1, 0xFFFFFFFF, "user", "/export", 1000)),
    ("Tauth", P, m.Tauth(1, "user", "")),
    ("Twalk", L, m.Twalk(1, 2, ["a", "bb", "ccc"])),
    ("Rwalk", L, m.Rwalk([Qid(0x80, 1, 2), Qid(0, 3, 4)])),
    ("Twrite", L, m.Twrite(1, 2, b"payload")),
    ("Rread", U, m.Rread(b"xyz")),
    ("Rgetattr", L, m.Rgetattr(1, Qid(1, 2, 3), *range(3, 21))),
    ("Tlcreate", L, m.Tlcreate(1, "name", 0o102, 0o644, 0)),
    ("Tlock", L, m.Tlock(1, 1, 0, 0, 10, 99, "host")),
    ("Rreaddir", L, m.Rreaddir(m.encode_dirent(Qid(0, 0, 1), 1, 8, b"f"))),
    ("Rerror.u", U, m.Rerror("bad", 22)),
    ("Tcreate.u", U, m.Tcreate(1, "n", 0o644, 2, "target")),
    ("Rstat", P, m.Rstat(STAT)),
    ("Rstat.u", U, m.Rstat(STAT)),
    ("Twstat.u", U, m.Twstat(4, STAT)),
    ("Rflush", L, m.Rflush()),
]
SAMPLE_IDS = [s[0] for s in SAMPLES]
SAMPLE_PARAMS = [s[1:] for s in SAMPLES]


def with_size(raw: bytes) -> bytes:
    """raw with its size field rewritten to its real length."""
    return struct.pack("<I", len(raw)) + raw[4:]


def body_of(mtype: int, body: bytes, dialect: Dialect) -> m.Message:
    return m.decode_body(mtype, memoryview(body), dialect)


# ------------------------------------------------------------- truncation --


@pytest.mark.parametrize(("dialect", "msg"), SAMPLE_PARAMS, ids=SAMPLE_IDS)
def test_truncated_at_every_length(dialect: Dialect, msg: m.Message) -> None:
    raw = msg.encode(3, dialect)
    tag, decoded = m.decode_message(raw, dialect)  # the whole message is fine
    assert tag == 3
    assert decoded.encode(tag, dialect) == raw
    for n in range(len(raw)):
        cut = raw[:n]
        # as is: the size field no longer matches (or the header is incomplete)
        with pytest.raises(ProtocolError):
            m.decode_message(cut, dialect)
        if n >= 7:
            # with a consistent size field the body decoder itself must object
            with pytest.raises(ProtocolError):
                m.decode_message(with_size(cut), dialect)
            with pytest.raises(ProtocolError):
                body_of(msg.TYPE, cut[7:], dialect)


@pytest.mark.parametrize(("dialect", "msg"), SAMPLE_PARAMS, ids=SAMPLE_IDS)
@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 3, b"\x00" * 13])
def test_trailing_bytes(dialect: Dialect, msg: m.Message, extra: bytes) -> None:
    raw = msg.encode(3, dialect)
    with pytest.raises(ProtocolError):
        m.decode_message(raw + extra, dialect)  # size field says less
    with pytest.raises(ProtocolError, match="trailing"):
        m.decode_message(with_size(raw + extra), dialect)


def test_short_header() -> None:
    for n in range(7):
        with pytest.raises(ProtocolError):
            m.decode_message(b"\x07\x00\x00\x00\x64\xff\xff"[:n])
    with pytest.raises(ProtocolError):
        m.decode_message(struct.pack("<IBH", 6, 109, 0) + b"")


def test_size_field_larger_than_frame() -> None:
    raw = m.Rflush().encode(1)
    with pytest.raises(ProtocolError):
        m.decode_message(struct.pack("<I", 8) + raw[4:])


# ---------------------------------------------------------------- strings --


def test_string_length_past_end() -> None:
    body = struct.pack("<I", 8192) + struct.pack("<H", 100) + b"9P2000.L"
    with pytest.raises(ProtocolError, match="past the end"):
        body_of(MsgType.TVERSION, body, L)
    # a length field that is itself cut short
    with pytest.raises(ProtocolError):
        body_of(MsgType.TVERSION, struct.pack("<I", 8192) + b"\x08", L)
    # one byte past the end
    with pytest.raises(ProtocolError):
        body_of(MsgType.TVERSION, struct.pack("<IH", 8192, 9) + b"9P2000.L", L)
    with pytest.raises(ProtocolError):
        decode_string(b"\x05\x00abcd", 0)
    assert decode_string(b"\x04\x00abcd", 0) == ("abcd", 6)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"\xfe\xff",
        b"a\x80b",  # stray continuation byte
        b"\xc3",  # truncated two-byte sequence
        b"\xc0\xaf",  # overlong '/'
        b"\xe0\x80\xaf",  # overlong '/', three bytes
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
    ],
)
def test_invalid_utf8(bad: bytes) -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_string(struct.pack("<H", len(bad)) + bad, 0)
    # inside a message: Twalk name, Tlcreate name, Rerror ename, stat name
    body = struct.pack("<IIH", 1, 2, 1) + struct.pack("<H", len(bad)) + bad
    with pytest.raises(ProtocolError):
        body_of(MsgType.TWALK, body, L)
    good = m.Tlcreate(1, "x", 0, 0, 0).encode(0)
    evil = good[:11] + struct.pack("<H", len(bad)) + bad + good[14:]
    with pytest.raises(ProtocolError):
        m.decode_message(with_size(evil), L)
    with pytest.raises(ProtocolError):
        body_of(MsgType.RERROR, struct.pack("<H", len(bad)) + bad + b"\0\0\0\0", U)


@pytest.mark.parametrize("bad", [b"\x00", b"a\x00", b"\x00b", b"a\x00b", b"\xc3\xa9\x00"])
def test_nul_in_string(bad: bytes) -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        decode_string(struct.pack("<H", len(bad)) + bad, 0)
    body = struct.pack("<IIH", 1, 2, 1) + struct.pack("<H", len(bad)) + bad
    with pytest.raises(ProtocolError, match="NUL"):
        body_of(MsgType.TWALK, body, L)
    with pytest.raises(ProtocolError, match="NUL"):
        body_of(MsgType.RREADLINK, struct.pack("<H", len(bad)) + bad, L)


def test_encoder_refuses_what_the_decoder_refuses() -> None:
    with pytest.raises(ValueError):
        encode_string("a\x00b")
    with pytest.raises(ValueError):
        encode_string("x" * 0x10000)
    assert encode_string("x" * 0xFFFF)[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        m.Twalk(1, 2, ["a"] * (MAXWELEM + 1)).encode(0)
    with pytest.raises(ValueError):
        m.Rwalk([Qid(0, 0, 0)] * (MAXWELEM + 1)).encode(0)
    with pytest.raises(ValueError):
        m.Rreadlink("a\x00").encode(0)


# ------------------------------------------------------------ walk counts --


def test_nwname_limit() -> None:
    names = b"".join(encode_string(f"n{i}") for i in range(MAXWELEM + 1))
    ok = struct.pack("<IIH", 1, 2, MAXWELEM) + names[: -len(encode_string("n16"))]
    assert body_of(MsgType.TWALK, ok, L) == m.Twalk(1, 2, [f"n{i}" for i in range(MAXWELEM)])
    bad = struct.pack("<IIH", 1, 2, MAXWELEM + 1) + names
    with pytest.raises(ProtocolError, match="nwname"):
        body_of(MsgType.TWALK, bad, L)
    with pytest.raises(ProtocolError, match="nwname"):
        body_of(MsgType.TWALK, struct.pack("<IIH", 1, 2, 0xFFFF), L)
    # count says 2, one name present
    with pytest.raises(ProtocolError):
        body_of(MsgType.TWALK, struct.pack("<IIH", 1, 2, 2) + encode_string("a"), L)
    # nwname missing entirely
    with pytest.raises(ProtocolError):
        body_of(MsgType.TWALK, struct.pack("<II", 1, 2), L)


def test_nwqid_limit() -> None:
    q = struct.pack("<BIQ", 0x80, 1, 2)
    ok = struct.pack("<H", MAXWELEM) + q * MAXWELEM
    assert body_of(MsgType.RWALK, ok, L) == m.Rwalk([Qid(0x80, 1, 2)] * MAXWELEM)
    with pytest.raises(ProtocolError, match="nwqid"):
        body_of(MsgType.RWALK, struct.pack("<H", MAXWELEM + 1) + q * (MAXWELEM + 1), L)
    with pytest.raises(ProtocolError):
        body_of(MsgType.RWALK, struct.pack("<H", 2) + q + q[:12], L)


# ------------------------------------------------------------------- data --


@pytest.mark.parametrize(
    ("mtype", "prefix"),
    [
        (MsgType.RREAD, b""),
        (MsgType.RREADDIR, b""),
        (MsgType.TWRITE, struct.pack("<IQ", 1, 0)),
    ],
)
def test_data_count_larger_than_bytes_present(mtype: int, prefix: bytes) -> None:
    for count, present in [(1, 0), (10, 9), (0xFFFFFFFF, 5), (0x80000000, 0)]:
        body = prefix + struct.pack("<I", count) + b"x" * present
        with pytest.raises(ProtocolError, match="exceeds"):
            body_of(mtype, body, L)
    # count smaller than the bytes present: trailing bytes
    with pytest.raises(ProtocolError, match="trailing"):
        body_of(mtype, prefix + struct.pack("<I", 2) + b"xyz", L)
    # count missing
    with pytest.raises(ProtocolError):
        body_of(mtype, prefix + b"\x01\x00", L)


def test_decoded_data_is_exactly_the_payload() -> None:
    raw = m.Twrite(1, 2, b"hello").encode(0)
    _, msg = m.decode_message(raw)
    assert isinstance(msg, m.Twrite)
    assert bytes(msg.data) == b"hello"


# ------------------------------------------------------------------- stat --


def _stat_bodies(dialect: Dialect) -> dict[str, bytes]:
    enc = STAT.encode(dialect)  # size[2] + body
    inner = len(enc) - 2
    return {
        # outer n says more than the stat holds (and the message ends there)
        "outer too big": struct.pack("<H", len(enc) + 1) + enc,
        # outer n says less: the stat runs past it
        "outer too small": struct.pack("<H", len(enc) - 1) + enc,
        # inner size says more than its contents, outer agrees with it
        "inner too big": struct.pack("<HH", len(enc) + 1, inner + 1) + enc[2:] + b"\0",
        # inner size says less than its contents
        "inner too small": struct.pack("<HH", len(enc), inner - 1) + enc[2:],
        # inner size far too small for the fixed part
        "inner tiny": struct.pack("<HH", 4, 2) + b"\0\0",
        "inner zero": struct.pack("<HH", 2, 0),
        # outer n missing
        "no n": b"\x01",
    }


@pytest.mark.parametrize("dialect", [P, U], ids=lambda d: d.value)
@pytest.mark.parametrize("case", list(_stat_bodies(P)))
def test_stat_size_mismatch(dialect: Dialect, case: str) -> None:
    enc = STAT.encode(dialect)
    good = m.decode_body(MsgType.RSTAT, memoryview(struct.pack("<H", len(enc)) + enc), dialect)
    assert isinstance(good, m.Rstat)
    assert good.stat.name == "n"
    body = _stat_bodies(dialect)[case]
    with pytest.raises(ProtocolError):
        body_of(MsgType.RSTAT, body, dialect)
    with pytest.raises(ProtocolError):
        body_of(MsgType.TWSTAT, struct.pack("<I", 1) + body, dialect)


def test_stat_of_another_dialect_is_refused() -> None:
    # a .u stat read as 9P2000 has 15 unexplained bytes; a 9P2000 stat read as .u is short
    dotu = STAT.encode(U)
    plain = STAT.encode(P)
    with pytest.raises(ProtocolError, match="does not match"):
        m.Stat.decode(dotu, 0, P)
    with pytest.raises(ProtocolError):
        m.Stat.decode(plain, 0, U)
    with pytest.raises(ProtocolError):
        m.decode_stats(dotu + plain[:-1], U)
    with pytest.raises(ProtocolError):
        m.decode_stats(b"\x00", P)
    assert m.decode_stats(dotu + dotu, U) == [STAT, STAT]


def test_truncated_dirents() -> None:
    one = m.encode_dirent(Qid(0, 0, 1), 1, 8, b"name")
    for n in range(1, len(one)):
        with pytest.raises(ProtocolError):
            m.decode_dirents(one + one[:n])
    # NUL and bad UTF-8 in entry names
    with pytest.raises(ProtocolError):
        m.decode_dirents(m.encode_dirent(Qid(0, 0, 1), 1, 8, b"a\x00"))
    with pytest.raises(ProtocolError):
        m.decode_dirents(m.encode_dirent(Qid(0, 0, 1), 1, 8, b"\xff"))
    assert m.decode_dirents(b"") == []


# ----------------------------------------------------------- message type --


KNOWN = {int(c.TYPE) for c in m.ALL_MESSAGES}


@pytest.mark.parametrize("mtype", [t for t in range(256) if t not in KNOWN])
def test_unknown_message_type(mtype: int) -> None:
    for d in Dialect:
        with pytest.raises(ProtocolError, match="unknown message type"):
            m.decode_message(frame(mtype, 1, b""), d)
        with pytest.raises(ProtocolError, match="unknown message type"):
            m.decode_message(frame(mtype, 1, b"\0" * 16), d)


def test_terror_is_unknown() -> None:
    assert MsgType.TERROR not in KNOWN
    with pytest.raises(ProtocolError):
        m.decode_message(frame(MsgType.TERROR, 0, encode_string("x")))


# ------------------------------------------------------------------- fuzz --

ALL_TYPES = sorted(KNOWN)


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A frame with a correct size field, a mostly-known type and a random body."""
    mtype = draw(st.one_of(st.sampled_from(ALL_TYPES), st.integers(0, 255)))
    return frame(mtype, draw(u16), draw(st.binary(max_size=120)))


@st.composite
def mutated_message(draw: st.DrawFn) -> tuple[bytes, Dialect]:
    """A valid encoding with a few bytes changed, removed or inserted."""
    cls, dialect = draw(st.sampled_from(CLASS_DIALECTS))
    raw = bytearray(draw(message_strategy(cls)).encode(draw(u16), dialect))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        i = draw(st.integers(0, len(raw)))
        if op == "set" and i < len(raw):
            raw[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i : i + draw(st.integers(1, 4))]
        else:
            raw[i:i] = draw(st.binary(min_size=1, max_size=4))
    if draw(st.booleans()) and len(raw) >= 4:
        raw[:4] = struct.pack("<I", len(raw))  # keep the size field honest
    return bytes(raw), dialect


def _decode_only_protocol_errors(raw: bytes, dialect: Dialect) -> None:
    try:
        tag, msg = m.decode_message(raw, dialect)
    except ProtocolError:
        return
    # whatever decodes re-encodes to the very same bytes
    assert isinstance(msg, m.Message)
    assert m.encode_message(msg, tag, dialect) == raw


@FUZZ
@given(raw=st.binary(max_size=200), dialect=st.sampled_from(list(Dialect)))
def test_fuzz_decode_raw_bytes(raw: bytes, dialect: Dialect) -> None:
    _decode_only_protocol_errors(raw, dialect)


@FUZZ
@given(raw=framed_garbage(), dialect=st.sampled_from(list(Dialect)))
def test_fuzz_decode_framed(raw: bytes, dialect: Dialect) -> None:
    _decode_only_protocol_errors(raw, dialect)


@FUZZ
@given(case=mutated_message())
def test_fuzz_decode_mutated(case: tuple[bytes, Dialect]) -> None:
    raw, dialect = case
    _decode_only_protocol_errors(raw, dialect)
