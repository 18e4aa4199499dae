"""Guest benchmarks: the same workloads from the same Linux guest against each file server.

    pip install -e .[bench]          # matplotlib, for the chart
    python benchmarks/run.py         # full run (~20 min on 2 cores under TCG)
    python benchmarks/run.py --quick # tiny sizes, one round: a smoke test (< 1 min per server)

Servers (each round boots one guest per server, in turn, so rounds interleave):
p9share over trans=tcp and trans=fd (virtio-serial), Debian's diod over trans=tcp,
and QEMU's built-in virtio-9p (security_model mapped-xattr and passthrough: no
network hop and no separate server process, the ceiling of this lab); over virtio-fs
(vhost-user-fs-pci), QEMU's virtiofsd with cache none and auto, and p9share
(``p9share serve --listen vhost-user:SOCK --cache MODE``: skipped, saying why, while
the server refuses that address or option). Each guest run does every workload of
``benchmarks/guest.sh``, timed in the guest with a microsecond clock (/bin/p9now);
the host records the timestamps the guest prints, the server's CPU seconds (its
process tree, /proc/PID/stat) and the load.

Results go to ``benchmarks/results/``: ``guest-<time>.json`` (machine information and
every sample) and, via ``benchmarks/report.py``, ``latest.md`` and ``latest.png``.
With ``--pin`` the guest runs on CPU 0 and the server on CPU 1 (off by default: it
slowed every server down here, QEMU's own threads then share one core).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from machine import in_dir, machine_info, pin, tree_cpu_seconds, wait_exited  # noqa: E402

from p9share.vmlab import run_guest, setup  # noqa: E402
from p9share.vmlab.diod import Diod, free_port, stop_process  # noqa: E402
from p9share.vmlab.virtiofsd import (  # noqa: E402
    BackendError,
    P9shareVhostUser,
    VhostUserBackend,
    Virtiofsd,
)

RESULTS = HERE / "results"
MIB = 1 << 20


@dataclass(frozen=True)
class ServerSpec:
    name: str
    kind: str  # p9share | diod | qemu | virtiofsd
    transport: str  # tcp | fd | virtio | virtiofs
    security: str = ""  # QEMU's security_model
    cache: str = ""  # virtio-fs: the server's cache mode (none | auto | always)


SERVERS = (
    ServerSpec("p9share-tcp", "p9share", "tcp"),
    ServerSpec("p9share-fd", "p9share", "fd"),
    ServerSpec("diod-tcp", "diod", "tcp"),
    ServerSpec("qemu-virtio-mapped", "qemu", "virtio", "mapped-xattr"),
    ServerSpec("qemu-virtio-passthrough", "qemu", "virtio", "passthrough"),
    ServerSpec("p9share-virtiofs-none", "p9share", "virtiofs", cache="none"),
    ServerSpec("virtiofsd-none", "virtiofsd", "virtiofs", cache="none"),
    ServerSpec("p9share-virtiofs-auto", "p9share", "virtiofs", cache="auto"),
    ServerSpec("virtiofsd-auto", "virtiofsd", "virtiofs", cache="auto"),
)


class Skipped(Exception):
    """The server cannot serve this row yet (the message says why)."""


@dataclass
class Sizes:
    seq_mib: int
    msizes: tuple[int, ...]
    files: int
    tree_files: int
    par_mib: int
    caches: tuple[str, ...] = ("none", "loose")


FULL = Sizes(seq_mib=32, msizes=(524288, 1048576), files=500, tree_files=250, par_mib=16)
QUICK = Sizes(seq_mib=4, msizes=(524288,), files=100, tree_files=150, par_mib=2, caches=("none",))


def make_tree(dest: Path, nfiles: int, seed: int = 6) -> tuple[Path, int]:
    """A deterministic source-like tree as an uncompressed tar (the guest has no
    spare CPU for gunzip): directories of 5-40 files, sizes 100 B to 40 KiB with most
    small, like a C/Python tree. Returns (tar path, bytes of file data)."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        made = 0
        d = 0
        while made < nfiles:
            depth = rnd.randint(1, 3)
            parts = ["tree"] + [f"d{rnd.randint(0, 9)}" for _ in range(depth - 1)] + [f"m{d}"]
            dirname = "/".join(parts)
            d += 1
            for i in range(min(rnd.randint(5, 40), nfiles - made)):
                size = min(int(rnd.lognormvariate(8, 1.1)), 40 * 1024) + 100
                line = f"/* {dirname}/f{i}.c */\n".encode()
                data = (line * (size // len(line) + 1))[:size]
                info = tarfile.TarInfo(f"{dirname}/f{i}.c")
                info.size = size
                info.mode = 0o644
                info.mtime = 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
                total += size
                made += 1
    path = dest / "tree.tar"
    path.write_bytes(buf.getvalue())
    return path, total


@contextmanager
def serve(spec: ServerSpec, export: Path, tmp: Path) -> Iterator[tuple[dict[str, object], int]]:
    """Start ``spec``'s server on ``export``; yield (run_guest kwargs, server pid or 0).
    Raises :class:`Skipped` when p9share refuses a vhost-user listener."""
    if spec.kind == "qemu":
        yield {"transport": "virtio", "virtio_dir": export, "virtio_security": spec.security}, 0
        return
    if spec.transport == "virtiofs":
        backend: VhostUserBackend
        if spec.kind == "virtiofsd":
            backend = Virtiofsd(export, cache=spec.cache, socket_path=tmp / "vu.sock")
        else:
            backend = P9shareVhostUser(export, cache=spec.cache, socket_path=tmp / "vu.sock",
                                       extra_args=["--landlock", "off"])  # fmt: skip
        try:
            with pin(1), in_dir(tmp):
                backend.start()
        except BackendError as e:
            backend.close()
            if e.unsupported:
                raise Skipped(str(e).strip().splitlines()[-1]) from None
            raise
        try:
            yield {"transport": "virtiofs", "socket_path": backend.socket_path}, backend.pid
        finally:
            backend.close()
        return
    if spec.kind == "diod":
        with pin(1), in_dir(tmp), Diod(export) as d:
            assert d.proc is not None
            yield {"transport": "tcp", "port": d.port, "aname": d.aname}, d.proc.pid
        return
    port = free_port()
    sock = tmp / "p9share.sock"
    listen = f"tcp:127.0.0.1:{port}" if spec.transport == "tcp" else f"unix:{sock}"
    cmd = [sys.executable, "-m", "p9share", "serve", "--export", f"bench={export}",
           "--listen", listen, "--log-level", "warning", "--landlock", "off"]  # fmt: skip
    with pin(1):
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not _listening(spec.transport, port, sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"p9share did not start ({proc.returncode}): {err}")
            time.sleep(0.05)
        kw: dict[str, object] = {"aname": "bench", "transport": spec.transport}
        if spec.transport == "tcp":
            kw["port"] = port
        else:
            kw["socket_path"] = sock
        yield kw, proc.pid
    finally:
        stop_process(proc, timeout=10)


def _listening(transport: str, port: int, sock: Path) -> bool:
    import socket

    try:
        if transport == "tcp":
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        else:
            if not sock.exists():
                return False
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
    except OSError:
        return False
    return True


def parse_output(output: str) -> tuple[list[dict[str, object]], list[str]]:
    """RESULT lines -> samples; FAIL lines -> failures."""
    samples: list[dict[str, object]] = []
    failures: list[str] = []
    for line in output.splitlines():
        f = line.split()
        if f[:1] == ["RESULT"] and len(f) >= 6:
            samples.append({
                "workload": f[1],
                "seconds": round(float(f[3]) - float(f[2]), 6),
                "amount": int(f[4]),
                "unit": f[5],
                "msize": int(f[6]) if len(f) > 6 and f[6].isdigit() else None,
            })  # fmt: skip
        elif f[:1] == ["FAIL"]:
            failures.append(" ".join(f[1:]))
    return samples, failures


def run_one(
    spec: ServerSpec, sizes: Sizes, tree: Path, tree_bytes: int, timeout: float
) -> dict[str, object]:
    script = (HERE / "guest.sh").read_text()
    args = [str(sizes.seq_mib), " ".join(map(str, sizes.msizes)), str(sizes.files),
            str(sizes.par_mib), " ".join(sizes.caches)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="p9bench-") as tmpd:
        tmp = Path(tmpd)
        export = tmp / "export"
        export.mkdir()
        os.chmod(tmp, 0o755)  # diod serves the client's first attach as 'nobody'
        os.chmod(export, 0o777)
        with ExitStack() as stack:
            try:
                kw, pid = stack.enter_context(serve(spec, export, tmp))
            except Skipped as e:
                return {"server": spec.name, "skipped": str(e), "samples": [], "failures": []}
            cpu0 = tree_cpu_seconds(pid) if pid else None
            with pin(0):
                res = run_guest(
                    script,
                    args=args,
                    timeout=timeout,
                    extra_files={
                        "/root/tree.tar": tree,
                        "/root/tree.bytes": f"{tree_bytes}\n".encode(),
                    },
                    **kw,  # type: ignore[arg-type]
                )
            if pid and spec.kind == "virtiofsd":
                # it exits once QEMU has gone: count what it did until then
                wait_exited(pid, timeout=10)
            cpu1 = tree_cpu_seconds(pid) if pid else None
    samples, failures = parse_output(res.output)
    if res.status != 0 or "DONE" not in res.output:
        failures.append(f"guest status {res.status}: {res.error or res.output[-500:]}")
    return {
        "server": spec.name,
        "samples": samples,
        "failures": failures,
        "server_cpu_seconds": round(cpu1 - cpu0, 3)
        if cpu0 is not None and cpu1 is not None
        else None,
        "wall_seconds": round(res.wall_seconds, 2),
        "boot_seconds": round(res.boot_seconds or 0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 round (smoke test)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    ap.add_argument("--servers", default=",".join(s.name for s in SERVERS),
                    help="comma-separated subset of: " + ", ".join(s.name for s in SERVERS))  # fmt: skip
    ap.add_argument("--seq-mib", type=int, help="sequential file size in MiB")
    ap.add_argument("--files", type=int, help="files created/stat'ed/unlinked")
    ap.add_argument("--tree-files", type=int, help="files in the source tree")
    ap.add_argument("--par-mib", type=int, help="MiB per file of the 2 parallel readers")
    ap.add_argument("--msizes", help="comma-separated msizes to ask for (the last one is "
                    "used for the metadata workloads), e.g. 65536,1048576")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--timeout", type=float, default=900, help="per guest run, seconds")
    ap.add_argument("--pin", action="store_true", help="guest on CPU 0, server on CPU 1")
    ap.add_argument("--no-report", action="store_true", help="write only the JSON")
    a = ap.parse_args(argv)
    machine.PINNING = a.pin
    machine.no_core_dumps()
    sizes = QUICK if a.quick else FULL
    sizes = Sizes(
        seq_mib=a.seq_mib or sizes.seq_mib,
        msizes=tuple(int(x, 0) for x in a.msizes.split(",")) if a.msizes else sizes.msizes,
        files=a.files or sizes.files,
        tree_files=a.tree_files or sizes.tree_files, par_mib=a.par_mib or sizes.par_mib,
        caches=sizes.caches,
    )  # fmt: skip
    rounds = a.rounds or (1 if a.quick else 3)
    by_name = {s.name: s for s in SERVERS}
    try:
        specs = [by_name[n] for n in a.servers.split(",") if n]
    except KeyError as e:
        ap.error(f"unknown server {e.args[0]!r}")
    assets = setup()
    if any(s.kind == "diod" for s in specs):
        from p9share.vmlab.diod import ensure_diod

        ensure_diod()
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out / f"guest-{'quick-' if a.quick else ''}{stamp}.json"
    doc: dict[str, object] = {
        "kind": "guest",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(assets.qemu, assets.kernel_version),
        "sizes": sizes.__dict__ | {"msizes": list(sizes.msizes), "caches": list(sizes.caches)},
        "rounds": rounds,
        "pinned": machine.PINNING,
        "load_before": os.getloadavg(),
        "runs": [],
    }
    runs: list[dict[str, object]] = doc["runs"]  # type: ignore[assignment]
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p9bench-tree-") as td:
        tree, tree_bytes = make_tree(Path(td), sizes.tree_files)
        doc["tree"] = {
            "files": sizes.tree_files,
            "bytes": tree_bytes,
            "tar_bytes": tree.stat().st_size,
        }
        for r in range(rounds):
            for spec in specs:
                t0 = time.monotonic()
                load = os.getloadavg()  # the machine is shared: the load of every run
                run = run_one(spec, sizes, tree, tree_bytes, a.timeout) | {"round": r}
                run["load_before"] = load
                runs.append(run)
                if run.get("skipped"):
                    print(f"round {r + 1}/{rounds} {spec.name}: skipped: {run['skipped']}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    continue
                print(f"round {r + 1}/{rounds} {spec.name}: {len(run['samples'])} samples, "  # type: ignore[arg-type]
                      f"{time.monotonic() - t0:.0f}s"
                      + (f", FAILURES {run['failures']}" if run["failures"] else ""),
                      file=sys.stderr, flush=True)  # fmt: skip
                out.write_text(json.dumps(doc, indent=1) + "\n")
    doc["load_after"] = os.getloadavg()
    doc["total_seconds"] = round(time.monotonic() - t_start, 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if not a.no_report:
        import report

        report.main([str(out)] + ([] if not a.quick else ["--no-latest"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
