"""The attack suite: a hostile guest, speaking raw 9P to a live server.

Two exports ("a" and "b") and a sibling directory "outside" holding a canary
file live in one temp dir. Every test attacks through the raw client; the
`arena` fixture then checks, at teardown, that

* no reply ever carried the canary's secret bytes (the canary holds nothing
  else, and a user xattr of it holds the secret too, so any read of it,
  whole or in part of at least two tokens, would show),
* nothing outside the exports changed: the same names with the same mode,
  size, link count, owner, mtime and ctime, and no new files,
* a second, independent connection still attaches and reads a file.

Errnos the server chooses (see hostfs.py's docstring): Tlopen of a host-made
device EPERM, of a FIFO or socket ENXIO; a walk through a symlink ENOTDIR and
Tlopen of one ELOOP; rename/link across exports EXDEV; names with '/' EINVAL;
NUL or invalid UTF-8 in any string EPROTO (the message is malformed).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.backend.hostfs import HostBackend
from p9share.client.raw import RawClient, ServerError, check, connect
from p9share.policy import Export
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import MsgType

from ..conftest import LiveServer

CLIENT_TIMEOUT = 5.0  # every reply is due well within this; a hang fails the test
SECRET = ("P9SHARE-CANARY-" + secrets.token_hex(16)).encode()
GETATTR_ALL = 0x3FFF

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE), as a hostile
    host process or a second guest racing the server would."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class WatchedClient(RawClient):
    """A raw client that fails the moment any reply carries the secret."""

    leaks: list[bytes]

    def recv_frame(self) -> bytes:
        frame = super().recv_frame()
        if SECRET in frame or SECRET[-24:] in frame:
            self.leaks.append(frame)
            raise AssertionError(f"reply carries the canary secret: {frame[:200]!r}")
        return frame


def errno_of(c_: RawClient, msg: m.Message) -> int:
    """The errno of the error reply msg must get (0 if it succeeds)."""
    try:
        c_.rpc(msg)
    except ServerError as e:
        return e.errno or -1
    return 0


def snapshot(top: Path, skip: set[Path]) -> dict[str, tuple[int, ...]]:
    """Every name under top (not under skip) with what a write would change."""
    out: dict[str, tuple[int, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in dirnames + filenames:
            p = d / n
            if p in skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(top))] = (
                st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid,
                st.st_mtime_ns, st.st_ctime_ns,
            )  # fmt: skip
    return out


class Arena:
    """The live server with its two exports and the outside canary."""

    def __init__(self, live: LiveServer, tmp: Path) -> None:
        self.live = live
        self.tmp = tmp
        self.a = tmp / "export"
        self.b = tmp / "export2"
        self.outside = tmp / "outside"
        self.canary = self.outside / "secret"
        self.clients: list[WatchedClient] = []
        self.leaks: list[bytes] = []

    def client(self, aname: str = "a", attach: bool = True) -> WatchedClient:
        c_ = WatchedClient(connect(self.live.tcp, CLIENT_TIMEOUT))
        c_.leaks = self.leaks
        self.clients.append(c_)
        c_.version(1 << 20)
        if attach:
            c_.attach(0, aname)
        return c_

    def host_view(self) -> dict[str, tuple[int, ...]]:
        return snapshot(self.tmp, {self.a, self.b})

    def second_client_works(self, within: float = CLIENT_TIMEOUT) -> None:
        """A fresh connection attaches and reads a file of export "a" in time."""
        start = time.monotonic()
        with RawClient.connect(self.live.tcp, timeout=within) as c2:
            c2.version()
            c2.attach(0, "a")
            c2.walk(0, 1, ["hello"])
            c2.rpc(m.Tlopen(1, c.L_O_RDONLY))
            r = c2.rpc(m.Tread(1, 0, 100))
            assert isinstance(r, m.Rread) and bytes(r.data) == b"hello\n"
        assert time.monotonic() - start < within


@pytest.fixture
def arena(make_server: Callable[..., LiveServer], tmp_path: Path) -> Iterator[Arena]:
    a, b, outside = tmp_path / "export", tmp_path / "export2", tmp_path / "outside"
    for d in (a, b, outside, outside / "dir"):
        d.mkdir()
    canary = outside / "secret"
    canary.write_bytes((SECRET + b"\n") * 64)
    os.setxattr(canary, "user.canary", SECRET)
    (outside / "dir" / "secret").write_bytes(SECRET)
    (a / "hello").write_text("hello\n")
    (a / "sub").mkdir()
    (a / "sub" / "inner").write_text("inner\n")
    (b / "other").write_text("other\n")
    # planted by a host process, pointing out of the export
    (a / "abs_dir").symlink_to(outside)
    (a / "abs_secret").symlink_to(canary)
    (a / "rel_dir").symlink_to("../outside")
    (a / "rel_secret").symlink_to("../outside/secret")
    (a / "deep_rel").symlink_to("../" * 40 + str(canary).lstrip("/"))
    (a / "dot_up").symlink_to("..")
    live = make_server({"a": (a, False), "b": (b, False)})
    ar = Arena(live, tmp_path)
    before = ar.host_view()
    parent_before = sorted(os.listdir(tmp_path.parent))
    canary_xattrs = os.listxattr(canary)
    yield ar
    for c_ in ar.clients:
        c_.close()
    assert not ar.leaks, "a reply carried the canary secret"
    assert ar.host_view() == before, "something outside the exports changed"
    assert sorted(os.listdir(tmp_path.parent)) == parent_before
    assert os.listxattr(canary) == canary_xattrs
    assert canary.read_bytes() == (SECRET + b"\n") * 64
    ar.second_client_works()


def test_arena_detects_a_leak(arena: Arena) -> None:
    """The watch works: a reply that does carry the secret is caught (a file
    inside the export holding it, so the teardown check must be told)."""
    (arena.a / "copy").write_bytes(SECRET)
    c_ = arena.client()
    c_.walk(0, 1, ["copy"])
    c_.rpc(m.Tlopen(1, c.L_O_RDONLY))
    with pytest.raises(AssertionError, match="canary secret"):
        c_.rpc(m.Tread(1, 0, 4096))
    assert len(arena.leaks) == 1
    arena.leaks.clear()


# ------------------------------------------------------------------ '..' ---
@pytest.mark.parametrize(
    "names",
    [
        [".."],
        [".."] * 16,
        ["sub", "..", ".."],
        ["sub", "..", "..", "..", "sub"],
        ["dot_up"],  # a symlink to '..' is a symlink, not the parent
    ],
)
def test_dotdot_walks_never_leave_the_export(arena: Arena, names: list[str]) -> None:
    c_ = arena.client()
    root = c_.rpc(m.Tgetattr(0, GETATTR_ALL))
    assert isinstance(root, m.Rgetattr)
    r = c_.walk(0, 1, names)
    assert len(r.qids) == len(names)
    got = c_.rpc(m.Tgetattr(1, GETATTR_ALL))
    assert isinstance(got, m.Rgetattr)
    if names[-1] == "..":
        assert got.qid == root.qid  # clamped at the export root
    if got.qid.type & c.QidType.DIR:
        up = c_.walk(1, 2, [".."] * 8)
        assert up.qids[-1] == root.qid
    c_.walk(0, 3, [])
    c_.rpc(m.Tlopen(3, c.L_O_RDONLY))
    listing = c_.rpc(m.Treaddir(3, 0, 65536))
    assert isinstance(listing, m.Rreaddir) and b"outside" not in bytes(listing.data)


@pytest.mark.parametrize(
    "names",
    [
        ["..", "outside"],
        ["..", "outside", "secret"],
        ["..", "export2", "other"],
        ["sub", "..", "..", "outside", "secret"],
        [".."] * 15 + ["outside"],
    ],
)
def test_dotdot_then_a_sibling_name_is_not_found(arena: Arena, names: list[str]) -> None:
    c_ = arena.client()
    first_missing = next(i for i, n in enumerate(names) if n in ("outside", "export2"))
    try:
        r = c_.walk(0, 1, names)
    except ServerError as e:
        assert first_missing == 0 and e.errno == errno.ENOENT  # nothing walked
    else:
        assert len(r.qids) == first_missing  # partial walk: stopped at the sibling
    assert errno_of(c_, m.Tgetattr(1, GETATTR_ALL)) == errno.EBADF  # newfid not made


@pytest.mark.parametrize(
    "name", ["../outside", "../outside/secret", "/", "//", "/etc/passwd", "sub/..", "./..", "a/"]
)
def test_walk_names_with_a_slash_are_refused(arena: Arena, name: str) -> None:
    c_ = arena.client()
    assert errno_of(c_, m.Twalk(0, 1, [name])) == errno.EINVAL
    assert errno_of(c_, m.Twalk(0, 1, ["sub", name])) == errno.EINVAL  # checked before walking
    assert errno_of(c_, m.Tgetattr(1, GETATTR_ALL)) == errno.EBADF


# -------------------------------------------------------- planted symlinks ---
PLANTED = ["abs_dir", "abs_secret", "rel_dir", "rel_secret", "deep_rel", "dot_up"]


@pytest.mark.parametrize("link", PLANTED)
def test_planted_symlinks_are_never_followed(arena: Arena, link: str) -> None:
    c_ = arena.client()
    r = c_.walk(0, 1, [link])
    assert r.qids[0].type == c.QidType.SYMLINK
    a = c_.rpc(m.Tgetattr(1, GETATTR_ALL))
    assert isinstance(a, m.Rgetattr) and stat.S_ISLNK(a.mode)
    target = c_.rpc(m.Treadlink(1))
    assert isinstance(target, m.Rreadlink) and target.target == os.readlink(arena.a / link)
    # through it: not a directory
    try:
        r2 = c_.walk(0, 2, [link, "secret"])
        assert len(r2.qids) == 1
    except ServerError as e:
        pytest.fail(f"walk through a symlink must be partial, got errno {e.errno}")
    assert errno_of(c_, m.Twalk(1, 2, ["secret"])) == errno.ENOTDIR
    for flags in (c.L_O_RDONLY, c.L_O_RDWR | c.L_O_TRUNC, c.L_O_RDONLY | c.L_O_DIRECTORY):
        assert errno_of(c_, m.Tlopen(1, flags)) == errno.ELOOP
    # Tlcreate of the existing name (no O_EXCL) opens what is there: refused
    assert errno_of(c_, m.Tlcreate(0, link, c.L_O_RDWR | c.L_O_TRUNC, 0o644, 0)) == errno.ELOOP
    # as a directory for changes
    c_.walk(0, 3, [link])
    assert errno_of(c_, m.Tlcreate(3, "evil", c.L_O_RDWR, 0o644, 0)) == errno.ENOTDIR
    for msg in (
        m.Tmkdir(1, "evil", 0o755, 0),
        m.Tsymlink(1, "evil", "x", 0),
        m.Tmknod(1, "evil", stat.S_IFIFO | 0o644, 0, 0, 0),
        m.Trenameat(0, "hello", 1, "evil"),
        m.Tunlinkat(1, "secret", 0),
        m.Tlink(1, 0, "evil"),
    ):
        assert errno_of(c_, msg) == errno.ENOTDIR, msg
    # attribute changes touch the link, never its target
    chmod = m.Tsetattr(1, c.SetattrValid.MODE, 0o4777, 0, 0, 0, 0, 0, 0, 0)
    assert errno_of(c_, chmod) == errno.EOPNOTSUPP
    trunc = m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 0, 0, 0, 0, 0)
    assert errno_of(c_, trunc) == errno.EINVAL
    times = m.Tsetattr(
        1, c.SetattrValid.ATIME | c.SetattrValid.MTIME | c.SetattrValid.ATIME_SET
        | c.SetattrValid.MTIME_SET, 0, 0, 0, 0, 12345, 0, 12345, 0,
    )  # fmt: skip
    assert errno_of(c_, times) == 0
    assert (arena.a / link).lstat().st_mtime == 12345
    chown = m.Tsetattr(1, c.SetattrValid.UID | c.SetattrValid.GID, 0, 4242, 4242, 0, 0, 0, 0, 0)
    if os.geteuid() == 0:
        assert errno_of(c_, chown) == 0
        assert (arena.a / link).lstat().st_uid == 4242
    # xattrs of the link itself (user.* is not allowed on symlinks), never the target's
    assert errno_of(c_, m.Txattrwalk(1, 4, "user.canary")) != 0
    lst = c_.rpc(m.Txattrwalk(1, 5, ""))
    assert isinstance(lst, m.Rxattrwalk)
    if lst.size:
        names = c_.rpc(m.Tread(5, 0, lst.size))
        assert isinstance(names, m.Rread) and b"user.canary" not in bytes(names.data)
    c_.rpc(m.Txattrcreate(1, "user.evil", 3, 0))
    c_.send(m.Twrite(1, 0, b"bad"))
    c_.recv()
    assert errno_of(c_, m.Tclunk(1)) != 0  # the kernel refuses user.* on a symlink
    assert errno_of(c_, m.Tstatfs(3)) == 0  # statfs of a link is harmless


def test_dotdot_from_a_directory_moved_out_by_the_host_is_refused(arena: Arena) -> None:
    """A host process moves a directory the guest holds out of the export:
    '..' from it no longer leads anywhere (it would lead outside)."""
    (arena.a / "sub" / "d2").mkdir()
    c_ = arena.client()
    c_.walk(0, 1, ["sub", "d2"])
    limbo = arena.tmp / "limbo"
    os.rename(arena.a / "sub" / "d2", limbo)
    try:
        assert errno_of(c_, m.Twalk(1, 2, [".."])) == errno.ENOENT
        assert errno_of(c_, m.Twalk(1, 2, ["..", "..", "outside"])) == errno.ENOENT
    finally:
        os.rename(limbo, arena.a / "sub" / "d2")
    c_.walk(1, 2, [".."])  # back inside: allowed again


@pytest.mark.parametrize(
    "target", ["/", "..", "../outside/secret", "/etc/shadow", "x/" * 100 + "y", "é ü"]
)
def test_guest_symlink_targets_are_stored_as_given_and_never_followed(
    arena: Arena, target: str
) -> None:
    c_ = arena.client()
    target = target if not target.startswith("../outside") else str(arena.canary)
    c_.rpc(m.Tsymlink(0, "mine", target, 0))
    assert os.readlink(arena.a / "mine") == target
    c_.walk(0, 1, ["mine"])
    r = c_.rpc(m.Treadlink(1))
    assert isinstance(r, m.Rreadlink) and r.target == target
    assert errno_of(c_, m.Tlopen(1, c.L_O_RDONLY)) == errno.ELOOP
    assert errno_of(c_, m.Twalk(0, 2, ["mine", "x"])) in (0, errno.ENOTDIR)
    assert errno_of(c_, m.Tgetattr(2, GETATTR_ALL)) == errno.EBADF


def test_symlink_to_a_directory_then_rename_into_it_stays_inside(arena: Arena) -> None:
    """A guest's own symlink to an outside directory cannot be used as the
    target directory of a rename, link or create."""
    c_ = arena.client()
    c_.rpc(m.Tsymlink(0, "out", str(arena.outside / "dir"), 0))
    c_.walk(0, 1, ["out"])
    assert errno_of(c_, m.Trenameat(0, "hello", 1, "hello")) == errno.ENOTDIR
    assert errno_of(c_, m.Trenameat(0, "hello", 0, "out/hello")) == errno.EINVAL
    c_.walk(0, 2, ["hello"])
    assert errno_of(c_, m.Trename(2, 1, "hello")) == errno.ENOTDIR
    assert errno_of(c_, m.Tlink(1, 2, "hello")) == errno.ENOTDIR
    assert (arena.a / "hello").read_text() == "hello\n"


# ------------------------------------------------------------------ races ---
def _swapper(a: Path, b: Path, stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set():
        exchange(a, b)
        count[0] += 1


RACE_SECONDS = 0.8
RACE_ITERATIONS = 2000
RACE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EPERM, errno.ENXIO}


class Swapper:
    """Threads that keep exchanging two names until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, a: Path, b: Path) -> list[int]:
        count = [0]
        t = threading.Thread(target=_swapper, args=(a, b, self._stop, count), daemon=True)
        self._threads.append(t)
        t.start()
        return count

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
            assert not t.is_alive()


@pytest.fixture
def swapper(arena: Arena) -> Iterator[Swapper]:
    sw = Swapper()
    yield sw
    sw.stop()  # before the arena's checks


def _race_loop(body: Callable[[int], None]) -> int:
    deadline = time.monotonic() + RACE_SECONDS
    i = 0
    while i < RACE_ITERATIONS and time.monotonic() < deadline:
        body(i)
        i += 1
    return i


def _expect_refusal_or(c_: RawClient, msg: m.Message) -> m.Message | None:
    """The reply, or None for one of the errnos a lost race may give."""
    try:
        return c_.rpc(msg)
    except ServerError as e:
        assert e.errno in RACE_ERRNOS, f"{msg}: errno {e.errno}"
        return None


def test_race_directory_swapped_for_symlink_to_outside(arena: Arena, swapper: Swapper) -> None:
    """While a host process keeps swapping the directory 'race' with a symlink
    to the outside directory, the guest walks through it, reads a file of the
    same name as the canary and creates files in it: it only ever sees the
    inside file, and nothing lands outside."""
    race, alt = arena.a / "race", arena.a / "race.alt"
    race.mkdir()
    (race / "secret").write_bytes(b"inside\n")
    alt.symlink_to(arena.outside)
    swaps = swapper.start(race, alt)
    c_ = arena.client()
    stats = {"read": 0, "created": 0}

    def body(i: int) -> None:
        r = _expect_refusal_or(c_, m.Twalk(0, 1, ["race", "secret"]))
        if isinstance(r, m.Rwalk) and len(r.qids) == 2:
            if _expect_refusal_or(c_, m.Tlopen(1, c.L_O_RDONLY)) is not None:
                data = c_.rpc(m.Tread(1, 0, 4096))
                assert isinstance(data, m.Rread) and bytes(data.data) == b"inside\n"
                stats["read"] += 1
            c_.rpc(m.Tclunk(1))
        r = _expect_refusal_or(c_, m.Twalk(0, 2, ["race"]))
        if isinstance(r, m.Rwalk) and r.qids:
            if r.qids[0].type & c.QidType.DIR:
                flags = c.L_O_RDWR | c.L_O_CREAT | c.L_O_EXCL
                if _expect_refusal_or(c_, m.Tlcreate(2, f"new{i}", flags, 0o644, 0)):
                    stats["created"] += 1
            else:
                assert errno_of(c_, m.Tmkdir(2, f"dir{i}", 0o755, 0)) == errno.ENOTDIR
            c_.rpc(m.Tclunk(2))

    n = _race_loop(body)
    assert n > 0 and swaps[0] > 0
    assert stats["read"] > 0 and stats["created"] > 0
    swapper.stop()
    # everything made went into the real directory, wherever it is now
    real = race if race.is_dir() and not race.is_symlink() else alt
    assert len(list(real.glob("new*"))) == stats["created"]


@pytest.mark.parametrize("kind", ["symlink", "chr_zero", "fifo", "socket"])
def test_race_file_swapped_for_special_file(arena: Arena, swapper: Swapper, kind: str) -> None:
    """A regular file keeps being exchanged with a symlink to the canary, a
    /dev/zero-like device, a FIFO without a writer or a socket: every open
    either reaches the regular file or is refused, never blocks, and never
    returns the other file's data."""
    target, alt = arena.a / "target", arena.a / "target.alt"
    target.write_bytes(b"inside\n")
    make_special(alt, kind)
    swaps = swapper.start(target, alt)
    c_ = arena.client()
    opened = 0

    def body(i: int) -> None:
        nonlocal opened
        r = _expect_refusal_or(c_, m.Twalk(0, 1, ["target"]))
        if r is None:
            return
        flags = c.L_O_RDONLY if i % 2 else c.L_O_RDONLY | c.L_O_NONBLOCK
        # alternately Tlopen of the walked node and Tlcreate of the existing name
        if i % 3:
            ok = _expect_refusal_or(c_, m.Tlopen(1, flags))
            fid = 1
        else:
            c_.walk(0, 2, [])
            ok = _expect_refusal_or(c_, m.Tlcreate(2, "target", flags, 0o644, 0))
            fid = 2
        if ok is not None:
            data = c_.rpc(m.Tread(fid, 0, 4096))
            assert isinstance(data, m.Rread) and bytes(data.data) == b"inside\n"
            opened += 1
        c_.rpc(m.Tclunk(1))
        if fid == 2:
            c_.rpc(m.Tclunk(2))

    n = _race_loop(body)
    assert n > 0 and swaps[0] > 0 and opened > 0


# ------------------------------------------------- host-made special files ---
def make_special(path: Path, kind: str) -> None:
    """A special file made on the host side (we run as root for devices)."""
    if kind == "symlink":
        path.symlink_to(Path("../outside/secret"))
        return
    modes = {
        "chr_null": (stat.S_IFCHR, os.makedev(1, 3)),
        "chr_zero": (stat.S_IFCHR, os.makedev(1, 5)),
        "blk_loop": (stat.S_IFBLK, os.makedev(7, 0)),
        "fifo": (stat.S_IFIFO, 0),
        "socket": (stat.S_IFSOCK, 0),
    }
    ftype, dev = modes[kind]
    try:
        os.mknod(path, ftype | 0o666, dev)
    except PermissionError as e:
        pytest.skip(f"cannot mknod {kind} here: {e}")


SPECIAL_ERRNO = {
    "chr_null": errno.EPERM,
    "chr_zero": errno.EPERM,
    "blk_loop": errno.EPERM,
    "fifo": errno.ENXIO,
    "socket": errno.ENXIO,
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_ERRNO))
def test_host_made_special_files_are_never_opened(arena: Arena, kind: str) -> None:
    """Devices answer EPERM, FIFOs and sockets ENXIO, for every open mode,
    at once (a FIFO with no writer would block an open(2)), and no device
    data (zeros) is ever returned."""
    special = arena.a / "special"
    make_special(special, kind)
    want = SPECIAL_ERRNO[kind]
    c_ = arena.client()
    c_.walk(0, 1, ["special"])
    a = c_.rpc(m.Tgetattr(1, GETATTR_ALL))
    assert isinstance(a, m.Rgetattr)
    assert stat.S_IFMT(a.mode) == stat.S_IFMT(special.lstat().st_mode)
    assert a.rdev == special.lstat().st_rdev
    modes = [
        c.L_O_RDONLY,
        c.L_O_WRONLY,
        c.L_O_RDWR,
        c.L_O_RDONLY | c.L_O_NONBLOCK,
        c.L_O_WRONLY | c.L_O_TRUNC | c.L_O_NONBLOCK,
        c.L_O_RDWR | c.L_O_APPEND,
    ]
    for flags in modes:
        start = time.monotonic()
        c_.walk(0, 2, ["special"])
        assert errno_of(c_, m.Tlopen(2, flags)) == want
        c_.rpc(m.Tclunk(2))
        c_.walk(0, 3, [])
        assert errno_of(c_, m.Tlcreate(3, "special", flags, 0o644, 0)) == want
        assert errno_of(c_, m.Tlcreate(3, "special", flags | c.L_O_EXCL, 0o644, 0)) == (
            errno.EEXIST
        )
        c_.rpc(m.Tclunk(3))
        assert time.monotonic() - start < 2.0
    trunc = m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 0, 0, 0, 0, 0)
    assert errno_of(c_, trunc) == errno.EINVAL
    # chmod goes through the magic link without opening: the type stays
    c_.rpc(m.Tsetattr(1, c.SetattrValid.MODE, 0o600, 0, 0, 0, 0, 0, 0, 0))
    st = special.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and not stat.S_ISREG(st.st_mode)
    # a reader on the other side of the FIFO never sees a server open
    if kind == "fifo":
        with pytest.raises(OSError) as ei:
            os.open(special, os.O_WRONLY | os.O_NONBLOCK)
        assert ei.value.errno == errno.ENXIO  # no reader: nobody opened it


# ------------------------------------------------------- guest mknod/suid ---
@pytest.mark.parametrize(
    ("mode", "major", "minor", "want"),
    [
        (stat.S_IFCHR | 0o666, 1, 3, errno.EPERM),
        (stat.S_IFCHR | 0o666, 1, 5, errno.EPERM),
        (stat.S_IFCHR | 0o4777, 1, 1, errno.EPERM),  # /dev/mem, set-uid
        (stat.S_IFBLK | 0o660, 8, 0, errno.EPERM),
        (stat.S_IFDIR | 0o755, 0, 0, errno.EINVAL),
        (stat.S_IFLNK | 0o777, 0, 0, errno.EINVAL),
        (0o170000 | 0o644, 0, 0, errno.EINVAL),  # no such type
    ],
)
def test_guest_mknod_of_devices_is_refused(
    arena: Arena, mode: int, major: int, minor: int, want: int
) -> None:
    c_ = arena.client()
    assert errno_of(c_, m.Tmknod(0, "node", mode, major, minor, 0)) == want
    assert not os.path.lexists(arena.a / "node")
    c_.walk(0, 1, ["sub"])
    assert errno_of(c_, m.Tmknod(1, "node", mode, major, minor, 0)) == want
    assert not os.path.lexists(arena.a / "sub" / "node")


@pytest.mark.parametrize("ftype", [stat.S_IFIFO, stat.S_IFSOCK])
def test_guest_made_fifo_and_socket_are_never_opened(arena: Arena, ftype: int) -> None:
    c_ = arena.client()
    c_.rpc(m.Tmknod(0, "node", ftype | 0o666, 0, 0, 0))
    assert stat.S_IFMT((arena.a / "node").lstat().st_mode) == ftype
    c_.walk(0, 1, ["node"])
    assert errno_of(c_, m.Tlopen(1, c.L_O_RDONLY)) == errno.ENXIO
    c_.walk(0, 2, [])
    assert errno_of(c_, m.Tlcreate(2, "node", c.L_O_WRONLY, 0o644, 0)) == errno.ENXIO


def test_setuid_chmod_never_reaches_outside(arena: Arena) -> None:
    """Set-id mode bits aimed through planted links and a hard link of one
    change nothing outside (the teardown compares the canary's mode)."""
    c_ = arena.client()
    for link in ("abs_secret", "rel_secret", "abs_dir"):
        c_.walk(0, 1, [link])
        setid = m.Tsetattr(1, c.SetattrValid.MODE, 0o6777, 0, 0, 0, 0, 0, 0, 0)
        assert errno_of(c_, setid) == errno.EOPNOTSUPP
        c_.rpc(m.Tclunk(1))
    c_.walk(0, 1, ["abs_secret"])
    c_.rpc(m.Tlink(0, 1, "hard"))
    c_.walk(0, 2, ["hard"])
    assert errno_of(c_, m.Tsetattr(2, c.SetattrValid.MODE, 0o4755, 0, 0, 0, 0, 0, 0, 0)) == (
        errno.EOPNOTSUPP
    )


@pytest.mark.parametrize("how", ["lcreate", "setattr", "mknod"])
def test_guest_cannot_make_set_uid_root_files(arena: Arena, how: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root server can make root-owned files")
    c_ = WatchedClient(connect(arena.live.tcp, CLIENT_TIMEOUT))
    c_.leaks = arena.leaks
    arena.clients.append(c_)
    c_.version()
    c_.attach(0, "a", uname="root", n_uname=0)
    path = arena.a / "suid"
    try:
        if how == "lcreate":
            c_.rpc(m.Tlcreate(0, "suid", c.L_O_RDWR, 0o6755, 0))
        elif how == "mknod":
            c_.rpc(m.Tmknod(0, "suid", stat.S_IFREG | 0o6755, 0, 0, 0))
        else:
            path.write_bytes(b"#!/bin/sh\n")
            c_.walk(0, 1, ["suid"])
            c_.rpc(m.Tsetattr(1, c.SetattrValid.MODE, 0o6755, 0, 0, 0, 0, 0, 0, 0))
    except ServerError as e:
        assert e.errno == errno.EPERM
    if path.exists():
        st = path.lstat()
        assert not (st.st_uid == 0 and st.st_mode & (stat.S_ISUID | stat.S_ISGID))


# ------------------------------------------------------- links and renames ---
def test_hard_links_cannot_leave_the_export(arena: Arena) -> None:
    c_ = arena.client()
    c_.attach(10, "b")
    c_.walk(0, 1, ["hello"])
    c_.walk(10, 11, ["other"])
    assert errno_of(c_, m.Tlink(10, 1, "x")) == errno.EXDEV
    assert errno_of(c_, m.Tlink(0, 11, "x")) == errno.EXDEV
    for bad in ("../x", "../outside/x", "/tmp/x", "..", ".", "", "a/b"):
        assert errno_of(c_, m.Tlink(0, 1, bad)) == errno.EINVAL, bad
    c_.walk(0, 2, ["sub"])
    assert errno_of(c_, m.Tlink(0, 2, "subdir")) == errno.EPERM
    # a link of a planted symlink is one more symlink inside, nothing more
    c_.walk(0, 3, ["abs_secret"])
    c_.rpc(m.Tlink(2, 3, "hl"))
    assert os.readlink(arena.a / "sub" / "hl") == str(arena.canary)
    c_.walk(2, 4, ["hl"])
    assert errno_of(c_, m.Tlopen(4, c.L_O_RDONLY)) == errno.ELOOP
    assert not (arena.b / "x").exists() and not (arena.a / "x").exists()


def test_renames_cannot_leave_the_export(arena: Arena) -> None:
    c_ = arena.client()
    c_.attach(10, "b")
    c_.walk(0, 1, ["hello"])
    assert errno_of(c_, m.Trenameat(0, "hello", 10, "hello")) == errno.EXDEV
    assert errno_of(c_, m.Trenameat(10, "other", 0, "other")) == errno.EXDEV
    assert errno_of(c_, m.Trename(1, 10, "hello")) == errno.EXDEV
    for bad in ("..", ".", "", "../outside/x", "../hello", "/tmp/x", "x/"):
        assert errno_of(c_, m.Trenameat(0, "hello", 0, bad)) == errno.EINVAL, bad
        assert errno_of(c_, m.Trename(1, 0, bad)) == errno.EINVAL, bad
        assert errno_of(c_, m.Trenameat(0, bad, 0, "x")) == errno.EINVAL, bad
    assert errno_of(c_, m.Trename(0, 0, "root")) == errno.EBUSY  # the root has no name
    # the parent of the root is the root: a rename "up" stays inside
    c_.walk(0, 2, [".."])
    c_.walk(0, 3, ["sub"])
    c_.rpc(m.Trenameat(3, "inner", 2, "inner_up"))
    assert (arena.a / "inner_up").read_text() == "inner\n"
    assert errno_of(c_, m.Tunlinkat(0, "..", c.AT_REMOVEDIR)) == errno.EINVAL
    assert errno_of(c_, m.Trenameat(0, "sub", 3, "loop")) == errno.EINVAL  # into itself
    assert (arena.a / "hello").read_text() == "hello\n"
    assert (arena.b / "other").read_text() == "other\n"


# ------------------------------------------------------------------ xattrs ---
RESERVED = ["user.p9share.mode", "user.p9share.uid", "user.virtfs.mode", "user.virtfs.rdev"]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_xattr_names_are_refused(arena: Arena, name: str) -> None:
    c_ = arena.client()
    c_.walk(0, 1, ["hello"])
    assert errno_of(c_, m.Txattrcreate(1, name, 4, 0)) == errno.EPERM


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_xattr_names_are_invisible(arena: Arena, name: str) -> None:
    os.setxattr(arena.a / "hello", name, b"\0\0\0\0")
    c_ = arena.client()
    c_.walk(0, 1, ["hello"])
    lst = c_.rpc(m.Txattrwalk(1, 2, ""))
    assert isinstance(lst, m.Rxattrwalk)
    names = c_.rpc(m.Tread(2, 0, max(lst.size, 1)))
    assert isinstance(names, m.Rread)
    assert name.encode() not in bytes(names.data)
    assert errno_of(c_, m.Txattrwalk(1, 3, name)) == errno.ENODATA


def test_xattr_attack_names(arena: Arena) -> None:
    """Odd xattr names get clear errors; a value set on a file inside stays
    inside (the canary's own xattrs are compared at teardown)."""
    c_ = arena.client()
    c_.walk(0, 1, ["hello"])
    assert errno_of(c_, m.Txattrcreate(1, "", 4, 0)) == errno.EINVAL
    assert errno_of(c_, m.Txattrwalk(1, 2, "user.canary")) == errno.ENODATA
    assert errno_of(c_, m.Txattrwalk(1, 2, "nonamespace")) == errno.EOPNOTSUPP
    assert errno_of(c_, m.Txattrcreate(1, "user.x", 1 << 20, 0)) == errno.E2BIG


# ---------------------------------------------------- NUL and '/' in names ---
PLACEHOLDER = "QQQQ"


def _frame_with(msg: m.Message, tag: int, raw_name: bytes) -> bytes:
    """msg encoded with PLACEHOLDER's bytes replaced (same length)."""
    frame = m.encode_message(msg, tag)
    needle = struct.pack("<H", 4) + PLACEHOLDER.encode()
    assert frame.count(needle) == 1 and len(raw_name) == 4
    return frame.replace(needle, struct.pack("<H", 4) + raw_name)


NAMED_MESSAGES: list[m.Message] = [
    m.Twalk(0, 1, [PLACEHOLDER]),
    m.Tlcreate(0, PLACEHOLDER, c.L_O_RDWR, 0o644, 0),
    m.Tmkdir(0, PLACEHOLDER, 0o755, 0),
    m.Tsymlink(0, PLACEHOLDER, "target", 0),
    m.Tsymlink(0, "name", PLACEHOLDER, 0),
    m.Tmknod(0, PLACEHOLDER, stat.S_IFIFO | 0o644, 0, 0, 0),
    m.Trenameat(0, "hello", 0, PLACEHOLDER),
    m.Trenameat(0, PLACEHOLDER, 0, "x"),
    m.Tunlinkat(0, PLACEHOLDER, 0),
    m.Tlink(0, 5, PLACEHOLDER),
    m.Txattrcreate(5, PLACEHOLDER, 4, 0),
    m.Txattrwalk(5, 6, PLACEHOLDER),
    m.Tattach(7, c.NOFID, "root", PLACEHOLDER, 0),
]


@pytest.mark.parametrize("raw", [b"a\0bc", b"\0\0\0\0", b"a\xffbc", b"..\0/"])
@pytest.mark.parametrize("msg", NAMED_MESSAGES, ids=lambda x: type(x).__name__)
def test_nul_and_bad_utf8_in_names_are_malformed(arena: Arena, msg: m.Message, raw: bytes) -> None:
    c_ = arena.client()
    c_.walk(0, 5, ["hello"])
    before = sorted(os.listdir(arena.a))
    c_.send_raw(_frame_with(msg, 77, raw))
    tag, r = c_.recv()
    assert tag == 77 and isinstance(r, m.Rlerror) and r.ecode == errno.EPROTO
    assert sorted(os.listdir(arena.a)) == before
    assert isinstance(c_.rpc(m.Tgetattr(0, GETATTR_ALL)), m.Rgetattr)  # still served


@pytest.mark.parametrize("name", ["a/b", "/", "../x", "x/", "/etc/passwd"])
def test_slash_in_new_names_is_refused(arena: Arena, name: str) -> None:
    c_ = arena.client()
    c_.walk(0, 1, ["hello"])
    c_.walk(0, 2, [])
    before = sorted(os.listdir(arena.a))
    for msg in (
        m.Tlcreate(2, name, c.L_O_RDWR, 0o644, 0),
        m.Tmkdir(0, name, 0o755, 0),
        m.Tsymlink(0, name, "t", 0),
        m.Tmknod(0, name, stat.S_IFIFO | 0o644, 0, 0, 0),
        m.Trenameat(0, "hello", 0, name),
        m.Trenameat(0, name, 0, "x"),
        m.Trename(1, 0, name),
        m.Tunlinkat(0, name, 0),
        m.Tlink(0, 1, name),
    ):
        assert errno_of(c_, msg) == errno.EINVAL, msg
    assert sorted(os.listdir(arena.a)) == before


# ------------------------------------------------------- deep, long, many ---
@pytest.mark.parametrize(
    ("length", "want"), [(255, 0), (256, errno.ENAMETOOLONG), (4097, errno.ENAMETOOLONG),
                         (65000, errno.ENAMETOOLONG)]
)  # fmt: skip
def test_long_names(arena: Arena, length: int, want: int) -> None:
    c_ = arena.client()
    name = "n" * length
    assert errno_of(c_, m.Tmkdir(0, name, 0o755, 0)) == want
    assert errno_of(c_, m.Twalk(0, 1, [name])) == (want or 0)
    assert errno_of(c_, m.Tsymlink(0, "s" * length, "t", 0)) == want
    # a target longer than PATH_MAX cannot be stored
    assert errno_of(c_, m.Tsymlink(0, "ln", "t" * length, 0)) == (
        0 if length < 4096 else errno.ENAMETOOLONG
    )


def test_deep_paths_beyond_path_max(arena: Arena) -> None:
    """150 levels of 40-character names (6,000 bytes, past PATH_MAX): every
    operation is fd-relative, so the bottom works, and '..' climbs back to
    the root and no further."""
    c_ = arena.client()
    c_.walk(0, 1, [])
    name = "d" * 40
    for _ in range(150):
        c_.rpc(m.Tmkdir(1, name, 0o755, 0))
        c_.walk(1, 1, [name])
    c_.rpc(m.Tlcreate(1, "bottom", c.L_O_RDWR, 0o644, 0))
    c_.rpc(m.Twrite(1, 0, b"deep"))
    r = c_.rpc(m.Tread(1, 0, 10))
    assert isinstance(r, m.Rread) and bytes(r.data) == b"deep"
    root = c_.rpc(m.Tgetattr(0, GETATTR_ALL))
    assert isinstance(root, m.Rgetattr)
    c_.walk(0, 2, [name] * 16)
    for _ in range(12):
        c_.walk(2, 2, [".."] * 16)
    top = c_.rpc(m.Tgetattr(2, GETATTR_ALL))
    assert isinstance(top, m.Rgetattr) and top.qid == root.qid
    # 17 names in one Twalk is malformed
    body = struct.pack("<IIH", 0, 3, 17) + b"".join(struct.pack("<H", 1) + b"a" for _ in range(17))
    c_.send_raw(struct.pack("<IBH", 7 + len(body), MsgType.TWALK, 9) + body)
    tag, err = c_.recv()
    assert tag == 9 and isinstance(err, m.Rlerror) and err.ecode == errno.EPROTO


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pipeline(c_: RawClient, msgs: list[m.Message], batch: int = 2000) -> list[m.Message]:
    replies: list[m.Message] = []
    for i in range(0, len(msgs), batch):
        chunk = msgs[i : i + batch]
        c_.send_raw(b"".join(m.encode_message(x, 1 + (j % 60000)) for j, x in enumerate(chunk)))
        for _ in chunk:
            replies.append(c_.recv()[1])
    return replies


def test_fid_exhaustion(arena: Arena) -> None:
    """20,000 fids on one connection (clones of the root, one in twenty a
    file): a second client works meanwhile; clunks and then a Tversion (which
    drops every fid) leave no fd behind."""
    fds = _open_fds()
    c_ = arena.client()
    n = 20_000
    walks: list[m.Message] = [m.Twalk(0, 100 + i, [] if i % 20 else ["hello"]) for i in range(n)]
    replies = _pipeline(c_, walks)
    assert all(isinstance(r, m.Rwalk) for r in replies)
    arena.second_client_works()
    c_.walk(0, 100 + n, ["sub"])  # still more fids possible
    replies = _pipeline(c_, [m.Tclunk(100 + i) for i in range(0, n, 20)])
    assert all(isinstance(r, m.Rclunk) for r in replies)
    assert errno_of(c_, m.Tclunk(100)) == errno.EBADF
    c_.version(1 << 20)  # drops the other 19,001
    assert errno_of(c_, m.Tclunk(101)) == errno.EBADF
    c_.attach(0, "a")
    assert _open_fds() <= fds + 8  # this client's socket and the like


def test_flood_of_pipelined_requests(arena: Arena) -> None:
    """5,000 Tgetattr sent at once, replies not read while a second client
    asks: the second client is answered in bounded time; the flood's replies
    all arrive afterwards."""
    c_ = arena.client()
    n = 5000
    flood = b"".join(m.encode_message(m.Tgetattr(0, GETATTR_ALL), 1 + i) for i in range(n))
    sender = threading.Thread(target=c_.send_raw, args=(flood,), daemon=True)
    sender.start()
    arena.second_client_works(within=CLIENT_TIMEOUT)
    tags = set()
    for _ in range(n):
        tag, r = c_.recv()
        check(r)
        tags.add(tag)
    sender.join(CLIENT_TIMEOUT)
    assert not sender.is_alive() and len(tags) == n


def test_half_sent_messages_leave_others_served(arena: Arena) -> None:
    """Connections that stop mid-header or mid-body do not stop a second
    client; the first then finishes its message and gets its answer."""
    frame = m.encode_message(m.Tgetattr(0, GETATTR_ALL), 5)
    half_header = arena.client()
    half_header.send_raw(frame[:3])
    half_body = arena.client()
    big = m.encode_message(m.Twalk(0, 1, ["x" * 100] * 16), 6)
    half_body.send_raw(big[: len(big) // 2])
    silent = arena.client(attach=False)  # version only, then nothing
    arena.second_client_works()
    half_header.send_raw(frame[3:])
    tag, r = half_header.recv()
    assert tag == 5 and isinstance(r, m.Rgetattr)
    half_body.send_raw(big[len(big) // 2 :])
    tag, r = half_body.recv()
    assert tag == 6 and isinstance(r, m.Rlerror) and r.ecode == errno.ENOENT
    silent.attach(0, "a")


# ------------------------------------------------------------ cross mounts ---
@pytest.fixture(params=["tmpfs", "bind"])
def mount_in_export(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """export/mnt with a tmpfs, or a bind mount of a sibling directory (same
    filesystem as the export: st_dev alone cannot tell it is a mount)."""
    export = tmp_path / "export"
    mnt = export / "mnt"
    mnt.mkdir(parents=True)
    (export / "plain").mkdir()
    if request.param == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=1m", "p9share-test", str(mnt)]
    else:
        src = tmp_path / "elsewhere"
        src.mkdir()
        cmd = ["mount", "--bind", str(src), str(mnt)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    try:
        (mnt / "f").write_text("on the mount\n")
        yield export
    finally:
        # lazy: the server may still hold an fd inside the mount
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


@pytest.mark.parametrize("cross", [True, False])
def test_cross_mounts_option(
    mount_in_export: Path, make_server: Callable[..., LiveServer], cross: bool
) -> None:
    def factory(e: Export) -> HostBackend:
        return HostBackend(e.path, readonly=e.readonly, cross_mounts=cross)

    live = make_server(backend_factory=factory)
    with live.client() as c_:
        c_.walk(0, 1, ["plain"])  # the export's own filesystem: always fine
        if cross:
            c_.walk(0, 2, ["mnt", "f"])
            c_.rpc(m.Tlopen(2, c.L_O_RDONLY))
            r = c_.rpc(m.Tread(2, 0, 100))
            assert isinstance(r, m.Rread) and bytes(r.data) == b"on the mount\n"
            return
        for names in (["mnt"], ["mnt", "f"], ["mnt", ".."]):
            assert errno_of(c_, m.Twalk(0, 2, names)) == errno.EXDEV
        assert errno_of(c_, m.Tlcreate(0, "mnt", c.L_O_RDONLY, 0o644, 0)) == errno.EXDEV
        c_.walk(0, 3, [])
        c_.rpc(m.Tlopen(3, c.L_O_RDONLY))
        listing = c_.rpc(m.Treaddir(3, 0, 8192))
        assert isinstance(listing, m.Rreaddir) and b"mnt" in bytes(listing.data)
    assert not (mount_in_export / "mnt" / "evil").exists()


def test_cross_mounts_false_on_the_backend(mount_in_export: Path) -> None:
    be = HostBackend(str(mount_in_export), cross_mounts=False)
    try:
        root = be.root()
        with pytest.raises(OSError) as ei:
            be.walk(root, "mnt")
        assert ei.value.errno == errno.EXDEV
        be.release(be.walk(root, "plain"))
        be.release(root)
    finally:
        be.shutdown()
