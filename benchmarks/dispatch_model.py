"""Measure the server's concurrency model: requests/s and server CPU per request
for the three dispatch models, over loopback TCP, against a real temp dir.

    python benchmarks/dispatch_model.py [--seconds 3]

The server runs in its own process (so the client does not share its GIL);
the client keeps DEPTH requests in flight.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from p9share.client.raw import RawClient
from p9share.protocol import messages as m

SERVER = """
import sys, signal, threading
from p9share.policy import Export, Policy
from p9share.server.server import Server
from p9share.server.transport import parse_address
p = Policy(); p.exports["e"] = Export("e", sys.argv[1])
s = Server(p, dispatch=sys.argv[2])
a = s.listen(parse_address("tcp:127.0.0.1:0"))
import resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
print(a.port, flush=True)
sys.stdin.read()
print(cpu() - c0, flush=True)
"""


def run(model: str, root: str, seconds: float, depth: int, op: str) -> tuple[float, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, root, model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout and proc.stdin
    port = int(proc.stdout.readline())
    cl = RawClient.connect(f"tcp:127.0.0.1:{port}")
    cl.version(1024 * 1024 + 24)
    cl.attach(0, "")
    cl.walk(0, 1, ["data"])
    cl.rpc(m.Tlopen(1, 0))
    msg: m.Message = m.Tgetattr(1, 0x7FF) if op == "getattr" else m.Tread(1, 0, 4096)
    frames = [m.encode_message(msg, t) for t in range(1, depth + 1)]
    n = 0
    t0 = time.perf_counter()
    cl.sock.sendall(b"".join(frames))
    while time.perf_counter() - t0 < seconds:
        for _ in range(depth):
            cl.recv_frame()
        cl.sock.sendall(b"".join(frames))
        n += depth
    for _ in range(depth):
        cl.recv_frame()
    el = time.perf_counter() - t0
    cl.close()
    proc.stdin.close()
    cpu = float(proc.stdout.readline())
    proc.wait()
    return n / el, cpu / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "data"), "wb") as f:
            f.write(os.urandom(1 << 20))
        print(f"{'model':8} {'op':8} {'depth':>5} {'req/s':>9} {'server CPU us/req':>18}")
        for op in ("getattr", "read4k"):
            for depth in (1, 8):
                for model in ("inline", "hybrid", "pool"):
                    rate, cpu = run(model, root, args.seconds, depth, op)
                    print(f"{model:8} {op:8} {depth:5d} {rate:9.0f} {cpu:18.1f}", flush=True)


if __name__ == "__main__":
    main()
