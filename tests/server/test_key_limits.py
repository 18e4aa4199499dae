"""Per-client limits of a client identified by its Tauth key: once a Tattach
proves the key, the connection serves under that client's own limits and is
counted under its name (docs/security.md §S8, §S15 item 7). Live servers on
loopback with real keys; a client matched by transport is unchanged."""

from __future__ import annotations

import errno
import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.protocol import messages as m
from p9share.protocol.constants import NOFID
from p9share.security.auth import Key
from p9share.server.limits import Limits
from p9share.server.server import Server
from p9share.server.transport import parse_address

from .test_limits import Audited, rpcs_timed
from .test_robustness import closed

KEY = Key("tools", bytes(range(32)))
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
GETATTR = m.Tgetattr(0, 0x7FF)


class KeyServer:
    """A live server whose policy has a key-only client "tools" (loopback
    plus its key, as require_key makes it) on TCP, and a client "local"
    matched by transport (the Unix socket peer's uid)."""

    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.tcp = str(server.addresses[0])
        self.unix = str(server.addresses[1])

    def connect(self, address: str | None = None) -> RawClient:
        c = RawClient.connect(address or self.tcp, timeout=10)
        c.version(65536 + 24)
        return c

    def keyed(self) -> RawClient:
        """A TCP connection attached (fid 0) through the tools key."""
        c = self.connect()
        c.auth_attach(0, 1, "root", "export", KEY)
        return c


@pytest.fixture
def audited() -> Iterator[Audited]:
    a = Audited()
    yield a
    a.log.close()


def wait_for_connections(server: Server, n: int) -> None:
    deadline = time.monotonic() + 3
    while server.connection_count() > n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connection_count() == n


@pytest.fixture
def make_key_server(tmp_path: Path, audited: Audited) -> Iterator[Callable[..., KeyServer]]:
    servers: list[Server] = []

    def make(
        tools: dict[str, Any], local: dict[str, Any] | None = None, **defaults: Any
    ) -> KeyServer:
        root = tmp_path / "export"
        root.mkdir(exist_ok=True)
        grants = {"export": Rights()}
        policy = Policy(
            exports={"export": Export("export", str(root))},
            clients={
                "tools": Client("tools", (Match(network=LOOPBACK, key=KEY.key_id),), grants, tools),
                "local": Client("local", (Match(peer_uid=os.getuid()),), grants, local or {}),
            },
            keys={KEY.key_id: KEY.secret},
        )
        srv = Server(policy, limits=Limits(**defaults), audit=audited.log)
        servers.append(srv)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        srv.listen(parse_address(f"unix:{tmp_path}/p9.sock"))
        return KeyServer(srv, root)

    yield make
    for s in servers:
        s.stop()


def fill_fids(c: RawClient, first: int) -> int:
    """Walk new fids from fid 0 until EMFILE; how many were added."""
    added = 0
    while added < 100:
        try:
            c.walk(0, first + added, [])
        except ServerError as e:
            assert e.errno == errno.EMFILE
            return added
        added += 1
    raise AssertionError("no fid limit reached")


def test_key_client_gets_its_own_max_fids(
    make_key_server: Callable[..., KeyServer], audited: Audited
) -> None:
    ks = make_key_server({"max_fids": 4}, max_fids=50)
    c = ks.keyed()  # fid 0 (the auth fid 1 is clunked)
    assert fill_fids(c, 10) == 3  # 4 in all: the client's limit, not the server's 50
    c.rpc(m.Tclunk(10))
    c.walk(0, 20, [])
    assert isinstance(c.rpc(GETATTR), m.Rgetattr)
    recs = audited.records("limit", limit="max_fids")
    assert len(recs) == 1 and recs[0]["client"] == "tools" and recs[0]["max"] == 4


def test_key_client_gets_its_own_rate(
    make_key_server: Callable[..., KeyServer], audited: Audited
) -> None:
    ks = make_key_server({"ops_per_second": 50, "ops_burst": 5})
    c = ks.keyed()
    other = ks.connect(ks.unix)  # "local": its own (unlimited) buckets
    other.attach(0, "export")
    took: list[float] = []
    t = threading.Thread(target=lambda: took.append(rpcs_timed(c, 55, GETATTR)))
    t.start()
    time.sleep(0.2)  # the tools client is in debt now
    assert rpcs_timed(other, 20, GETATTR) < 0.5
    t.join(10)
    assert took and took[0] >= 0.9  # 55 ops at 50/s with 5 saved up
    recs = audited.records("limit", limit="ops_per_second")
    assert len(recs) == 1 and recs[0]["client"] == "tools" and recs[0]["action"] == "delayed"


def test_key_client_max_connections_refuses_the_extra_attach(
    make_key_server: Callable[..., KeyServer], audited: Audited
) -> None:
    # the server's default lets 3 connections from one address wait for a
    # key; the tools client may have 4 attached, counted under its name
    ks = make_key_server({"max_connections": 4}, max_connections=3)
    held = [ks.keyed() for _ in range(4)]  # the address's slot is freed at each attach
    extra = ks.connect()  # admitted under the address, not yet under tools
    for _ in range(2):
        with pytest.raises(ServerError) as ei:
            extra.auth_attach(0, 1, "root", "export", KEY)
        assert ei.value.errno == errno.EUSERS
    assert isinstance(held[0].rpc(GETATTR), m.Rgetattr)
    held.pop().close()
    wait_for_connections(ks.server, 4)
    extra.auth_attach(0, 1, "root", "export", KEY)  # a freed slot can be used again
    assert isinstance(extra.rpc(GETATTR), m.Rgetattr)
    for c in [*held, extra]:
        c.close()
    wait_for_connections(ks.server, 0)
    denied = audited.records("attach-denied", rule="max_connections")
    assert len(denied) == 2 and denied[0]["client"] == "tools"
    limit = audited.records("limit", limit="max_connections")
    assert len(limit) == 1 and limit[0]["action"] == "attach refused"
    assert limit[0]["client"] == "tools" and limit[0]["max"] == 4
    # every connection ends counted under its client
    assert len(audited.records("disconnect", client="tools")) == 5


def test_unauthenticated_connections_stay_counted_by_address(
    make_key_server: Callable[..., KeyServer],
) -> None:
    ks = make_key_server({"max_connections": 8}, max_connections=2)
    waiting = [ks.connect(), ks.connect()]  # no key proven: counted under 127.0.0.1
    extra = RawClient.connect(ks.tcp, timeout=5)
    assert closed(extra)  # refused at once, before any key
    extra.close()
    for c in waiting:
        c.auth_attach(0, 1, "root", "export", KEY)
    # once attached they count under tools: the address has room again
    assert isinstance(ks.keyed().rpc(GETATTR), m.Rgetattr)


def test_transport_client_keeps_its_limits(
    make_key_server: Callable[..., KeyServer], audited: Audited
) -> None:
    ks = make_key_server({"max_fids": 50}, {"max_fids": 3}, max_fids=50)
    local = ks.connect(ks.unix)
    local.attach(0, "export")
    assert fill_fids(local, 10) == 2  # "local"'s 3, from its transport match
    keyed = ks.keyed()  # a key-only client beside it changes nothing for it
    assert fill_fids(keyed, 10) == 49
    assert fill_fids(local, 30) == 0
    unidentified = [r["client"] for r in audited.records("connect")]
    assert unidentified[0] == "local" and unidentified[1].startswith("unidentified:tcp:127.0.0.1:")
    recs = audited.records("limit", limit="max_fids")
    assert {(r["client"], r["max"]) for r in recs} == {("local", 3), ("tools", 50)}


def test_key_client_gets_its_own_idle_timeout_and_later_msize(
    make_key_server: Callable[..., KeyServer], audited: Audited
) -> None:
    ks = make_key_server({"idle_timeout": 0.3, "max_msize": 8192})
    c = ks.keyed()
    assert c.msize == 65536 + 24  # negotiated before the key: it stays
    assert isinstance(c.rpc(GETATTR), m.Rgetattr)  # the session still serves
    c.version(1024 * 1024)  # a later Tversion is capped by the client's max_msize
    assert c.msize == 8192
    idle_from = time.monotonic()
    assert closed(c)  # closed by the client's idle timeout (the server has none)
    assert 0.25 <= time.monotonic() - idle_from < 4
    unlimited = ks.connect(ks.unix)  # the transport client "local": no idle timeout
    unlimited.attach(0, "export")
    time.sleep(0.5)
    assert isinstance(unlimited.rpc(GETATTR), m.Rgetattr)
    recs = audited.records("limit", limit="idle_timeout")
    assert len(recs) == 1 and recs[0]["client"] == "tools"


def test_tversion_forgets_the_key_identity(make_key_server: Callable[..., KeyServer]) -> None:
    # A Tversion starts a new session: an attach without a key after it is
    # the transport's client again (here: none), not the key's.
    ks = make_key_server({})
    c = ks.keyed()
    assert isinstance(c.rpc(GETATTR), m.Rgetattr)
    c.version()
    with pytest.raises(ServerError) as e:
        c.rpc(m.Tattach(0, NOFID, "root", "export", 0))
    assert e.value.errno == errno.EACCES
    c.auth_attach(0, 1, "root", "export", KEY)  # the key still works on the new session
    assert isinstance(c.rpc(GETATTR), m.Rgetattr)
