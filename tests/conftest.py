"""Shared fixtures: a live p9share server on loopback over a real temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.client.raw import RawClient
from p9share.policy import Export, Policy
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address


class LiveServer:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.tcp = str(server.addresses[0])
        self.unix = str(server.addresses[1]) if len(server.addresses) > 1 else ""

    def client(
        self,
        address: str | None = None,
        *,
        attach: bool = True,
        aname: str = "",
        dialect: Dialect = Dialect.P9P2000L,
        msize: int = 65536 + 24,
    ) -> RawClient:
        c = RawClient.connect(address or self.tcp, timeout=10)
        c.dialect = dialect
        c.version(msize)
        if attach:
            c.attach(0, aname)
        return c


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[Server] = []

    def make(exports: dict[str, tuple[Path, bool]] | None = None, **kw: object) -> LiveServer:
        root = tmp_path / "export"
        root.mkdir(exist_ok=True)
        policy = Policy()
        for name, (path, ro) in (exports or {"export": (root, False)}).items():
            policy.exports[name] = Export(name, str(path), ro)
        srv = Server(policy, **kw)  # type: ignore[arg-type]
        servers.append(srv)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        srv.listen(parse_address(f"unix:{tmp_path}/p9.sock"))
        return LiveServer(srv, root)

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def live(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


def is_root() -> bool:
    return os.geteuid() == 0
