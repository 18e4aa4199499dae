"""Host replay: a recorded Linux v9fs request stream replayed against p9share and diod.

    python benchmarks/replay.py                       # replay the committed stream
    python benchmarks/replay.py --record              # re-record it (boots a guest, diod)
    python benchmarks/replay.py --quick               # first 5,000 requests, 1 round

No VM: the stream (``benchmarks/stream-linux61.p9r.xz``, recorded by the vmlab
recorder while the guest ran ``benchmarks/guest.sh`` against diod with msize 64 KiB,
so both servers accept every frame) is sent to a fresh server on a fresh empty export
over a Unix socket and over loopback TCP. Reported per server and transport: wall
time, and the server process's CPU seconds (utime + stime of /proc/PID/stat, all
threads) per 10,000 requests and per GiB moved (Twrite + Rread payload).

Replay keeps the recorded concurrency: request i is sent once as many replies have
arrived as the client had seen when it sent it, and once its tag is free again.
Fids are chosen by the client and qids are never sent back as identifiers, so the
frames go out verbatim; only Tattach's aname is rewritten for the target server.
Error replies (Rlerror) are counted and reported, not fatal: a server may refuse
what the recording's server allowed.

The RSS measurement opens one connection, attaches, and walks 10,000 fids (clones
of the root and of a file), then reads the server's VmRSS.

Stream file format (``.p9r``, xz-compressed): a JSON header line, then per
connection a record ``b"C" + u32 connection number``, and per request
``b"F" + u32 replies seen before it on this connection + the frame``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from machine import cpu_seconds, in_dir, machine_info, pin, rss_bytes  # noqa: E402

STREAM = HERE / "stream-linux61.p9r.xz"
RESULTS = HERE / "results"
TATTACH, RLERROR, TREAD, RREAD, TWRITE, TVERSION = 104, 7, 116, 117, 118, 100
HDR = struct.Struct("<IBH")


@dataclass
class Conn:
    number: int
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (replies seen, frame)


# ------------------------------------------------------------------ stream I/O --
def convert_jsonl(src: Path) -> tuple[dict[str, object], list[Conn]]:
    """A vmlab recorder JSON-lines file -> (meta, connections)."""
    meta: dict[str, object] = {}
    conns: dict[int, Conn] = {}
    seen: dict[int, int] = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "meta" in rec:
                meta = rec["meta"]
                continue
            if "hex" not in rec:
                continue
            c = rec["conn"]
            conn = conns.setdefault(c, Conn(c))
            if rec["dir"] == "s2c":
                seen[c] = seen.get(c, 0) + 1
            else:
                conn.frames.append((seen.get(c, 0), bytes.fromhex(rec["hex"])))
    return meta, [conns[k] for k in sorted(conns)]


def save_stream(path: Path, meta: dict[str, object], conns: list[Conn]) -> None:
    with lzma.open(path, "wb", preset=9) as f:
        f.write(json.dumps(meta).encode() + b"\n")
        for c in conns:
            f.write(b"C" + struct.pack("<I", c.number))
            for seen, frame in c.frames:
                f.write(b"F" + struct.pack("<I", seen) + frame)


def load_stream(path: Path, limit: int | None = None) -> tuple[dict[str, object], list[Conn]]:
    with lzma.open(path, "rb") as f:
        data = f.read()
    nl = data.index(b"\n")
    meta = json.loads(data[:nl])
    conns: list[Conn] = []
    off, total = nl + 1, 0
    while off < len(data):
        kind = data[off : off + 1]
        if kind == b"C":
            conns.append(Conn(struct.unpack_from("<I", data, off + 1)[0]))
            off += 5
        elif kind == b"F" and conns:
            seen, size = struct.unpack_from("<II", data, off + 1)
            if size < 7 or off + 5 + size > len(data):
                raise ValueError(f"{path}: bad frame size {size} at offset {off}")
            if limit is None or total < limit:
                conns[-1].frames.append((seen, data[off + 5 : off + 5 + size]))
                total += 1
            off += 5 + size
        else:
            raise ValueError(f"{path}: bad record {kind!r} at offset {off}")
    return meta, conns


def with_aname(frame: bytes, aname: str) -> bytes:
    """Tattach ``frame`` with its aname replaced."""
    off = 7 + 8
    (ulen,) = struct.unpack_from("<H", frame, off)
    off += 2 + ulen
    (alen,) = struct.unpack_from("<H", frame, off)
    a = aname.encode()
    body = frame[7:off] + struct.pack("<H", len(a)) + a + frame[off + 2 + alen :]
    return (
        struct.pack("<IBH", 7 + len(body), frame[4], struct.unpack_from("<H", frame, 5)[0]) + body
    )


# ---------------------------------------------------------------------- replay --
@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    payload: int = 0  # Twrite + Rread data bytes
    error_types: dict[str, int] = field(default_factory=dict)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:])
        if r == 0:
            raise ConnectionError("server closed the connection")
        got += r
    return bytes(buf)


def replay_conn(sock: socket.socket, conn: Conn, aname: str, tally: Tally) -> None:
    """Send conn's requests keeping the recorded concurrency; collect the replies."""
    state = threading.Condition()
    replies = 0
    busy: dict[int, int] = {}  # tag -> request type
    failed: list[BaseException] = []
    done = False

    def reader() -> None:
        nonlocal replies
        try:
            while True:
                with state:
                    if done and not busy:
                        return
                head = _recv_exact(sock, 7)
                size, mtype, tag = HDR.unpack(head)
                _recv_exact(sock, size - 7)  # the reply body itself is not needed
                with state:
                    req = busy.pop(tag, None)
                    if mtype == RLERROR:
                        tally.errors += 1
                        key = str(req)
                        tally.error_types[key] = tally.error_types.get(key, 0) + 1
                    elif mtype == RREAD:
                        tally.payload += size - 11
                    replies += 1
                    state.notify_all()
        except BaseException as e:
            with state:
                failed.append(e)
                state.notify_all()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for seen, frame in conn.frames:
        mtype = frame[4]
        (tag,) = struct.unpack_from("<H", frame, 5)
        if mtype == TATTACH:
            frame = with_aname(frame, aname)
        elif mtype == TWRITE:
            tally.payload += len(frame) - 23
        with state:
            while (replies < seen or tag in busy) and not failed:
                state.wait()
            if failed:
                raise ConnectionError(f"replay failed: {failed[0]}")
            busy[tag] = mtype
        sock.sendall(frame)
        tally.requests += 1
    with state:
        done = True
        while busy and not failed:
            state.wait()
    if failed:
        raise ConnectionError(f"replay failed: {failed[0]}")
    sock.close()
    t.join(5)


@contextmanager
def server(kind: str, transport: str, export: Path, tmp: Path) -> Iterator[tuple[object, int, str]]:
    """A fresh server: yields (address, pid, aname)."""
    from p9share.vmlab.diod import Diod, free_port, stop_process

    sock = tmp / f"{kind}.sock"
    if kind == "diod":
        with (
            pin(1),
            in_dir(tmp),
            Diod(
                export, unix=transport == "unix", socket_path=sock if transport == "unix" else None
            ) as d,
        ):
            assert d.proc is not None
            addr = str(d.socket_path) if transport == "unix" else ("127.0.0.1", d.port)
            yield addr, d.proc.pid, d.aname
        return
    port = free_port()
    listen = f"unix:{sock}" if transport == "unix" else f"tcp:127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "p9share", "serve", "--export", f"bench={export}",
           "--listen", listen, "--log-level", "warning", "--landlock", "off"]  # fmt: skip
    with pin(1):
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = str(sock) if transport == "unix" else ("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _connect(addr).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"p9share did not start (status {proc.returncode})"
                    ) from None
                time.sleep(0.05)
        yield addr, proc.pid, "bench"
    finally:
        stop_process(proc, timeout=10)


def _connect(addr: object) -> socket.socket:
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr)
    else:
        assert isinstance(addr, tuple)
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(60)
    return s


def replay_once(kind: str, transport: str, conns: list[Conn]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="p9replay-") as td:
        tmp = Path(td)
        os.chmod(tmp, 0o755)
        export = tmp / "export"
        export.mkdir()
        os.chmod(export, 0o777)
        with server(kind, transport, export, tmp) as (addr, pid, aname):
            tally = Tally()
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            with pin(0):
                for c in conns:  # the recorded connections ran one after the other
                    replay_conn(_connect(addr), c, aname, tally)
            wall = time.perf_counter() - t0
            time.sleep(0.05)  # let the server finish its connection teardown
            cpu = cpu_seconds(pid) - cpu0
    return {
        "server": kind, "transport": transport, "requests": tally.requests,
        "errors": tally.errors, "error_types": tally.error_types, "payload_bytes": tally.payload,
        "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
        "cpu_per_10k": round(cpu / tally.requests * 1e4, 3),
        "wall_per_10k": round(wall / tally.requests * 1e4, 3),
        "cpu_per_gib": round(cpu / (tally.payload / (1 << 30)), 2) if tally.payload else None,
    }  # fmt: skip


def rss_with_fids(kind: str, nfids: int = 10_000) -> dict[str, object]:
    """Server RSS before and after one client walks ``nfids`` fids."""
    from p9share.client.raw import RawClient
    from p9share.protocol import messages as m

    with tempfile.TemporaryDirectory(prefix="p9replay-") as td:
        tmp = Path(td)
        os.chmod(tmp, 0o755)
        export = tmp / "export"
        export.mkdir()
        (export / "file").write_bytes(b"x")
        os.chmod(export, 0o777)
        with server(kind, "unix", export, tmp) as (addr, pid, aname):
            rss0 = rss_bytes(pid)
            cl = RawClient(_connect(addr))
            cl.version(65536 + 24)
            cl.attach(0, aname, uname="root", n_uname=0)
            depth = 64
            for start in range(1, nfids + 1, depth):
                tags = []
                for fid in range(start, min(start + depth, nfids + 1)):
                    names = ["file"] if fid % 2 else []
                    tags.append(cl.send(m.Twalk(0, fid, names)))
                for _ in tags:
                    _, reply = cl.recv()
                    if not isinstance(reply, m.Rwalk):
                        raise RuntimeError(f"{kind}: walk failed: {reply!r}")
            time.sleep(0.2)
            rss1 = rss_bytes(pid)
            cl.close()
    return {"server": kind, "fids": nfids, "rss_idle": rss0, "rss_with_fids": rss1}


# -------------------------------------------------------------------- recording --
def record(out: Path, seq_mib: int, files: int, tree_files: int) -> None:
    """Record guest.sh against diod (msize 64 KiB) and store it as ``out``."""
    import run as guest_run

    from p9share.vmlab.recorder import record_session

    with tempfile.TemporaryDirectory(prefix="p9rec-") as td:
        tree, tree_bytes = guest_run.make_tree(Path(td), tree_files)
        # guest.sh, fed its arguments and tree through a wrapper
        script = (HERE / "guest.sh").read_text()
        args = f"set -- {seq_mib} 65536 {files} {max(1, seq_mib // 4)} 'none loose'\n"
        jsonl = Path(td) / "rec.jsonl"
        from p9share.vmlab import runner

        orig = runner.run_guest

        def run_with_tree(*a: object, **kw: object) -> object:
            kw["extra_files"] = {
                "/root/tree.tar": tree,
                "/root/tree.bytes": f"{tree_bytes}\n".encode(),
            }
            return orig(*a, **kw)  # type: ignore[arg-type]

        runner.run_guest = run_with_tree  # type: ignore[assignment]
        try:
            status, output = record_session(
                jsonl, mount_opts="msize=65536", script=args + script, timeout=1800
            )
        finally:
            runner.run_guest = orig
        if status != 0 or "DONE" not in output:
            raise RuntimeError(f"recording failed (guest status {status}):\n{output[-2000:]}")
        meta, conns = convert_jsonl(jsonl)
        meta = dict(meta) | {
            "workload": "benchmarks/guest.sh", "seq_mib": seq_mib, "files": files,
            "tree_files": tree_files, "requests": sum(len(c.frames) for c in conns),
        }  # fmt: skip
        save_stream(out, meta, conns)
    print(
        f"recorded {meta['requests']} requests -> {out} ({out.stat().st_size} bytes)",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--record", action="store_true", help="record the stream first (boots a guest)")
    ap.add_argument("--stream", type=Path, default=STREAM)
    ap.add_argument("--quick", action="store_true", help="first 5,000 requests, 1 round")
    ap.add_argument("--rounds", type=int, help="rounds (default 3)")
    ap.add_argument("--servers", default="p9share,diod")
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--pin", action="store_true", help="client on CPU 0, server on CPU 1")
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args(argv)
    machine.PINNING = a.pin
    machine.no_core_dumps()
    if a.record:
        record(a.stream, seq_mib=16, files=1000, tree_files=300)
    if not a.stream.exists():
        ap.error(f"{a.stream} does not exist (record it with --record)")
    meta, conns = load_stream(a.stream, 5000 if a.quick else None)
    rounds = a.rounds or (1 if a.quick else 3)
    servers = [s for s in a.servers.split(",") if s]
    for s in servers:
        if s not in ("p9share", "diod"):
            ap.error(f"unknown server {s!r}")
    doc: dict[str, object] = {
        "kind": "replay",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "stream": {"file": a.stream.name, "requests": sum(len(c.frames) for c in conns)} | meta,
        "rounds": rounds,
        "pinned": machine.PINNING,
        "load_before": os.getloadavg(),
        "runs": [],
        "rss": [],
    }
    runs: list[dict[str, object]] = doc["runs"]  # type: ignore[assignment]
    for r in range(rounds):
        for transport in a.transports.split(","):
            for kind in servers:
                res = replay_once(kind, transport, conns) | {"round": r}
                runs.append(res)
                print(f"round {r + 1}/{rounds} {kind}/{transport}: {res['requests']} req, "
                      f"wall {res['wall_seconds']}s, cpu {res['cpu_seconds']}s, "
                      f"{res['errors']} errors", file=sys.stderr, flush=True)  # fmt: skip
    for kind in servers:
        rss = rss_with_fids(kind)
        doc["rss"].append(rss)  # type: ignore[attr-defined]
        print(
            f"{kind}: RSS {rss['rss_idle'] / 2**20:.1f} MiB idle, "  # type: ignore[operator]
            f"{rss['rss_with_fids'] / 2**20:.1f} MiB with 10,000 fids",
            file=sys.stderr,
        )  # type: ignore[operator]
    doc["load_after"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"replay-{'quick-' if a.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if not a.no_report and not a.quick:
        import report

        report.main([str(out)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
