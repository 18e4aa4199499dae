"""Connection caps that an attacker cannot multiply (issue 11: a local user
with 127.x aliases opened 200 connections, 200 threads, past
max_connections = 2), the server-wide cap, and the shared-host defaults."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p9share.client.raw import RawClient
from p9share.policy.config import ConfigError, parse_config
from p9share.protocol import messages as m
from p9share.server.limits import Limits
from p9share.server.server import DEFAULT_MAX_CONNECTIONS

from ..conftest import LiveServer
from .test_limits import Audited
from .test_robustness import closed


def from_alias(live: LiveServer, last_octet: int) -> RawClient:
    """A client whose TCP source address is 127.0.0.<last_octet>."""
    host, port = live.tcp.removeprefix("tcp:").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((f"127.0.0.{last_octet}", 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return RawClient(sock)


def serving(c: RawClient) -> bool:
    try:
        c.version()
        c.attach(0, "")
        return isinstance(c.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    except OSError:
        return False


def wait_count(live: LiveServer, n: int) -> None:
    deadline = time.monotonic() + 5
    while live.server.connection_count() != n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.server.connection_count() == n


def test_loopback_aliases_share_one_unidentified_bucket(
    make_server: Callable[..., LiveServer],
) -> None:
    audited = Audited()
    live = make_server(limits=Limits(max_connections=2), audit=audited.log)
    kept = [from_alias(live, 2), from_alias(live, 3)]
    assert all(serving(c) for c in kept)
    threads_before = threading.active_count()
    extra = [from_alias(live, 4 + i) for i in range(20)]
    for c in extra:  # each new source address is refused all the same
        assert closed(c)
        c.close()
    assert live.server.connection_count() == 2
    assert threading.active_count() <= threads_before + 2  # no thread per refused peer
    refused = audited.records("refused", limit="max_connections")
    assert refused and refused[0]["client"] == f"unidentified:{live.tcp}"
    for c in kept:
        c.close()


def test_server_wide_cap_counts_every_client(
    make_server: Callable[..., LiveServer],
) -> None:
    audited = Audited()
    live = make_server(max_connections=3, audit=audited.log)
    tcp = [live.client() for _ in range(2)]
    unix = live.client(live.unix)  # another client (its uid), same server
    wait_count(live, 3)
    for address in (live.tcp, live.unix):  # full, whoever asks
        over = RawClient.connect(address, timeout=10)
        assert closed(over)
        over.close()
    for c in [*tcp, unix]:
        assert isinstance(c.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    tcp[0].close()
    wait_count(live, 2)
    with live.client(live.unix) as again:  # a freed slot serves anyone
        assert isinstance(again.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    recs = audited.records("refused", limit="server max_connections")
    assert len(recs) == 1 and recs[0]["max"] == 3


def test_connection_that_attaches_nothing_is_closed(
    make_server: Callable[..., LiveServer],
) -> None:
    audited = Audited()
    live = make_server(limits=Limits(attach_timeout=0.3), audit=audited.log)
    attached = live.client()
    silent = RawClient.connect(live.tcp, timeout=10)
    versioned = live.client(attach=False)  # a Tversion alone is no attach
    start = time.monotonic()
    assert closed(silent) and closed(versioned)
    assert 0.25 <= time.monotonic() - start < 4
    time.sleep(0.4)
    assert isinstance(attached.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)  # idle but attached
    recs = audited.records("limit", limit="attach_timeout")
    assert recs and all(r["action"] == "closed" for r in recs)


def test_defaults_hold_on_a_shared_host() -> None:
    lim = Limits()
    assert 0 < lim.attach_timeout <= 120 and 0 < lim.send_timeout <= 300
    assert 0 < lim.header_timeout <= 60
    assert lim.max_connections and lim.max_inflight <= 16
    assert 0 < DEFAULT_MAX_CONNECTIONS <= 256


def policy(tmp_path: Path, server: str) -> dict[str, object]:
    (tmp_path / "e").mkdir(exist_ok=True)
    return {
        "server": {
            "listen": ["tcp:127.0.0.1:0"],
            **({"max_connections": server} if server else {}),
        },
        "exports": {"e": {"path": str(tmp_path / "e")}},
        "clients": {"a": {"match": {"listener": "tcp:127.0.0.1:0"}, "exports": {"e": "rw"}}},
    }


def test_policy_server_max_connections(tmp_path: Path) -> None:
    raw = policy(tmp_path, "")
    assert parse_config(raw).max_connections == DEFAULT_MAX_CONNECTIONS
    raw["server"]["max_connections"] = 0  # type: ignore[index]
    assert parse_config(raw).max_connections == 0
    raw["server"]["max_connections"] = 7  # type: ignore[index]
    assert parse_config(raw).max_connections == 7
    for bad, says in ((-1, "out of range"), ("many", "expected integer"), (True, "expected")):
        raw["server"]["max_connections"] = bad  # type: ignore[index]
        with pytest.raises(ConfigError) as ei:
            parse_config(raw, "p.toml")
        text = str(ei.value)
        assert "\n" not in text and "server.max_connections" in text and says in text


def test_bad_limit_values_are_one_line_errors() -> None:
    for key in ("send_timeout", "attach_timeout"):
        with pytest.raises(ValueError) as ei:
            Limits.from_mapping({key: -1})
        assert key in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ValueError):
        Limits.from_mapping({"send_timeout": float("inf")})
