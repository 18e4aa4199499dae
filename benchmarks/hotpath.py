"""Python CPU per request on the server's inline path, without sockets.

    python benchmarks/hotpath.py                 # the whole recorded stream, best of 3
    python benchmarks/hotpath.py --limit 20000 --profile   # and a cProfile top list

The recorded kernel-client stream (benchmarks/stream-linux61.p9r.xz) is fed,
frame by frame, through what a connection's reader thread does for a request
answered inline: ``parse_frame`` -> ``Session.handle`` -> ``encode``, against a
real host export in a temporary directory. No socket, no thread hop: what is
measured is the server's own Python (and the host filesystem calls it makes),
the part of the replay's server CPU that the server's code decides. The host
replay (replay.py) measures the whole process, kernel and wake-ups included.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replay

from p9share.policy import Export, Policy
from p9share.policy.peer import Peer
from p9share.protocol.connection import Request
from p9share.protocol.messages import Tversion
from p9share.server.server import Server

METRICS = [False]  # --metrics: count every request as `serve --metrics` does


def run_once(
    conns: list[replay.Conn], profile: cProfile.Profile | None
) -> tuple[int, float, float]:
    """Requests run, and user and system CPU seconds for one pass over the stream."""
    with tempfile.TemporaryDirectory(prefix="p9hot-") as td:
        export = Path(td) / "export"
        export.mkdir()
        policy = Policy()
        policy.exports["bench"] = Export("bench", str(export))
        server = Server(policy, metrics=METRICS[0])
        try:
            peer = Peer("unix:bench", "unix")
            n = 0
            user = system = 0.0
            for conn in conns:
                session = server.new_session(peer)
                proto = session.proto
                frames = [
                    replay.with_aname(f, "bench") if f[4] == replay.TATTACH else f
                    for _, f in conn.frames
                ]
                if profile is not None:
                    profile.enable()
                t0 = os.times()
                for frame in frames:
                    ev = proto.parse_frame(memoryview(frame))
                    if isinstance(ev, Request):
                        msg = ev.msg
                        if isinstance(msg, Tversion):
                            proto.encode(ev.tag, proto.version(msg))
                        else:
                            proto.encode(ev.tag, session.handle(msg))
                    n += 1
                t1 = os.times()
                user += t1.user - t0.user
                system += t1.system - t0.system
                if profile is not None:
                    profile.disable()
                session.reset()
        finally:
            server.stop()
    return n, user, system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stream", type=Path, default=replay.STREAM)
    ap.add_argument("--limit", type=int, default=None, help="first N requests only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print a cProfile top list")
    ap.add_argument("--metrics", action="store_true", help="with live metrics (serve --metrics)")
    args = ap.parse_args(argv)
    METRICS[0] = args.metrics
    _, conns = replay.load_stream(args.stream, args.limit)
    users, totals = [], []
    for r in range(args.rounds):
        n, user, system = run_once(conns, None)
        users.append(user / n * 1e6)
        totals.append((user + system) / n * 1e6)
        print(
            f"round {r + 1}: {n} requests, user {user:.2f} s + system {system:.2f} s CPU: "
            f"{users[-1]:.1f} us user, {totals[-1]:.1f} us total per request",
            flush=True,
        )
    # user time is the server's Python; system time is mostly the host
    # filesystem's work (creates, writes), which varies with the disk
    print(
        f"best: {min(users):.1f} us user, {min(totals):.1f} us total per request "
        f"(Python {sys.version.split()[0]})"
    )
    if args.profile:
        prof = cProfile.Profile()
        run_once(conns, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
