"""virtio-fs lower layers: CPU per chain in the ring engine, and chains/s through
the whole device (socket, eventfds, threads) with the fake front end of the tests.

    python benchmarks/vhost_ring.py [--chains 20000]

1. engine: pop a 2-descriptor chain (a 40-byte FUSE-sized header + 64 bytes of
   arguments, one 4 KiB writable buffer), read the header, write 16 bytes,
   push, decide on notification; no sockets, no threads.  CPU us per chain.
2. device, one request at a time: the fake guest adds a chain, kicks, waits for
   the call eventfd (latency-bound: a thread hop or two per request).
3. device, a full queue at a time: the guest keeps the queue full (throughput).
Both device runs for max_inflight 1 (handler inline in the queue thread) and 4
(a small pool per queue).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.virtiofs.frontend import FakeQueue, Frontend, GuestRam  # noqa: E402

from p9share.virtiofs.device import VhostUserListener  # noqa: E402
from p9share.virtiofs.memory import GuestMemory  # noqa: E402
from p9share.virtiofs.virtqueue import ChainReader, ChainWriter, Virtqueue  # noqa: E402

HEADER = bytes(40)
ARGS = bytes(64)


class Reply16:
    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        reader.read(40)
        writer.write(b"\0" * 16)


def engine(chains: int) -> float:
    ram = GuestRam(1 << 22)
    memory = GuestMemory.map([ram.region()], [ram.memfd])
    fq = FakeQueue(ram, 0, 256)
    a = fq.addr()
    vq = Virtqueue(memory, size=256, desc=a.desc, avail=a.avail, used=a.used, event_idx=True)
    handler = Reply16()
    # one chain layout reused: the guest republishes the same head
    head = fq.add([HEADER + ARGS], [4096], kick=False)
    fq.avail_idx = 0
    t0 = time.process_time()
    for _ in range(chains):
        fq.publish(head)
        chain = vq.pop()
        assert chain is not None
        handler.handle(chain.reader, chain.writer)
        vq.push(chain.head, chain.writer.written)
        chain.release()
        vq.should_notify()
    cpu = time.process_time() - t0
    vq.release()
    fq.close()
    memory.close()
    ram.close()
    return cpu / chains * 1e6


def device(chains: int, max_inflight: int, batch: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as td:
        lst = VhostUserListener(f"{td}/vu.sock", Reply16, max_inflight=max_inflight)
        lst.start()
        try:
            with Frontend(lst.path, queue_size=64) as fe:
                fe.start()
                q = fe.queues[1]
                t0, c0 = time.perf_counter(), time.process_time()
                if not batch:
                    for _ in range(chains):
                        q.roundtrip([HEADER + ARGS], [4096])
                else:
                    done = 0
                    while done < chains:
                        while q.free and q.inflight.__len__() < q.size - 1:
                            q.add([HEADER + ARGS], [4096], kick=False)
                        q.do_kick()
                        q.wait_call(1.0)
                        for h, n in q.take_used():
                            q.reply(h, n)
                            done += 1
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0
        finally:
            lst.stop()
    return chains / wall, cpu / chains * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=20000)
    args = ap.parse_args()
    n = args.chains
    print(f"engine only: {engine(n):.1f} CPU us per chain (pop, read 40, write 16, push, notify)")
    for inflight in (1, 4):
        for batch in (False, True):
            rate, cpu = device(n // 4, inflight, batch)
            mode = "queue kept full" if batch else "one at a time"
            print(
                f"device max_inflight={inflight} {mode}: {rate:,.0f} chains/s, "
                f"{cpu:.1f} CPU us per chain (fake guest and device in one process)"
            )


if __name__ == "__main__":
    main()
