"""A frame-logging 9P proxy, for recording golden test vectors of a real client.

The :class:`Recorder` listens on TCP (default 127.0.0.1, a free port) or a Unix
socket; for every client it accepts it connects to the upstream server (TCP
``(host, port)`` or a Unix socket path), forwards bytes both ways unchanged, and
splits each direction into 9P frames (``size[4]`` little-endian, counting itself).

Output is JSON lines. An optional first line ``{"meta": {...}}`` describes the
session; then one line per frame, in the order the proxy saw them::

    {"conn": 0, "dir": "c2s", "type": 100, "name": "Tversion", "tag": 65535, "hex": "13000000..."}

``dir`` is ``c2s`` (client to server, T-messages) or ``s2c`` (R-messages); ``hex``
is the whole frame including its size field. ``{"conn": N, "event": "open"|"close"}``
lines mark connections, and ``{"conn": N, "dir": ..., "garbage": HEX}`` records bytes
that do not parse as frames (the proxy keeps forwarding them regardless).

Recording a session against diod (see :func:`record_session`)::

    python -m p9share.vmlab.recorder --version 9p2000.L --out tests/vectors/linux-6.1-dotl.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import socket
import sys
import tempfile
import threading
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger("p9share.vmlab")

MAX_FRAME = 16 * 1024 * 1024

_T_NAMES = {
    6: "lerror", 8: "statfs", 12: "lopen", 14: "lcreate", 16: "symlink", 18: "mknod",
    20: "rename", 22: "readlink", 24: "getattr", 26: "setattr", 30: "xattrwalk",
    32: "xattrcreate", 40: "readdir", 50: "fsync", 52: "lock", 54: "getlock", 70: "link",
    72: "mkdir", 74: "renameat", 76: "unlinkat", 100: "version", 102: "auth",
    104: "attach", 106: "error", 108: "flush", 110: "walk", 112: "open", 114: "create",
    116: "read", 118: "write", 120: "clunk", 122: "remove", 124: "stat", 126: "wstat",
}  # fmt: skip


def message_name(mtype: int) -> str:
    """``Tversion``/``Rversion``... for a 9P message type number."""
    base = mtype & ~1
    name = _T_NAMES.get(base)
    if name is None:
        return f"type{mtype}"
    return ("R" if mtype & 1 else "T") + name


Address = tuple[str, int] | str  # (host, port) or a Unix socket path


def _connect(addr: Address, timeout: float = 10) -> socket.socket:
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr)
    else:
        s = socket.create_connection(addr, timeout=timeout)
    s.settimeout(30)  # bounds a blocking sendall to a stuck peer
    return s


class _Pipe:
    """One proxied connection: client <-> upstream."""

    def __init__(self, conn: int, client: socket.socket, upstream: socket.socket) -> None:
        self.conn = conn
        self.sock = {"c2s": client, "s2c": upstream}
        self.peer = {"c2s": upstream, "s2c": client}
        self.buf = {"c2s": bytearray(), "s2c": bytearray()}
        self.broken = {"c2s": False, "s2c": False}


class Recorder:
    """Proxy between a 9P client and ``upstream`` that logs every frame to ``out``."""

    def __init__(
        self,
        out: str | os.PathLike[str] | TextIO,
        upstream: Address,
        *,
        listen: Address = ("127.0.0.1", 0),
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.upstream = upstream
        self._own_out = isinstance(out, str | os.PathLike)
        if isinstance(out, str | os.PathLike):
            self._out: TextIO = open(out, "w", encoding="utf-8")  # noqa: SIM115 - see stop()
        else:
            self._out = out
        if meta is not None:
            self._write({"meta": dict(meta)})
        if isinstance(listen, str):
            Path(listen).unlink(missing_ok=True)
            self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(listen)
        self._lsock.listen(8)
        self._lsock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pipes: list[_Pipe] = []
        self.frames = 0
        self.connections = 0
        self.errors: list[str] = []

    # -- public ------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._lsock.getsockname()[1])

    @property
    def socket_path(self) -> str:
        return str(self._lsock.getsockname())

    def start(self) -> Recorder:
        self._sel.register(self._lsock, selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._thread = threading.Thread(target=self._loop, name="vmlab-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("recorder thread did not stop within %ss", timeout)
        for p in list(self._pipes):
            self._close_pipe(p, "proxy")
        for s in (self._lsock, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()
        if self._own_out:
            self._out.close()
        else:
            self._out.flush()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------
    def _write(self, rec: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(rec, separators=(", ", ": ")) + "\n")
        self._out.flush()

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                kind, pipe = key.data
                try:
                    if kind == "listen":
                        self._accept()
                    elif kind == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._pump(pipe, kind)
                except Exception as e:  # keep proxying the other connections
                    msg = f"{type(e).__name__}: {e}"
                    self.errors.append(msg)
                    log.warning("recorder: %s", msg)
                    if pipe is not None:
                        self._close_pipe(pipe, "error")

    def _accept(self) -> None:
        client, _ = self._lsock.accept()
        client.setblocking(True)
        client.settimeout(30)
        conn = self.connections
        self.connections += 1
        try:
            up = _connect(self.upstream)
        except OSError as e:
            self._write({"conn": conn, "event": "upstream-failed", "error": str(e)})
            client.close()
            raise
        pipe = _Pipe(conn, client, up)
        self._pipes.append(pipe)
        self._write({"conn": conn, "event": "open"})
        self._sel.register(client, selectors.EVENT_READ, ("c2s", pipe))
        self._sel.register(up, selectors.EVENT_READ, ("s2c", pipe))

    def _pump(self, pipe: _Pipe, direction: str) -> None:
        data = pipe.sock[direction].recv(262144)
        if not data:
            self._close_pipe(pipe, "client" if direction == "c2s" else "server")
            return
        pipe.peer[direction].sendall(data)
        if pipe.broken[direction]:
            self._write({"conn": pipe.conn, "dir": direction, "garbage": data.hex()})
            return
        buf = pipe.buf[direction]
        buf += data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "little")
            if size < 7 or size > MAX_FRAME:
                pipe.broken[direction] = True
                self._write({"conn": pipe.conn, "dir": direction, "garbage": bytes(buf).hex()})
                buf.clear()
                return
            if len(buf) < size:
                return
            frame = bytes(buf[:size])
            del buf[:size]
            self.frames += 1
            self._write({
                "conn": pipe.conn,
                "dir": direction,
                "type": frame[4],
                "name": message_name(frame[4]),
                "tag": int.from_bytes(frame[5:7], "little"),
                "hex": frame.hex(),
            })  # fmt: skip

    def _close_pipe(self, pipe: _Pipe, by: str) -> None:
        if pipe not in self._pipes:
            return
        self._pipes.remove(pipe)
        for d in ("c2s", "s2c"):
            if pipe.buf[d]:
                self._write({"conn": pipe.conn, "dir": d, "partial": bytes(pipe.buf[d]).hex()})
            s = pipe.sock[d]
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self._write({"conn": pipe.conn, "event": "close", "by": by})


def workload_script() -> str:
    return resources.files("p9share.vmlab").joinpath("guest", "record-workload.sh").read_text()


def record_session(
    out: str | os.PathLike[str],
    *,
    version: str = "9p2000.L",
    transport: str = "tcp",
    mount_opts: str = "",
    script: str | None = None,
    timeout: float = 300,
) -> tuple[int, str]:
    """Record the workload (default ``guest/record-workload.sh``) against diod.

    Returns (guest status, guest output). The vector file is written even when the
    mount fails (it then shows how the server refused the client).
    """
    from .assets import setup
    from .diod import Diod, free_port
    from .runner import run_guest

    assets = setup()
    script = script if script is not None else workload_script()
    with tempfile.TemporaryDirectory(prefix="p9vmlab-rec-") as tmp:
        os.chmod(tmp, 0o755)  # diod serves the client's first attach as 'nobody'
        export = Path(tmp) / "export"
        export.mkdir()
        diod_ver = _diod_version()
        meta = {
            "client": f"Linux {assets.kernel_version} v9fs",
            "server": diod_ver,
            "version": version,
            "transport": transport,
            "mount_opts": mount_opts or "(defaults)",
            "workload": "p9share/vmlab/guest/record-workload.sh",
            "note": "aname is the server's temporary export directory; qids, times and "
            "fids depend on the host and the moment of recording",
        }
        unix = transport == "fd"
        with Diod(export, unix=unix) as d:
            upstream: Address = str(d.socket_path) if unix else ("127.0.0.1", d.port or 0)
            listen: Address = str(Path(tmp) / "rec.sock") if unix else ("127.0.0.1", free_port())
            with Recorder(out, upstream, listen=listen, meta=meta) as rec:
                res = run_guest(
                    script,
                    transport="fd" if unix else "tcp",
                    port=None if unix else rec.port,
                    socket_path=rec.socket_path if unix else None,
                    aname=d.aname,
                    version=version,
                    mount_opts=mount_opts,
                    timeout=timeout,
                    mount_retries=1,
                    assets=assets,
                )
            if rec.errors:
                log.warning("recorder errors: %s", rec.errors)
    return res.status, (res.error + "\n" if res.error else "") + res.output


def _diod_version() -> str:
    import subprocess

    try:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "diod"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if r.returncode == 0 and r.stdout:
            return f"diod {r.stdout.strip()} (Debian)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "diod"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m p9share.vmlab record",
        description="Record a Linux v9fs session against diod as JSON-lines 9P frames.",
    )
    ap.add_argument("--out", required=True, help="output .jsonl file")
    ap.add_argument("--version", default="9p2000.L", help="9p2000.L (default) or 9p2000.u")
    ap.add_argument("--transport", default="tcp", choices=["tcp", "fd"])
    ap.add_argument("-o", "--mount-opts", default="", help="extra mount options")
    ap.add_argument("--script", help="guest workload script (default: the built-in one)")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vmlab: %(message)s")
    script = Path(a.script).read_text() if a.script else None
    status, output = record_session(
        a.out, version=a.version, transport=a.transport, mount_opts=a.mount_opts,
        script=script, timeout=a.timeout,
    )  # fmt: skip
    sys.stdout.write(output)
    lines = Path(a.out).read_text(encoding="utf-8").splitlines()
    n = sum(1 for line in lines if '"hex"' in line)
    print(f"vmlab: guest status {status}; {n} frames written to {a.out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
