"""The security model as a real Linux guest meets it: the guest's identity is
the listener it comes in on (one socket per VM), never what it claims. Over 9P
(trans=tcp and trans=fd, an in-process server) and over virtio-fs (``p9share serve
--config FILE`` with a vhost-user listener in the policy, QEMU's vhost-user-fs-pci)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.policy.idmap import mapped
from p9share.server.server import Server
from p9share.server.transport import parse_address
from p9share.vmlab import Assets, run_guest
from p9share.vmlab.virtiofsd import P9shareVhostUser

pytestmark = pytest.mark.vm


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="p9vm-sec-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


READ_ONLY_GUEST = r"""
fail() { echo "FAIL: $*"; exit 1; }
[ "$(cat readme)" = "docs" ] || fail read
(echo x > new.txt) 2>/tmp/err && fail "write succeeded"
grep -q "Read-only file system" /tmp/err || fail "write: $(cat /tmp/err)"
mkdir newdir 2>/tmp/err && fail "mkdir succeeded"
grep -q "Read-only file system" /tmp/err || fail "mkdir: $(cat /tmp/err)"
(echo more >> readme) 2>/dev/null && fail "append succeeded"
rm readme 2>/dev/null && fail "unlink succeeded"
mkdir -p /mnt2
mount -t 9p -o trans=tcp,port=$P9_PORT,version=9p2000.L,aname=src 10.0.2.2 /mnt2 2>/tmp/err \
  && fail "attached src"
echo "other export refused: $(cat /tmp/err)"
echo "ro done"
"""


def test_read_only_identity_sees_erofs_and_cannot_attach_another_export(
    vm_assets: Assets, base: Path
) -> None:
    for name in ("docs", "src"):
        (base / name).mkdir()
        (base / name / "readme").write_text(f"{name}\n")
    policy = Policy(
        {"docs": Export("docs", str(base / "docs")), "src": Export("src", str(base / "src"))},
        {"vm-ro": Client("vm-ro", (Match(listener="vm-ro"),), {"docs": Rights(readonly=True)}),
         "vm-rw": Client("vm-rw", (Match(listener="vm-rw"),), {"src": Rights()})},
    )  # fmt: skip
    srv = Server(policy)
    try:
        port = srv.listen(parse_address("tcp:127.0.0.1:0"), name="vm-ro").port
        srv.listen(parse_address(f"unix:{base}/rw.sock"), name="vm-rw")
        res = run_guest(READ_ONLY_GUEST, transport="tcp", port=port, aname="docs",
                        timeout=120, assets=vm_assets)  # fmt: skip
    finally:
        srv.stop()
    assert res.status == 0, f"{res.output}\n{res.console[-2000:]}"
    assert "ro done" in res.output and "other export refused" in res.output
    assert sorted(os.listdir(base / "docs")) == ["readme"]
    assert (base / "docs" / "readme").read_text() == "docs\n"


MAPPED_GUEST = r"""
fail() { echo "FAIL: $*"; exit 1; }
echo data > owned; chown 1234:5678 owned
[ "$(stat -c %u:%g owned)" = 1234:5678 ] || fail "chown: $(stat -c %u:%g owned)"
chmod 4750 owned
[ "$(stat -c %a owned)" = 750 ] || fail "setuid kept: $(stat -c %a owned)"
chmod 0640 owned; [ "$(stat -c %a owned)" = 640 ] || fail chmod
mknod tty9 c 4 9 || fail mknod
[ -c tty9 ] || fail "not a char device: $(ls -l tty9)"
[ "$(stat -c %t:%T tty9)" = 4:9 ] || fail "rdev $(stat -c %t:%T tty9)"
mknod disk b 8 1 || fail mknod-b
[ -b disk ] || fail "not a block device"
mkfifo pipe; [ -p pipe ] || fail mkfifo
ln -s /etc/passwd sl; [ "$(readlink sl)" = /etc/passwd ] || fail readlink
mkdir -m 0711 d; chown 42:43 d; [ "$(stat -c %u:%g:%a d)" = 42:43:711 ] || fail "dir $(stat -c %u:%g:%a d)"
# remount: what the guest sees comes back from the host's xattrs, not a cache
p9_remount || fail remount
[ "$(stat -c %u:%g:%a owned)" = 1234:5678:640 ] || fail "after remount: $(stat -c %u:%g:%a owned)"
[ -c tty9 ] && [ -b disk ] && [ -p pipe ] && [ -L sl ] || fail "types after remount"
ls -ln
echo "mapped done"
"""


@pytest.mark.parametrize("layout", ["p9share", "virtfs"])
def test_mapped_export_keeps_guest_ownership_and_devices_in_xattrs(
    vm_assets: Assets, base: Path, layout: str
) -> None:
    share = base / "share"
    share.mkdir()
    policy = Policy(
        {"share": Export("share", str(share), idmap=mapped(layout))},
        {"vm": Client("vm", (Match(listener="vm"),),
                      {"share": Rights(devices=True, fifos=True, sockets=True)})},
    )  # fmt: skip
    srv = Server(policy)
    sock = base / "vm.sock"
    try:
        srv.listen(parse_address(f"unix:{sock}"), name="vm")
        res = run_guest(MAPPED_GUEST, transport="fd", socket_path=sock, aname="share",
                        timeout=120, assets=vm_assets)  # fmt: skip
    finally:
        srv.stop()
    assert res.status == 0, f"{res.output}\n{res.console[-2000:]}"
    assert "mapped done" in res.output
    check_mapped_host_tree(share, layout)


def check_mapped_host_tree(share: Path, layout: str) -> None:
    """What MAPPED_GUEST left on the host: placeholders, never the real thing."""
    me = os.geteuid()
    for name in ("owned", "tty9", "disk", "pipe", "sl"):
        st = os.lstat(share / name)
        # on the host: a plain file, owned by the server's account, private
        assert stat.S_ISREG(st.st_mode), (name, oct(st.st_mode))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (me, 0o600), name
    dst = os.lstat(share / "d")
    assert stat.S_ISDIR(dst.st_mode) and (dst.st_uid, stat.S_IMODE(dst.st_mode)) == (me, 0o700)
    prefix = "user.p9share." if layout == "p9share" else "user.virtfs."
    assert os.getxattr(share / "owned", prefix + "uid") == (1234).to_bytes(4, "little")
    assert os.getxattr(share / "tty9", prefix + "rdev") == os.makedev(4, 9).to_bytes(8, "little")
    assert (share / "sl").read_text() == "/etc/passwd"  # the target, stored as data


# ---- over virtio-fs: the identity is the vhost-user socket the policy names ----


def serve_policy(base: Path, toml: str, sock: Path) -> P9shareVhostUser:
    """``p9share serve --config`` of ``toml`` (a policy file), listening on ``sock``."""
    conf = base / "policy.toml"
    conf.write_text(toml)
    return P9shareVhostUser(base, config=conf, socket_path=sock).start()


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int, bytes, dict[str, bytes]]]:
    """Every entry's type and mode, owner, size, mtime, contents and xattrs."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        xattrs = {
            n: os.getxattr(p, n, follow_symlinks=False)
            for n in os.listxattr(p, follow_symlinks=False)
        }
        out[str(p.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_size,
            st.st_mtime_ns,
            data,
            xattrs,
        )
    return out


READ_ONLY_VIRTIOFS_GUEST = r"""
fail() { echo "FAIL: $*"; exit 1; }
erofs() {  # the command must fail, and with EROFS
  "$@" 2>/tmp/err && fail "$* succeeded"
  grep -q "Read-only file system" /tmp/err || fail "$*: $(cat /tmp/err)"
}
[ "$(cat readme)" = "docs" ] || fail read
[ "$(cat sub/inner)" = "inner" ] || fail "read sub/inner"
erofs sh -c 'echo x > new.txt'
erofs sh -c 'echo more >> readme'
erofs sh -c ': > readme'
erofs mkdir newdir
erofs rm readme
erofs rmdir sub/empty
erofs mv readme renamed
erofs ln readme hard
erofs ln -s readme sym
erofs mkfifo fifo
erofs chmod 0600 readme
erofs chown 1:1 readme
erofs touch -d 2001-01-01 readme
erofs p9xattr set readme user.k v
erofs truncate -s 0 readme
[ "$(cat readme)" = "docs" ] || fail "readme changed: $(cat readme)"
ls -la . sub
echo "ro done"
"""


def test_read_only_identity_over_virtiofs_sees_erofs(vm_assets: Assets, base: Path) -> None:
    """The client matched by the vhost-user listener has a read-only grant: every
    kind of write fails with EROFS in the guest, and the host tree stays as it was
    (names, modes, owners, sizes, times, contents, xattrs)."""
    docs = base / "docs"
    (docs / "sub" / "empty").mkdir(parents=True)
    (docs / "readme").write_text("docs\n")
    (docs / "sub" / "inner").write_text("inner\n")
    os.setxattr(docs / "readme", "user.k", b"orig")
    before = tree_state(docs)
    sock = base / "vm-ro.fs"
    policy = f"""
[server]
listen = [{{ address = "vhost-user:{sock}", name = "vm-ro", export = "docs" }}]
[exports.docs]
path = "{docs}"
[clients.vm-ro]
match = {{ listener = "vm-ro" }}
exports = {{ docs = "ro" }}
"""
    backend = serve_policy(base, policy, sock)
    try:
        res = run_guest(READ_ONLY_VIRTIOFS_GUEST, transport="virtiofs", socket_path=sock,
                        timeout=180, assets=vm_assets)  # fmt: skip
    finally:
        backend.close()
    assert res.status == 0, f"{res.output}\n{res.console[-2000:]}"
    assert "ro done" in res.output
    assert res.mount_line.split()[2] == "virtiofs", res.mount_line
    assert tree_state(docs) == before


def test_mapped_export_over_virtiofs_keeps_guest_ownership_and_devices_in_xattrs(
    vm_assets: Assets, base: Path
) -> None:
    """idmap = "mapped" with devices granted, over virtio-fs: the guest chowns,
    chmods, makes char and block devices, a FIFO and a symlink, and sees them again
    after a remount (a new FUSE INIT on the same device); on the host every one is
    a plain private file of the server's account, the guest's view in xattrs."""
    share = base / "share"
    share.mkdir()
    sock = base / "vm.fs"
    policy = f"""
[server]
listen = [{{ address = "vhost-user:{sock}", name = "vm", export = "share" }}]
[exports.share]
path = "{share}"
idmap = "mapped"
[clients.vm]
match = {{ listener = "vm" }}
[clients.vm.exports.share]
devices = true
fifos = true
sockets = true
"""
    backend = serve_policy(base, policy, sock)
    try:
        res = run_guest(MAPPED_GUEST, transport="virtiofs", socket_path=sock,
                        timeout=180, assets=vm_assets)  # fmt: skip
    finally:
        backend.close()
    assert res.status == 0, f"{res.output}\n{res.console[-2000:]}"
    assert "mapped done" in res.output
    assert res.mount_line.split()[2] == "virtiofs", res.mount_line
    check_mapped_host_tree(share, "p9share")
