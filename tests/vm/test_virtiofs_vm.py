"""A real Linux 6.1 guest mounts a vhost-user-fs back end over virtio-fs: the same
workload as over 9P (test_workload.py), and a guest "reboot" (QEMU exits, a second
QEMU connects to the same socket).

Every test runs for each back end: QEMU's virtiofsd (the reference peer) and
p9share (``p9share serve --listen vhost-user:SOCK``), which is skipped, saying so,
while the server refuses that address.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.vmlab import STATUS_NO_RESULT, Assets, run_guest
from p9share.vmlab.virtiofsd import (
    BackendError,
    P9shareVhostUser,
    VhostUserBackend,
    Virtiofsd,
    unix_socket_listening,
)

from .test_workload import BIG_MIB, WORKLOAD, check_workload

pytestmark = pytest.mark.vm

BACKENDS = ("virtiofsd", "p9share")


def make_backend(name: str, export: Path) -> VhostUserBackend:
    if name == "virtiofsd":
        # xattrs and fcntl locks are off by default in virtiofsd; the workload uses
        # both. Not -o flock: with it, two guest processes both got an exclusive
        # flock here; without it the guest kernel arbitrates flock itself.
        return Virtiofsd(export, cache="auto", xattr=True, posix_lock=True)
    return P9shareVhostUser(export)


def start_backend(name: str, export: Path) -> VhostUserBackend:
    """Started, or the test skipped while p9share refuses the vhost-user address."""
    b = make_backend(name, export)
    try:
        return b.start()
    except BackendError as e:
        b.close()
        if e.unsupported:
            pytest.skip(f"{b.name}: not served yet ({str(e).splitlines()[-1]})")
        raise


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, share: tuple[Path, Path, str]
) -> Iterator[VhostUserBackend]:
    b = start_backend(request.param, share[0])
    try:
        yield b
    finally:
        b.close()


def test_guest_workload_over_virtiofs(
    vm_assets: Assets, share: tuple[Path, Path, str], backend: VhostUserBackend
) -> None:
    res = run_guest(
        WORKLOAD, transport="virtiofs", socket_path=backend.socket_path,
        args=[str(BIG_MIB), "L"], timeout=400, assets=vm_assets,
    )  # fmt: skip
    check_workload(res, share, dotl=True)
    assert res.mount_line.split()[:3] == ["p9share", "/mnt", "virtiofs"], res.mount_line


def test_guest_reboot_reconnects_to_the_same_socket(
    vm_assets: Assets, share: tuple[Path, Path, str], backend: VhostUserBackend
) -> None:
    export = share[0]
    first = run_guest(
        "echo one > boot1.txt && cat boot1.txt", transport="virtiofs",
        socket_path=backend.socket_path, timeout=120, assets=vm_assets,
    )  # fmt: skip
    assert first.status == 0 and first.output == "one\n", first.describe()
    assert (export / "boot1.txt").read_text() == "one\n"

    if not backend.survives_disconnect:
        # virtiofsd, as observed here: it exits (status 0) once QEMU has gone and
        # no longer listens; its socket file stays, so the next QEMU's connect is
        # refused and that guest never boots. One daemon per boot.
        status = backend.wait_exit(15)
        assert status == 0, f"virtiofsd still running or failed ({status}):\n{backend.log_text()}"
        assert backend.socket_path.is_socket() and not unix_socket_listening(backend.socket_path)
        second = run_guest(
            "true", transport="virtiofs", socket_path=backend.socket_path, timeout=60,
            assets=vm_assets,
        )  # fmt: skip
        if second.run_dir is not None:
            shutil.rmtree(second.run_dir, ignore_errors=True)
        assert second.status == STATUS_NO_RESULT, second.describe()
        assert "Connection refused" in second.error, second.error
        return

    # a service: the same socket serves the next boot, with the first boot's data
    second = run_guest(
        "cat boot1.txt && echo two > boot2.txt", transport="virtiofs",
        socket_path=backend.socket_path, timeout=120, assets=vm_assets,
    )  # fmt: skip
    assert second.status == 0 and second.output == "one\n", second.describe()
    assert (export / "boot2.txt").read_text() == "two\n"
    assert backend.proc is not None and backend.proc.poll() is None, backend.log_text()
