"""Backend.read_into / write_from (the caller's buffers, e.g. guest memory):
byte-exact on every backend (the host backend's preadv/pwritev, the
default built on read/write for memfs, the mapped backend's delegation)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.backend import hostfs
from p9share.backend.base import Backend, OpenFile
from p9share.backend.hostfs import HostBackend
from p9share.backend.mapped import MappedBackend
from p9share.backend.memfs import MemoryBackend

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, no two neighbours equal


def _views(buf: bytearray, sizes: list[int]) -> list[memoryview]:
    out, pos, mv = [], 0, memoryview(buf)
    for n in sizes:
        out.append(mv[pos : pos + n])
        pos += n
    return out


@pytest.fixture(params=["hostfs", "memfs", "mapped"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(readonly: bool = False) -> Backend:
        b: Backend
        if request.param == "memfs":
            b = MemoryBackend(readonly=readonly)
        else:
            b = HostBackend(str(tmp_path), readonly=readonly)
            if request.param == "mapped":
                b = MappedBackend(b)
        made.append(b)
        return b

    yield make
    for b in made:
        b.shutdown()


def _file(b: Backend, flags: int = os.O_RDWR) -> OpenFile:
    root = b.root()
    try:
        node, f = b.create(root, "f", flags | os.O_CREAT, 0o644, None)
    except FileExistsError:
        node = b.walk(root, "f")
        f = b.open(node, flags)
    b.release(node)
    b.release(root)
    return f


def test_write_from_and_read_into_many_buffers_at_offsets(make: Callable[..., Backend]) -> None:
    b = make()
    f = _file(b)
    src = bytearray(DATA)
    assert b.write_from(f, 100, _views(src, [1, 4096, 3, 6000, 144])) == len(DATA)
    assert b.read(f, 100, len(DATA)) == DATA
    assert b.read(f, 0, 100) == bytes(100)  # the hole before the offset

    dst = bytearray(b"\xee" * 20000)
    sizes = [7, 4096, 1, 9000, 6896]
    assert b.read_into(f, 100, _views(dst, sizes)) == len(DATA)  # short: the end of the file
    assert dst[: len(DATA)] == DATA
    assert dst[len(DATA) :] == b"\xee" * (20000 - len(DATA))  # nothing past what was read

    dst = bytearray(b"\xee" * 50)
    assert b.read_into(f, 105, _views(dst, [10, 40])) == 50  # from the middle
    assert dst == DATA[5:55]
    assert b.read_into(f, 100 + len(DATA), _views(bytearray(10), [10])) == 0  # at the end
    assert b.read_into(f, 10**9, _views(bytearray(10), [10])) == 0  # past it
    assert b.read_into(f, 0, []) == 0
    assert b.write_from(f, 0, []) == 0
    b.close(f)


@pytest.mark.parametrize("mapped", [False, True])
def test_read_only_host_backend_refuses_write_from(tmp_path: Path, mapped: bool) -> None:
    (tmp_path / "f").write_bytes(b"keep")
    b: Backend = HostBackend(str(tmp_path), readonly=True)
    if mapped:
        b = MappedBackend(b)
    root = b.root()
    node = b.walk(root, "f")
    f = b.open(node, os.O_RDONLY)
    with pytest.raises(OSError) as ei:
        b.write_from(f, 0, [memoryview(b"x")])
    assert ei.value.errno == errno.EROFS
    assert (tmp_path / "f").read_bytes() == b"keep"
    b.close(f)
    b.release(node)
    b.release(root)
    b.shutdown()


def test_more_buffers_than_one_system_call_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain may hold more buffers than IOV_MAX: they go in turns."""
    monkeypatch.setattr(hostfs, "_IOV_MAX", 4)  # turns of 4, so 11 buffers take 3
    b = HostBackend(str(tmp_path))
    f = _file(b)
    src = bytearray(DATA[:110])
    assert b.write_from(f, 3, _views(src, [10] * 11)) == 110
    assert (tmp_path / "f").read_bytes() == bytes(3) + DATA[:110]
    dst = bytearray(200)
    assert b.read_into(f, 3, _views(dst, [20] * 10)) == 110  # short in the second turn
    assert dst[:110] == DATA[:110] and dst[110:] == bytes(90)
    b.close(f)
    b.shutdown()
