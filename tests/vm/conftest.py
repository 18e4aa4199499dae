"""Fixtures for tests that boot a Linux guest (p9share.vmlab).

Tests that boot a guest are marked ``@pytest.mark.vm`` (deselect them with
``-m "not vm"``). Each boot costs ~3 s of one CPU core under TCG.

``vm_assets`` runs :func:`p9share.vmlab.setup` once per session (idempotent and
file-locked, so parallel workers are fine). Until the p9share server can serve the
guest, the harness is proven against Debian's diod: ``diod_tcp`` / ``diod_unix``
serve a fresh export directory on a free port / a private Unix socket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.vmlab import Assets, VMLabError, setup
from p9share.vmlab.diod import Diod, ensure_diod


@pytest.fixture(scope="session")
def vm_assets() -> Assets:
    try:
        return setup()
    except VMLabError as e:
        pytest.fail(f"p9share.vmlab.setup() failed, cannot boot guests:\n{e}", pytrace=False)


@pytest.fixture
def export_dir() -> Iterator[Path]:
    """A fresh export directory under the system temp dir.

    Not pytest's tmp_path: that lives below a 0700 directory, and diod serves the
    Linux client's first attach as user 'nobody', which must be able to reach it.
    """
    d = tempfile.mkdtemp(prefix="p9vmlab-export-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def diod_bin() -> str:
    try:
        return ensure_diod()
    except VMLabError as e:
        pytest.fail(f"diod is needed for the harness tests:\n{e}", pytrace=False)


@pytest.fixture
def diod_tcp(diod_bin: str, export_dir: Path) -> Iterator[Diod]:
    with Diod(export_dir) as d:
        yield d


@pytest.fixture
def diod_unix(diod_bin: str, export_dir: Path) -> Iterator[Diod]:
    with Diod(export_dir, unix=True) as d:
        yield d


@pytest.fixture
def share() -> Iterator[tuple[Path, Path, str]]:
    """An export, and beside it a secret that a symlink planted in the export points to."""
    base = Path(tempfile.mkdtemp(prefix="p9vm-"))
    os.chmod(base, 0o755)
    export, outside = base / "export", base / "outside"
    export.mkdir()
    outside.mkdir()
    token = "SECRET-" + secrets.token_hex(8)
    (outside / "secret.txt").write_text(token)
    os.symlink(outside / "secret.txt", export / "escape-abs")
    os.symlink("../outside/secret.txt", export / "escape-rel")
    yield export, outside, token
    shutil.rmtree(base, ignore_errors=True)
