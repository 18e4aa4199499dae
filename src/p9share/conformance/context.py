"""What a case works with: connections to the server under test, and the
case's own scratch directory on it."""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterable

from ..client.raw import RawClient
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.constants import NOFID, Dialect
from .registry import Failure, NotApplicable

DEFAULT_MSIZE = 65536 + 24
ROOT_FID = 0

# Cases whose error §6.3 lets carry the server's own reason as the 9P2000
# ename: frame checks (§2.5, §2.7, NOTAG in §3.4 and §3.6), bad names (§4.4,
# §5.1, §8.2), attach names that select no export (§7.4), a refusal because
# the export is read-only (§7.6) and malformed stat structures (§6.6).
REASONED = (
    "frame.*",
    "tags.notag-einval",
    "flush.notag",
    "walk.17-names",
    "walk.empty-name",
    "walk.slash-name",
    "*.bad-name",
    "confine.names",
    "aname.*",
    "attach.unknown-aname",
    "wstat.n-mismatch",
    "wstat.stat-size-mismatch",
    "wstat.readonly",
)
# strerror text -> errno, to tell a reason from the text of a wrong errno
_STRERROR = {os.strerror(e): e for e in sorted(errno.errorcode, reverse=True)}


def errname(num: int) -> str:
    return errno.errorcode.get(num, str(num))


def describe(r: m.Message) -> str:
    """A short, readable form of a reply."""
    if isinstance(r, m.Rlerror):
        return f"Rlerror({errname(r.ecode)})"
    if isinstance(r, m.Rerror):
        if r.errno:
            return f"Rerror({r.ename!r}, {errname(r.errno)})"
        return f"Rerror({r.ename!r})"
    if isinstance(r, m.Rread | m.Rreaddir):
        return f"{type(r).__name__}({len(r.data)} bytes)"
    text = repr(r)
    return text if len(text) <= 160 else text[:157] + "..."


def is_error(r: m.Message) -> bool:
    return isinstance(r, m.Rlerror | m.Rerror)


def error_number(r: m.Message) -> int | None:
    """The errno of an error reply (None: not an error, 0: 9P2000, which has none)."""
    if isinstance(r, m.Rlerror):
        return r.ecode
    if isinstance(r, m.Rerror):
        return r.errno
    return None


class Conn:
    """One connection to the server under test, with checking helpers."""

    def __init__(self, ctx: Context, rc: RawClient) -> None:
        self.ctx = ctx
        self.rc = rc
        self.dialect = rc.dialect
        self._next_fid = 100

    @property
    def dotl(self) -> bool:
        return self.dialect is Dialect.P9P2000L

    def fid(self) -> int:
        self._next_fid += 1
        return self._next_fid

    # ---- sending
    def call(self, msg: m.Message, tag: int | None = None) -> m.Message:
        """Send msg and return its reply (errors included) after checking the tag."""
        sent = self.rc.send(msg, tag)
        rtag, r = self.rc.recv()
        if rtag != sent:
            raise Failure(
                f"{type(msg).__name__}: reply {describe(r)} under tag {rtag}, sent {sent}"
            )
        self.ctx.note(f"{type(msg).__name__} -> {describe(r)}")
        if isinstance(msg, m.Txattrwalk | m.Txattrcreate) and _user_xattr(msg.name):
            self.ctx.check_xattr_support(r)
        return r

    def ok(self, msg: m.Message, rtype: type[m.Message] | None = None) -> m.Message:
        r = self.call(msg)
        if is_error(r):
            raise Failure(f"{type(msg).__name__}: expected success, got {describe(r)}")
        if rtype is not None and not isinstance(r, rtype):
            raise Failure(f"{type(msg).__name__}: expected {rtype.__name__}, got {describe(r)}")
        return r

    def err(self, msg: m.Message, *errnos: int) -> str:
        """Expect an error reply with one of errnos (any error when none given;
        under 9P2000, which sends no number, any Rerror)."""
        r = self.call(msg)
        return self.check_err(msg, r, errnos)

    def check_err(self, msg: m.Message, r: m.Message, errnos: Iterable[int]) -> str:
        want = tuple(errnos)
        got = error_number(r)
        names = "/".join(errname(e) for e in want) or "an error"
        if got is None:
            raise Failure(f"{type(msg).__name__}: expected {names}, got {describe(r)}")
        if want and got not in want and self.dialect is not Dialect.P9P2000:
            raise Failure(f"{type(msg).__name__}: expected {names}, got {describe(r)}")
        if want and self.dialect is Dialect.P9P2000 and isinstance(r, m.Rerror):
            self._check_ename(msg, r.ename, want)
        return f"{type(msg).__name__} -> {describe(r)}"

    def _check_ename(self, msg: m.Message, ename: str, want: tuple[int, ...]) -> None:
        """9P2000 has no errno: §6.3 makes ename the strerror text of the
        errno, or (in the cases of REASONED) the server's own reason, which is
        never the text of another errno."""
        texts = {os.strerror(e) for e in want}
        if ename in texts:
            return
        other = _STRERROR.get(ename)
        if other is not None:
            raise Failure(
                f"{type(msg).__name__}: ename {ename!r} is the text of {errname(other)}, "
                f"expected {' or '.join(repr(t) for t in sorted(texts))}"
            )
        if not any(fnmatch.fnmatchcase(self.ctx.case_id, p) for p in REASONED):
            raise Failure(
                f"{type(msg).__name__}: ename {ename!r}, expected "
                f"{' or '.join(repr(t) for t in sorted(texts))} (§6.3)"
            )

    def send_raw(self, data: bytes) -> None:
        self.rc.send_raw(data)

    def recv(self) -> tuple[int, m.Message]:
        return self.rc.recv()

    def closed(self, wait: float = 3.0) -> bool:
        """Whether the server has closed the connection (EOF within wait seconds)
        without sending anything more."""
        self.rc.sock.settimeout(wait)
        try:
            data = self.rc.sock.recv(1)
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            self.rc.sock.settimeout(self.ctx.timeout)
        if data:
            raise Failure(f"expected the connection to be closed, got more bytes ({data!r}...)")
        return True

    # ---- fid helpers (dialect-generic where possible)
    def walk(self, fid: int, *names: str) -> int:
        new = self.fid()
        r = self.ok(m.Twalk(fid, new, list(names)), m.Rwalk)
        assert isinstance(r, m.Rwalk)
        if len(r.qids) != len(names):
            raise Failure(f"walk {names}: only {len(r.qids)} of {len(names)} names walked")
        return new

    def clone(self, fid: int) -> int:
        return self.walk(fid)

    def clunk(self, fid: int) -> None:
        self.ok(m.Tclunk(fid), m.Rclunk)

    def open(self, fid: int, mode: str = "r") -> m.Message:
        """Open fid: mode 'r', 'w' or 'rw' (plus 't' to truncate)."""
        acc = {"r": 0, "w": 1, "rw": 2}[mode.replace("t", "")]
        if self.dotl:
            flags = acc | (c.L_O_TRUNC if "t" in mode else 0)
            return self.ok(m.Tlopen(fid, flags), m.Rlopen)
        return self.ok(m.Topen(fid, acc | (c.OTRUNC if "t" in mode else 0)), m.Ropen)

    def create(self, dirfid: int, name: str, data: bytes = b"", mode: int = 0o644) -> None:
        """Create a regular file name in dirfid holding data (dirfid is unchanged)."""
        f = self.clone(dirfid)
        if self.dotl:
            self.ok(m.Tlcreate(f, name, c.L_O_RDWR, mode, NOFID), m.Rlcreate)
        else:
            self.ok(m.Tcreate(f, name, mode, c.ORDWR), m.Rcreate)
        if data:
            self.write_all(f, 0, data)
        self.clunk(f)

    def write_all(self, fid: int, offset: int, data: bytes) -> None:
        chunk = self.rc.msize - c.IOHDRSZ
        for i in range(0, len(data), chunk):
            r = self.ok(m.Twrite(fid, offset + i, data[i : i + chunk]), m.Rwrite)
            assert isinstance(r, m.Rwrite)
            if r.count != len(data[i : i + chunk]):
                raise Failure(f"short write: {r.count} bytes")

    def read_all(self, fid: int, offset: int = 0) -> bytes:
        out = b""
        while True:
            r = self.ok(m.Tread(fid, offset + len(out), self.rc.msize - c.IOHDRSZ), m.Rread)
            assert isinstance(r, m.Rread)
            if not r.data:
                return out
            out += bytes(r.data)

    def mkdir(self, dirfid: int, name: str, mode: int = 0o755) -> None:
        if self.dotl:
            self.ok(m.Tmkdir(dirfid, name, mode, NOFID), m.Rmkdir)
        else:
            f = self.clone(dirfid)
            self.ok(m.Tcreate(f, name, c.DMDIR | mode, c.OREAD), m.Rcreate)
            self.clunk(f)

    def symlink(self, dirfid: int, name: str, target: str) -> None:
        if self.dotl:
            self.ok(m.Tsymlink(dirfid, name, target, NOFID), m.Rsymlink)
        elif self.dialect is Dialect.P9P2000U:
            f = self.clone(dirfid)
            self.ok(m.Tcreate(f, name, c.DMSYMLINK | 0o777, c.OREAD, target), m.Rcreate)
            self.clunk(f)
        else:  # a case that needs a symlink is not registered for 9P2000
            raise ValueError("9P2000 cannot create symbolic links")

    def unlink(self, dirfid: int, name: str) -> None:
        """Remove dirfid/name with Twalk + Tremove (every dialect has them)."""
        self.ok(m.Tremove(self.walk(dirfid, name)), m.Rremove)

    def exists(self, dirfid: int, name: str) -> bool:
        new = self.fid()
        r = self.call(m.Twalk(dirfid, new, [name]))
        if is_error(r):
            return False
        self.clunk(new)
        return True

    def casedir(self) -> int:
        """A fid for this case's own scratch directory (created on first use)."""
        return self.ctx.casedir(self)


class Context:
    """Everything one case may use. Connections are closed when the case ends."""

    def __init__(
        self,
        address: str,
        dialect: Dialect,
        aname: str,
        scratch: str,
        case_id: str,
        *,
        ro_aname: str | None = None,
        timeout: float = 5.0,
        xattrs: bool | None = None,
    ) -> None:
        self.address = address
        # whether user xattrs worked in the run's probe (None: not probed)
        self.xattrs = xattrs
        self.dialect = dialect
        self.aname = aname
        self.ro_aname = ro_aname
        self.scratch = scratch
        self.case_id = case_id
        self.timeout = timeout
        self.notes: list[str] = []
        self._conns: list[Conn] = []
        self._casedir_made = False

    @property
    def dotl(self) -> bool:
        return self.dialect is Dialect.P9P2000L

    def note(self, text: str) -> None:
        self.notes.append(text)

    def raw(self, dialect: Dialect | None = None) -> Conn:
        """A connected, un-negotiated connection."""
        rc = RawClient.connect(self.address, timeout=self.timeout)
        rc.dialect = dialect or self.dialect
        conn = Conn(self, rc)
        self._conns.append(conn)
        return conn

    def conn(
        self,
        *,
        msize: int = DEFAULT_MSIZE,
        attach: bool = True,
        aname: str | None = None,
        dialect: Dialect | None = None,
    ) -> Conn:
        """A negotiated connection; with attach, ROOT_FID is the export root."""
        conn = self.raw(dialect)
        r = conn.rc.version(msize)
        if r.version == "unknown":  # §3.1: how a server says it does not offer a dialect
            raise NotApplicable(f"the server does not offer {conn.dialect.value} ('unknown')")
        if r.version != conn.dialect.value:
            raise Failure(f"Tversion {conn.dialect.value!r} answered with {r.version!r}")
        if attach:
            conn.ok(m.Tattach(ROOT_FID, NOFID, "root", self.aname if aname is None else aname, 0))
        return conn

    def ro_conn(self) -> Conn:
        """A connection attached to a read-only export of the same tree."""
        if self.ro_aname is None:
            raise NotApplicable("no read-only export given (--ro-aname)")
        return self.conn(aname=self.ro_aname)

    def check_xattr_support(self, r: m.Message) -> None:
        """EOPNOTSUPP for a user xattr is allowed where the exported
        filesystem has none (§5.26), and then for every case: the probe at
        the start of the run decides, and a server that answers otherwise
        in a case fails it."""
        if not (isinstance(r, m.Rlerror) and r.ecode == errno.EOPNOTSUPP):
            return
        if self.xattrs:
            raise Failure("EOPNOTSUPP for a user xattr, which worked in the probe of this run")
        if self.xattrs is False:
            raise NotApplicable("the export has no user xattrs (EOPNOTSUPP, as in the probe)")

    def casedir(self, conn: Conn) -> int:
        name = self.case_id.replace("/", "_")
        top = conn.walk(ROOT_FID, self.scratch)
        if not self._casedir_made:
            conn.mkdir(top, name, 0o777)
            self._casedir_made = True
        d = conn.walk(top, name)
        conn.clunk(top)
        return d

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.rc.close()
            except OSError:
                pass
        self._conns.clear()


def _user_xattr(name: str) -> bool:
    """A name the suite's xattr cases use: the list (empty) or user.*."""
    return name == "" or name.startswith("user.")


def scratch_name() -> str:
    return f"p9conf-{os.getpid()}-{os.urandom(4).hex()}"
