"""The FUSE codec against fuse.h layouts written out here by hand (not with the codec's structs)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p9share.virtiofs import fuse as f

# fuse_in_header: u32 len, u32 opcode, u64 unique, u64 nodeid, u32 uid, u32 gid, u32 pid,
# u16 total_extlen, u16 padding.
HDR = "<IIQQIIIHH"


def frame(opcode: int, body: bytes, unique: int = 7, nodeid: int = 1, extlen: int = 0) -> bytes:
    return (
        struct.pack(HDR, 40 + len(body), opcode, unique, nodeid, 1000, 100, 4242, extlen, 0) + body
    )


def head(cls: type[f.Request], **kw: object) -> f.Request:
    return cls(7, 1, 1000, 100, 4242, **kw)  # type: ignore[call-arg]


# Each fixed-layout request: opcode, its fuse.h argument struct (explicit format), and field names.
FIXED: dict[type[f.Request], tuple[int, str, tuple[str, ...]]] = {
    # fuse_forget_in { u64 nlookup }
    f.Forget: (2, "<Q", ("nlookup",)),
    # fuse_getattr_in { u32 getattr_flags, u32 dummy, u64 fh }
    f.Getattr: (3, "<IIQ", ("getattr_flags", "_", "fh")),
    # fuse_setattr_in { u32 valid, pad, u64 fh, size, lock_owner, atime, mtime, ctime,
    #   u32 atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5 }
    f.Setattr: (
        4,
        "<IIQQQQQQIIIIIIII",
        (
            "valid",
            "_",
            "fh",
            "size",
            "lock_owner",
            "atime",
            "mtime",
            "ctime",
            "atimensec",
            "mtimensec",
            "ctimensec",
            "mode",
            "_",
            "new_uid",
            "new_gid",
            "_",
        ),
    ),
    # fuse_open_in { u32 flags, u32 open_flags }
    f.Open: (14, "<II", ("flags", "open_flags")),
    f.Opendir: (27, "<II", ("flags", "open_flags")),
    # fuse_read_in { u64 fh, offset, u32 size, read_flags, u64 lock_owner, u32 flags, padding }
    f.Read: (15, "<QQIIQII", ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "_")),
    f.Readdir: (28, "<QQIIQII", ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "_")),
    f.Readdirplus: (
        44,
        "<QQIIQII",
        ("fh", "offset", "size", "read_flags", "lock_owner", "flags", "_"),
    ),
    # fuse_release_in { u64 fh, u32 flags, release_flags, u64 lock_owner }
    f.Release: (18, "<QIIQ", ("fh", "flags", "release_flags", "lock_owner")),
    f.Releasedir: (29, "<QIIQ", ("fh", "flags", "release_flags", "lock_owner")),
    # fuse_fsync_in { u64 fh, u32 fsync_flags, padding }
    f.Fsync: (20, "<QII", ("fh", "fsync_flags", "_")),
    f.Fsyncdir: (30, "<QII", ("fh", "fsync_flags", "_")),
    # fuse_getxattr_in { u32 size, padding } (LISTXATTR)
    f.Listxattr: (23, "<II", ("size", "_")),
    # fuse_flush_in { u64 fh, u32 unused, padding, u64 lock_owner }
    f.Flush: (25, "<QIIQ", ("fh", "_", "_", "lock_owner")),
    # fuse_lk_in { u64 fh, owner, fuse_file_lock { u64 start, end, u32 type, pid }, u32 lk_flags, pad }
    f.Getlk: (31, "<QQQQIIII", ("fh", "owner", "start", "end", "type", "lk_pid", "lk_flags", "_")),
    f.Setlk: (32, "<QQQQIIII", ("fh", "owner", "start", "end", "type", "lk_pid", "lk_flags", "_")),
    f.Setlkw: (33, "<QQQQIIII", ("fh", "owner", "start", "end", "type", "lk_pid", "lk_flags", "_")),
    # fuse_access_in { u32 mask, padding }
    f.Access: (34, "<II", ("mask", "_")),
    # fuse_interrupt_in { u64 unique }
    f.Interrupt: (36, "<Q", ("target",)),
    # fuse_fallocate_in { u64 fh, offset, length, u32 mode, padding }
    f.Fallocate: (43, "<QQQII", ("fh", "offset", "length", "mode", "_")),
    # fuse_lseek_in { u64 fh, offset, u32 whence, padding }
    f.Lseek: (46, "<QQII", ("fh", "offset", "whence", "_")),
    # fuse_copy_file_range_in { u64 fh_in, off_in, nodeid_out, fh_out, off_out, len, flags }
    f.CopyFileRange: (
        47,
        "<QQQQQQQ",
        ("fh_in", "off_in", "nodeid_out", "fh_out", "off_out", "len", "flags"),
    ),
}

# Fixed struct, then NUL-terminated names: opcode, format, struct fields, name fields.
NAMED: dict[type[f.Request], tuple[int, str, tuple[str, ...], tuple[str, ...]]] = {
    f.Lookup: (1, "<", (), ("name",)),
    f.Unlink: (10, "<", (), ("name",)),
    f.Rmdir: (11, "<", (), ("name",)),
    f.Removexattr: (24, "<", (), ("name",)),
    f.Symlink: (6, "<", (), ("name", "target")),  # entry name first, then the target
    # fuse_mknod_in { u32 mode, rdev, umask, padding }
    f.Mknod: (8, "<IIII", ("mode", "rdev", "umask", "_"), ("name",)),
    # fuse_mkdir_in { u32 mode, umask }
    f.Mkdir: (9, "<II", ("mode", "umask"), ("name",)),
    # fuse_rename_in { u64 newdir }
    f.Rename: (12, "<Q", ("newdir",), ("oldname", "newname")),
    # fuse_rename2_in { u64 newdir, u32 flags, padding }
    f.Rename2: (45, "<QII", ("newdir", "flags", "_"), ("oldname", "newname")),
    # fuse_link_in { u64 oldnodeid }
    f.Link: (13, "<Q", ("oldnodeid",), ("newname",)),
    # fuse_create_in { u32 flags, mode, umask, open_flags }
    f.Create: (35, "<IIII", ("flags", "mode", "umask", "open_flags"), ("name",)),
    f.Tmpfile: (51, "<IIII", ("flags", "mode", "umask", "open_flags"), ("name",)),
    # fuse_getxattr_in { u32 size, padding }
    f.Getxattr: (22, "<II", ("size", "_"), ("name",)),
}

WIDTH = {"I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF, "H": 0xFFFF}


def sample_values(fmt: str, seed: int) -> list[int]:
    """Distinct, width-filling values so that a swapped or truncated field shows."""
    out = []
    for i, c in enumerate(fmt[1:]):
        out.append((0x0102030405060708 * (i + seed + 1)) & WIDTH[c])
    return out


@pytest.mark.parametrize("cls", list(FIXED), ids=lambda c: c.__name__)
def test_fixed_request_vectors(cls: type[f.Request]) -> None:
    opcode, fmt, names = FIXED[cls]
    vals = sample_values(fmt, opcode)
    for i, n in enumerate(names):
        if n == "_":
            vals[i] = 0  # padding
    wire = frame(opcode, struct.pack(fmt, *vals))
    req = f.decode_request(wire)
    assert type(req) is cls
    assert opcode == req.OPCODE
    assert (req.unique, req.nodeid, req.uid, req.gid, req.pid) == (7, 1, 1000, 100, 4242)
    expected = {n: v for n, v in zip(names, vals, strict=True) if n != "_"}
    assert req == head(cls, **expected)
    assert f.encode_request(req) == wire


@pytest.mark.parametrize("cls", list(FIXED), ids=lambda c: c.__name__)
def test_fixed_request_wrong_size(cls: type[f.Request]) -> None:
    opcode, fmt, _ = FIXED[cls]
    good = struct.pack(fmt, *([0] * (len(fmt) - 1)))
    for body in (good[:-1], good + b"\x00", b""):
        with pytest.raises(f.FuseDecodeError) as ei:
            f.decode_request(frame(opcode, body))
        assert ei.value.unique == 7 and ei.value.opcode == opcode
        assert ei.value.errno == errno.EPROTO


def test_padding_is_ignored_on_decode() -> None:
    # The kernel zeroes padding; a non-zero pad is tolerated (libfuse does the same).
    req = f.decode_request(frame(3, struct.pack("<IIQ", 1, 0xDEAD, 9)))
    assert req == head(f.Getattr, getattr_flags=1, fh=9)


@pytest.mark.parametrize("cls", list(NAMED), ids=lambda c: c.__name__)
def test_named_request_vectors(cls: type[f.Request]) -> None:
    opcode, fmt, sfields, nfields = NAMED[cls]
    vals = sample_values(fmt, opcode)
    vals = [0 if n == "_" else v for n, v in zip(sfields, vals, strict=True)]
    strings = ["fïle-é", "target/with/slashes" if cls is f.Symlink else "sëcond"][: len(nfields)]
    if cls in (f.Getxattr, f.Removexattr):
        strings = ["user.a/b"]  # xattr names may contain '/'
    body = struct.pack(fmt, *vals) + b"".join(s.encode() + b"\x00" for s in strings)
    wire = frame(opcode, body)
    req = f.decode_request(wire)
    expected = {n: v for n, v in zip(sfields, vals, strict=True) if n != "_"}
    expected.update(zip(nfields, strings, strict=True))
    assert req == head(cls, **expected)
    assert f.encode_request(req) == wire


def test_empty_body_requests() -> None:
    for opcode, cls in ((5, f.Readlink), (17, f.Statfs), (38, f.Destroy)):
        wire = frame(opcode, b"")
        assert f.decode_request(wire) == head(cls)
        assert f.encode_request(head(cls)) == wire
        with pytest.raises(f.FuseDecodeError, match="unexpected bytes"):
            f.decode_request(frame(opcode, b"\x00" * 8))


def test_syncfs_vector() -> None:
    wire = frame(50, struct.pack("<Q", 0))  # fuse_syncfs_in { u64 padding }
    assert f.decode_request(wire) == head(f.Syncfs)
    assert f.encode_request(head(f.Syncfs)) == wire
    with pytest.raises(f.FuseDecodeError):
        f.decode_request(frame(50, b""))


def test_init_7_38_with_flags2() -> None:
    # fuse_init_in 7.36+: u32 major, minor, max_readahead, flags, flags2, unused[11]
    body = struct.pack("<IIIII44x", 7, 38, 131072, 0x7BFFFFFB, 0x5)
    req = f.decode_request(frame(26, body))
    assert req == head(f.Init, major=7, minor=38, max_readahead=131072, flags=0x7BFFFFFB | 5 << 32)
    assert f.encode_request(req) == frame(26, body)


def test_init_flags2_ignored_without_init_ext() -> None:
    body = struct.pack("<IIIII44x", 7, 38, 0, f.ASYNC_READ, 0xFFFF)
    req = f.decode_request(frame(26, body))
    assert isinstance(req, f.Init) and req.flags == f.ASYNC_READ


def test_init_7_31_compat_size() -> None:
    body = struct.pack("<IIII", 7, 31, 65536, 0x1234)
    req = f.decode_request(frame(26, body))
    assert req == head(f.Init, major=7, minor=31, max_readahead=65536, flags=0x1234)
    assert f.encode_request(req) == frame(26, body)
    with pytest.raises(f.FuseDecodeError, match="expected 16"):
        f.decode_request(frame(26, body + b"\x00" * 48))
    with pytest.raises(f.FuseDecodeError, match="expected 64"):
        f.decode_request(frame(26, struct.pack("<IIII", 7, 36, 0, 0)))


def test_write_vector() -> None:
    data = b"hello\x00world"
    # fuse_write_in { u64 fh, offset, u32 size, write_flags, u64 lock_owner, u32 flags, padding }
    body = struct.pack("<QQIIQII", 3, 4096, len(data), 2, 99, 0o2, 0) + data
    req = f.decode_request(frame(16, body))
    assert req == head(f.Write, fh=3, offset=4096, write_flags=2, lock_owner=99, flags=2, data=data)
    assert f.encode_request(req) == frame(16, body)
    for bad in (body[:-1], body + b"x"):
        with pytest.raises(f.FuseDecodeError, match="WRITE says"):
            f.decode_request(frame(16, bad))


def test_setxattr_compat_and_ext() -> None:
    value = b"\x00\x01binary"
    # fuse_setxattr_in without FUSE_SETXATTR_EXT: u32 size, flags (8 bytes)
    compat = struct.pack("<II", len(value), 1) + b"user.k\x00" + value
    req = f.decode_request(frame(21, compat))
    assert req == head(f.Setxattr, flags=1, setxattr_flags=0, name="user.k", value=value)
    assert f.encode_request(req) == frame(21, compat)
    # with it: u32 size, flags, setxattr_flags, padding (16 bytes)
    ext = struct.pack("<IIII", len(value), 2, f.SETXATTR_ACL_KILL_SGID, 0) + b"user.k\x00" + value
    proto = f.Proto(38, setxattr_ext=True)
    req = f.decode_request(frame(21, ext), proto)
    assert req == head(f.Setxattr, flags=2, setxattr_flags=1, name="user.k", value=value)
    assert f.encode_request(req, proto) == frame(21, ext)
    # the compat layout read as ext (or the reverse) does not line up
    with pytest.raises(f.FuseDecodeError):
        f.decode_request(frame(21, compat), proto)
    with pytest.raises(f.FuseDecodeError, match="SETXATTR says"):
        f.decode_request(frame(21, compat + b"!"))


def test_batch_forget_vector() -> None:
    # fuse_batch_forget_in { u32 count, dummy } then count * fuse_forget_one { u64 nodeid, nlookup }
    body = struct.pack("<II", 2, 0) + struct.pack("<QQ", 5, 1) + struct.pack("<QQ", 9, 3)
    req = f.decode_request(frame(42, body, nodeid=0))
    assert isinstance(req, f.BatchForget) and req.forgets == ((5, 1), (9, 3))
    assert f.encode_request(req) == frame(42, body, nodeid=0)


def test_batch_forget_huge_count() -> None:
    body = struct.pack("<II", 0xFFFFFFFF, 0) + struct.pack("<QQ", 5, 1)
    with pytest.raises(f.FuseDecodeError, match="needs 68719476728 bytes, got 24"):
        f.decode_request(frame(42, body))


def test_unknown_opcodes() -> None:
    for opcode in (7, 37, 39, 48, 999, 0xFFFFFFFF):
        req = f.decode_request(frame(opcode, b"abc"))
        assert req == f.Unknown(7, 1, 1000, 100, 4242, opcode, b"abc")
        assert f.encode_request(req) == frame(opcode, b"abc")


def test_opcode_table() -> None:
    assert f.OPCODE_NAMES[1] == "LOOKUP" and f.OPCODE_NAMES[50] == "SYNCFS"
    assert f.opcode_name(44) == "READDIRPLUS" and f.opcode_name(7) == "OP_7"
    assert {2, 42, 36, 41} == f.NO_REPLY
    # each decoded class reports the opcode it was decoded from
    for cls, (opcode, *_rest) in {**FIXED, **NAMED}.items():
        assert opcode == cls.OPCODE
        assert f.OPCODE_NAMES[opcode] == opcode_upper(cls)


def opcode_upper(cls: type) -> str:
    return {"CopyFileRange": "COPY_FILE_RANGE"}.get(cls.__name__, cls.__name__.upper())


# ---------------------------------------------------------------- malformed


def test_truncated_header() -> None:
    for n in (0, 1, 39):
        with pytest.raises(f.FuseDecodeError, match="shorter than the 40-byte") as ei:
            f.decode_request(b"\x01" * n)
        assert ei.value.unique is None


def test_len_mismatch() -> None:
    good = frame(3, struct.pack("<IIQ", 0, 0, 0))
    for length in (len(good) - 1, len(good) + 1, 0xFFFFFFFF, 0):
        bad = struct.pack("<I", length) + good[4:]
        with pytest.raises(f.FuseDecodeError, match=f"len is {length} but") as ei:
            f.decode_request(bad)
        assert ei.value.unique == 7 and ei.value.errno == errno.EPROTO


def test_names_malformed() -> None:
    cases = {
        b"abc": "not NUL-terminated",
        b"": "missing",
        b"\x00": "empty name",
        b"a\x00b\x00": "trailing bytes",
        b"a\x00\x00": "trailing bytes",
        b"a/b\x00": "contains '/'",
    }
    for body, msg in cases.items():
        with pytest.raises(f.FuseDecodeError, match=msg):
            f.decode_request(frame(1, body))
    # two names: the second missing or unterminated
    for body in (b"a\x00", b"a\x00b", b"a"):
        with pytest.raises(f.FuseDecodeError):
            f.decode_request(frame(12, struct.pack("<Q", 1) + body))
    # struct shorter than its fixed part
    with pytest.raises(f.FuseDecodeError, match="shorter than its 16-byte struct"):
        f.decode_request(frame(35, b"\x00" * 15))


def test_non_utf8_name_is_eilseq() -> None:
    # Names are str on the 9P side (strict UTF-8): a guest name that is not
    # UTF-8 is answered EILSEQ, the request itself being well-formed.
    for body in (b"\xff\x00", b"\xed\xa0\x80\x00", b"\xc0\xaf\x00"):  # bad, surrogate, overlong
        with pytest.raises(f.FuseDecodeError) as ei:
            f.decode_request(frame(1, body))
        assert ei.value.errno == errno.EILSEQ and ei.value.unique == 7
    with pytest.raises(f.FuseDecodeError) as ei:
        f.decode_request(frame(6, b"name\x00\xfe\x00"))
    assert ei.value.errno == errno.EILSEQ


def test_extensions_not_negotiated() -> None:
    body = struct.pack("<II", 0o755, 0o22) + b"d\x00" + b"\x00" * 8
    with pytest.raises(f.FuseDecodeError, match="extensions that were not negotiated"):
        f.decode_request(frame(9, body, extlen=1))
    # before 7.38 the field was padding
    req = f.decode_request(frame(9, body[:-8], extlen=1), f.Proto(37))
    assert isinstance(req, f.Mkdir) and req.name == "d"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 60))
def test_garbage_raises_only_decode_error(tail: bytes, opcode: int) -> None:
    data = struct.pack(HDR, 40 + len(tail), opcode, 1, 1, 0, 0, 0, 0, 0) + tail
    for proto in (f.PROTO_LATEST, f.Proto(31, setxattr_ext=True)):
        try:
            req = f.decode_request(data, proto)
        except f.FuseDecodeError as e:
            assert str(e)
            continue
        assert isinstance(req, f.Request)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120))
def test_raw_garbage(data: bytes) -> None:
    try:
        f.decode_request(data)
    except f.FuseDecodeError:
        pass


# ---------------------------------------------------------------- round trips

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
name_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1
)
xattr_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
)


def request_strategy() -> st.SearchStrategy[f.Request]:
    hdr = (u64, u64, u32, u32, u32)
    strategies: list[st.SearchStrategy[f.Request]] = []
    for cls, (_, fmt, names) in FIXED.items():
        kw = {
            n: (u32 if c == "I" else u64) for n, c in zip(names, fmt[1:], strict=True) if n != "_"
        }
        strategies.append(st.builds(cls, *hdr, **kw))
    for cls, (_, fmt, sfields, nfields) in NAMED.items():
        kw = {
            n: (u32 if c == "I" else u64) for n, c in zip(sfields, fmt[1:], strict=True) if n != "_"
        }
        for n in nfields:
            kw[n] = xattr_text if cls in (f.Getxattr, f.Removexattr) else name_text
        if cls is f.Symlink:
            kw["target"] = xattr_text
        strategies.append(st.builds(cls, *hdr, **kw))
    strategies += [
        st.builds(
            f.Write,
            *hdr,
            fh=u64,
            offset=u64,
            write_flags=u32,
            lock_owner=u64,
            flags=u32,
            data=st.binary(),
        ),
        st.builds(
            f.Setxattr, *hdr, flags=u32, setxattr_flags=u32, name=xattr_text, value=st.binary()
        ),
        st.builds(f.BatchForget, *hdr, forgets=st.lists(st.tuples(u64, u64)).map(tuple)),
        st.builds(
            f.Init,
            *hdr,
            major=st.just(7),
            minor=st.integers(36, 40),
            max_readahead=u32,
            flags=u64.map(lambda x: x | f.INIT_EXT),
        ),
        st.builds(
            f.Init, *hdr, major=st.just(7), minor=st.integers(0, 35), max_readahead=u32, flags=u32
        ),
        st.builds(f.Readlink, *hdr),
        st.builds(f.Statfs, *hdr),
        st.builds(f.Destroy, *hdr),
        st.builds(f.Syncfs, *hdr),
    ]
    return st.one_of(strategies)


@settings(max_examples=2000, deadline=None)
@given(request_strategy())
def test_request_roundtrip(req: f.Request) -> None:
    proto = f.Proto(38, setxattr_ext=True)
    if isinstance(req, f.Setxattr):
        assert f.decode_request(f.encode_request(req, proto), proto) == req
        plain = f.decode_request(f.encode_request(req))
        assert isinstance(plain, f.Setxattr) and plain.setxattr_flags == 0
        return
    wire = f.encode_request(req)
    assert f.decode_request(wire) == req
    assert f.decode_request(bytearray(wire)) == req
    assert f.decode_request(memoryview(wire)) == req


# ---------------------------------------------------------------- replies

ATTR_VALS = (11, 22, 33, 44, 55, 66, 7, 8, 9, 0o100644, 2, 1000, 100, 0, 4096, 1)
# fuse_attr: u64 ino, size, blocks, atime, mtime, ctime, u32 atimensec, mtimensec, ctimensec,
# mode, nlink, uid, gid, rdev, blksize, flags  (88 bytes)
ATTR_FMT = "QQQQQQIIIIIIIIII"


def out(unique: int, error: int, body: bytes = b"") -> bytes:
    return struct.pack("<IiQ", 16 + len(body), error, unique) + body


def test_reply_error_and_empty() -> None:
    assert f.reply_error(9, errno.ENOENT) == out(9, -2)
    assert f.reply_empty(9) == out(9, 0)
    assert f.decode_reply(f.reply_error(9, errno.ENOSYS)) == f.Reply(9, errno.ENOSYS, b"")
    for bad in (0, -1, 4096):
        with pytest.raises(ValueError):
            f.reply_error(1, bad)


def test_reply_entry_attr_vectors() -> None:
    attr = f.Attr(*ATTR_VALS)
    entry = f.EntryOut(5, 6, 1, 2, 3, 4, attr)
    body = struct.pack("<QQQQII" + ATTR_FMT, 5, 6, 1, 2, 3, 4, *ATTR_VALS)
    assert len(body) == 128  # sizeof(struct fuse_entry_out)
    assert f.reply_entry(3, entry) == out(3, 0, body)
    assert f.parse_entry_out(f.decode_reply(f.reply_entry(3, entry)).body) == entry
    # fuse_attr_out { u64 attr_valid, u32 attr_valid_nsec, dummy, fuse_attr }
    body = struct.pack("<QII" + ATTR_FMT, 10, 20, 0, *ATTR_VALS)
    assert len(body) == 104
    assert f.reply_attr(3, attr, 10, 20) == out(3, 0, body)
    assert f.parse_attr_out(body) == (10, 20, attr)
    # before 7.32 fuse_attr.flags is padding: sent as zero
    old = f.reply_attr(3, attr, 10, 20, minor=31)
    assert old == out(3, 0, struct.pack("<QII" + ATTR_FMT, 10, 20, 0, *ATTR_VALS[:-1], 0))


def test_reply_create_open_write_vectors() -> None:
    attr = f.Attr(*ATTR_VALS)
    entry = f.EntryOut(5, 6, 1, 2, 3, 4, attr)
    # fuse_open_out { u64 fh, u32 open_flags, padding }
    assert f.reply_open(1, 77, f.FOPEN_KEEP_CACHE) == out(1, 0, struct.pack("<QII", 77, 2, 0))
    create = struct.pack("<QQQQII" + ATTR_FMT + "QII", 5, 6, 1, 2, 3, 4, *ATTR_VALS, 77, 1, 0)
    assert f.reply_create(1, entry, 77, 1) == out(1, 0, create)
    assert f.parse_create_out(create) == (entry, 77, 1)
    # fuse_write_out { u32 size, padding }
    assert f.reply_write(1, 4096) == out(1, 0, struct.pack("<II", 4096, 0))
    assert f.parse_write_out(struct.pack("<II", 4096, 0)) == 4096


def test_reply_statfs_lk_lseek_xattr_vectors() -> None:
    sfs = f.StatfsOut(1, 2, 3, 4, 5, 4096, 255, 512)
    # fuse_kstatfs { u64 blocks, bfree, bavail, files, ffree, u32 bsize, namelen, frsize, padding, spare[6] }
    body = struct.pack("<QQQQQIIII6I", 1, 2, 3, 4, 5, 4096, 255, 512, 0, 0, 0, 0, 0, 0, 0)
    assert len(body) == 80
    assert f.reply_statfs(2, sfs) == out(2, 0, body)
    assert f.parse_statfs_out(body) == sfs
    # fuse_lk_out { fuse_file_lock { u64 start, end, u32 type, pid } }
    lk = f.FileLock(0, 0xFFFFFFFFFFFFFFFF, 1, 321)
    assert f.reply_lk(2, lk) == out(2, 0, struct.pack("<QQII", *lk))
    assert f.reply_lseek(2, 1 << 40) == out(2, 0, struct.pack("<Q", 1 << 40))
    assert f.reply_xattr_size(2, 17) == out(2, 0, struct.pack("<II", 17, 0))
    assert f.reply_data(2, b"abc") == out(2, 0, b"abc")
    assert f.out_header(2, 3) + b"abc" == f.reply_data(2, b"abc")


def test_reply_init_vector() -> None:
    flags = f.ASYNC_READ | f.MAX_PAGES | f.SETXATTR_EXT | (1 << 34)
    o = f.InitOut(7, 38, 131072, flags, 16, 12, 1 << 20, 1, 256, 0)
    # fuse_init_out { u32 major, minor, max_readahead, flags, u16 max_background,
    #   congestion_threshold, u32 max_write, time_gran, u16 max_pages, map_alignment,
    #   u32 flags2, unused[7] }  (64 bytes)
    low = (flags & 0xFFFFFFFF) | f.INIT_EXT
    body = struct.pack(
        "<IIIIHHIIHHI7I", 7, 38, 131072, low, 16, 12, 1 << 20, 1, 256, 0, 4, *[0] * 7
    )
    assert len(body) == 64
    assert f.reply_init(4, o) == out(4, 0, body)
    assert f.parse_init_out(body) == o
    with pytest.raises(ValueError, match=r"7\.36"):
        f.reply_init(4, o._replace(minor=31))


def test_dirent_packing_alignment_and_budget() -> None:
    # fuse_dirent { u64 ino, off, u32 namelen, type, char name[] } padded to 8
    buf = f.DirentBuffer(64)
    assert buf.add(10, 1, 4, "a")  # 24 + 1 -> 32
    assert buf.add(11, 2, 8, "bcdefghi")  # 24 + 8 -> 32 exactly
    assert not buf.add(12, 3, 8, "x")  # would make 96 > 64
    expected = (
        struct.pack("<QQII", 10, 1, 1, 4)
        + b"a"
        + b"\x00" * 7
        + struct.pack("<QQII", 11, 2, 8, 8)
        + b"bcdefghi"
    )
    assert buf.getvalue() == expected and buf.count == 2 and buf.used == 64
    assert [(d.ino, d.off, d.type, d.name) for d in f.parse_dirents(expected, plus=False)] == [
        (10, 1, 4, "a"),
        (11, 2, 8, "bcdefghi"),
    ]
    assert not f.DirentBuffer(31).add(1, 1, 1, "a")
    with pytest.raises(ValueError):
        f.DirentBuffer(100).add(1, 1, 1, "a/b")


def test_direntplus_packing() -> None:
    attr = f.Attr(*ATTR_VALS)
    entry = f.EntryOut(5, 0, 1, 1, 0, 0, attr)
    buf = f.DirentBuffer(4096)
    assert buf.add_plus(entry, 1, 8, "file")
    # fuse_direntplus { fuse_entry_out (128), fuse_dirent } padded to 8: 128 + 24 + 4 -> 160
    expected = (
        struct.pack("<QQQQII" + ATTR_FMT, 5, 0, 1, 1, 0, 0, *ATTR_VALS)
        + struct.pack("<QQII", 11, 1, 4, 8)
        + b"file"
        + b"\x00" * 4
    )
    assert buf.getvalue() == expected
    [d] = f.parse_dirents(expected, plus=True)
    assert d.entry == entry and d.name == "file"
    assert not f.DirentBuffer(159).add_plus(entry, 1, 8, "file")


def test_dirent_type() -> None:
    assert f.dirent_type(0o040755) == 4  # DT_DIR
    assert f.dirent_type(0o100644) == 8  # DT_REG
    assert f.dirent_type(0o120777) == 10  # DT_LNK


def test_struct_sizes_match_fuse_h() -> None:
    sizes = {
        f.IN_HEADER: 40,
        f.OUT_HEADER: 16,
        f.INIT_IN: 64,
        f.INIT_OUT: 64,
        f.ENTRY_OUT: 128,
        f.ATTR_OUT: 104,
        f.SETATTR_IN: 88,
        f.READ_IN: 40,
        f.LK_IN: 48,
        f.STATFS_OUT: 80,
        f.COPY_FILE_RANGE_IN: 56,
        f.FALLOCATE_IN: 32,
        f.CREATE_IN: 16,
        f.MKNOD_IN: 16,
        f.SETXATTR_IN: 16,
        f.SETXATTR_IN_COMPAT: 8,
    }
    for s, n in sizes.items():
        assert s.size == n, s.format


def test_decode_reply_malformed() -> None:
    with pytest.raises(f.FuseDecodeError):
        f.decode_reply(b"\x00" * 15)
    with pytest.raises(f.FuseDecodeError):
        f.decode_reply(struct.pack("<IiQ", 17, 0, 1))
    with pytest.raises(f.FuseDecodeError):
        f.decode_reply(struct.pack("<IiQ", 20, -2, 1) + b"abcd")
    with pytest.raises(f.FuseDecodeError):
        f.parse_dirents(struct.pack("<QQII", 1, 1, 100, 0) + b"ab", plus=False)
    assert f.parse_names(b"user.a\x00user.b\x00") == ["user.a", "user.b"]


# ------------------------------------------------- READ/WRITE from a prefix --


@given(
    offset=st.integers(0, 2**64 - 1),
    size=st.integers(0, 5000),
    flags=st.integers(0, 2**32 - 1),
    fh=st.integers(0, 2**64 - 1),
)
@settings(max_examples=60, deadline=None)
def test_io_prefix_decodes_as_the_whole_request(
    offset: int, size: int, flags: int, fh: int
) -> None:
    """The first 80 bytes of a READ or WRITE decode to what decode_request gives."""
    read = f.Read(5, 9, 1, 2, 3, fh, offset, size, 1, 77, flags)
    data = f.encode_request(read)
    assert f.decode_io_prefix(data[: f.IO_PREFIX_SIZE], len(data)) == read == f.decode_request(data)
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    write = f.Write(6, 9, 1, 2, 3, fh, offset, 1, 77, flags, payload)
    data = f.encode_request(write)
    got = f.decode_io_prefix(data[: f.IO_PREFIX_SIZE], len(data))
    assert got == f.WriteIn(6, 9, 1, 2, 3, fh, offset, size, 1, 77, flags)
    assert f.decode_request(data) == write


def test_io_prefix_refuses_what_decode_request_refuses() -> None:
    read = f.encode_request(f.Read(5, 9, 1, 2, 3, 1, 0, 10, 0, 0, 0))
    write = f.encode_request(f.Write(6, 9, 1, 2, 3, 1, 0, 0, 0, 0, b"abc"))
    cases = [
        (read, len(read) + 8),  # fuse_in_header.len is not the request's length
        (read[:4] + (99).to_bytes(4, "little") + read[8:], len(read)),  # a wrong opcode ...
        (write, len(write) - 1),
    ]
    for data, total in cases[:1] + cases[2:]:
        with pytest.raises(f.FuseDecodeError) as ei:
            f.decode_io_prefix(data[: f.IO_PREFIX_SIZE], total)
        assert ei.value.errno == errno.EPROTO and ei.value.unique in (5, 6)
    with pytest.raises(ValueError):  # ... is the caller's bug: it checks the opcode first
        f.decode_io_prefix(cases[1][0], cases[1][1])
    with pytest.raises(ValueError):
        f.decode_io_prefix(read[:79], len(read))
    # a READ that carries more than fuse_read_in, with a header that says so
    longer = (88).to_bytes(4, "little") + read[4:] + bytes(8)
    with pytest.raises(f.FuseDecodeError, match="READ body is 48 bytes"):
        f.decode_io_prefix(longer[: f.IO_PREFIX_SIZE], 88)
    with pytest.raises(f.FuseDecodeError):
        f.decode_request(longer)
    # fuse_write_in.size that disagrees with the data carried
    bad = bytearray(write)
    bad[56:60] = (4).to_bytes(4, "little")
    with pytest.raises(f.FuseDecodeError, match="WRITE says 4 bytes but carries 3"):
        f.decode_io_prefix(bytes(bad[: f.IO_PREFIX_SIZE]), len(bad))
    with pytest.raises(f.FuseDecodeError):
        f.decode_request(bytes(bad))
    # extensions that 7.38 did not negotiate
    ext = bytearray(read)
    ext[36:38] = (1).to_bytes(2, "little")
    with pytest.raises(f.FuseDecodeError, match="extensions"):
        f.decode_io_prefix(bytes(ext), len(ext), f.Proto(38))
    assert f.decode_io_prefix(bytes(ext), len(ext), f.Proto(37)).size == 10
