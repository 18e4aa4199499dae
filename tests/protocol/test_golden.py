"""Byte vectors written by hand from the wire layout (size[4] type[1] tag[2]
body, little-endian, strings len[2] + UTF-8, qid type[1] version[4] path[8]).

Each vector must encode from the message and decode back to it."""

from __future__ import annotations

import pytest

from p9share.protocol import messages as m
from p9share.protocol.constants import DT_DIR, DT_REG, NOTAG, Dialect
from p9share.protocol.wire import Qid


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


L, U, P = Dialect.P9P2000L, Dialect.P9P2000U, Dialect.P9P2000

GOLDEN: list[tuple[str, Dialect, int, m.Message, bytes]] = [
    (
        "Tversion-9P2000.L-8192",
        L,
        NOTAG,
        m.Tversion(8192, "9P2000.L"),
        h(
            "15000000"  # size 21 = 7 + 4 + 2 + 8
            "64"  # Tversion 100
            "ffff"  # NOTAG
            "00200000"  # msize 8192
            "0800 395032303030 2e4c"  # "9P2000.L"
        ),
    ),
    (
        "Rversion-9P2000.u",
        U,
        NOTAG,
        m.Rversion(65536, "9P2000.u"),
        h("15000000 65 ffff 00000100 0800 395032303030 2e75"),
    ),
    (
        "Rlerror-ENOENT",
        L,
        1,
        m.Rlerror(2),
        h("0b000000 07 0100 02000000"),
    ),
    (
        "Rerror-9P2000.u",
        U,
        0x0102,
        m.Rerror("no", 2),
        h("0f000000 6b 0201 0200 6e6f 02000000"),
    ),
    (
        "Rerror-9P2000",
        P,
        0x0102,
        m.Rerror("no"),
        h("0b000000 6b 0201 0200 6e6f"),
    ),
    (
        "Twalk-2-names",
        L,
        3,
        m.Twalk(1, 2, ["a", "bc"]),
        h(
            "18000000"  # size 24 = 7 + 4 + 4 + 2 + 3 + 4
            "6e"  # Twalk 110
            "0300"  # tag 3
            "01000000"  # fid
            "02000000"  # newfid
            "0200"  # nwname 2
            "0100 61"  # "a"
            "0200 6263"  # "bc"
        ),
    ),
    (
        "Rwalk-1-qid",
        L,
        3,
        m.Rwalk([Qid(0x80, 7, 0x1122334455667788)]),
        h("16000000 6f 0300 0100 80 07000000 8877665544332211"),
    ),
    (
        "Tattach-9P2000.L",
        L,
        1,
        m.Tattach(0, 0xFFFFFFFF, "root", "/srv", 0),
        h(
            "1f000000 68 0100"  # size 31, Tattach 104, tag 1
            "00000000"  # fid 0
            "ffffffff"  # afid NOFID
            "0400 726f6f74"  # "root"
            "0400 2f737276"  # "/srv"
            "00000000"  # n_uname 0
        ),
    ),
    (
        "Tattach-9P2000",
        P,
        1,
        m.Tattach(0, 0xFFFFFFFF, "root", "/srv"),
        h("1b000000 68 0100 00000000 ffffffff 0400 726f6f74 0400 2f737276"),
    ),
    (
        "Tgetattr-basic",
        L,
        9,
        m.Tgetattr(5, 0x7FF),
        h("13000000 18 0900 05000000 ff07000000000000"),
    ),
    (
        "Rgetattr",
        L,
        9,
        m.Rgetattr(
            valid=0x3FFF,
            qid=Qid(0x00, 1, 0x42),
            mode=0o100644,
            uid=1000,
            gid=100,
            nlink=1,
            rdev=0,
            size=0x1234,
            blksize=4096,
            blocks=8,
            atime_sec=1,
            atime_nsec=2,
            mtime_sec=3,
            mtime_nsec=4,
            ctime_sec=5,
            ctime_nsec=6,
            btime_sec=7,
            btime_nsec=8,
            gen=9,
            data_version=10,
        ),
        h(
            "a0000000"  # size 160 = 7 + 8 + 13 + 3*4 + 15*8
            "19"  # Rgetattr 25
            "0900"  # tag 9
            "ff3f000000000000"  # valid
            "00 01000000 4200000000000000"  # qid
            "a4810000"  # mode 0o100644 = 0x81a4
            "e8030000"  # uid 1000
            "64000000"  # gid 100
            "0100000000000000"  # nlink
            "0000000000000000"  # rdev
            "3412000000000000"  # size
            "0010000000000000"  # blksize
            "0800000000000000"  # blocks
            "0100000000000000 0200000000000000"  # atime
            "0300000000000000 0400000000000000"  # mtime
            "0500000000000000 0600000000000000"  # ctime
            "0700000000000000 0800000000000000"  # btime
            "0900000000000000"  # gen
            "0a00000000000000"  # data_version
        ),
    ),
    (
        "Rreaddir-2-entries",
        L,
        4,
        m.Rreaddir(
            m.encode_dirent(Qid(0x80, 0, 1), 1, DT_DIR, b".")
            + m.encode_dirent(Qid(0x00, 3, 2), 0xFFFFFFFFFFFFFFFF, DT_REG, b"ab")
        ),
        h(
            "3e000000 29 0400"  # size 62 = 7 + 4 + 25 + 26, Rreaddir 41
            "33000000"  # count 51
            "80 00000000 0100000000000000"  # qid (dir, path 1)
            "0100000000000000"  # offset cookie 1
            "04"  # DT_DIR
            "0100 2e"  # "."
            "00 03000000 0200000000000000"  # qid (file, version 3, path 2)
            "ffffffffffffffff"  # offset cookie
            "08"  # DT_REG
            "0200 6162"  # "ab"
        ),
    ),
    (
        "Tlcreate",
        L,
        0x1234,
        m.Tlcreate(5, "f", 0o102, 0o644, 1000),
        h(
            "1a000000"  # size 26 = 7 + 4 + 3 + 4 + 4 + 4
            "0e"  # Tlcreate 14
            "3412"  # tag 0x1234
            "05000000"  # fid 5
            "0100 66"  # "f"
            "42000000"  # flags O_RDWR|O_CREAT = 0o102
            "a4010000"  # mode 0o644
            "e8030000"  # gid 1000
        ),
    ),
    (
        "Twrite",
        L,
        2,
        m.Twrite(1, 0x100000000, b"hi"),
        h("19000000 76 0200 01000000 0000000001000000 02000000 6869"),
    ),
    (
        "Rstat-9P2000",
        P,
        7,
        m.Rstat(
            m.Stat(
                type=1,
                dev=2,
                qid=Qid(0x80, 3, 4),
                mode=0x800001ED,
                atime=5,
                mtime=6,
                length=7,
                name="d",
                uid="u",
                gid="g",
                muid="",
            )
        ),
        h(
            "3d000000 7d 0700"  # size 61, Rstat 125, tag 7
            "3400"  # n = 52 (the stat with its own size[2])
            "3200"  # stat size 50 = 2 + 4 + 13 + 4 + 4 + 4 + 8 + 3 + 3 + 3 + 2
            "0100"  # type
            "02000000"  # dev
            "80 03000000 0400000000000000"  # qid
            "ed010080"  # mode DMDIR|0755
            "05000000 06000000"  # atime mtime
            "0700000000000000"  # length
            "0100 64  0100 75  0100 67  0000"  # name uid gid muid
        ),
    ),
    (
        "Rstat-9P2000.u",
        U,
        7,
        m.Rstat(
            m.Stat(
                type=1,
                dev=2,
                qid=Qid(0x80, 3, 4),
                mode=0x800001ED,
                atime=5,
                mtime=6,
                length=7,
                name="d",
                uid="u",
                gid="g",
                muid="",
                extension="",
                n_uid=1000,
                n_gid=100,
                n_muid=0xFFFFFFFF,
            )
        ),
        h(
            "4b000000 7d 0700"  # size 75
            "4200 4000"  # n = 66, stat size 64 = 50 + 2 + 12
            "0100 02000000 80 03000000 0400000000000000 ed010080"
            "05000000 06000000 0700000000000000"
            "0100 64  0100 75  0100 67  0000"
            "0000"  # extension ""
            "e8030000 64000000 ffffffff"  # n_uid n_gid n_muid
        ),
    ),
]


@pytest.mark.parametrize(
    ("dialect", "tag", "msg", "raw"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN]
)
def test_golden(dialect: Dialect, tag: int, msg: m.Message, raw: bytes) -> None:
    assert int.from_bytes(raw[:4], "little") == len(raw)  # the vector itself is sane
    assert m.encode_message(msg, tag, dialect) == raw
    assert m.decode_message(raw, dialect) == (tag, msg)


def test_golden_dirents_decode() -> None:
    raw = next(g[4] for g in GOLDEN if g[0] == "Rreaddir-2-entries")
    _, r = m.decode_message(raw, L)
    assert isinstance(r, m.Rreaddir)
    assert m.decode_dirents(r.data) == [
        m.Dirent(Qid(0x80, 0, 1), 1, DT_DIR, "."),
        m.Dirent(Qid(0x00, 3, 2), 0xFFFFFFFFFFFFFFFF, DT_REG, "ab"),
    ]
    assert m.dirent_size(b"ab") == 26


def test_golden_utf8_string() -> None:
    # "é" is two bytes in UTF-8: the length prefix counts bytes, not characters.
    raw = m.Treadlink(1).encode(0)
    assert raw == h("0b000000 16 0000 01000000")
    raw = m.Rreadlink("é").encode(0)
    assert raw == h("0b000000 17 0000 0200 c3a9")
    assert m.decode_message(raw) == (0, m.Rreadlink("é"))
