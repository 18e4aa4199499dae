"""Property tests: every message round-trips in every dialect that defines it."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p9share.protocol import messages as m
from p9share.protocol.constants import MAXWELEM, Dialect, MsgType

from .strategies import (
    ABSENT_KINDS,
    CLASS_DIALECTS,
    FAST,
    KIND_STRATEGIES,
    THOROUGH,
    default_of,
    dialects_of,
    expected_after_roundtrip,
    message_strategy,
    qids,
    stats,
    text,
    u8,
    u16,
    u64,
)


def _id(p: object) -> str:
    return p.__name__ if isinstance(p, type) else str(getattr(p, "value", p))


# ---------------------------------------------------------------- coverage --


def test_every_message_class_has_a_strategy() -> None:
    for cls in m.ALL_MESSAGES:
        kinds = [k for _, k in cls.FIELDS]
        missing = [k for k in kinds if k not in KIND_STRATEGIES]
        assert not missing, f"{cls.__name__}: no strategy for field kinds {missing}"
        # FIELDS must describe every dataclass field, in order.
        names = [n for n, _ in cls.FIELDS]
        assert names == [f.name for f in dataclasses.fields(cast(Any, cls))], cls.__name__
        # Dialect-dependent fields need a default to decode to when absent.
        for name, kind in cls.FIELDS:
            if any(kind in a for a in ABSENT_KINDS.values()):
                default_of(cls, name)
        message_strategy(cls).validate()


def test_every_class_is_tested_in_some_dialect() -> None:
    tested = {cls for cls, _ in CLASS_DIALECTS}
    assert tested == set(m.ALL_MESSAGES)
    assert [c for c in m.ALL_MESSAGES if not dialects_of(c)] == [m.Tlerror]


def test_message_table_is_consistent() -> None:
    assert len(m.MESSAGE_BY_TYPE) == len(m.ALL_MESSAGES)
    for cls in m.ALL_MESSAGES:
        assert m.MESSAGE_BY_TYPE[int(cls.TYPE)] is cls
        # R = T + 1, and T is even
        assert (cls.__name__[0] == "T") == (cls.TYPE % 2 == 0), cls.__name__
    for d, types in m.DIALECT_MESSAGES.items():
        for t in types:
            assert int(t) in m.MESSAGE_BY_TYPE, (d, t)
        # every request in a dialect has its reply there, and vice versa
        for t in types:
            partner = t + 1 if t % 2 == 0 else t - 1
            if t not in (MsgType.RERROR, MsgType.RLERROR):
                assert partner in types, (d, t)
    base = {
        MsgType.TVERSION, MsgType.TAUTH, MsgType.TATTACH, MsgType.TFLUSH, MsgType.TWALK,
        MsgType.TREAD, MsgType.TWRITE, MsgType.TCLUNK, MsgType.TREMOVE,
    }  # fmt: skip
    for d in Dialect:
        assert base <= m.DIALECT_MESSAGES[d]
    dotl = m.DIALECT_MESSAGES[Dialect.P9P2000L]
    for t in (MsgType.TOPEN, MsgType.TCREATE, MsgType.TSTAT, MsgType.TWSTAT, MsgType.RERROR):
        assert t not in dotl
    for d in (Dialect.P9P2000, Dialect.P9P2000U):
        assert MsgType.TLOPEN not in m.DIALECT_MESSAGES[d]
        assert MsgType.RLERROR not in m.DIALECT_MESSAGES[d]
    for types in m.DIALECT_MESSAGES.values():
        assert MsgType.TLERROR not in types
        assert MsgType.TERROR not in types


# --------------------------------------------------------------- roundtrip --


@pytest.mark.parametrize(("cls", "dialect"), CLASS_DIALECTS, ids=_id)
@FAST
@given(data=st.data(), tag=u16)
def test_roundtrip(cls: type[m.Message], dialect: Dialect, data: st.DataObject, tag: int) -> None:
    msg = data.draw(message_strategy(cls))
    raw = m.encode_message(msg, tag, dialect)
    size, mtype, rtag = struct.unpack_from("<IBH", raw)
    assert (size, mtype, rtag) == (len(raw), cls.TYPE, tag)
    assert b"".join(m.encode_parts(msg, tag, dialect)) == raw
    assert msg.encode(tag, dialect) == raw

    got_tag, decoded = m.decode_message(raw, dialect)
    assert got_tag == tag
    assert type(decoded) is cls
    assert decoded == expected_after_roundtrip(msg, dialect)
    # and back: bytes -> message -> the same bytes
    assert m.encode_message(decoded, got_tag, dialect) == raw


@pytest.mark.parametrize("dialect", list(Dialect), ids=_id)
@FAST
@given(data=st.data())
def test_absent_fields_decode_to_defaults(dialect: Dialect, data: st.DataObject) -> None:
    """Fields a dialect lacks are not encoded at all: changing them changes nothing."""
    for cls in m.ALL_MESSAGES:
        absent = [n for n, k in cls.FIELDS if k in ABSENT_KINDS[dialect]]
        if not absent:
            continue
        msg = data.draw(message_strategy(cls))
        other = dataclasses.replace(cast(Any, msg), **{n: default_of(cls, n) for n in absent})
        assert m.encode_message(msg, 1, dialect) == m.encode_message(other, 1, dialect)
        _, decoded = m.decode_message(m.encode_message(msg, 1, dialect), dialect)
        for n in absent:
            assert getattr(decoded, n) == default_of(cls, n)


def test_dialect_dependent_layouts() -> None:
    """n_uname, extension and errno add exactly their bytes in the dialects that have them."""
    att = m.Tattach(1, 2, "u", "a", 1000)
    sizes = {d: len(m.encode_message(att, 1, d)) for d in Dialect}
    assert sizes[Dialect.P9P2000U] == sizes[Dialect.P9P2000L] == sizes[Dialect.P9P2000] + 4
    err = m.Rerror("boom", 5)
    assert (
        len(m.encode_message(err, 1, Dialect.P9P2000U))
        == len(m.encode_message(err, 1, Dialect.P9P2000)) + 4
    )
    cr = m.Tcreate(1, "n", 0o644, 0, "ext")
    assert (
        len(m.encode_message(cr, 1, Dialect.P9P2000U))
        == len(m.encode_message(cr, 1, Dialect.P9P2000)) + 5
    )
    st_ = m.Stat(name="x", extension="e")
    assert len(st_.encode(Dialect.P9P2000U)) == len(st_.encode(Dialect.P9P2000)) + 3 + 12


# ------------------------------------------------------- stats and dirents --


@pytest.mark.parametrize("dialect", [Dialect.P9P2000, Dialect.P9P2000U], ids=_id)
@THOROUGH
@given(entries=st.lists(stats, max_size=6))
def test_stat_directory_read_roundtrip(dialect: Dialect, entries: list[m.Stat]) -> None:
    raw = b"".join(s.encode(dialect) for s in entries)
    decoded = m.decode_stats(raw, dialect)
    if dialect is not Dialect.P9P2000U:
        entries = [
            dataclasses.replace(
                s, extension="", n_uid=0xFFFFFFFF, n_gid=0xFFFFFFFF, n_muid=0xFFFFFFFF
            )
            for s in entries
        ]
    assert decoded == entries
    assert b"".join(s.encode(dialect) for s in decoded) == raw
    for s in entries:
        one = s.encode(dialect)
        assert int.from_bytes(one[:2], "little") == len(one) - 2
        assert m.Stat.decode(one, 0, dialect) == (s, len(one))


dirents = st.builds(m.Dirent, qid=qids, offset=u64, type=u8, name=text)


@THOROUGH
@given(entries=st.lists(dirents, max_size=8), tag=u16)
def test_readdir_entries_roundtrip(entries: list[m.Dirent], tag: int) -> None:
    data = b"".join(m.encode_dirent(e.qid, e.offset, e.type, e.name.encode()) for e in entries)
    assert len(data) == sum(m.dirent_size(e.name.encode()) for e in entries)
    assert m.decode_dirents(data) == entries
    raw = m.Rreaddir(data).encode(tag, Dialect.P9P2000L)
    _, r = m.decode_message(raw, Dialect.P9P2000L)
    assert isinstance(r, m.Rreaddir)
    assert m.decode_dirents(r.data) == entries


@THOROUGH
@given(names=st.lists(text, max_size=MAXWELEM), fid=st.integers(0, 2**32 - 1))
def test_walk_names_roundtrip_in_every_dialect(names: list[str], fid: int) -> None:
    for d in Dialect:
        raw = m.Twalk(fid, fid, names).encode(0, d)
        assert m.decode_message(raw, d) == (0, m.Twalk(fid, fid, names))
