"""Live metrics: what each client does in each export, in Prometheus format.

The request path only adds to plain counters (one lock per client and
export, held for a few dictionary updates); prometheus_client builds the
metric families when /metrics is scraped (a custom collector), so the cost
of a request does not grow with the number of series. Denials and limit hits
are counted from the audit stream (AuditLog observers), where every layer
already reports them; gauges (connections, fids, quota use) are read from
the server at scrape time.

    --metrics tcp:127.0.0.1:9640 | unix:/run/p9share/metrics.sock

serves GET /metrics on one thread (one request at a time, with a timeout:
the endpoint is for the host's monitoring, not for guests).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..protocol import messages as m

# request latency buckets, seconds: a cached getattr takes tens of µs, a
# large read or an fsync milliseconds
LATENCY_BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3,
                   250e-3, 1.0, 5.0)  # fmt: skip
_NBUCKETS = len(LATENCY_BUCKETS) + 1  # + the +Inf bucket


@dataclass(slots=True, eq=False)
class Stats:
    """What one client did in one export over one protocol."""

    requests: dict[str, int] = field(default_factory=dict)  # op -> count
    errors: dict[tuple[str, int], int] = field(default_factory=dict)  # (op, errno) -> count
    # op -> [counts per bucket..., sum of seconds]
    latency: dict[str, list[float]] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, op: str, err: int, seconds: float, nread: int, nwritten: int) -> None:
        b = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self.lock:
            self.requests[op] = self.requests.get(op, 0) + 1
            if err:
                self.errors[op, err] = self.errors.get((op, err), 0) + 1
            h = self.latency.get(op)
            if h is None:
                h = self.latency[op] = [0.0] * (_NBUCKETS + 1)
            h[b] += 1
            h[_NBUCKETS] += seconds
            self.bytes_read += nread
            self.bytes_written += nwritten


Key = tuple[str, str, str]  # (protocol, client, export)


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the server holds right now, read at scrape time."""

    connections: dict[tuple[str, str], int]  # (protocol, client) -> open connections
    fids: dict[Key, int]  # fids (9P) or inodes (virtio-fs) held
    quota: dict[str, tuple[int, int, int, int]]  # export -> bytes, files, byte limit, file limit


class Metrics:
    """The counters of one server; a prometheus_client Collector."""

    def __init__(self, gauges: Callable[[], Gauges] | None = None) -> None:
        self._stats: dict[Key, Stats] = {}
        self._lock = threading.Lock()
        self._gauges = gauges
        self._denials: dict[tuple[str, str], int] = {}  # (client, rule)
        self._limits: dict[tuple[str, str], int] = {}  # (client, limit)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def stats(self, protocol: str, client: str, export: str) -> Stats:
        key = (protocol, client, export)
        s = self._stats.get(key)
        if s is None:
            with self._lock:
                s = self._stats.setdefault(key, Stats())
        return s

    def on_audit(self, event: str, fields: dict[str, Any]) -> None:
        """An AuditLog observer: denials by rule and limit hits by limit."""
        if event == "denied" or event == "attach-denied":
            key = (str(fields.get("client")), str(fields.get("rule")))
            with self._lock:
                self._denials[key] = self._denials.get(key, 0) + 1
        elif event == "limit" or (event == "refused" and "limit" in fields):
            key = (str(fields.get("client")), str(fields.get("limit")))
            with self._lock:
                self._limits[key] = self._limits.get(key, 0) + 1

    def text(self) -> bytes:
        """The exposition text (what GET /metrics answers)."""
        return generate_latest(self.registry)

    def families(self) -> Iterator[Any]:
        labels = ["protocol", "client", "export"]
        req = CounterMetricFamily("p9share_requests", "Requests handled, by operation",
                                  labels=[*labels, "op"])  # fmt: skip
        err = CounterMetricFamily("p9share_errors", "Requests answered with an error, by errno",
                                  labels=[*labels, "op", "errno"])  # fmt: skip
        rd = CounterMetricFamily("p9share_read_bytes", "File data read", labels=labels)
        wr = CounterMetricFamily("p9share_written_bytes", "File data written", labels=labels)
        lat = HistogramMetricFamily("p9share_request_seconds", "Time to handle a request",
                                    labels=[*labels, "op"])  # fmt: skip
        with self._lock:
            items = list(self._stats.items())
            denials, limits = dict(self._denials), dict(self._limits)
        for key, s in items:
            with s.lock:
                requests, errors = dict(s.requests), dict(s.errors)
                latency = {op: list(h) for op, h in s.latency.items()}
                nread, nwritten = s.bytes_read, s.bytes_written
            for op, n in requests.items():
                req.add_metric([*key, op], n)
            for (op, e), n in errors.items():
                err.add_metric([*key, op, _errno_name(e)], n)
            for op, h in latency.items():
                cumulative, buckets = 0.0, []
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), h[:_NBUCKETS],
                                        strict=True):  # fmt: skip
                    cumulative += count
                    buckets.append((_bound(bound), cumulative))
                lat.add_metric([*key, op], buckets, h[_NBUCKETS])
            rd.add_metric(list(key), nread)
            wr.add_metric(list(key), nwritten)
        yield from (req, err, rd, wr, lat)
        den = CounterMetricFamily("p9share_denials", "Requests the policy refused, by rule",
                                  labels=["client", "rule"])  # fmt: skip
        for (client, rule), n in denials.items():
            den.add_metric([client, rule], n)
        lim = CounterMetricFamily("p9share_limit_hits", "Limits reached, by limit",
                                  labels=["client", "limit"])  # fmt: skip
        for (client, what), n in limits.items():
            lim.add_metric([client, what], n)
        yield from (den, lim)
        if self._gauges is None:
            return
        g = self._gauges()
        conns = GaugeMetricFamily("p9share_connections", "Open connections",
                                  labels=["protocol", "client"])  # fmt: skip
        for (proto, client), n in g.connections.items():
            conns.add_metric([proto, client], n)
        fids = GaugeMetricFamily("p9share_fids", "Fids (9P) or inodes (virtio-fs) held",
                                 labels=labels)  # fmt: skip
        for key, n in g.fids.items():
            fids.add_metric(list(key), n)
        qb = GaugeMetricFamily("p9share_quota_used_bytes", "Bytes counted against the quota",
                               labels=["export"])  # fmt: skip
        qf = GaugeMetricFamily("p9share_quota_used_files", "Files counted against the quota",
                               labels=["export"])  # fmt: skip
        qlb = GaugeMetricFamily("p9share_quota_limit_bytes", "Byte quota (0: none)",
                                labels=["export"])  # fmt: skip
        qlf = GaugeMetricFamily("p9share_quota_limit_files", "File quota (0: none)",
                                labels=["export"])  # fmt: skip
        for exp, (b, f, lb, lf) in g.quota.items():
            qb.add_metric([exp], b)
            qf.add_metric([exp], f)
            qlb.add_metric([exp], lb)
            qlf.add_metric([exp], lf)
        yield from (conns, fids, qb, qf, qlb, qlf)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        return self.metrics.families()


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def _errno_name(e: int) -> str:
    return errno.errorcode.get(e, str(e))


# ---------------------------------------------------------------- 9P --
_OP_NAMES: dict[type[m.Message], str] = {}
_DIR_FID = {m.Tmkdir: "dfid", m.Tsymlink: "dfid", m.Tmknod: "dfid", m.Tlink: "dfid",
            m.Tunlinkat: "dirfid", m.Trenameat: "olddirfid"}  # fmt: skip


def op_of(msg: m.Message) -> str:
    """The operation name of a 9P request: Tgetattr -> "getattr"."""
    t = type(msg)
    name = _OP_NAMES.get(t)
    if name is None:
        name = _OP_NAMES[t] = t.__name__[1:].lower()
    return name


def fid_of(msg: m.Message) -> int | None:
    """The fid whose export a request works in (None: no fid)."""
    fid = getattr(msg, _DIR_FID.get(type(msg), "fid"), None)
    return fid if isinstance(fid, int) else None


def reply_facts(msg: m.Message, reply: m.Message) -> tuple[int, int, int]:
    """(errno, bytes read, bytes written) of a 9P request and its reply."""
    t = type(reply)
    if t is m.Rlerror:
        return reply.ecode, 0, 0  # type: ignore[attr-defined]
    if t is m.Rerror:
        return reply.errno or 5, 0, 0  # type: ignore[attr-defined]
    if t is m.Rread:
        return 0, len(reply.data), 0  # type: ignore[attr-defined]
    if t is m.Rwrite:
        return 0, 0, reply.count  # type: ignore[attr-defined]
    return 0, 0, 0


# --------------------------------------------------------- the endpoint --
class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics  # set on the subclass made per server
    timeout = 5  # a slow scraper cannot hold the one thread for long

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served")
            return
        body = self.metrics.text()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not news


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = str(self.server_address)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket file, never anything else
        self.socket.bind(path)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, _ = self.socket.accept()
        return sock, ("unix", 0)


class MetricsEndpoint:
    """GET /metrics on tcp:HOST:PORT or unix:PATH, served by one thread.
    Bind before the self-sandbox (Landlock then refuses new TCP binds);
    start() after it."""

    def __init__(self, address: str, metrics: Metrics) -> None:
        kind, _, rest = address.partition(":")
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        try:
            if kind == "tcp":
                host, _, port = rest.rpartition(":")
                if not port.isdigit() or not host:
                    raise ValueError(f"bad metrics address {address!r}: expected tcp:HOST:PORT")
                self.http: HTTPServer = HTTPServer((host.strip("[]"), int(port)), handler)
                self.address = f"tcp:{host}:{self.http.server_address[1]}"
            elif kind == "unix" and rest:
                self.http = _UnixHTTPServer(rest, handler)  # type: ignore[arg-type]
                self.address = address
            else:
                raise ValueError(f"bad metrics address {address!r}: use tcp:HOST:PORT or "
                                 "unix:PATH")  # fmt: skip
        except OSError as e:
            raise ValueError(f"cannot serve metrics on {address}: {e.strerror}") from None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="p9share-metrics", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.http.shutdown()
            self._thread.join(5)
        self.http.server_close()
