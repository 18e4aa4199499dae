"""Servers for the client tests: p9share on loopback and Debian's diod."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p9share.client import FS
from p9share.vmlab.assets import VMLabError
from p9share.vmlab.diod import Diod

from ..conftest import LiveServer


@dataclass
class Target:
    """A running 9P2000.L server exporting root."""

    kind: str  # "p9share" or "diod"
    address: str
    aname: str
    root: Path

    def connect(self, **kw: object) -> FS:
        return FS.connect(self.address, aname=self.aname, timeout=10, **kw)  # type: ignore[arg-type]


def diod_path() -> str | None:
    return shutil.which("diod") or ("/usr/sbin/diod" if os.path.exists("/usr/sbin/diod") else None)


@pytest.fixture
def diod_target() -> Iterator[Target]:
    if diod_path() is None:
        pytest.skip("diod is not installed (./scripts/install.sh --test installs it)")
    # diod needs every directory up to the export searchable by others;
    # pytest's tmp_path is 0700, so use a fresh 0755 directory instead.
    top = Path(tempfile.mkdtemp(prefix="p9client-diod-"))
    try:
        top.chmod(0o755)
        export = top / "export"
        export.mkdir(mode=0o755)
        export.chmod(0o755)
        try:
            d = Diod(export).start()
        except VMLabError as e:
            pytest.skip(f"diod cannot run here: {e}")
        try:
            yield Target("diod", f"tcp:127.0.0.1:{d.port}", d.aname, export)
        finally:
            d.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def p9share_target(live: LiveServer) -> Target:
    return Target("p9share", live.tcp, "export", live.root)


@pytest.fixture(params=["p9share", "diod"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each test runs against p9share and against diod."""
    t: Target = request.getfixturevalue(f"{request.param}_target")
    return t


@pytest.fixture
def fs(target: Target) -> Iterator[FS]:
    f = target.connect()
    yield f
    f.close()


MakeFS = Callable[..., FS]
