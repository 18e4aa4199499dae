"""A small 9P2000.L server on loopback that tells the truth about a tiny
export, except where a test tells it to lie.

The export: the root directory and one file "f" holding b"hello world",
with an extended attribute "user.a" = b"value". It runs in threads over
real sockets (one thread per connection), speaks through the project's
server-side codec, and answers every request a client sends it in order.
``HostileServer(lies={"..."})`` names the lies, one string each (see LIES).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.connection import BadRequest, FatalError, Request, ServerConnection
from p9share.protocol.wire import Qid

ROOT = Qid(c.QidType.DIR, 0, 1)
FILE = Qid(c.QidType.FILE, 0, 2)
LOOP_QID = Qid(c.QidType.DIR, 0, 5)
DATA = b"hello world"
XATTR = {"user.a": b"value"}
HUGE_ERRNO = 2**32 - 2  # an Rlerror ecode at or above 2^31
U64_MAX = 2**64 - 1

LIES = {
    "errno": "every error reply carries ecode 2^32-2",
    "errno-version": "Tversion is answered with Rlerror(2^32-2)",
    "errno-clunk": "Tclunk is answered with Rlerror(2^32-2)",
    "xattr-size": "Rxattrwalk says 2^63 bytes and the attribute reads never end",
    "readdir-stuck": "Treaddir returns the same entry and cookie whatever the offset",
    "readdir-cycle": "Treaddir cookies go 1, 2, 1, 2, ... with a new name each time",
    "readdir-long": "Rreaddir carries more bytes than the count asked for",
    "readdir-names": "Rreaddir names '../escape', 'a/b' and '' (and walks find any name)",
    "read-long": "Rread carries 100 bytes more than the count asked for",
    "write-long": "Rwrite counts 100 bytes more than were sent",
    "walk-extra": "Rwalk carries one qid more than the names asked for",
    "silent-getattr": "Tgetattr is never answered (Tflush is)",
    "silent": "Tgetattr and Tflush are never answered",
    "huge-attr": "Rgetattr: size, blocks, blksize and times at 2^64-1",
    "msize": "Rversion offers twice the msize asked for",
    "lock-grace": "Tlock always answers LOCK_GRACE",
    "wrong-type": "Txattrwalk is answered with Rclunk",
    "readdir-dup-link": "the listing names 'f' twice: a symlink (to link_target), then a file",
    "loop-dir": "every directory holds LOOP, a directory with the same listing",
    "setuid-file": "f is mode 04755",
    "huge-frame": "Tattach is answered with a frame header claiming 2^32-16 bytes",
    "silent-clunk": "Tclunk is never answered (Tflush is)",
    "readdir-bigcookie": "Rreaddir cookies at 2^63 and above",
    "no-read": "after Rattach the server reads nothing more (the client's sends block)",
}
LOOP = "d" * 100


class HostileServer:
    """Start with ``with HostileServer(lies={...}) as srv: srv.address``."""

    def __init__(self, lies: set[str] | frozenset[str] = frozenset()) -> None:
        unknown = set(lies) - set(LIES)
        if unknown:
            raise ValueError(f"unknown lies {sorted(unknown)}")
        self.lies = set(lies)
        self.seen: list[m.Message] = []  # every request, in arrival order
        self.link_target = "/nonexistent"  # what Treadlink answers
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        if "no-read" in self.lies:  # little the kernel can hold for us: the client's sends block
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.address = f"tcp:127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, name="hostile-accept", daemon=True).start()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()
        with self._lock:
            for s in self._conns:
                with_shutdown(s)

    def requests(self, kind: type[m.Message]) -> list[m.Message]:
        with self._lock:
            return [r for r in self.seen if isinstance(r, kind)]

    # ---------------------------------------------------------- serving --
    def _accept(self) -> None:
        while not self._stop:
            try:
                s, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(s)
            threading.Thread(target=self._serve, args=(s,), name="hostile-conn",
                             daemon=True).start()  # fmt: skip

    def _serve(self, s: socket.socket) -> None:
        conn = ServerConnection(max_msize=65536 + 24)
        fids: dict[int, str] = {}  # fid -> "/", "f" or "xattr:<name>"
        try:
            while data := s.recv(65536):
                conn.receive_data(data)
                while (ev := conn.next_event()) is not None:
                    if isinstance(ev, FatalError):
                        return
                    if isinstance(ev, BadRequest):
                        s.sendall(b"".join(conn.encode(ev.tag, conn.error_reply(ev.errno))))
                        continue
                    assert isinstance(ev, Request)
                    with self._lock:
                        self.seen.append(ev.msg)
                    reply = self._answer(conn, fids, ev.msg)
                    if isinstance(reply, bytes):
                        s.sendall(reply)
                    elif reply is not None:
                        s.sendall(b"".join(conn.encode(ev.tag, reply)))
                    if "no-read" in self.lies and isinstance(ev.msg, m.Tattach):
                        while not self._stop:
                            time.sleep(0.05)
                        return
        except OSError:
            pass
        finally:
            s.close()

    def _err(self, e: int) -> m.Message:
        return m.Rlerror(HUGE_ERRNO if "errno" in self.lies else e)

    def _answer(
        self, conn: ServerConnection, fids: dict[int, str], msg: m.Message
    ) -> m.Message | bytes | None:
        lies = self.lies
        if isinstance(msg, m.Tversion):
            if "errno-version" in lies:
                conn.version(msg)
                return m.Rlerror(HUGE_ERRNO)
            r = conn.version(msg)
            if "msize" in lies:
                conn.msize = r.msize * 2
                return m.Rversion(r.msize * 2, r.version)
            return r
        if isinstance(msg, m.Tflush):
            return None if "silent" in lies else m.Rflush()
        if isinstance(msg, m.Tattach):
            if "huge-frame" in lies:
                return (2**32 - 16).to_bytes(4, "little") + b"\x69\x01\x00"
            fids[msg.fid] = "/"
            return m.Rattach(ROOT)
        if isinstance(msg, m.Twalk):
            start = fids.get(msg.fid)
            if start is None:
                return self._err(errno.EBADF)
            node, qids = start, []
            for name in msg.wnames:
                if node in ("/", "loop") and name == LOOP and "loop-dir" in lies:
                    node, qid = "loop", LOOP_QID
                elif node in ("/", "loop") and (
                    name == "f" or ("readdir-names" in lies and name != "..")
                ):
                    node, qid = "f", FILE
                elif name in ("..", "."):
                    node, qid = "/", ROOT
                else:
                    break
                qids.append(qid)
            if msg.wnames and not qids:
                return self._err(errno.ENOENT)
            if len(qids) == len(msg.wnames):
                fids[msg.newfid] = node
            if "walk-extra" in lies:
                qids.append(FILE)
            return m.Rwalk(qids)
        fid = getattr(msg, "fid", None)
        node = fids.get(fid) if isinstance(fid, int) else None
        if isinstance(msg, m.Tclunk):
            if "silent-clunk" in lies:
                return None
            fids.pop(msg.fid, None)
            return m.Rlerror(HUGE_ERRNO) if "errno-clunk" in lies else m.Rclunk()
        if node is None:
            return self._err(errno.EBADF)
        if isinstance(msg, m.Tgetattr):
            if "silent" in lies or "silent-getattr" in lies:
                return None
            return self._getattr(node)
        if isinstance(msg, m.Tlopen):
            return m.Rlopen(FILE if node == "f" else LOOP_QID if node == "loop" else ROOT, 0)
        if isinstance(msg, m.Tread):
            if node.startswith("xattr:"):
                if "xattr-size" in lies:
                    return m.Rread(b"x" * msg.count)  # never at the end
                value = XATTR.get(node[6:], b"") if node != "xattr:" else _names()
                return m.Rread(value[msg.offset : msg.offset + msg.count])
            data = DATA[msg.offset : msg.offset + msg.count]
            if "read-long" in lies:
                data = data + b"!" * 100
            return m.Rread(data)
        if isinstance(msg, m.Twrite):
            n = len(msg.data)
            return m.Rwrite(n + 100 if "write-long" in lies else n)
        if isinstance(msg, m.Treaddir):
            return self._readdir(msg)
        if isinstance(msg, m.Txattrwalk):
            if "wrong-type" in lies:
                return m.Rclunk()
            if msg.name and msg.name not in XATTR:
                return self._err(errno.ENODATA)
            fids[msg.newfid] = "xattr:" + msg.name
            size = len(XATTR[msg.name]) if msg.name else len(_names())
            return m.Rxattrwalk(2**63 if "xattr-size" in lies else size)
        if isinstance(msg, m.Treadlink):
            return m.Rreadlink(self.link_target)
        if isinstance(msg, m.Tlock):
            return m.Rlock(c.LOCK_GRACE if "lock-grace" in lies else c.LOCK_SUCCESS)
        if isinstance(msg, m.Tstatfs):
            return m.Rstatfs(0x01021997, 4096, 100, 50, 50, 10, 5, 0, 255)
        return self._err(errno.EOPNOTSUPP)

    def _getattr(self, node: str) -> m.Rgetattr:
        is_dir = node != "f"
        big = "huge-attr" in self.lies
        size = U64_MAX if big else (0 if is_dir else len(DATA))
        t = U64_MAX if big else 1_700_000_000
        return m.Rgetattr(
            0x3FFF, {"/": ROOT, "loop": LOOP_QID}.get(node, FILE),
            0o40755 if is_dir else 0o104755 if "setuid-file" in self.lies else 0o100644, 0, 0, 1, 0,
            size, U64_MAX if big else 4096, U64_MAX if big else 1, t, 0, t, 0, t, 0, 0, 0, 0, 0,
        )  # fmt: skip

    def _readdir(self, msg: m.Treaddir) -> m.Message:
        lies = self.lies
        if "readdir-stuck" in lies:
            return m.Rreaddir(m.encode_dirent(FILE, 7, c.DT_REG, b"f"))
        if "readdir-cycle" in lies:
            with self._lock:
                n = len(self.seen)
            cookie = 2 if msg.offset == 1 else 1
            return m.Rreaddir(m.encode_dirent(Qid(0, 0, 100 + n), cookie, c.DT_REG, b"n%d" % n))
        if "readdir-bigcookie" in lies:
            if msg.offset:
                return m.Rreaddir(b"")
            return m.Rreaddir(m.encode_dirent(FILE, 2**63, c.DT_REG, b"f"))
        if "readdir-dup-link" in lies:
            if msg.offset:
                return m.Rreaddir(b"")
            return m.Rreaddir(
                m.encode_dirent(Qid(c.QidType.SYMLINK, 0, 3), 1, c.DT_LNK, b"f")
                + m.encode_dirent(FILE, 2, c.DT_REG, b"f")
            )
        if "readdir-names" in lies:
            if msg.offset:
                return m.Rreaddir(b"")
            names = [b"../escape", b"a/b", b""]
            return m.Rreaddir(b"".join(
                m.encode_dirent(FILE, i + 1, c.DT_REG, nm) for i, nm in enumerate(names)
            ))  # fmt: skip
        entries = [(ROOT, c.DT_DIR, b"."), (ROOT, c.DT_DIR, b".."), (FILE, c.DT_REG, b"f")]
        if "loop-dir" in lies:
            entries.append((LOOP_QID, c.DT_DIR, LOOP.encode()))
        data = b"".join(
            m.encode_dirent(q, i + 1, t, nm)
            for i, (q, t, nm) in enumerate(entries)
            if i >= msg.offset
        )
        if "readdir-long" in lies:
            filler = m.encode_dirent(FILE, 99, c.DT_REG, b"x" * 200)
            data = data + filler * (msg.count // len(filler) + 1)
        return m.Rreaddir(data)


def _names() -> bytes:
    return b"".join(n.encode() + b"\0" for n in XATTR)


def with_shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@contextmanager
def hostile(*lies: str) -> Iterator[HostileServer]:
    srv = HostileServer(set(lies))
    try:
        yield srv
    finally:
        srv.close()
