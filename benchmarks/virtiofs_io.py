"""virtio-fs file data: server CPU per READ and WRITE of 4 KiB, 128 KiB and
1 MiB, through the whole device, for two versions of p9share side by side;
and the same for 9P2000.L's Tread and Twrite over a Unix socket.

    python benchmarks/virtiofs_io.py                      # before: merge-base with main
    python benchmarks/virtiofs_io.py --before e546183 --rounds 3 --out results/x.md

Each version runs as a real server (`p9share serve --listen vhost-user:...
--cache none`, the sandbox as by default) from its own source tree: "after"
is this checkout's src/, "before" is `git archive REF src` of --before. The
fake front end of the tests (tests/virtiofs/frontend.py) mounts it and sends
requests one at a time, laid out as Linux's virtio-fs driver does: the
fuse_in_header and fuse_read_in/fuse_write_in in buffers of their own, file
data a 4 KiB page per descriptor, in an indirect table. The figure is the
server process's CPU (user + system, every thread: /proc/PID/task/*/schedstat)
per request; the front end's own work is not in it. Rounds are interleaved
(before, after, before, after, ...) so that a change in the machine's load
falls on both; each figure is the median of the rounds, with the lowest and
highest. Every reply is checked: the data read back is the data written.

9P: the same server also listens on a Unix socket; a raw client (msize 1 MiB
+ 24) sends Twrite then Tread of each size one at a time to one open fid.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.virtiofs.frontend import FakeQueue, Frontend  # noqa: E402

from p9share.client.raw import RawClient  # noqa: E402
from p9share.protocol import messages as p9  # noqa: E402
from p9share.virtiofs import fuse as f  # noqa: E402

SIZES = (4 << 10, 128 << 10, 1 << 20)
# requests per measurement: enough server CPU for a steady figure, not more
COUNT = {4 << 10: 2000, 128 << 10: 600, 1 << 20: 150}
PAGE = 4096
OPS = {"virtio-fs": ("WRITE", "READ"), "9P": ("Twrite", "Tread")}
UID, GID = os.getuid(), os.getgid()


def _page_split(n: int) -> list[int]:
    return [PAGE] * (n // PAGE) + ([n % PAGE] if n % PAGE else [])


class Mount:
    """One server process (one version of p9share) and the fake guest on it."""

    def __init__(self, src: Path, workdir: Path) -> None:
        self.export = workdir / "export"
        self.export.mkdir(exist_ok=True)
        sock = workdir / "fs.sock"
        env = dict(os.environ, PYTHONPATH=str(src))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p9share", "serve", str(self.export),
             "--listen", f"vhost-user:{sock}", "--listen", f"unix:{workdir}/9p.sock",
             "--cache", "none"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        started = 0
        while started < 2:  # one line per listener
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server from {src} did not start")
            started += "serving on" in line
        self.p9 = RawClient.connect(f"unix:{workdir}/9p.sock", timeout=30)
        self.p9.version(1 << 20 | 24)
        self.p9.attach(0, "")
        self.fe = Frontend(str(sock), mem_size=32 << 20, queue_size=512)
        self.fe.start()
        self.q: FakeQueue = self.fe.queues[1]
        self.unique = 0
        init = self.call(f.Init(0, 0, UID, GID, 1, 7, 38, 1 << 20, f.MAX_PAGES), [16, 64])
        assert init.error == 0, init

    def close(self) -> None:
        self.p9.close()
        self.fe.close()
        self.proc.terminate()
        self.proc.wait(20)

    def call(self, req: f.Request, room: list[int], out: list[int] | None = None) -> f.Reply:
        self.unique += 2
        data = f.encode_request(req)
        parts, pos = [], 0
        for n in out or [len(data)]:
            parts.append(data[pos : pos + n])
            pos += n
        return f.decode_reply(self.q.roundtrip(parts, room, indirect=True))

    def cpu_ns(self) -> int:
        """The server's CPU time so far, every thread (ns)."""
        total = 0
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except FileNotFoundError:  # a thread that ended meanwhile
                pass
        return total

    def open_file(self, name: str, size: int) -> tuple[int, int]:
        (self.export / name).write_bytes(b"")
        u = self.unique
        r = self.call(f.Lookup(u, f.ROOT_ID, UID, GID, 1, name), [16, 128])
        nodeid = f.parse_entry_out(r.body).nodeid
        r = self.call(f.Open(u + 1, nodeid, UID, GID, 1, os.O_RDWR, 0), [16, 16])
        return nodeid, f.parse_open_out(r.body)[0]


def measure(m: Mount, size: int, data: bytes) -> tuple[float, float]:
    """(CPU us per WRITE, CPU us per READ) of `size` bytes."""
    nodeid, fh = m.open_file(f"f{size}", size)
    n = COUNT[size]
    chunk = data[:size]
    w_out = [f.IN_HEADER_SIZE, f.READ_IN.size, *_page_split(size)]
    w_room = [f.OUT_HEADER_SIZE, f.WRITE_OUT.size]
    r_room = [f.OUT_HEADER_SIZE, *_page_split(size)]
    span = 8 << 20  # writes and reads walk over 8 MiB of file (or one offset if bigger)
    offsets = [(i * size) % max(span, size) for i in range(n)]

    c0 = m.cpu_ns()
    for i, off in enumerate(offsets):
        r = m.call(f.Write(i, nodeid, UID, GID, 1, fh, off, 0, 0, 0, chunk), w_room, w_out)
        if r.error or f.parse_write_out(r.body) != size:
            raise RuntimeError(f"WRITE of {size} at {off}: {r}")
    c1 = m.cpu_ns()
    for i, off in enumerate(offsets):
        r = m.call(f.Read(i, nodeid, UID, GID, 1, fh, off, size, 0, 0, 0), r_room)
        if r.error or (i < 4 and r.body != chunk) or len(r.body) != size:
            raise RuntimeError(f"READ of {size} at {off}: error {r.error}, {len(r.body)} bytes")
    c2 = m.cpu_ns()
    return (c1 - c0) / n / 1e3, (c2 - c1) / n / 1e3


def measure_9p(m: Mount, size: int, data: bytes) -> tuple[float, float]:
    """(CPU us per Twrite, CPU us per Tread) of `size` bytes."""
    fid = size  # a fid per size
    m.p9.walk(0, fid, [])
    m.p9.rpc(p9.Tlcreate(fid, f"p{size}", os.O_RDWR, 0o644, 0))
    n = COUNT[size]
    chunk = data[:size]
    offsets = [(i * size) % max(8 << 20, size) for i in range(n)]
    c0 = m.cpu_ns()
    for off in offsets:
        r = m.p9.rpc(p9.Twrite(fid, off, chunk))
        if not isinstance(r, p9.Rwrite) or r.count != size:
            raise RuntimeError(f"Twrite of {size} at {off}: {r}")
    c1 = m.cpu_ns()
    for i, off in enumerate(offsets):
        r = m.p9.rpc(p9.Tread(fid, off, size))
        if not isinstance(r, p9.Rread) or len(r.data) != size or (i < 4 and r.data != chunk):
            raise RuntimeError(f"Tread of {size} at {off}: {type(r).__name__}")
    c2 = m.cpu_ns()
    m.p9.rpc(p9.Tclunk(fid))
    return (c1 - c0) / n / 1e3, (c2 - c1) / n / 1e3


def source_of(ref: str, into: Path) -> Path:
    """src/ of git revision ref, unpacked into `into`."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"],
                         check=True, capture_output=True).stdout  # fmt: skip
    with tempfile.TemporaryFile() as fh:
        fh.write(tar)
        fh.seek(0)
        with tarfile.open(fileobj=fh) as t:
            t.extractall(into, filter="data")
    return into / "src"


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="git revision to compare with (default: merge-base with main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = ap.parse_args()
    before = args.before or subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                           check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    data = random.Random(1).randbytes(max(SIZES))
    with tempfile.TemporaryDirectory() as td:
        versions = {
            f"before ({before[:7]})": source_of(before, Path(td) / "before"),
            f"after ({head}{'+dirty' if dirty else ''})": ROOT / "src",
        }
        # version -> (op, size) -> per-round CPU us
        results: dict[str, dict[tuple[str, int], list[float]]] = {v: {} for v in versions}
        for rnd in range(args.rounds):
            for name, src in versions.items():
                work = Path(td) / f"run-{rnd}-{name.split()[0]}"
                work.mkdir()
                m = Mount(src, work)
                try:
                    for size in SIZES:
                        for proto, run in (("virtio-fs", measure), ("9P", measure_9p)):
                            w, r = run(m, size, data)
                            wop, rop = OPS[proto]
                            results[name].setdefault((wop, size), []).append(w)
                            results[name].setdefault((rop, size), []).append(r)
                            print(f"round {rnd + 1} {name}: {size >> 10} KiB {wop} {w:,.0f} us, "
                                  f"{rop} {r:,.0f} us", flush=True)  # fmt: skip
                finally:
                    m.close()
    names = list(versions)
    lines = [
        f"Server CPU per request, microseconds: median of {args.rounds} interleaved rounds "
        "(lowest-highest).",
        "",
        f"| request | {names[0]} | {names[1]} | after / before |",
        "|---|---:|---:|---:|",
    ]
    for op in ("READ", "WRITE", "Tread", "Twrite"):
        for size in SIZES:
            b, a = results[names[0]][op, size], results[names[1]][op, size]
            ratio = statistics.median(a) / statistics.median(b)
            label = f"{size >> 10} KiB" if size < 1 << 20 else "1 MiB"
            lines.append(f"| {op} {label} | {fmt(b)} | {fmt(a)} | {ratio:.2f} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.out.write_text(f"{table}\n\nRun {stamp}: `python benchmarks/virtiofs_io.py "
                            f"--before {before[:7]} --rounds {args.rounds}`.\n")  # fmt: skip


if __name__ == "__main__":
    main()
