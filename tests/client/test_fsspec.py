"""NinePFileSystem: fsspec's own abstract test suite against a live p9share
server, plus the entry point and URL handling."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import pytest

fsspec = pytest.importorskip("fsspec", reason="fsspec is an optional dependency (extra 'fsspec')")

from fsspec.tests.abstract import (  # noqa: E402
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from p9share.client.fsspec_fs import NinePFileSystem  # noqa: E402
from p9share.policy import Export, Policy  # noqa: E402
from p9share.server.server import Server  # noqa: E402
from p9share.server.transport import parse_address  # noqa: E402

from ..conftest import LiveServer  # noqa: E402

if "9p" not in fsspec.available_protocols():  # the entry point works once installed
    fsspec.register_implementation("9p", NinePFileSystem)


class NinePFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NinePFileSystem]:
        # one server per class: the suite cleans up after each of its tests
        root = tmp_path_factory.mktemp("fsspec")
        policy = Policy()
        policy.exports["export"] = Export("export", str(root), False)
        srv = Server(policy)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        f = NinePFileSystem(address=str(srv.addresses[0]), aname="export",
                            skip_instance_cache=True)  # fmt: skip
        yield f
        f.close()
        srv.stop()

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return "/base"


class TestNinePCopy(AbstractCopyTests, NinePFixtures):  # type: ignore[misc]
    pass


class TestNinePGet(AbstractGetTests, NinePFixtures):  # type: ignore[misc]
    pass


class TestNinePPut(AbstractPutTests, NinePFixtures):  # type: ignore[misc]
    pass


class TestNinePOpen(AbstractOpenTests, NinePFixtures):  # type: ignore[misc]
    pass


class TestNinePPipe(AbstractPipeTests, NinePFixtures):  # type: ignore[misc]
    pass


def test_url_and_kwargs(live: LiveServer) -> None:
    host, port = live.tcp.split(":")[1:]
    url = f"9p://{host}:{port}/dir/f.txt"
    assert NinePFileSystem._strip_protocol(url) == "/dir/f.txt"
    assert NinePFileSystem._get_kwargs_from_urls(url) == {"host": host, "port": int(port)}
    (live.root / "dir").mkdir()
    with fsspec.open(url, "wt", aname="export", skip_instance_cache=True) as f:
        f.write("via url")
    assert (live.root / "dir" / "f.txt").read_text() == "via url"
    fs = fsspec.filesystem("9p", address=live.unix, aname="export", skip_instance_cache=True)
    assert isinstance(fs, NinePFileSystem)
    assert fs.cat_file("/dir/f.txt", start=4) == b"url"
    assert fs.cat_file("/dir/f.txt", start=-3, end=-1) == b"ur"
    info = fs.info("/dir/f.txt")
    assert info["type"] == "file" and info["size"] == 7 and info["name"] == "/dir/f.txt"
    assert fs.ls("/", detail=False) == ["/dir"]
    fs.mv("/dir/f.txt", "/g.txt")
    assert (live.root / "g.txt").exists() and not (live.root / "dir" / "f.txt").exists()
    with pytest.raises(FileNotFoundError):
        fs.info("/nope")
    fs.close()


def test_entry_point_is_declared() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    specs = pyproject["project"]["entry-points"]["fsspec.specs"]
    assert specs["9p"] == "p9share.client.fsspec_fs:NinePFileSystem"
    installed = [ep for ep in entry_points(group="fsspec.specs") if ep.name == "9p"]
    if installed:  # present once the package is (re)installed
        assert installed[0].value == specs["9p"]
