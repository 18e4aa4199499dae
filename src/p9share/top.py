"""`p9share top ADDR`: who is doing what right now, like top or diod's dtop.

Reads a server's metrics endpoint (serve --metrics) every second and shows
one line per protocol, client and export, sorted by activity: requests and
errors per second, bytes read and written per second, fids or inodes held,
connections and denials. q or Ctrl-C quits. The endpoint is the server's
word, so every figure read is checked before it is shown.
"""

from __future__ import annotations

import curses
import math
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

MAX_ANSWER = 64 << 20  # a metrics page larger than this is not a p9share server's


class TopError(Exception):
    """The endpoint cannot be reached or read; the message says why."""


def fetch(address: str, timeout: float = 5.0) -> str:
    """GET /metrics from tcp:HOST:PORT or unix:PATH."""
    kind, _, rest = address.partition(":")
    try:
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            if not host or not port.isdigit():
                raise TopError(f"bad address {address!r}: expected tcp:HOST:PORT or unix:PATH")
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        elif kind == "unix" and rest:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(rest)
        else:
            raise TopError(f"bad address {address!r}: expected tcp:HOST:PORT or unix:PATH")
        with s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: p9share\r\n\r\n")
            chunks: list[bytes] = []
            total = 0
            deadline = time.monotonic() + timeout
            while chunk := s.recv(65536):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_ANSWER or time.monotonic() > deadline:
                    raise TopError(f"{address}: the answer is too long or too slow")
    except OSError as e:
        raise TopError(f"cannot reach metrics at {address}: {e.strerror or e}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] != ["200"]:
        raise TopError(f"{address}: answered {status!r}, not a metrics page")
    return body.decode("utf-8", errors="replace")


Key = tuple[str, str, str]  # (protocol, client, export)


@dataclass(slots=True)
class Row:
    requests: float = 0.0
    errors: float = 0.0
    read: float = 0.0
    written: float = 0.0
    fids: float = 0.0


@dataclass(slots=True)
class Sample:
    """One scrape, summed per (protocol, client, export)."""

    at: float
    rows: dict[Key, Row] = field(default_factory=dict)
    connections: dict[tuple[str, str], float] = field(default_factory=dict)
    denials: dict[str, float] = field(default_factory=dict)  # client -> count


def _finite(v: float) -> float:
    return v if math.isfinite(v) and v >= 0 else 0.0


def parse(text: str, at: float) -> Sample:
    s = Sample(at)
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise TopError(f"not a Prometheus metrics page: {e}") from None
    for fam in families:
        for smp in fam.samples:
            lb, v = smp.labels, _finite(float(smp.value))
            key = (lb.get("protocol", ""), lb.get("client", ""), lb.get("export", ""))
            name = smp.name
            if name == "p9share_requests_total":
                s.rows.setdefault(key, Row()).requests += v
            elif name == "p9share_errors_total":
                s.rows.setdefault(key, Row()).errors += v
            elif name == "p9share_read_bytes_total":
                s.rows.setdefault(key, Row()).read += v
            elif name == "p9share_written_bytes_total":
                s.rows.setdefault(key, Row()).written += v
            elif name == "p9share_fids":
                s.rows.setdefault(key, Row()).fids += v
            elif name == "p9share_connections":
                ck = (lb.get("protocol", ""), lb.get("client", ""))
                s.connections[ck] = s.connections.get(ck, 0.0) + v
            elif name == "p9share_denials_total":
                c = lb.get("client", "")
                s.denials[c] = s.denials.get(c, 0.0) + v
    return s


HEADER = (f"{'PROTO':5} {'CLIENT':16} {'EXPORT':14} {'REQ/S':>8} {'ERR/S':>7} "
          f"{'READ/S':>9} {'WRITE/S':>9} {'FIDS':>6} {'CONN':>4} {'DENIED':>6}")  # fmt: skip


def lines(prev: Sample | None, cur: Sample) -> Iterator[str]:
    """The table: one line per (protocol, client, export), busiest first."""
    dt = max(1e-3, cur.at - prev.at) if prev is not None else 0.0
    table = []
    for key, row in cur.rows.items():
        old = prev.rows.get(key, Row()) if prev is not None else None
        rates = (0.0, 0.0, 0.0, 0.0)
        if old is not None:  # counters only grow; a restarted server starts again at 0
            rates = (max(0.0, (row.requests - old.requests) / dt),
                     max(0.0, (row.errors - old.errors) / dt),
                     max(0.0, (row.read - old.read) / dt),
                     max(0.0, (row.written - old.written) / dt))  # fmt: skip
        table.append((rates, key, row))
    table.sort(key=lambda t: (-t[0][0], -t[0][2] - t[0][3], t[1]))
    yield HEADER
    for (req, err, rd, wr), (proto, client, export), row in table:
        conns = cur.connections.get((proto, client), 0)
        yield (f"{proto[:5]:5} {client[:16]:16} {export[:14]:14} {req:8.1f} {err:7.1f} "
               f"{_human(rd):>9} {_human(wr):>9} {row.fids:6.0f} {conns:4.0f} "
               f"{cur.denials.get(client, 0):6.0f}")  # fmt: skip


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"


def run(address: str, interval: float = 1.0) -> int:
    first = parse(fetch(address), time.monotonic())  # unreachable: one line, before curses
    return curses.wrapper(lambda scr: _loop(scr, address, interval, first))


def _loop(scr: curses.window, address: str, interval: float, first: Sample) -> int:
    curses.curs_set(0)
    scr.timeout(int(interval * 1000))
    prev: Sample | None = None
    cur = first
    note = ""
    while True:
        scr.erase()
        height, width = scr.getmaxyx()
        title = f"p9share top — {address} — {time.strftime('%H:%M:%S')}  (q quits) {note}"
        scr.addnstr(0, 0, title, width - 1)
        for i, text in enumerate(lines(prev, cur), start=2):
            if i >= height:
                break
            scr.addnstr(i, 0, text, width - 1, curses.A_BOLD if i == 2 else 0)
        scr.refresh()
        key = scr.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        try:
            prev, cur = cur, parse(fetch(address), time.monotonic())
            note = ""
        except TopError as e:
            note = f"[{e}]"


def main(address: str, interval: float = 1.0) -> int:
    try:
        return run(address, interval)
    except TopError as e:
        print(f"p9share: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
