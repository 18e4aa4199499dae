"""Soak and fault benchmark: many clients, hostile ones among them, a kill -9.

One `p9share serve` (a subprocess, so it can be killed) with a policy, limits
and quotas serves:

- good clients, half raw 9P clients built on the codec (client/raw.py, one
  thread each), half asyncio clients (client/aio.py, one event loop): a mixed
  workload of write-once files (create, write, fsync, then logged as
  acknowledged with their SHA-256), read-backs checked against that log,
  getattr, readdir, large reads of a bulk file and deletes. EDQUOT is an
  expected error and counted apart.
- hostile clients: floods (pipelined requests as fast as the socket takes
  them), slow readers (large Treads whose replies are never read) and
  half-senders (half a message, then silence).

The server's RSS, threads and fds are sampled from /proc every second. At
--crash-at (a fraction of --duration) the server is killed with SIGKILL; the
clients wait, the server is restarted, and before they resume the host
checks that every acknowledged (fsynced) write is on disk with its hash and
that the quota ledger rebuilt at start matches a du-like count (by probing
it: exactly the remaining files and bytes can be created, one more gets
EDQUOT). Then the clients reconnect and carry on; at the end the live ledger
is probed the same way.

    python benchmarks/soak.py --duration 600 --clients 32 --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p9share.client import aio
from p9share.client.raw import RawClient
from p9share.protocol import messages as m
from p9share.protocol.constants import L_O_RDONLY, L_O_RDWR, NOFID, NOTAG, Dialect
from p9share.protocol.wire import U32

MIB = 1 << 20
BULK_SIZE = 16 * MIB
OP_TIMEOUT = 30.0  # seconds one operation may take before it counts as timed out


@dataclass
class Settings:
    duration: float = 600.0
    clients: int = 32
    aio_share: float = 0.5
    floods: int = 2
    slow_readers: int = 4
    half_senders: int = 2
    crash_at: float = 0.6  # fraction of duration; 0: no crash
    quota_bytes: int = 96 * MIB
    quota_files: int = 1200
    seed: int = 1


# ------------------------------------------------------------------ server --
class Server:
    def __init__(self, workdir: Path, st: Settings) -> None:
        self.workdir, self.st = workdir, st
        self.sock = str(workdir / "p9.sock")
        self.data = workdir / "data"
        self.bulk = workdir / "bulk"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.bulk.mkdir(parents=True, exist_ok=True)
        (self.bulk / "big").write_bytes(random.Random(5).randbytes(BULK_SIZE))
        (self.workdir / "policy.toml").write_text(f"""
[server]
listen = [{{ address = "unix:{self.sock}", name = "soak" }}]

[exports.data]
path = "{self.data}"
idmap = "squash"
quota_bytes = {self.st.quota_bytes}
quota_files = {self.st.quota_files}

[exports.bulk]
path = "{self.bulk}"
idmap = "squash"
readonly = true

[limits]
max_fids = 4096
max_connections = 256
header_timeout = 5

[clients.soak]
match = {{ listener = "soak" }}
exports = {{ data = "rw", bulk = "ro" }}
""")

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        env = dict(os.environ)
        src = str(Path(aio.__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p9share",
                    "serve",
                    "--config",
                    str(self.workdir / "policy.toml"),
                    "--log-level",
                    "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited at start: " + self.log.read_text()[-2000:])
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
                s.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not listen within 60 s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def sample(self) -> dict[str, float]:
        assert self.proc is not None
        pid = self.proc.pid
        out: dict[str, float] = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
            out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError):
            pass
        return out

    def internal_errors(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count("Traceback (most recent call last)")


# ------------------------------------------------------------- bookkeeping --
@dataclass
class Shared:
    """What every client reports into (one lock; clients touch it per op)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    serving: threading.Event = field(default_factory=threading.Event)  # clear: wait
    crashed_at: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # class -> ms
    ops: Counter[str] = field(default_factory=Counter)  # class -> ops done
    ops_after_crash: Counter[str] = field(default_factory=Counter)  # client id -> ops
    expected: Counter[str] = field(default_factory=Counter)  # EDQUOT and such
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, size)
    deleting: set[str] = field(default_factory=set)  # deletes sent, maybe not done
    hostile: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    ack_log: Any = None  # a JSON-lines file: the clients' log of acknowledged writes

    def done(self, cls: str, who: str, ms: float) -> None:
        with self.lock:
            self.latencies.setdefault(cls, []).append(ms)
            self.ops[cls] += 1
            if self.crashed_at:
                self.ops_after_crash[who] += 1

    def failed(self, cls: str, e: BaseException) -> None:
        if self.stop.is_set():
            return  # the run is over: its end breaks the connections, not the server
        with self.lock:
            if isinstance(e, OSError) and e.errno == errno.EDQUOT:
                self.expected[f"{cls} EDQUOT"] += 1
            elif isinstance(e, TimeoutError | asyncio.TimeoutError):
                self.errors[f"{cls} timeout ({OP_TIMEOUT:.0f} s)"] += 1
            elif isinstance(e, ConnectionError | EOFError) or (
                isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.ECONNRESET, None)
            ):
                key = (
                    "connection lost (server killed)"
                    if not self.serving.is_set()
                    else "connection lost"
                )
                self.errors[f"{cls} {key}"] += 1
            elif isinstance(e, OSError):
                self.errors[f"{cls} {errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
            else:
                self.errors[f"{cls} {type(e).__name__}: {e}"] += 1

    def ack(self, path: str, digest: str, size: int) -> None:
        with self.lock:
            self.acked[path] = (digest, size)
            if self.ack_log is not None:
                self.ack_log.write(
                    json.dumps({"path": path, "sha256": digest, "size": size}) + "\n"
                )
                self.ack_log.flush()


def _is_conn_error(e: BaseException) -> bool:
    return isinstance(e, ConnectionError | EOFError | TimeoutError | asyncio.TimeoutError) or (
        isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, None)
    )


# ------------------------------------------------------------ raw clients --
class RawWorker(threading.Thread):
    """A good client on client/raw.py: one request at a time."""

    cls = "raw"

    def __init__(self, idx: int, sock: str, sh: Shared, seed: int) -> None:
        super().__init__(daemon=True, name=f"soak-raw{idx}")
        self.idx, self.sockpath, self.sh = idx, sock, sh
        self.rng = random.Random(seed)
        self.dir = f"c{idx}"
        self.files: list[str] = []
        self.seq = 0
        self.c: RawClient | None = None

    def who(self) -> str:
        return f"{self.cls}{self.idx}"

    def connect(self) -> None:
        c = RawClient.connect(f"unix:{self.sockpath}", timeout=OP_TIMEOUT)
        c.version(65536 + 24)
        c.rpc(m.Tattach(0, NOFID, "soak", "data", 0))
        c.rpc(m.Tattach(1, NOFID, "soak", "bulk", 0))
        try:
            c.rpc(m.Tmkdir(0, self.dir, 0o755, 0))
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        c.rpc(m.Twalk(0, 2, [self.dir]))
        self.c = c

    def run(self) -> None:
        while not self.sh.stop.is_set():
            if self.c is None:
                self.sh.serving.wait(1.0)
                if not self.sh.serving.is_set():
                    continue
                try:
                    self.connect()
                    self.sh.reconnects[self.who()] += 1
                except Exception as e:
                    self.sh.failed(self.cls, e)
                    time.sleep(0.2)
                    continue
            op = self.rng.choices(
                (
                    self.write_file,
                    self.read_back,
                    self.stat,
                    self.readdir,
                    self.bulk_read,
                    self.delete,
                ),
                (40, 20, 15, 5, 10, 10),
            )[0]
            t = time.monotonic()
            try:
                op()
                self.sh.done(self.cls, self.who(), (time.monotonic() - t) * 1000)
            except Exception as e:
                self.sh.failed(self.cls, e)
                if _is_conn_error(e):
                    self.close()
        self.close()

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None

    def _rpc(self, msg: m.Message) -> m.Message:
        assert self.c is not None
        return self.c.rpc(msg)

    def write_file(self) -> None:
        self.seq += 1
        name = f"w{self.seq}"
        data = self.rng.randbytes(self.rng.choice((4096, 16384, 65536, 200_000)))
        path = ""
        self._rpc(m.Twalk(2, 3, []))
        try:
            self._rpc(m.Tlcreate(3, name, L_O_RDWR, 0o644, 0))
            path = f"{self.dir}/{name}"
            self.files.append(path)
            off = 0
            chunk = 65536 - 24
            while off < len(data):
                r = self._rpc(m.Twrite(3, off, data[off : off + chunk]))
                assert isinstance(r, m.Rwrite)
                off += r.count
            self._rpc(m.Tfsync(3, 0))
            self.sh.ack(path, hashlib.sha256(data).hexdigest(), len(data))
        except OSError as e:
            if e.errno == errno.EDQUOT and path in self.files:  # give the room back
                self.files.remove(path)
                with contextlib.suppress(OSError):
                    self._rpc(m.Tunlinkat(2, name, 0))
            raise
        finally:
            self._clunk(3)

    def _clunk(self, fid: int) -> None:
        with contextlib.suppress(OSError):
            self._rpc(m.Tclunk(fid))

    def _acked_file(self) -> str | None:
        with self.sh.lock:
            own = [f for f in self.files if f in self.sh.acked]
        return self.rng.choice(own) if own else None

    def read_back(self) -> None:
        path = self._acked_file()
        if path is None:
            return
        self._rpc(m.Twalk(0, 3, path.split("/")))
        try:
            self._rpc(m.Tlopen(3, L_O_RDONLY))
            out = bytearray()
            while True:
                r = self._rpc(m.Tread(3, len(out), 65536 - 24))
                assert isinstance(r, m.Rread)
                if not r.data:
                    break
                out += r.data
            self._check(path, bytes(out))
        finally:
            self._clunk(3)

    def _check(self, path: str, data: bytes) -> None:
        digest, _size = self.sh.acked[path]
        if hashlib.sha256(data).hexdigest() != digest:
            with self.sh.lock:
                self.sh.mismatches.append(f"{self.who()} read back {path}: content differs")

    def stat(self) -> None:
        self._rpc(m.Tgetattr(2, 0x7FF))

    def readdir(self) -> None:
        self._rpc(m.Twalk(2, 3, []))
        try:
            self._rpc(m.Tlopen(3, L_O_RDONLY))
            self._rpc(m.Treaddir(3, 0, 8192))
        finally:
            self._clunk(3)

    def bulk_read(self) -> None:
        self._rpc(m.Twalk(1, 3, ["big"]))
        try:
            self._rpc(m.Tlopen(3, L_O_RDONLY))
            off = self.rng.randrange(0, BULK_SIZE - 256 * 1024)
            for i in range(4):
                self._rpc(m.Tread(3, off + i * 65000, 65000))
        finally:
            self._clunk(3)

    def delete(self) -> None:
        if len(self.files) < 8:
            return
        path = self.files.pop(0)
        with self.sh.lock:
            self.sh.deleting.add(path)
        self._rpc(m.Tunlinkat(2, path.split("/")[1], 0))
        with self.sh.lock:
            self.sh.acked.pop(path, None)


# ------------------------------------------------------------ aio clients --
class AioWorker:
    """A good client on client/aio.py, same workload, every call bounded."""

    cls = "aio"

    def __init__(self, idx: int, sock: str, sh: Shared, seed: int) -> None:
        self.idx, self.addr, self.sh = idx, f"unix:{sock}", sh
        self.rng = random.Random(seed)
        self.dir = f"a{idx}"
        self.files: list[str] = []
        self.seq = 0
        self.c: aio.Client | None = None
        self.root = self.broot = self.dfid = 0

    def who(self) -> str:
        return f"{self.cls}{self.idx}"

    async def connect(self) -> None:
        c = await aio.Client.connect(self.addr, msize=65536 + 24, timeout=OP_TIMEOUT)
        try:
            self.root, _ = await c.attach("data", "soak", 0)
            self.broot, _ = await c.attach("bulk", "soak", 0)
            try:
                await c.mkdir(self.root, self.dir, 0o755, 0)
            except FileExistsError:
                pass
            self.dfid, _ = await c.walk(self.root, [self.dir])
        except BaseException:
            await c.close()
            raise
        self.c = c

    async def run(self) -> None:
        while not self.sh.stop.is_set():
            if self.c is None:
                if not self.sh.serving.is_set():
                    await asyncio.sleep(0.2)
                    continue
                try:
                    await asyncio.wait_for(self.connect(), OP_TIMEOUT)
                    self.sh.reconnects[self.who()] += 1
                except Exception as e:
                    self.sh.failed(self.cls, e)
                    await asyncio.sleep(0.2)
                    continue
            op = self.rng.choices(
                (
                    self.write_file,
                    self.read_back,
                    self.stat,
                    self.readdir,
                    self.bulk_read,
                    self.delete,
                ),
                (40, 20, 15, 5, 10, 10),
            )[0]
            t = time.monotonic()
            try:
                await asyncio.wait_for(op(), OP_TIMEOUT)
                self.sh.done(self.cls, self.who(), (time.monotonic() - t) * 1000)
            except Exception as e:
                self.sh.failed(self.cls, e)
                if _is_conn_error(e):
                    await self.close()
        await self.close()

    async def close(self) -> None:
        if self.c is not None:
            c, self.c = self.c, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)

    async def write_file(self) -> None:
        c = self.c
        assert c is not None
        self.seq += 1
        name = f"w{self.seq}"
        data = self.rng.randbytes(self.rng.choice((4096, 16384, 65536, 200_000)))
        path = ""
        fid, _ = await c.walk(self.dfid, [])
        try:
            await c.lcreate(fid, name, L_O_RDWR, 0o644, 0)
            path = f"{self.dir}/{name}"
            self.files.append(path)
            n = await c.pwrite(fid, 0, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write {n} of {len(data)}")
            await c.fsync(fid)
            self.sh.ack(path, hashlib.sha256(data).hexdigest(), len(data))
        except OSError as e:
            if e.errno == errno.EDQUOT and path in self.files:  # give the room back
                self.files.remove(path)
                with contextlib.suppress(OSError):
                    await c.unlinkat(self.dfid, name, 0)
            raise
        finally:
            await c.clunk(fid)

    async def read_back(self) -> None:
        c = self.c
        assert c is not None
        with self.sh.lock:
            own = [f for f in self.files if f in self.sh.acked]
        if not own:
            return
        path = self.rng.choice(own)
        fid, _ = await c.walk(self.root, path.split("/"))
        try:
            await c.lopen(fid, L_O_RDONLY)
            digest, size = self.sh.acked[path]
            data = await c.pread(fid, 0, size + 1)
            if hashlib.sha256(data).hexdigest() != digest:
                with self.sh.lock:
                    self.sh.mismatches.append(f"{self.who()} read back {path}: content differs")
        finally:
            await c.clunk(fid)

    async def stat(self) -> None:
        assert self.c is not None
        await self.c.getattr(self.dfid, 0x7FF)

    async def readdir(self) -> None:
        c = self.c
        assert c is not None
        fid, _ = await c.walk(self.dfid, [])
        try:
            await c.lopen(fid, L_O_RDONLY)
            await c.readdir(fid, 0, 8192)
        finally:
            await c.clunk(fid)

    async def bulk_read(self) -> None:
        c = self.c
        assert c is not None
        fid, _ = await c.walk(self.broot, ["big"])
        try:
            await c.lopen(fid, L_O_RDONLY)
            await c.pread(fid, self.rng.randrange(0, BULK_SIZE - 256 * 1024), 256 * 1024)
        finally:
            await c.clunk(fid)

    async def delete(self) -> None:
        assert self.c is not None
        if len(self.files) < 8:
            return
        path = self.files.pop(0)
        with self.sh.lock:
            self.sh.deleting.add(path)
        await self.c.unlinkat(self.dfid, path.split("/")[1], 0)
        with self.sh.lock:
            self.sh.acked.pop(path, None)


def run_aio(workers: list[AioWorker]) -> None:
    async def main() -> None:
        await asyncio.gather(*(w.run() for w in workers))

    asyncio.run(main())


# --------------------------------------------------------------- hostile --
def _frame(msg: m.Message, tag: int) -> bytes:
    return m.encode_message(msg, tag, Dialect.P9P2000L)


def _hostile_session(
    path: str, msize: int, timeout: float | None, sh: Shared | None = None
) -> socket.socket:
    """A connection attached to the bulk export. While the host checks the
    disk after the kill (serving clear), hostile clients wait like the rest:
    the check must not be starved by them."""
    if sh is not None and not sh.serving.wait(1.0):
        raise ConnectionRefusedError("the host is checking")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(_frame(m.Tversion(msize, "9P2000.L"), NOTAG))
    _read_frame(s)
    s.sendall(_frame(m.Tattach(0, NOFID, "evil", "bulk", 0), 1))
    _read_frame(s)
    s.settimeout(timeout)
    return s


def _read_frame(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    (size,) = U32.unpack(head)
    body = b""
    while len(body) < size - 4:
        chunk = s.recv(size - 4 - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return head + body


def flood(path: str, sh: Shared) -> None:
    """Pipelined Tgetattrs as fast as the socket takes them; replies drained."""
    batch = b"".join(_frame(m.Tgetattr(0, 0x7FF), 10 + i) for i in range(256))
    while not sh.stop.is_set():
        try:
            s = _hostile_session(path, 65536, 5, sh)
        except OSError:
            time.sleep(0.2)
            continue
        done = threading.Event()

        def drain(s: socket.socket = s, done: threading.Event = done) -> None:
            with contextlib.suppress(OSError):
                while not done.is_set() and s.recv(1 << 16):
                    pass

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        try:
            while not sh.stop.is_set():
                s.sendall(batch)
                sh.hostile["flood requests sent"] += 256
        except OSError:
            sh.hostile["flood connections closed"] += 1
        done.set()
        s.close()
        t.join(5)


def slow_reader(path: str, sh: Shared) -> None:
    """Large Treads on the bulk file, replies never read."""
    while not sh.stop.is_set():
        try:
            s = _hostile_session(path, 1 << 20, 2, sh)
            s.sendall(_frame(m.Twalk(0, 1, ["big"]), 2))
            s.sendall(_frame(m.Tlopen(1, L_O_RDONLY), 3))
        except OSError:
            time.sleep(0.2)
            continue
        tag = 4
        try:
            while not sh.stop.is_set():
                try:
                    s.sendall(_frame(m.Tread(1, 0, 1 << 20), tag))
                    sh.hostile["slow-read requests sent"] += 1
                    tag = tag % 60000 + 4
                except TimeoutError:
                    time.sleep(0.5)  # our send buffer is full too: just hold on
        except OSError:
            sh.hostile["slow-read connections closed by the server"] += 1
        s.close()


def half_sender(path: str, sh: Shared) -> None:
    """Half of a message, then nothing until the server gives up on it."""
    half = _frame(m.Twrite(0, 0, b"x" * 1000), 2)[:500]
    while not sh.stop.is_set():
        try:
            s = _hostile_session(path, 65536, 1, sh)
            s.sendall(half)
        except OSError:
            time.sleep(0.2)
            continue
        t0 = time.monotonic()
        while not sh.stop.is_set():
            try:
                if not s.recv(1):
                    sh.hostile["half-send connections closed by the server"] += 1
                    sh.hostile["half-send held (s, total)"] += int(time.monotonic() - t0)
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        s.close()


# ------------------------------------------------------------- checking --
def du(root: Path) -> tuple[int, int]:
    """Bytes of regular files and inodes below root, each inode once (what the
    quota ledger starts from), computed here independently of the server."""
    seen: set[tuple[int, int]] = set()
    size = files = 0
    for top, dirs, names in os.walk(root):
        for name in (*dirs, *names):
            st = os.lstat(os.path.join(top, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            files += 1
            if (st.st_mode & 0o170000) == 0o100000:
                size += st.st_size
    return size, files


def verify_acked(sh: Shared, data: Path) -> dict[str, Any]:
    ok, lost, corrupt, ambiguous = 0, [], [], 0
    with sh.lock:
        acked = dict(sh.acked)
        deleting = set(sh.deleting)
    for path, (digest, size) in acked.items():
        p = data / path
        if path in deleting:
            ambiguous += 1  # a delete was sent and not acknowledged: either is right
            continue
        if not p.exists():
            lost.append(path)
            continue
        content = p.read_bytes()
        if len(content) != size or hashlib.sha256(content).hexdigest() != digest:
            corrupt.append(path)
        else:
            ok += 1
    return {
        "acknowledged": len(acked),
        "on_disk_ok": ok,
        "lost": lost,
        "corrupt": corrupt,
        "delete_in_flight": ambiguous,
    }


def probe_ledger(sock: str, data: Path, st: Settings) -> dict[str, Any]:
    """Whether the server's ledger equals du(data): creating files succeeds
    exactly quota_files - files times, then writing succeeds for exactly
    quota_bytes - bytes. Probe files are removed afterwards."""
    bytes_used, files_used = du(data)
    c = RawClient.connect(f"unix:{sock}", timeout=60)
    c.version(1 << 20)
    c.rpc(m.Tattach(0, NOFID, "soak", "data", 0))
    made: list[str] = []
    room = st.quota_bytes - bytes_used
    off, probe_error, edquot_bytes, edquot_files = 0, "", False, False
    try:
        while len(made) <= st.quota_files:
            name = f"probe{len(made)}"
            c.rpc(m.Twalk(0, 1, []))
            try:
                c.rpc(m.Tlcreate(1, name, L_O_RDWR, 0o644, 0))
                made.append(name)
            except OSError as e:
                edquot_files = e.errno == errno.EDQUOT
                c.rpc(m.Tclunk(1))
                break
            if len(made) == 1:  # the first probe file takes the bytes
                chunk = (1 << 20) - 24
                while off < room:
                    try:
                        r = c.rpc(m.Twrite(1, off, b"\0" * min(chunk, room - off)))
                        assert isinstance(r, m.Rwrite)
                        off += r.count
                    except OSError as e:
                        probe_error = repr(e)
                        break
                try:
                    c.rpc(m.Twrite(1, off, b"\0"))
                except OSError as e:
                    edquot_bytes = e.errno == errno.EDQUOT
            c.rpc(m.Tclunk(1))
        files_room = len(made)
    finally:
        for name in made:
            with contextlib.suppress(OSError):
                c.rpc(m.Tunlinkat(0, name, 0))
        c.close()
    return {
        "du_bytes": bytes_used,
        "du_files": files_used,
        "files_room_expected": st.quota_files - files_used,
        "files_room_found": files_room,
        "bytes_room_expected": room,
        "bytes_room_found": off,
        "stopped_by": probe_error,
        "files_match": files_room == st.quota_files - files_used and edquot_files,
        # None: no file could be made to measure the bytes through
        "bytes_match": (off == room and not probe_error and edquot_bytes) if made else None,
    }


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100) if len(xs) > 1 else [xs[0]] * 99
    return {
        "n": len(xs),
        "p50_ms": round(q[49], 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(xs[-1], 1),
    }


# ------------------------------------------------------------------ run --
def run(st: Settings, workdir: Path) -> dict[str, Any]:
    srv = Server(workdir, st)
    srv.prepare()
    srv.start()
    sh = Shared()
    sh.ack_log = open(workdir / "acked.jsonl", "a")  # noqa: SIM115 - closed below
    sh.serving.set()
    rng = random.Random(st.seed)
    n_aio = round(st.clients * st.aio_share)
    raws = [RawWorker(i, srv.sock, sh, rng.getrandbits(32)) for i in range(st.clients - n_aio)]
    aios = [AioWorker(i, srv.sock, sh, rng.getrandbits(32)) for i in range(n_aio)]
    threads: list[threading.Thread] = [*raws]
    if aios:
        threads.append(threading.Thread(target=run_aio, args=(aios,), daemon=True, name="soak-aio"))
    for fn, n in (
        (flood, st.floods),
        (slow_reader, st.slow_readers),
        (half_sender, st.half_senders),
    ):
        threads += [threading.Thread(target=fn, args=(srv.sock, sh), daemon=True) for _ in range(n)]
    samples: list[dict[str, float]] = []
    crash: dict[str, Any] = {}
    t0 = time.monotonic()
    for t in threads:
        t.start()
    crash_time = st.duration * st.crash_at if st.crash_at else None
    next_sample = 0.0
    ops_before = 0
    while (now := time.monotonic() - t0) < st.duration:
        if now >= next_sample:
            s = srv.sample()
            s["t"] = round(now, 1)
            with sh.lock:
                s["ops"] = sum(sh.ops.values())
            samples.append(s)
            next_sample = now + 1.0
        if crash_time is not None and now >= crash_time and not crash:
            sh.serving.clear()
            with sh.lock:
                ops_before = sum(sh.ops.values())
            srv.kill9()
            crash["killed_at_s"] = round(now, 1)
            time.sleep(1.0)  # clients notice and wait
            restart_t = time.monotonic()
            srv.start()
            crash["restart_s"] = round(time.monotonic() - restart_t, 2)
            crash["acked_writes"] = verify_acked(sh, srv.data)
            crash["ledger_after_restart"] = probe_ledger(srv.sock, srv.data, st)
            sh.crashed_at = time.monotonic() - t0
            sh.serving.set()
        time.sleep(0.1)
    sh.stop.set()
    for w in raws:  # unblock a request stuck behind hostile clients
        c = w.c
        if c is not None:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(OP_TIMEOUT + 10)
    final_ledger = probe_ledger(srv.sock, srv.data, st)
    final_acked = verify_acked(sh, srv.data)
    srv.stop()
    sh.ack_log.close()
    good = [w.who() for w in raws] + [w.who() for w in aios]
    if crash:
        crash["clients_resumed"] = sum(1 for g in good if sh.ops_after_crash[g] > 0)
        crash["clients"] = len(good)
        crash["ops_before_kill"] = ops_before
    elapsed = time.monotonic() - t0
    rss = [s["rss_mib"] for s in samples if "rss_mib" in s]
    thr = [s["threads"] for s in samples if "threads" in s]
    return {
        "settings": vars(st),
        "seconds": round(elapsed, 1),
        "ops": dict(sh.ops),
        "ops_per_second": round(sum(sh.ops.values()) / elapsed, 1),
        "latency": {cls: percentiles(v) for cls, v in sh.latencies.items()},
        "expected_errors": dict(sh.expected),
        "errors": dict(sh.errors),
        "read_back_mismatches": sh.mismatches,
        "reconnects": sum(sh.reconnects.values()),
        "hostile": dict(sh.hostile),
        "server": {
            "rss_mib_max": max(rss, default=0),
            "rss_mib_last": rss[-1] if rss else 0,
            "threads_max": max(thr, default=0),
            "threads_last": thr[-1] if thr else 0,
            "internal_errors": srv.internal_errors(),
        },
        "crash": crash,
        "final_ledger": final_ledger,
        "final_acked": final_acked,
        "samples": samples,
    }


def summary_line(r: dict[str, Any]) -> str:
    lat = " ".join(
        f"{c} p50 {v.get('p50_ms')} ms p99 {v.get('p99_ms')} ms" for c, v in r["latency"].items()
    )
    cr = r["crash"]
    crash = ""
    if cr:
        a = cr["acked_writes"]
        led = cr["ledger_after_restart"]
        crash = (
            f"; kill -9 at {cr['killed_at_s']} s: {a['on_disk_ok']}/{a['acknowledged']} acked "
            f"writes on disk, {len(a['lost'])} lost, {len(a['corrupt'])} corrupt; ledger "
            f"{'matches' if led['files_match'] and led['bytes_match'] else 'DIFFERS'}; "
            f"{cr['clients_resumed']}/{cr['clients']} clients resumed"
        )
    return (
        f"soak: {sum(r['ops'].values())} ops in {r['seconds']} s ({r['ops_per_second']}/s) "
        f"{lat}; errors {sum(r['errors'].values())}, expected {sum(r['expected_errors'].values())}; "
        f"server RSS max {r['server']['rss_mib_max']} MiB, threads max {r['server']['threads_max']}, "
        f"internal errors {r['server']['internal_errors']}{crash}"
    )


def markdown(r: dict[str, Any]) -> str:
    st = r["settings"]
    lines = [
        f"# Soak and crash run ({st['clients']} clients, {st['duration']:.0f} s)",
        "",
        summary_line(r),
        "",
        "| class | ops | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for cls, v in r["latency"].items():
        lines.append(
            f"| {cls} | {r['ops'].get(cls, 0)} | {v.get('p50_ms')} | {v.get('p99_ms')} | {v.get('max_ms')} |"
        )
    lines += ["", "Errors (unexpected):", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(r["errors"].items())] or ["- none"]
    lines += ["", "Expected errors:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(r["expected_errors"].items())] or ["- none"]
    lines += ["", "Hostile clients:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(r["hostile"].items())]
    srv = r["server"]
    lines += [
        "",
        f"Server: RSS max {srv['rss_mib_max']} MiB (last {srv['rss_mib_last']}), threads "
        f"max {srv['threads_max']} (last {srv['threads_last']}), internal errors {srv['internal_errors']}.",
    ]
    s = r["samples"]
    if s:
        step = max(1, len(s) // 12)
        lines += ["", "| t s | ops so far | RSS MiB | threads | fds |", "|---|---|---|---|---|"]
        lines += [
            f"| {x['t']} | {x.get('ops')} | {x.get('rss_mib')} | {x.get('threads')} | {x.get('fds')} |"
            for x in s[::step]
        ]
    if r["crash"]:
        lines += ["", "Crash consistency:", "", "```", json.dumps(r["crash"], indent=1), "```"]
    lines += [
        "",
        "Ledger at the end:",
        "",
        "```",
        json.dumps(r["final_ledger"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    p.add_argument("--duration", type=float, default=d.duration)
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--aio-share", type=float, default=d.aio_share)
    p.add_argument("--floods", type=int, default=d.floods)
    p.add_argument("--slow-readers", type=int, default=d.slow_readers)
    p.add_argument("--half-senders", type=int, default=d.half_senders)
    p.add_argument(
        "--crash-at", type=float, default=d.crash_at, help="fraction of the run; 0: none"
    )
    p.add_argument("--quota-bytes", type=int, default=d.quota_bytes)
    p.add_argument("--quota-files", type=int, default=d.quota_files)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workdir")
    p.add_argument("--json")
    p.add_argument("--md")
    a = p.parse_args(argv)
    st = Settings(
        a.duration,
        a.clients,
        a.aio_share,
        a.floods,
        a.slow_readers,
        a.half_senders,
        a.crash_at,
        a.quota_bytes,
        a.quota_files,
        a.seed,
    )
    with contextlib.ExitStack() as stack:
        wd = (
            Path(a.workdir)
            if a.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p9soak-")))
        )
        if a.workdir and wd.exists():
            shutil.rmtree(wd)
        wd.mkdir(parents=True, exist_ok=True)
        r = run(st, wd)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n")
    if a.md:
        Path(a.md).write_text(markdown(r))
    print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
