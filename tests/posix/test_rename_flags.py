"""renameat2(2) flags on the FUSE mount next to a local directory."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from .conftest import Target

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def test_noreplace(target: Target) -> None:
    d, _ = target.fresh()
    (d / "a").write_text("a")
    (d / "b").write_text("b")
    with pytest.raises(OSError) as e:
        renameat2(d / "a", d / "b", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    assert (d / "a").read_text() == "a" and (d / "b").read_text() == "b"
    (d / "sub").mkdir()
    with pytest.raises(OSError) as e:  # a directory is a name too
        renameat2(d / "a", d / "sub", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    renameat2(d / "a", d / "sub" / "c", RENAME_NOREPLACE)  # a free name: renamed
    assert sorted(os.listdir(d)) == ["b", "sub"]
    assert (d / "sub" / "c").read_text() == "a"


def test_exchange(target: Target, request: pytest.FixtureRequest) -> None:
    if target.name == "fuse":
        request.applymarker(
            pytest.mark.xfail(
                reason="9P2000.L has no atomic exchange: EINVAL (docs/posix-differences.md)",
                strict=True,
            )
        )
    d, _ = target.fresh()
    (d / "a").write_text("a")
    (d / "b").write_text("b")
    renameat2(d / "a", d / "b", RENAME_EXCHANGE)
    assert (d / "a").read_text() == "b" and (d / "b").read_text() == "a"


def test_exchange_on_the_mount_is_a_clean_einval(fuse_target: Target) -> None:
    d, _ = fuse_target.fresh()
    (d / "a").write_text("a")
    (d / "b").write_text("b")
    with pytest.raises(OSError) as e:
        renameat2(d / "a", d / "b", RENAME_EXCHANGE)
    assert e.value.errno == errno.EINVAL
    assert (d / "a").read_text() == "a" and (d / "b").read_text() == "b"
    renameat2(d / "a", d / "c", 0)  # the mount goes on
    assert sorted(os.listdir(d)) == ["b", "c"]
