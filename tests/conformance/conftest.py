"""A module-wide p9share server for the conformance tests: a read-write export
and a read-only export of the same directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.policy import Export, Policy
from p9share.server.server import Server
from p9share.server.transport import parse_address


class Served:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.address = str(server.addresses[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("conformance") / "export"
    root.mkdir()
    policy = Policy()
    policy.exports["export"] = Export("export", str(root), False)
    policy.exports["ro"] = Export("ro", str(root), True)
    srv = Server(policy)
    srv.listen(parse_address("tcp:127.0.0.1:0"))
    yield Served(srv, root)
    srv.stop()
