"""Nanoseconds per FUSE decode and encode in the sans-IO codec (p9share.virtiofs.fuse),
and per request through the whole FUSE session (codec, operations layer, host backend).

    python benchmarks/fuse_codec.py              # best of 5 runs of 100,000 each
    python benchmarks/fuse_codec.py --number 20000 --repeat 3

The messages are the ones a Linux 6.1 virtio-fs client sends most (GETATTR,
LOOKUP, FORGET, READ, WRITE, CREATE) and the replies they get. The figure is
the best run's mean: the machine is shared, and the best is the least disturbed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from collections.abc import Callable

from p9share.backend.hostfs import HostBackend
from p9share.policy import Export, Policy
from p9share.policy.peer import Peer
from p9share.virtiofs import fuse as f
from p9share.virtiofs.session import FuseSession

ATTR = f.Attr(
    12345, 4096, 8, 1700000000, 1700000000, 1700000000, 0, 0, 0, 0o100644, 1, 1000, 1000, 0, 4096
)
ENTRY = f.EntryOut(42, 0, 1, 1, 0, 0, ATTR)


def cases() -> list[tuple[str, Callable[[], object]]]:
    hdr = (99, 42, 1000, 1000, 321)
    getattr_ = f.encode_request(f.Getattr(*hdr, 0, 0))
    lookup = f.encode_request(f.Lookup(*hdr, "some-file-name.txt"))
    forget = f.encode_request(f.Forget(*hdr, 1))
    read = f.encode_request(f.Read(*hdr, 7, 0, 131072, 0, 0, 0o100000))
    write4k = f.encode_request(f.Write(*hdr, 7, 0, 0, 0, 0o100001, b"x" * 4096))
    create = f.encode_request(f.Create(*hdr, 0o100101, 0o100644, 0o22, 0, "new-file"))
    names = [f"entry-{i:05d}" for i in range(64)]

    def readdirplus_64() -> bytes:
        buf = f.DirentBuffer(65536)
        for i, n in enumerate(names):
            buf.add_plus(ENTRY, i + 1, 8, n)
        return f.reply_data(1, buf.getvalue())

    return [
        ("decode GETATTR", lambda: f.decode_request(getattr_)),
        ("decode LOOKUP", lambda: f.decode_request(lookup)),
        ("decode FORGET", lambda: f.decode_request(forget)),
        ("decode READ", lambda: f.decode_request(read)),
        ("decode WRITE 4 KiB", lambda: f.decode_request(write4k)),
        ("decode CREATE", lambda: f.decode_request(create)),
        ("encode attr reply", lambda: f.reply_attr(99, ATTR, 1, 0)),
        ("encode entry reply", lambda: f.reply_entry(99, ENTRY)),
        ("encode error reply", lambda: f.reply_error(99, 2)),
        ("encode READDIRPLUS 64 entries", readdirplus_64),
    ]


def session_cases(root: str) -> list[tuple[str, Callable[[], object]]]:
    """Whole requests as the guest sends them, against a real directory."""
    with open(os.path.join(root, "file"), "wb") as fp:
        fp.write(b"y" * 65536)
    exp = Export("share", root)
    s = FuseSession(Policy({"share": exp}), {"share": HostBackend(root)}, "share",
                    Peer("vhost-user:/bench", "vhost-user"))  # fmt: skip
    s.handle(f.encode_request(f.Init(1, 0, 0, 0, 0, 7, 38, 131072, 0x7BFFFFFB)))
    hdr = (3, 1, os.getuid(), os.getgid(), 1)
    entry = f.parse_entry_out(
        f.decode_reply(s.handle(f.encode_request(f.Lookup(*hdr, "file"))) or b"").body
    )
    nid = entry.nodeid
    opened = s.handle(f.encode_request(f.Open(5, nid, 0, 0, 1, 0, 0)))
    fh = f.parse_open_out(f.decode_reply(opened or b"").body)[0]
    getattr_ = f.encode_request(f.Getattr(7, nid, 0, 0, 1, 0, 0))
    lookup = f.encode_request(f.Lookup(*hdr, "file"))
    forget = f.encode_request(f.Forget(9, nid, 0, 0, 0, 1))
    read4k = f.encode_request(f.Read(11, nid, 0, 0, 1, fh, 0, 4096, 0, 0, 0))

    def lookup_forget() -> None:
        s.handle(lookup)
        s.handle(forget)

    return [
        ("session GETATTR", lambda: s.handle(getattr_)),
        ("session LOOKUP + FORGET", lookup_forget),
        ("session READ 4 KiB", lambda: s.handle(read4k)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for label, fn in cases():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat))
        print(f"{label:32s} {best / args.number * 1e9:9.0f} ns")
    number = max(1, args.number // 10)  # host system calls: fewer rounds
    with tempfile.TemporaryDirectory(prefix="p9fuse-") as root:
        for label, fn in session_cases(root):
            best = min(timeit.repeat(fn, number=number, repeat=args.repeat))
            print(f"{label:32s} {best / number * 1e9:9.0f} ns")


if __name__ == "__main__":
    main()
