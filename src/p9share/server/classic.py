"""The Plan 9 style requests of 9P2000.u and 9P2000 (docs/protocol.md §6).

Session inherits these handlers; its dispatch table maps Topen, Tcreate,
Tstat and Twstat to them, and its Tread hands directories here. The fid
rules, policy checks and quota accounting they use are Session's, shared
with the 9P2000.L handlers.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..backend.base import Node, OpenFile, SetAttr
from ..policy import Policy
from ..policy.idmap import Owner
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.connection import ServerConnection
from .fids import Fid
from .openflags import classic_to_host, wants_write
from .paths import walked as _walked

_T = TypeVar("_T")


class ClassicHandlers:
    """The 9P2000.u and 9P2000 handlers of a Session (a mixin: Session
    provides the attributes and methods declared here)."""

    proto: ServerConnection
    policy: Policy

    if TYPE_CHECKING:

        def _fid(self, num: int) -> Fid: ...
        def _done(self, *fids: Fid) -> None: ...
        def _iounit(self) -> int: ...
        @staticmethod
        def _need_node(f: Fid) -> None: ...
        @staticmethod
        def _need_unopened(f: Fid) -> None: ...
        @staticmethod
        def _owner(f: Fid, gid: int) -> Owner: ...
        def _check_create(self, f: Fid, name: str) -> None: ...
        def _new_file(self, d: Fid, make: Callable[[], _T]) -> _T: ...
        def _hard_link(self, d: Fid, target: int, name: str) -> None: ...
        def _claim(self, num: int) -> Fid: ...
        def _unclaim(self, f: Fid) -> None: ...
        def _apply(self, f: Fid, changes: SetAttr) -> None: ...
        def _open(self, f: Fid, flags: int) -> OpenFile: ...

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
            flags = classic_to_host(msg.mode)
            if f.node.qid.type & c.QidType.SYMLINK:
                raise OSError(errno.ELOOP, "symbolic links are never opened")
            if f.is_dir:
                if wants_write(flags):
                    raise OSError(errno.EISDIR, "directories open read-only")
                flags |= os.O_DIRECTORY
            if wants_write(flags) or msg.mode & c.ORCLOSE:
                self.policy.check_write(f.rights)
            f.file = self._open(f, flags)
            f.open_flags = flags
            f.remove_on_clunk = bool(msg.mode & c.ORCLOSE)
            f.dir_pending, f.dir_offset, f.dir_cookie = b"", 0, 0
            return m.Ropen(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def create(self, msg: m.Tcreate) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._check_create(f, msg.name)
            perm = msg.perm
            special = perm & (c.DMSYMLINK | c.DMLINK | c.DMDEVICE | c.DMNAMEDPIPE | c.DMSOCKET)
            if perm & (c.DMAUTH | c.DMMOUNT) or (special and not self._dotu):
                raise OSError(errno.EINVAL, f"cannot create a file with perm {perm:#x}")
            mode_bits = self.policy.new_mode(f.rights, (perm & 0o777) | _dotu_setid(perm))
            owner = self._owner(f, c.NONUNAME)
            if perm & c.DMDIR:
                flags = classic_to_host(msg.mode)
                if wants_write(flags):
                    raise OSError(errno.EISDIR, "directories open read-only")
                self._new_file(f, lambda: f.backend.mkdir(f.node, msg.name, mode_bits, owner))
                self._become_child(f, msg.name)
                f.file = f.backend.open(f.node, os.O_RDONLY | os.O_DIRECTORY)
                f.open_flags = os.O_RDONLY | os.O_DIRECTORY
            elif special:
                self._create_special(f, msg, mode_bits, owner)
            else:
                flags = classic_to_host(msg.mode) | os.O_CREAT | os.O_EXCL
                node, file = self._new_file(f, lambda: f.backend.create(
                    f.node, msg.name, flags, mode_bits, owner))  # fmt: skip
                old = f.node
                f.node, f.file, f.open_flags, f.is_dir = node, file, flags, False
                f.path, f.setid_checked = _walked(f.path, [msg.name]), True
                f.backend.release(old)
            f.remove_on_clunk = bool(msg.mode & c.ORCLOSE) and f.file is not None
            f.dir_pending, f.dir_offset, f.dir_cookie = b"", 0, 0
            return m.Rcreate(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def _create_special(self, f: Fid, msg: m.Tcreate, mode_bits: int, owner: Owner) -> None:
        """9P2000.u Tcreate of a symlink, hard link, device, FIFO or socket:
        fid then refers to the new file, not open (none of them can be)."""
        perm = msg.perm
        if perm & c.DMSYMLINK:
            self.policy.check_symlink(f.rights)
            if not msg.extension:
                raise OSError(errno.ENOENT, "empty symlink target")
            self._new_file(f, lambda: f.backend.symlink(f.node, msg.name, msg.extension, owner))
        elif perm & c.DMLINK:
            try:
                target_num = int(msg.extension, 10)
            except ValueError:
                raise OSError(errno.EINVAL, f"bad link target fid {msg.extension!r}") from None
            self._hard_link(f, target_num, msg.name)
        else:
            kind, rdev = stat_mod.S_IFIFO, 0
            if perm & c.DMSOCKET:
                kind = stat_mod.S_IFSOCK
            elif perm & c.DMDEVICE:
                kind, rdev = _parse_device(msg.extension)
            self.policy.check_mknod(f.rights, kind)
            self._new_file(f, lambda: f.backend.mknod(f.node, msg.name, kind | mode_bits, rdev,
                                                      owner))  # fmt: skip
        self._become_child(f, msg.name)

    def _become_child(self, f: Fid, name: str) -> None:
        node = f.backend.walk(f.node, name)
        old = f.node
        f.node, f.is_dir = node, bool(node.qid.type & c.QidType.DIR)
        f.path = _walked(f.path, [name])
        f.backend.release(old)

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
        uid, gid = f.export.idmap.guest_ids(a.uid, a.gid)
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
            changes = SetAttr()
            name = st.name if st.name and st.name != (f.path.rsplit("/", 1)[-1] or "/") else ""
            if st.mode != 0xFFFFFFFF:
                if bool(st.mode & c.DMDIR) != f.is_dir:
                    raise OSError(errno.EINVAL, "DMDIR cannot be changed")
                if f.node.qid.type & c.QidType.SYMLINK:
                    raise OSError(errno.EOPNOTSUPP, "a symbolic link has no mode of its own")
                perm = (st.mode & 0o777) | _dotu_setid(st.mode)
                changes.mode = self.policy.new_mode(f.rights, perm)
            if st.length != 0xFFFFFFFFFFFFFFFF:
                if f.is_dir:
                    raise OSError(errno.EISDIR, "a directory has no length to set")
                if st.length >= 1 << 63:
                    raise OSError(errno.EINVAL, "length out of range")
                self.policy.check_size(f.export, st.length)
                changes.size = st.length
            if st.atime != 0xFFFFFFFF:
                changes.atime = st.atime * 1_000_000_000
            if st.mtime != 0xFFFFFFFF:
                changes.mtime = st.mtime * 1_000_000_000
            uid = _wstat_id(st.n_uid if self._dotu else c.NONUNAME, st.uid)
            gid = _wstat_id(st.n_gid if self._dotu else c.NONUNAME, st.gid)
            changes.uid, changes.gid = f.export.idmap.host_ids(uid, gid)
            if name:
                self.policy.check_new_name(name)
            changed = name or changes != SetAttr()
            if not changed:
                # Plan 9: a Twstat that changes nothing asks for a sync
                if f.file is not None:
                    f.backend.fsync(f.file, False)
                return m.Rwstat()
            self.policy.check_write(f.rights)
            if changes != SetAttr():
                self._apply(f, changes)
            if name:
                if not f.path.strip("/"):
                    raise OSError(errno.EBUSY, "the export root cannot be renamed")
                f.backend.rename_node(f.node, None, name)
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


def _parse_device(ext: str) -> tuple[int, int]:
    """'c MAJOR MINOR' or 'b MAJOR MINOR' of a 9P2000.u Tcreate with DMDEVICE."""
    parts = ext.split()
    if (
        len(parts) != 3
        or parts[0] not in ("b", "c")
        or not all(p.isascii() and p.isdigit() and int(p) < 1 << 32 for p in parts[1:])
    ):
        raise OSError(errno.EINVAL, f"bad device description {ext!r}")
    kind = stat_mod.S_IFCHR if parts[0] == "c" else stat_mod.S_IFBLK
    return kind, os.makedev(int(parts[1]), int(parts[2]))


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
