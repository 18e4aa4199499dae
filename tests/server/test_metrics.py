"""Live metrics (serve --metrics) read by a real Prometheus-format parser,
and `p9share top` driven in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from p9share.client.raw import RawClient, ServerError
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.server.metrics import MetricsEndpoint
from p9share.server.server import Server
from p9share.server.transport import parse_address
from p9share.top import fetch

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(fetch(address)):
        for s in fam.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, str, dict[str, str], Path]]:
    root = tmp_path / "e"
    root.mkdir()
    (root / "f").write_bytes(b"0123456789")
    exp = Export("e", str(root), quota_bytes=1 << 20, quota_files=50)
    clients = {
        "vm1": Client("vm1", (Match(listener="vm1"),), {"e": Rights()}),
        "vm2": Client("vm2", (Match(listener="vm2"),), {"e": Rights(readonly=True)}),
    }
    srv = Server(Policy({"e": exp}, clients), metrics=True)
    addrs = {n: str(srv.listen(parse_address(f"unix:{tmp_path}/{n}.sock"), name=n))
             for n in clients}  # fmt: skip
    assert srv.metrics is not None
    ep = MetricsEndpoint("tcp:127.0.0.1:0", srv.metrics)
    ep.start()
    yield srv, ep.address, addrs, root
    ep.stop()
    srv.stop()


def test_metrics_count_requests_errors_bytes_and_gauges(
    served: tuple[Server, str, dict[str, str], Path],
) -> None:
    _, maddr, addrs, _ = served
    cl = RawClient.connect(addrs["vm1"], timeout=10)
    cl.version()
    cl.attach(0, "")
    for _ in range(3):
        cl.walk(0, 1, ["f"])
        cl.rpc(m.Tgetattr(1, 0x7FF))
        cl.rpc(m.Tclunk(1))
    with pytest.raises(ServerError):
        cl.walk(0, 2, ["missing"])
    cl.walk(0, 1, ["f"])
    cl.rpc(m.Tlopen(1, c.L_O_RDWR))
    cl.rpc(m.Tread(1, 0, 4))
    cl.rpc(m.Twrite(1, 10, b"abcdef"))
    ro = RawClient.connect(addrs["vm2"], timeout=10)
    ro.version()
    ro.attach(0, "")
    with pytest.raises(ServerError):
        ro.rpc(m.Tmkdir(0, "nope", 0o755, 0))

    s = scrape(maddr)
    vm1 = {"protocol": "9p", "client": "vm1", "export": "e"}
    assert value(s, "p9share_requests_total", **vm1, op="getattr") == 3
    assert value(s, "p9share_requests_total", **vm1, op="walk") == 5
    assert value(s, "p9share_requests_total", **vm1, op="clunk") == 3
    assert value(s, "p9share_errors_total", **vm1, op="walk", errno="ENOENT") == 1
    assert value(s, "p9share_read_bytes_total", **vm1) == 4
    assert value(s, "p9share_written_bytes_total", **vm1) == 6
    assert value(s, "p9share_request_seconds_count", **vm1, op="getattr") == 3
    assert value(s, "p9share_request_seconds_bucket", **vm1, op="getattr", le="+Inf") == 3
    assert value(s, "p9share_fids", **vm1) == 2  # the root and the open file
    assert value(s, "p9share_connections", protocol="9p", client="vm1") == 1
    assert value(s, "p9share_denials_total", client="vm2", rule="readonly") == 1
    vm2 = {"protocol": "9p", "client": "vm2", "export": "e"}
    assert value(s, "p9share_errors_total", **vm2, op="mkdir", errno="EROFS") == 1
    assert value(s, "p9share_quota_used_bytes", export="e") == 16  # 10 at start, 6 appended
    assert value(s, "p9share_quota_limit_files", export="e") == 50
    cl.close()
    ro.close()
    deadline = time.monotonic() + 10
    gone = ("p9share_connections", frozenset({"protocol": "9p", "client": "vm1"}.items()))
    while scrape(maddr).get(gone, 0) != 0:  # a client with none has no series
        assert time.monotonic() < deadline, "a closed connection is still counted"
        time.sleep(0.05)


def test_metrics_endpoint_serves_only_metrics(
    served: tuple[Server, str, dict[str, str], Path],
) -> None:
    _, maddr, _, _ = served
    host, port = maddr.split(":")[1:]
    import http.client

    h = http.client.HTTPConnection(host, int(port), timeout=5)
    h.request("GET", "/other")
    assert h.getresponse().status == 404
    h.close()


def test_bad_metrics_address_is_one_error_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "p9share", "serve", str(tmp_path), "--listen",
                        f"unix:{tmp_path}/s", "--metrics", "udp:1"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "p9share: error: bad metrics address 'udp:1': use tcp:HOST:PORT or unix:PATH"
    ]


# ------------------------------------------------------------------ top --


def read_screen(fd: int, want: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
            if want in seen:
                return seen
    raise AssertionError(f"{want!r} never shown; screen so far: {seen[-2000:]!r}")


def test_top_in_a_terminal_shows_clients_and_quits_on_q(
    served: tuple[Server, str, dict[str, str], Path],
) -> None:
    _, maddr, addrs, _ = served
    cl = RawClient.connect(addrs["vm1"], timeout=10)
    cl.version()
    cl.attach(0, "")
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", LINES="24", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "p9share", "top", maddr, "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    try:
        # curses redraws only what changed: the whole output is the screen
        screen = read_screen(master, b"vm1")
        assert b"REQ/S" in screen and b"CLIENT" in screen
        os.write(master, b"q")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        cl.close()


def test_top_unreachable_is_one_clear_line() -> None:
    r = subprocess.run([sys.executable, "-m", "p9share", "top", "tcp:127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("p9share: error: cannot reach metrics at tcp:127.0.0.1:1: ")
