"""Hypothesis strategies for every 9P message, derived from each class's FIELDS.

A message class declares its body as (name, kind) pairs; this module maps every
kind to a strategy, so a new message class is covered as soon as it exists. Some
kinds exist only in some dialects (n_uname in .u/.L, ext and errno in .u, the
four .u stat fields); a value of an absent field does not travel, and decoding
gives the dataclass default. `expected_after_roundtrip` computes that.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from p9share.protocol import messages as m
from p9share.protocol.constants import MAXWELEM, Dialect
from p9share.protocol.wire import Qid

# Deterministic, reasonably fast settings shared by the protocol tests.
FAST = settings(
    max_examples=80,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THOROUGH = settings(FAST, max_examples=200)
FUZZ = settings(FAST, max_examples=600)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)

# 9P strings: UTF-8 text without NUL (any code point UTF-8 can encode).
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
qids = st.builds(Qid, u8, u32, u64)
stats = st.builds(
    m.Stat,
    type=u16,
    dev=u32,
    qid=qids,
    mode=u32,
    atime=u32,
    mtime=u32,
    length=u64,
    name=text,
    uid=text,
    gid=text,
    muid=text,
    extension=text,
    n_uid=u32,
    n_gid=u32,
    n_muid=u32,
)

KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "u8": u8,
    "u16": u16,
    "u32": u32,
    "u64": u64,
    "s": text,
    "qid": qids,
    "wnames": st.lists(text, max_size=MAXWELEM),
    "qids": st.lists(qids, max_size=MAXWELEM),
    "data": st.binary(max_size=300),
    "stat": stats,
    "n_uname": u32,
    "ext": text,
    "errno": u32,
}

# Kinds that are not on the wire in a dialect (stated here from the protocol,
# independently of the codec's own table).
ABSENT_KINDS: dict[Dialect, frozenset[str]] = {
    Dialect.P9P2000: frozenset({"n_uname", "ext", "errno"}),
    Dialect.P9P2000U: frozenset(),
    Dialect.P9P2000L: frozenset({"ext", "errno"}),
}
STAT_DOTU_FIELDS = ("extension", "n_uid", "n_gid", "n_muid")


def default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise AssertionError(f"{cls.__name__}.{name} has no default but may be absent")
    raise AssertionError(f"{cls.__name__} has no field {name}")


def message_strategy(cls: type[m.Message]) -> st.SearchStrategy[m.Message]:
    """All values of cls, every field drawn from its FIELDS kind."""
    return st.builds(cls, **{name: KIND_STRATEGIES[kind] for name, kind in cls.FIELDS})


def expected_after_roundtrip(msg: m.Message, dialect: Dialect) -> m.Message:
    """What decode(encode(msg)) must give: fields absent in the dialect are reset."""
    changes: dict[str, Any] = {}
    for name, kind in msg.FIELDS:
        if kind in ABSENT_KINDS[dialect]:
            changes[name] = default_of(type(msg), name)
        elif kind == "stat" and dialect is not Dialect.P9P2000U:
            stat = getattr(msg, name)
            changes[name] = dataclasses.replace(
                stat, **{f: default_of(m.Stat, f) for f in STAT_DOTU_FIELDS}
            )
    return dataclasses.replace(cast(Any, msg), **changes) if changes else msg


def dialects_of(cls: type[m.Message]) -> list[Dialect]:
    return [d for d in Dialect if cls.TYPE in m.DIALECT_MESSAGES[d]]


# (class, dialect) for every message in every dialect that defines it. Tlerror
# is in no dialect (it is never valid) but has a codec; check it under .L.
CLASS_DIALECTS: list[tuple[type[m.Message], Dialect]] = [
    (cls, d) for cls in m.ALL_MESSAGES for d in (dialects_of(cls) or [Dialect.P9P2000L])
]


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    """A frame with a correct size field around an arbitrary body."""
    return (7 + len(body)).to_bytes(4, "little") + bytes([mtype]) + tag.to_bytes(2, "little") + body
