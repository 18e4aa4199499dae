"""The POSIX suite's third target: the guest's kernel v9fs mount of p9share
(trans=tcp), and its virtiofs mount of a vhost-user-fs back end (p9share, and
QEMU's virtiofsd as the reference, each with cache none and auto). The static helper p9posix runs the same named
cases as tests/posix/cases.py, in the guest and, as the baseline, on a host
directory; every difference must be a documented one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.policy import Export, Policy
from p9share.server.server import Server
from p9share.server.transport import parse_address
from p9share.vmlab import Assets, GuestResult, run_guest
from p9share.vmlab.assets import build_helpers
from p9share.vmlab.virtiofsd import P9shareVhostUser, VhostUserBackend, Virtiofsd

pytestmark = pytest.mark.vm

# case -> why the kernel v9fs mount differs from a local directory
# (each one is also a row of docs/posix-differences.md)
V9FS_DIFFERENCES: dict[str, str] = {
    "chmod_setid": "p9share's policy strips set-id bits unless the client's rights allow them",
    "xattr_empty_value": "9P2000.L: a Txattrcreate of size 0 means removal (protocol.md §9.12)",
    "mmap_shared": "v9fs without cache=mmap (or loose) has no writable shared mappings",
    "utimes_ns": "Linux 6.1's v9fs keeps the default 1 s time granularity: the guest "
    "truncates nanoseconds before sending them",
}
# "back end-cache mode" -> {case: why its virtiofs mount differs from a local
# directory}, as observed with the Linux 6.1 guest (each one is also a row of
# docs/posix-differences.md). virtiofsd runs with -o xattr -o posix_lock, as root.
DIRECT_IO_MMAP = (
    "cache=none opens files with FOPEN_DIRECT_IO, and Linux 6.1's FUSE client refuses "
    "shared mappings of direct-I/O files (ENODEV): virtiofsd's cache=none too"
)
VIRTIOFS_DIFFERENCES: dict[str, dict[str, str]] = {
    "virtiofsd-none": {"mmap_shared": DIRECT_IO_MMAP},
    "virtiofsd-auto": {},
    "p9share-none": {
        "chmod_setid": V9FS_DIFFERENCES["chmod_setid"],
        "mmap_shared": DIRECT_IO_MMAP,
    },
    "p9share-auto": {"chmod_setid": V9FS_DIFFERENCES["chmod_setid"]},
}


def parse(output: str) -> dict[str, str]:
    """{case: "ok" | "FAIL reason"} from p9posix's lines."""
    out = {}
    for line in output.splitlines():
        name, sep, result = line.partition(": ")
        if sep and (result == "ok" or result.startswith("FAIL")):
            out[name] = result
    return out


@pytest.fixture
def export() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="p9posix-vm-"))
    os.chmod(base, 0o755)
    (base / "export").mkdir()
    yield base / "export"
    shutil.rmtree(base, ignore_errors=True)


def baseline(vm_assets: Assets, tmp_path: Path) -> list[str]:
    """The case names; every one passes on a local host directory."""
    helper = build_helpers(vm_assets.cache_dir)["p9posix"]
    names = subprocess.run([helper, "--list"], capture_output=True, text=True, check=True).stdout
    names_list = names.split()
    baseline_dir = tmp_path / "local"
    baseline_dir.mkdir()
    local = parse(subprocess.run([helper, baseline_dir], capture_output=True, text=True,
                                 timeout=120, check=True).stdout)  # fmt: skip
    assert list(local) == names_list
    assert {n: r for n, r in local.items() if r != "ok"} == {}, "the baseline itself fails"
    return names_list


def check_differences(res: GuestResult, names: list[str], documented: dict[str, str]) -> None:
    assert res.status == 0, res.describe()
    guest = parse(res.output)
    assert list(guest) == names, res.output
    differs = {n: r for n, r in guest.items() if r != "ok"}
    unexpected = {n: r for n, r in differs.items() if n not in documented}
    fixed = [n for n in documented if n not in differs]
    assert not unexpected, f"new differences from the local baseline: {unexpected}"
    assert not fixed, f"documented differences that are gone (remove them): {fixed}"


def test_posix_cases_on_v9fs(vm_assets: Assets, export: Path, tmp_path: Path) -> None:
    names_list = baseline(vm_assets, tmp_path)

    policy = Policy()
    policy.exports["share"] = Export("share", str(export))
    srv = Server(policy)
    srv.listen(parse_address("tcp:127.0.0.1:0"))
    try:
        res = run_guest(
            "mkdir posix && p9posix posix\n", transport="tcp", port=srv.addresses[0].port,  # type: ignore[attr-defined]
            mount_opts="msize=1048576", timeout=500, assets=vm_assets,
        )  # fmt: skip
    finally:
        srv.stop()
    check_differences(res, names_list, V9FS_DIFFERENCES)


def start_cached_backend(name: str, cache: str, export: Path) -> VhostUserBackend:
    b: VhostUserBackend
    if name == "virtiofsd":
        b = Virtiofsd(export, cache=cache, xattr=True, posix_lock=True)
    else:
        b = P9shareVhostUser(export, cache=cache)
    try:
        return b.start()
    except BaseException:
        b.close()
        raise


@pytest.mark.parametrize("backend_cache", list(VIRTIOFS_DIFFERENCES))
def test_posix_cases_on_virtiofs(
    vm_assets: Assets, export: Path, tmp_path: Path, backend_cache: str
) -> None:
    names_list = baseline(vm_assets, tmp_path)
    name, cache = backend_cache.split("-")
    backend = start_cached_backend(name, cache, export)
    try:
        res = run_guest(
            "mkdir posix && p9posix posix\n", transport="virtiofs",
            socket_path=backend.socket_path, timeout=500, assets=vm_assets,
        )  # fmt: skip
    finally:
        backend.close()
    check_differences(res, names_list, VIRTIOFS_DIFFERENCES[backend_cache])


def test_differences_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/posix-differences.md").read_text()
    for name in V9FS_DIFFERENCES:
        assert f"| v9fs | `{name}` |" in doc, name
    for target, differences in VIRTIOFS_DIFFERENCES.items():
        for name in differences:
            assert f"| virtiofs {target} | `{name}` |" in doc, (target, name)
