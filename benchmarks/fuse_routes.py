"""The FUSE mount's two routes, measured (issue 14 item 4; needs root).

Route 1 is `p9share mount` (pyfuse3 on libfuse3, trio, bridged to the
asyncio 9P client). Route 2 is a prototype that serves /dev/fuse itself:
p9share's own sans-IO FUSE codec (p9share.virtiofs.fuse) decoding what the
kernel writes, the requests served as tasks on the 9P client's own asyncio
loop over the same RemoteTree, replies written back with os.write. The
prototype serves only what the workloads below need (INIT, LOOKUP, FORGET,
GETATTR, OPEN, READ, RELEASE, FLUSH, STATFS, DESTROY; ENOSYS otherwise): it
is a measurement, not a mount to use.

Both mounts use the same server, export and caching (entry and attribute
timeouts 0, so each stat reaches the file system) and print:
- stat/s: os.stat of 200 files in turn (a LOOKUP and a GETATTR each);
- 4 KiB reads/s: O_DIRECT preads of 4 KiB at successive offsets (one READ each).

    sudo .venv/bin/python benchmarks/fuse_routes.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from p9share.client.sync import LoopThread  # noqa: E402
from p9share.fuse.tree import RemoteTree  # noqa: E402
from p9share.protocol import messages as m  # noqa: E402
from p9share.virtiofs import fuse as f  # noqa: E402

MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
BUF = 1 << 20  # max_write 128 KiB; a read from /dev/fuse needs room for it and a header
NFILES = 200
BIG = 64 << 20

_libc = ctypes.CDLL(None, use_errno=True)


def _attr(a: m.Rgetattr, ino: int) -> f.Attr:
    return f.Attr(
        ino, a.size, a.blocks, a.atime_sec, a.mtime_sec, a.ctime_sec, a.atime_nsec,
        a.mtime_nsec, a.ctime_nsec, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize or 4096,
    )  # fmt: skip


class DevFuse:
    """A /dev/fuse session on the RemoteTree's loop (see the module docstring)."""

    def __init__(self, tree: RemoteTree, mountpoint: str) -> None:
        self.tree = tree
        self.mountpoint = mountpoint
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_NONBLOCK)
        self.proto = f.PROTO_LATEST
        self.tasks: set[asyncio.Task[None]] = set()

    def mount(self) -> None:
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
        if _libc.mount(b"p9share-proto", self.mountpoint.encode(), b"fuse.p9share-proto",
                       MS_NOSUID | MS_NODEV, opts.encode()) != 0:  # fmt: skip
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), self.mountpoint)

    def unmount(self) -> None:
        _libc.umount2(self.mountpoint.encode(), MNT_DETACH)
        os.close(self.fd)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = os.read(self.fd, BUF)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENODEV:  # unmounted
                    asyncio.get_running_loop().remove_reader(self.fd)
                    return
                raise
            try:
                req = f.decode_request(data, self.proto)
            except f.FuseDecodeError as e:
                if e.unique is not None:
                    self._reply(f.reply_error(e.unique, e.errno))
                continue
            t = asyncio.get_running_loop().create_task(self._serve(req))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    def _reply(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            pass  # the request was interrupted, or the mount is gone

    def _entry(self, ino: int, a: m.Rgetattr) -> f.EntryOut:
        return f.EntryOut(ino, 0, 0, 0, 0, 0, _attr(a, ino))

    async def _serve(self, req: f.Request) -> None:
        t = self.tree
        # The caller's identity is in every request header: req.uid, req.gid, req.pid.
        uid = None if req.uid == t.owner_uid else req.uid
        try:
            if isinstance(req, f.Init):
                minor = min(req.minor, f.MAX_MINOR)
                self.proto = f.Proto(minor=minor)
                self._reply(f.reply_init(req.unique, f.InitOut(
                    7, minor, req.max_readahead, req.flags & (f.ASYNC_READ | f.MAX_PAGES),
                    16, 12, 128 << 10, 1, 32)))  # fmt: skip
            elif isinstance(req, f.Lookup):
                inode, a = await t.lookup(req.nodeid, req.name, uid)
                self._reply(f.reply_entry(req.unique, self._entry(inode.ino, a), self.proto.minor))
            elif isinstance(req, f.Forget):
                t.forget([(req.nodeid, req.nlookup)])
            elif isinstance(req, f.BatchForget):
                t.forget(list(req.forgets))
            elif isinstance(req, f.Getattr):
                a = await t.getattr(req.nodeid, uid)
                self._reply(f.reply_attr(req.unique, _attr(a, req.nodeid), minor=self.proto.minor))
            elif isinstance(req, (f.Open, f.Opendir)):
                h = await t.open(req.nodeid, req.flags, isinstance(req, f.Opendir), uid)
                self._reply(f.reply_open(req.unique, h.fh))
            elif isinstance(req, f.Read):
                self._reply(f.reply_data(req.unique, await t.read(req.fh, req.offset, req.size)))
            elif isinstance(req, (f.Release, f.Releasedir)):
                t.release(req.fh)
                self._reply(f.reply_empty(req.unique))
            elif isinstance(req, f.Flush):
                self._reply(f.reply_empty(req.unique))
            elif isinstance(req, f.Statfs):
                s = await t.statfs(uid)
                self._reply(f.reply_statfs(req.unique, f.StatfsOut(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen or 255,
                    s.bsize)))  # fmt: skip
            elif isinstance(req, f.Destroy):
                self._reply(f.reply_empty(req.unique))
            else:
                self._reply(f.reply_error(req.unique, errno.ENOSYS))
        except OSError as e:
            self._reply(f.reply_error(req.unique, e.errno or errno.EIO))


def workload_stat(mnt: Path, seconds: float) -> float:
    names = [mnt / "many" / f"f{i}" for i in range(NFILES)]
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for p in names:
            os.stat(p)
        n += len(names)
    return n / (time.perf_counter() - start)


def workload_read(mnt: Path, seconds: float) -> float:
    fd = os.open(mnt / "big", os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    try:
        n = off = 0
        end = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < end:
            for _ in range(100):
                if os.preadv(fd, [buf], off) != 4096:
                    raise RuntimeError("short read")
                off = (off + 4096) % BIG
            n += 100
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        buf.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mount(2) of /dev/fuse)", file=sys.stderr)
        return 2
    top = Path(tempfile.mkdtemp(prefix="p9routes-"))
    export, sock = top / "export", top / "s.sock"
    (export / "many").mkdir(parents=True)
    for i in range(NFILES):
        (export / "many" / f"f{i}").write_bytes(b"x")
    with open(export / "big", "wb") as fh:
        fh.truncate(BIG)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen(
        [sys.executable, "-m", "p9share", "serve", str(export), "--listen", f"unix:{sock}",
         "--log-level", "warning"], env=env,
    )  # fmt: skip
    pyfuse_mnt, raw_mnt = top / "pyfuse3", top / "devfuse"
    pyfuse_mnt.mkdir()
    raw_mnt.mkdir()
    mount = None
    loop = LoopThread("proto")
    tree = RemoteTree(f"unix:{sock}")
    dev = DevFuse(tree, str(raw_mnt))
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        mount = subprocess.Popen(
            [sys.executable, "-m", "p9share", "mount", f"unix:{sock}", str(pyfuse_mnt),
             "--attr-timeout", "0"], env=env,
        )  # fmt: skip
        loop.run(tree.start())
        dev.mount()
        loop.loop.call_soon_threadsafe(dev.start, loop.loop)
        for _ in range(200):
            if os.path.ismount(pyfuse_mnt):
                break
            time.sleep(0.05)
        results: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.rounds):  # interleaved
            for name, mnt in (("pyfuse3", pyfuse_mnt), ("devfuse", raw_mnt)):
                r = results.setdefault(name, {"stat/s": [], "4k reads/s": []})
                r["stat/s"].append(workload_stat(mnt, args.seconds))
                r["4k reads/s"].append(workload_read(mnt, args.seconds))
        print(f"{'route':10} {'workload':12} {'median':>9} {'best':>9}  rounds")
        for name, r in results.items():
            for wl, vals in r.items():
                print(f"{name:10} {wl:12} {statistics.median(vals):9.0f} {max(vals):9.0f}  "
                      + " ".join(f"{v:.0f}" for v in vals))  # fmt: skip
        for wl in ("stat/s", "4k reads/s"):
            ratio = statistics.median(results["devfuse"][wl]) / statistics.median(
                results["pyfuse3"][wl]
            )
            print(f"devfuse/pyfuse3 {wl}: {ratio:.2f}x")
        return 0
    finally:
        dev.unmount()
        if mount is not None:
            mount.terminate()
            mount.wait(15)
        try:
            loop.run(tree.close(), 10)
        finally:
            loop.stop()
        server.terminate()
        server.wait(15)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
