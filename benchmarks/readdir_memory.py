"""Server memory held by open directory listings (issue 11, finding "memory").

    python benchmarks/readdir_memory.py [--entries 20000] [--fids 240]

Starts ``p9share serve`` as its own process on a fresh export holding one
directory of --entries files with 40-byte names, connects once, attaches,
and opens --fids fids on that directory. Each gets one Treaddir at offset 0
(8 KiB, what a listing's first request asks) and is left open, as a guest
that lists a large directory many times without closing does. Prints the
server's VmRSS before the fids, after them, and after clunking them, and the
growth per fid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p9share.client.raw import RawClient
from p9share.protocol import messages as m
from p9share.vmlab.diod import free_port, stop_process


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--fids", type=int, default=240)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="p9rdmem-") as td:
        big = Path(td, "export", "big")
        big.mkdir(parents=True)
        for i in range(args.entries):
            (big / f"entry-{i:08d}-{'x' * 24}").touch()
        port = free_port()
        cmd = [sys.executable, "-m", "p9share", "serve", "--export", f"bench={td}/export",
               "--listen", f"tcp:127.0.0.1:{port}", "--log-level", "warning",
               "--landlock", "off"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    c = RawClient.connect(f"tcp:127.0.0.1:{port}", timeout=60)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("p9share did not start") from None
                    time.sleep(0.05)
            c.version(1024 * 1024 + 24)
            c.attach(0, "bench")
            c.walk(0, 1, ["big"])  # warm the server: one listing done and closed
            c.rpc(m.Tlopen(1, os.O_RDONLY))
            c.rpc(m.Treaddir(1, 0, 8192))
            c.rpc(m.Tclunk(1))
            before = rss_kib(proc.pid)
            t0 = time.perf_counter()
            for fid in range(1, args.fids + 1):
                c.walk(0, fid, ["big"])
                c.rpc(m.Tlopen(fid, os.O_RDONLY))
                r = c.rpc(m.Treaddir(fid, 0, 8192))
                assert isinstance(r, m.Rreaddir) and r.data
            took = time.perf_counter() - t0
            held = rss_kib(proc.pid)
            for fid in range(1, args.fids + 1):
                c.rpc(m.Tclunk(fid))
            after = rss_kib(proc.pid)
            c.close()
        finally:
            stop_process(proc, timeout=10)
    grown = held - before
    print(f"directory: {args.entries} entries; {args.fids} fids, one Treaddir each")
    print(f"server VmRSS before:         {before / 1024:9.1f} MiB")
    print(f"server VmRSS with fids open: {held / 1024:9.1f} MiB  (+{grown / 1024:.1f} MiB, "
          f"{grown / args.fids:.0f} KiB per fid)")  # fmt: skip
    print(f"server VmRSS after clunks:   {after / 1024:9.1f} MiB")
    print(f"time for the {args.fids} opens and first reads: {took:.2f} s")


if __name__ == "__main__":
    main()
