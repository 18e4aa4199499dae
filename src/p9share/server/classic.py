"""The Plan 9 style requests of 9P2000.u and 9P2000 (docs/protocol.md §6).

Session inherits these handlers; its dispatch table maps Topen, Tcreate,
Tstat and Twstat to them, and its Tread hands directories here. They keep
the fid rules and encodings of these dialects and translate onto the same
operations (p9share.operations) as the 9P2000.L handlers: every policy
check, quota charge and set-id rule is made there.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from typing import TYPE_CHECKING

from ..backend.base import Node
from ..operations import Operations, wants_write
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.connection import ServerConnection
from .fids import Fid
from .openflags import classic_to_host


class ClassicHandlers:
    """The 9P2000.u and 9P2000 handlers of a Session (a mixin: Session
    provides the attributes and methods declared here)."""

    proto: ServerConnection
    ops: Operations

    if TYPE_CHECKING:

        def _fid(self, num: int) -> Fid: ...
        def _done(self, *fids: Fid) -> None: ...
        def _iounit(self) -> int: ...
        @staticmethod
        def _need_node(f: Fid) -> None: ...
        def _need_dir(self, f: Fid) -> None: ...
        @staticmethod
        def _need_unopened(f: Fid) -> None: ...
        def _hard_link(self, d: Fid, target: int, name: str) -> None: ...
        def _claim(self, num: int) -> Fid: ...
        def _unclaim(self, f: Fid) -> None: ...
        def _become(self, f: Fid, node: Node, name: str) -> None: ...

    # ------------------------------------------------- 9P2000.u and 9P2000 --
    # Plan 9 style requests (docs/protocol.md §6). Each makes the same policy
    # calls as its .L equivalent: Topen as Tlopen, Tcreate as Tlcreate /
    # Tmkdir / Tsymlink / Tmknod / Tlink, Twstat as Tsetattr and Trename.
    @property
    def _dotu(self) -> bool:
        return self.proto.dialect is c.Dialect.P9P2000U

    def open(self, msg: m.Topen) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._need_node(f)
            self._need_unopened(f)
            self.ops.open(f, classic_to_host(msg.mode), removes=bool(msg.mode & c.ORCLOSE))
            f.remove_on_clunk = bool(msg.mode & c.ORCLOSE)
            f.dir_pending, f.dir_offset, f.dir_cookie = b"", 0, 0
            return m.Ropen(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def create(self, msg: m.Tcreate) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._need_dir(f)
            self._need_unopened(f)
            perm = msg.perm
            special = perm & (c.DMSYMLINK | c.DMLINK | c.DMDEVICE | c.DMNAMEDPIPE | c.DMSOCKET)
            if perm & (c.DMAUTH | c.DMMOUNT) or (special and not self._dotu):
                raise OSError(errno.EINVAL, f"cannot create a file with perm {perm:#x}")
            mode = (perm & 0o777) | _dotu_setid(perm)
            flags = classic_to_host(msg.mode)
            if perm & c.DMDIR:
                if wants_write(flags):
                    raise OSError(errno.EISDIR, "directories open read-only")
                self.ops.mkdir(f, msg.name, mode)
                self._become(f, f.backend.walk(f.node, msg.name), msg.name)
                self.ops.open(f, os.O_RDONLY)
            elif special:
                self._create_special(f, msg, mode)
            else:
                flags |= os.O_CREAT | os.O_EXCL
                node, file, _ = self.ops.create(f, msg.name, flags, mode)
                self._become(f, node, msg.name)
                f.file, f.open_flags, f.setid_checked = file, flags, True
            f.remove_on_clunk = bool(msg.mode & c.ORCLOSE) and f.file is not None
            f.dir_pending, f.dir_offset, f.dir_cookie = b"", 0, 0
            return m.Rcreate(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def _create_special(self, f: Fid, msg: m.Tcreate, mode: int) -> None:
        """9P2000.u Tcreate of a symlink, hard link, device, FIFO or socket:
        fid then refers to the new file, not open (none of them can be)."""
        perm = msg.perm
        if perm & c.DMSYMLINK:
            self.ops.symlink(f, msg.name, msg.extension)
        elif perm & c.DMLINK:
            try:
                target_num = int(msg.extension, 10)
            except ValueError:
                raise OSError(errno.EINVAL, f"bad link target fid {msg.extension!r}") from None
            self._hard_link(f, target_num, msg.name)
        else:
            kind, major, minor = stat_mod.S_IFIFO, 0, 0
            if perm & c.DMSOCKET:
                kind = stat_mod.S_IFSOCK
            elif perm & c.DMDEVICE:
                kind, major, minor = _parse_device(msg.extension)
            self.ops.mknod(f, msg.name, kind | mode, major, minor)
        self._become(f, f.backend.walk(f.node, msg.name), msg.name)

    def stat(self, msg: m.Tstat) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            name = f.path.rsplit("/", 1)[-1] or "/"
            return m.Rstat(self._stat_of(f, f.node, name))
        finally:
            self._done(f)

    def _stat_of(self, f: Fid, node: Node, name: str) -> m.Stat:
        a = f.backend.getattr(node)
        uid, gid = f.export.idmap.guest_ids(a.uid, a.gid)  # (node may be a child of f's)
        kind = stat_mod.S_IFMT(a.mode)
        mode = stat_mod.S_IMODE(a.mode) & 0o777
        ext = ""
        if kind == stat_mod.S_IFDIR:
            mode |= c.DMDIR
        if self._dotu:
            mode |= _dm_setid(a.mode)
            if kind == stat_mod.S_IFLNK:
                mode |= c.DMSYMLINK
                ext = f.backend.readlink(node)
            elif kind == stat_mod.S_IFIFO:
                mode |= c.DMNAMEDPIPE
            elif kind == stat_mod.S_IFSOCK:
                mode |= c.DMSOCKET
            elif kind in (stat_mod.S_IFCHR, stat_mod.S_IFBLK):
                mode |= c.DMDEVICE
                letter = "c" if kind == stat_mod.S_IFCHR else "b"
                ext = f"{letter} {os.major(a.rdev)} {os.minor(a.rdev)}"
            elif kind == stat_mod.S_IFREG:
                ext = f"HARDLINKCOUNT {a.nlink}"  # the Linux .u client reads nlink from here
        return m.Stat(
            type=0, dev=0, qid=a.qid, mode=mode,
            atime=_u32_seconds(a.atime_ns), mtime=_u32_seconds(a.mtime_ns),
            length=0 if kind == stat_mod.S_IFDIR else a.size,
            name=name, uid=str(uid), gid=str(gid), muid="",
            extension=ext, n_uid=uid, n_gid=gid, n_muid=c.NONUNAME,
        )  # fmt: skip

    def wstat(self, msg: m.Twstat) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            st = msg.stat
            # A Twstat is checked completely before anything is changed.
            if (st.type != 0xFFFF or st.dev != 0xFFFFFFFF or st.qid.type != 0xFF
                    or st.qid.version != 0xFFFFFFFF or st.qid.path != 0xFFFFFFFFFFFFFFFF):  # fmt: skip
                raise OSError(errno.EINVAL, "type, dev and qid cannot be changed")
            if st.extension:  # muid is ignored: Linux's .u client fills it in
                raise OSError(errno.EINVAL, "the extension cannot be changed")
            name = st.name if st.name and st.name != (f.path.rsplit("/", 1)[-1] or "/") else ""
            mode = size = atime = mtime = None
            if st.mode != 0xFFFFFFFF:
                if bool(st.mode & c.DMDIR) != f.is_dir:
                    raise OSError(errno.EINVAL, "DMDIR cannot be changed")
                if f.node.qid.type & c.QidType.SYMLINK:
                    raise OSError(errno.EOPNOTSUPP, "a symbolic link has no mode of its own")
                mode = (st.mode & 0o777) | _dotu_setid(st.mode)
            if st.length != 0xFFFFFFFFFFFFFFFF:
                size = st.length
            if st.atime != 0xFFFFFFFF:
                atime = st.atime * 1_000_000_000
            if st.mtime != 0xFFFFFFFF:
                mtime = st.mtime * 1_000_000_000
            uid = _wstat_id(st.n_uid if self._dotu else c.NONUNAME, st.uid)
            gid = _wstat_id(st.n_gid if self._dotu else c.NONUNAME, st.gid)
            if not name and (mode, size, atime, mtime, uid, gid) == (None,) * 6:
                # Plan 9: a Twstat that changes nothing asks for a sync
                if f.file is not None:
                    self.ops.fsync(f, False)
                return m.Rwstat()
            if name:
                self.ops.check_rename_node(f, name)  # before anything changes
            if (mode, size, atime, mtime, uid, gid) != (None,) * 6:
                self.ops.setattr(f, mode, uid, gid, size, atime, mtime)
            if name:
                self.ops.rename_node(f, None, name)
                f.path = f.path.rsplit("/", 1)[0] + "/" + name
            return m.Rwstat()
        finally:
            self._done(f)

    def _read_dir_stats(self, f: Fid, offset: int, count: int) -> m.Message:
        """9P2000/.u Tread on a directory: whole stat entries. The offset must
        be 0 (start again) or where the previous read ended (§6.8)."""
        if offset == 0:
            f.dir_pending, f.dir_offset, f.dir_cookie = b"", 0, 0
        elif offset != f.dir_offset:
            raise OSError(errno.EINVAL, f"directory offset {offset}, expected {f.dir_offset}")
        assert f.file is not None
        pending = bytearray(f.dir_pending)
        if f.dir_cookie >= 0 and len(pending) < count:
            cookie = f.dir_cookie
            for e in f.backend.readdir(f.file, cookie):
                cookie = e.cookie
                if e.name in (".", ".."):
                    continue
                try:
                    child = f.backend.walk(f.node, e.name)
                except OSError:
                    continue  # gone since the listing: skip it
                try:
                    pending += self._stat_of(f, child, e.name).encode(self.proto.dialect or
                                                                      c.Dialect.P9P2000)  # fmt: skip
                except OSError:
                    pass
                finally:
                    f.backend.release(child)
                if len(pending) >= count:
                    break
            else:
                cookie = -1  # the end of the directory
            f.dir_cookie = cookie
        out = 0
        while out + 2 <= len(pending):
            size = 2 + int.from_bytes(pending[out : out + 2], "little")
            if out + size > count:
                break
            out += size
        if out == 0 and pending:
            raise OSError(errno.EINVAL, "count too small for the next directory entry")
        data = bytes(pending[:out])
        f.dir_pending = bytes(pending[out:])
        f.dir_offset += out
        return m.Rread(data)


# 9P2000.u mode bits and the host's set-id and sticky bits
_DOTU_MODE_BITS = (
    (c.DMSETUID, stat_mod.S_ISUID),
    (c.DMSETGID, stat_mod.S_ISGID),
    (c.DMSETVTX, stat_mod.S_ISVTX),
)


def _dotu_setid(perm: int) -> int:
    """Host set-id and sticky bits for 9P2000.u DMSETUID/DMSETGID/DMSETVTX."""
    return sum(host for dm, host in _DOTU_MODE_BITS if perm & dm)


def _dm_setid(mode: int) -> int:
    """The 9P2000.u bits for a host mode's set-id and sticky bits."""
    return sum(dm for dm, host in _DOTU_MODE_BITS if mode & host)


def _parse_device(ext: str) -> tuple[int, int, int]:
    """(file type, major, minor) of 'c MAJOR MINOR' or 'b MAJOR MINOR', a
    9P2000.u Tcreate with DMDEVICE (their range is the operation's to check)."""
    parts = ext.split()
    if (
        len(parts) != 3
        or parts[0] not in ("b", "c")
        or not all(p.isascii() and p.isdigit() and len(p) <= 10 for p in parts[1:])
    ):
        raise OSError(errno.EINVAL, f"bad device description {ext!r}")
    kind = stat_mod.S_IFCHR if parts[0] == "c" else stat_mod.S_IFBLK
    return kind, int(parts[1]), int(parts[2])


def _u32_seconds(ns: int) -> int:
    """A stat time: unsigned 32-bit seconds (clamped)."""
    return min(max(ns // 1_000_000_000, 0), 0xFFFFFFFF)


def _wstat_id(numeric: int, text: str) -> int | None:
    """The id a Twstat asks for: .u's numeric field, else a decimal string;
    None: leave alone. Names are not looked up (they mean nothing here)."""
    if numeric != c.NONUNAME:
        return numeric
    if not text:
        return None
    if text.isascii() and text.isdigit() and int(text) < c.NONUNAME:
        return int(text)
    raise OSError(errno.EINVAL, f"cannot set owner {text!r}: use a number")
