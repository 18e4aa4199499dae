"""Fuzz the virtio-fs FUSE decoder and session in-process (issue 11 item 4).

Every request type the codec knows is built with field values at the
boundaries (0, small live nodeids and handles, 2**31, 2**32-1, 2**63,
2**64-1) and hostile names, encoded, sometimes mutated byte-wise (flips,
truncation, a lying length), and handed to a real FuseSession over a temp
directory export. An internal error is an ERROR record of the p9share
loggers; handle() must return bytes or None and never raise.

    python benchmarks/fuzz_fuse.py --messages 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import struct
import sys
import tempfile
import time
import typing
from pathlib import Path

from p9share.backend.hostfs import HostBackend
from p9share.policy import Export, Policy
from p9share.policy.peer import Peer
from p9share.virtiofs import fuse
from p9share.virtiofs.session import FuseSession

INTS = (0, 1, 2, 3, 4, 7, 0o644, 0o40755, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32,
        (1 << 63) - 1, 1 << 63, (1 << 64) - 1)  # fmt: skip
NAMES = ("f", "d", "new", "x" * 255, "x" * 256, ".", "..", "a/b", "", "é", "\udcff", "n\0m")


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage()[:300])


def value(rng: random.Random, kind: object, live: list[int]) -> object:
    if kind is str:
        return rng.choice(NAMES)
    if kind is bytes:
        return rng.choice((b"", b"v", b"\0" * 70000))
    if typing.get_origin(kind) is tuple:
        return tuple((rng.choice(live), rng.choice(INTS)) for _ in range(rng.randrange(4)))
    if rng.random() < 0.5 and live:
        return rng.choice(live)
    return rng.choice(INTS) if rng.random() < 0.8 else rng.getrandbits(64)


def build(rng: random.Random, cls: type[fuse.Request], live: list[int]) -> bytes | None:
    hints = typing.get_type_hints(cls)
    kw = {f.name: value(rng, hints[f.name], live) for f in dataclasses.fields(cls)}
    kw["unique"] = rng.getrandbits(32) or 1
    kw["uid"], kw["gid"] = rng.choice((0, 1000, 0xFFFF_FFFF)), rng.choice((0, 1000))
    try:
        data = fuse.encode_request(cls(**kw))
    except (ValueError, OverflowError, TypeError, UnicodeEncodeError, KeyError, struct.error):
        return None  # a value the wire cannot carry
    if rng.random() < 0.3:  # byte-level mutation
        b = bytearray(data)
        how = rng.randrange(4)
        if how == 0 and b:
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif how == 1:
            del b[rng.randrange(len(b) + 1) :]
        elif how == 2:
            b += os.urandom(rng.randrange(64))
        elif len(b) >= 4:
            b[0:4] = rng.getrandbits(32).to_bytes(4, "little")  # the length lies
        data = bytes(b)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    errors = Errors()
    for name in ("p9share.virtiofs", "p9share.server"):
        logging.getLogger(name).addHandler(errors)
    kinds = [c for c in fuse.Request.__subclasses__() if dataclasses.is_dataclass(c)]
    raised = replies = silent = 0
    with tempfile.TemporaryDirectory(prefix="p9fuzz-fuse-") as td:
        root = Path(td)
        (root / "f").write_bytes(b"data")
        (root / "d").mkdir()
        exp = Export("e", str(root))
        backend = HostBackend(str(root))
        session = FuseSession(Policy({"e": exp}), {"e": backend}, "e", Peer("fuzz", "vhost-user"))
        init = fuse.Init(1, 0, 0, 0, 1, 7, 38, 1 << 20, 0)
        t0 = time.monotonic()
        live = [1]
        for i in range(args.messages):
            if i % 5000 == 0:
                session.handle(fuse.encode_request(init))  # a fresh mount now and then
                live = [1]
            data = build(rng, rng.choice(kinds), live)
            if data is None:
                continue
            try:
                out = session.handle(data)
            except Exception as e:  # handle() must never raise
                raised += 1
                errors.records.append(f"raised {e!r}")
                continue
            if out is None:
                silent += 1
                continue
            replies += 1
            r = fuse.decode_reply(out)
            if r.error == 0 and len(r.body) >= 8:
                nodeid = int.from_bytes(r.body[:8], "little")  # LOOKUP/MKDIR/...'s entry
                if 1 < nodeid < 1 << 20 and len(live) < 64:
                    live.append(nodeid)
        took = time.monotonic() - t0
        session.close()
        backend.shutdown()
    sent = replies + silent + raised
    print(f"fuzz-fuse: {sent} messages handled ({args.messages} built, the rest not encodable) "
          f"in {took:.1f} s; {replies} replies, {silent} without reply; "
          f"internal errors {len(errors.records)}, raised {raised}")  # fmt: skip
    for rec in errors.records[:10]:
        print("  ", rec)
    return 1 if errors.records else 0


if __name__ == "__main__":
    sys.exit(main())
