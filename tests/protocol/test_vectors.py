"""Frames recorded from the real Linux 9P client (tests/vectors/*.jsonl).

Each frame line is a JSON object {"conn": N, "dir": "c2s" | "s2c", "hex": "...",
and optionally "type", "name", "tag" describing the frame}; lines without "hex"
(a {"meta": ...} header, {"conn": N, "event": "open" | "close"}) are not frames.
A record may hold part of a frame or several frames: each direction of each
connection is reassembled as a byte stream and cut at the size fields.
Frames are decoded in the dialect that the recorded Rversion negotiated and
must re-encode to identical bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p9share.protocol import messages as m
from p9share.protocol.constants import VERSION_UNKNOWN, Dialect, GetattrMask, MsgType
from p9share.protocol.wire import ProtocolError

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
FILES = sorted(VECTORS.glob("*.jsonl")) if VECTORS.is_dir() else []
CONN_KEYS = ("conn", "connection", "session", "stream")


@dataclass
class Decoded:
    where: str  # file:line, for messages
    direction: str
    tag: int
    msg: m.Message
    dialect: Dialect


@dataclass
class Stream:
    dialect: Dialect = Dialect.P9P2000
    buffers: dict[str, bytearray] = field(
        default_factory=lambda: {"c2s": bytearray(), "s2c": bytearray()}
    )


def decode_file(path: Path) -> list[Decoded]:
    streams: dict[object, Stream] = {}
    out: list[Decoded] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.name}:{lineno}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rec = json.loads(line)
        assert isinstance(rec, dict), f"{where}: not a JSON object"
        if "hex" not in rec:
            assert "meta" in rec or "event" in rec, f"{where}: neither a frame nor meta/event"
            continue
        assert rec.get("dir") in ("c2s", "s2c"), f"{where}: 'dir' must be c2s or s2c: {rec!r}"
        assert isinstance(rec.get("hex"), str), f"{where}: no 'hex' string"
        key = next((rec[k] for k in CONN_KEYS if k in rec), None)
        stream = streams.setdefault(json.dumps(key), Stream())
        buf = stream.buffers[rec["dir"]]
        buf += bytes.fromhex(rec["hex"])
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "little")
            assert size >= 7, f"{where}: frame size {size}"
            if len(buf) < size:
                break
            raw = bytes(buf[:size])
            del buf[:size]
            try:
                tag, msg = m.decode_message(raw, stream.dialect)
            except ProtocolError as e:
                pytest.fail(
                    f"{where}: {rec['dir']} frame {raw[:32].hex()}... under {stream.dialect.value}: {e}"
                )
            assert m.encode_message(msg, tag, stream.dialect) == raw, (
                f"{where}: re-encoding differs"
            )
            out.append(Decoded(where, rec["dir"], tag, msg, stream.dialect))
            # the recorder's own description of a whole-frame record must agree
            if len(raw) * 2 == len(rec["hex"]):
                assert rec.get("type", msg.TYPE) == msg.TYPE, where
                assert rec.get("tag", tag) == tag, where
                assert rec.get("name", type(msg).__name__) == type(msg).__name__, where
            if isinstance(msg, m.Rversion):
                assert rec["dir"] == "s2c", where
                stream.dialect = (
                    Dialect.P9P2000 if msg.version == VERSION_UNKNOWN else Dialect(msg.version)
                )
    for key, stream in streams.items():
        for d, buf in stream.buffers.items():
            assert not buf, (
                f"{path.name}: {len(buf)} bytes of an incomplete {d} frame left in stream {key}"
            )
    return out


def _require_files() -> list[Path]:
    if not FILES:
        pytest.skip(f"no recorded client frames in {VECTORS} (*.jsonl)")
    return FILES


def test_recorded_frames_roundtrip() -> None:
    frames = [f for path in _require_files() for f in decode_file(path)]
    assert frames, "vector files hold no frames"
    for f in frames:
        if f.direction == "c2s":
            assert f.msg.TYPE % 2 == 0, f"{f.where}: a reply from the client"
        else:
            assert f.msg.TYPE % 2 == 1, f"{f.where}: a request from the server"
        if not isinstance(f.msg, m.Tversion | m.Rversion):
            assert f.msg.TYPE in m.DIALECT_MESSAGES[f.dialect], f"{f.where}: {f.msg!r}"
        if isinstance(f.msg, m.Rreaddir):
            entries = m.decode_dirents(f.msg.data)
            again = b"".join(
                m.encode_dirent(e.qid, e.offset, e.type, e.name.encode()) for e in entries
            )
            assert again == bytes(f.msg.data), f.where


def test_recorded_replies_answer_requests() -> None:
    for path in _require_files():
        sent: dict[int, int] = {}  # tag -> type of the last request with that tag
        for f in decode_file(path):
            if f.direction == "c2s":
                sent[f.tag] = f.msg.TYPE
            else:
                assert f.tag in sent, f"{f.where}: reply to tag {f.tag} never sent"
                ok = {sent[f.tag] + 1, MsgType.RLERROR, MsgType.RERROR}
                assert f.msg.TYPE in ok, f"{f.where}: {type(f.msg).__name__} for {sent[f.tag]}"


def test_recorded_linux_session() -> None:
    frames = [f for path in _require_files() for f in decode_file(path)]
    requests = [f.msg for f in frames if f.direction == "c2s"]
    versions = [r for r in requests if isinstance(r, m.Tversion)]
    assert any(v.version == "9P2000.L" for v in versions), versions
    assert all(v.msize >= 4096 for v in versions)
    assert all(f.tag == 0xFFFF for f in frames if isinstance(f.msg, m.Tversion))
    attaches = [r for r in requests if isinstance(r, m.Tattach)]
    assert attaches, "no Tattach recorded"
    getattrs = [r for r in requests if isinstance(r, m.Tgetattr)]
    assert getattrs, "no Tgetattr recorded"
    for g in getattrs:
        # Linux asks for at least the basic set and nothing outside the defined bits
        assert g.request_mask & GetattrMask.BASIC == GetattrMask.BASIC, hex(g.request_mask)
        assert g.request_mask & ~GetattrMask.ALL == 0, hex(g.request_mask)
