"""POSIX targets: a plain local directory (the baseline) and the FUSE mount."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .mountlib import FuseSetup


@dataclass
class Target:
    name: str
    root: Path  # where the cases run (a directory on the target)
    host_root: Path  # the same directory seen directly on the host

    _counter = itertools.count()

    def fresh(self) -> tuple[Path, Path]:
        """A new empty directory: (on the target, on the host)."""
        name = f"t{next(self._counter)}"
        (self.root / name).mkdir()
        return self.root / name, self.host_root / name


@pytest.fixture(scope="session")
def local_target() -> Iterator[Target]:
    d = Path(tempfile.mkdtemp(prefix="p9posix-local-"))
    yield Target("local", d, d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fuse_setup() -> Iterator[FuseSetup]:
    s = FuseSetup().start()
    yield s
    s.close()


@pytest.fixture(scope="session")
def fuse_target(fuse_setup: FuseSetup) -> Target:
    return Target("fuse", fuse_setup.mount.mountpoint, fuse_setup.export)


@pytest.fixture(params=["local", "fuse"])
def target(request: pytest.FixtureRequest) -> Target:
    t: Target = request.getfixturevalue(f"{request.param}_target")
    return t
