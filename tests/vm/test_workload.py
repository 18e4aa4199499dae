"""A real Linux 6.1 guest mounts p9share (trans=tcp and trans=fd) and works in
the share; every result is checked again on the host side. The same workload runs
over virtio-fs in test_virtiofs_vm.py."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from p9share.policy import Export, Policy
from p9share.server.server import Server
from p9share.server.transport import parse_address
from p9share.vmlab import Assets, GuestResult, run_guest

pytestmark = pytest.mark.vm

BIG_MIB = 64

WORKLOAD = r"""
set -e
fail() { echo "FAIL: $*"; exit 1; }
W=work; mkdir $W; cd $W
# create / write / read / append / truncate
printf 'hello 9p\n' > hello.txt
echo "second line" >> hello.txt
[ "$(cat hello.txt)" = "$(printf 'hello 9p\nsecond line')" ] || fail read-back
seq 1 20000 > seq.txt
printf 'abcdefghij' > t.bin; truncate -s 4 t.bin; [ "$(cat t.bin)" = abcd ] || fail truncate
printf 'XY' | dd of=t.bin bs=1 seek=1 conv=notrunc 2>/dev/null; [ "$(cat t.bin)" = aXYd ] || fail pwrite
# big file round trip, read back after dropping the guest's caches
dd if=/dev/urandom of=big.bin bs=1M count=$1 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
echo "CHECK big.bin $(md5sum big.bin | cut -d' ' -f1)"
# directories: 1000 files listed completely
mkdir -p dir/sub/subsub many
echo nested > dir/sub/subsub/file
i=0; while [ $i -lt 1000 ]; do : > many/f$i; i=$((i+1)); done
[ "$(ls many | wc -l)" = 1000 ] || fail "ls many: $(ls many | wc -l)"
[ "$(find many -type f | wc -l)" = 1000 ] || fail "find many"
mkdir gone; rmdir gone; [ ! -e gone ] || fail rmdir
# renames: across directories, directories, over an existing target
mv seq.txt dir/seq.txt
mv dir/sub dir/sub-renamed
echo old > target.txt; echo new > source.txt; mv source.txt target.txt
[ "$(cat target.txt)" = new ] || fail rename-over
mkdir d1 d2; echo x > d2/keep; mv d1 dir/d1-moved
# symlinks and hard links
ln -s hello.txt link-to-hello
[ "$(readlink link-to-hello)" = hello.txt ] || fail readlink
[ "$(cat link-to-hello)" = "$(cat hello.txt)" ] || fail symlink-follow
ln hello.txt hard.txt
[ "$(stat -c %h hello.txt)" = 2 ] || fail "nlink $(stat -c %h hello.txt)"
[ "$(stat -c %i hello.txt)" = "$(stat -c %i hard.txt)" ] || fail inode
# chmod, chown, utimes (as root in the guest)
chmod 0640 hello.txt; [ "$(stat -c %a hello.txt)" = 640 ] || fail chmod
chown 1234:5678 t.bin; [ "$(stat -c %u:%g t.bin)" = 1234:5678 ] || fail chown
touch -d '2001-02-03 04:05:06' t.bin
[ "$(stat -c %Y t.bin)" = 981173106 ] || fail "utimes $(stat -c %Y t.bin)"
# mkfifo, df
mkfifo fifo; [ -p fifo ] || fail mkfifo
df . | tail -1 | grep -q . || fail df
# open-unlink-read: a descriptor outlives its name
echo "unlinked but open" > ul.txt
exec 7<ul.txt; rm ul.txt; [ ! -e ul.txt ] || fail unlink
[ "$(cat <&7)" = "unlinked but open" ] || fail open-unlink-read
exec 7<&-
# xattrs and fcntl locks exist only in 9P2000.L ($2 is the dialect)
if [ "$2" = L ]; then
p9xattr set hello.txt user.color blue
[ "$(p9xattr get hello.txt user.color)" = blue ] || fail xattr-get
p9xattr set hello.txt user.gone x
p9xattr list hello.txt | grep -q '^user.color$' || fail xattr-list
p9xattr remove hello.txt user.gone
p9xattr get hello.txt user.gone 2>/dev/null && fail xattr-remove
# lock contention between two guest processes (fcntl and flock)
: > lockfile
p9lock -t A lockfile wr 0 0 touch /tmp/held wait /tmp/done un 0 0 > /tmp/a.out &
p9lock -t B lockfile wait /tmp/held wr 0 0 get wr 0 0 > /tmp/b.out
touch /tmp/done; wait
grep -q 'B wr 0 0: EAGAIN' /tmp/b.out || fail "fcntl contention: $(cat /tmp/b.out)"
grep -q 'B get wr 0 0: locked' /tmp/b.out || fail "getlk: $(cat /tmp/b.out)"
p9lock -t C lockfile wr 0 0 | grep -q 'C wr 0 0: ok' || fail "lock after release"
rm -f /tmp/held /tmp/done
p9lock -t A lockfile flock ex touch /tmp/held wait /tmp/done flock un > /tmp/a.out &
p9lock -t B lockfile wait /tmp/held flocknb ex > /tmp/b.out
touch /tmp/done; wait
grep -Eq 'B flocknb ex: (EWOULDBLOCK|EAGAIN)' /tmp/b.out || fail "flock contention: $(cat /tmp/b.out)"
fi
# trying to leave the export: planted symlinks resolve in the guest, never on the host
cd /mnt
for f in escape-abs escape-rel; do cat $f 2>/dev/null || true; done
ls -a /mnt/.. > /dev/null
cat ../escape-rel 2>/dev/null || true
echo "workload done"
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def start_server(export: Path, sock: Path) -> Server:
    policy = Policy()
    policy.exports["share"] = Export("share", str(export))
    srv = Server(policy)
    srv.listen(parse_address("tcp:127.0.0.1:0"))
    srv.listen(parse_address(f"unix:{sock}"))
    return srv


@pytest.mark.parametrize(
    ("transport", "version"), [("tcp", "9p2000.L"), ("fd", "9p2000.L"), ("tcp", "9p2000.u")]
)
def test_guest_workload(
    vm_assets: Assets, share: tuple[Path, Path, str], transport: str, version: str
) -> None:
    export = share[0]
    dotl = version == "9p2000.L"
    srv = start_server(export, export.parent / "p9.sock")
    try:
        port = srv.addresses[0].port
        res = run_guest(
            WORKLOAD, transport=transport, port=port, socket_path=export.parent / "p9.sock",  # type: ignore[arg-type]
            version=version, mount_opts="msize=1048576", args=[str(BIG_MIB), "L" if dotl else "u"],
            timeout=400, assets=vm_assets,
        )  # fmt: skip
    finally:
        srv.stop()
    check_workload(res, share, dotl=dotl)
    assert "msize=1048576" in res.mount_line or transport == "fd"


def check_workload(res: GuestResult, share: tuple[Path, Path, str], *, dotl: bool) -> None:
    """WORKLOAD passed in the guest, and every result it left is right on the host."""
    export, outside, token = share
    out = res.output
    assert res.status == 0, (
        f"guest workload failed (status {res.status}):\n{out}\n{res.console[-3000:]}"
    )
    assert "workload done" in out
    assert token not in out and token not in res.console, "a host file outside the export leaked"

    w = export / "work"
    checks = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("CHECK "))
    assert (w / "big.bin").stat().st_size == BIG_MIB << 20
    assert checks["big.bin"] == md5(w / "big.bin")
    assert (w / "hello.txt").read_text() == "hello 9p\nsecond line\n"
    assert (w / "dir" / "seq.txt").read_text() == "".join(f"{i}\n" for i in range(1, 20001))
    assert (w / "t.bin").read_bytes() == b"aXYd"
    assert (w / "dir" / "sub-renamed" / "subsub" / "file").read_text() == "nested\n"
    assert (w / "target.txt").read_text() == "new\n" and not (w / "source.txt").exists()
    assert (w / "dir" / "d1-moved").is_dir() and not (w / "d1").exists()
    assert len(os.listdir(w / "many")) == 1000
    assert os.readlink(w / "link-to-hello") == "hello.txt"
    st = (w / "hello.txt").stat()
    assert st.st_nlink == 2 and st.st_ino == (w / "hard.txt").stat().st_ino
    assert stat.S_IMODE(st.st_mode) == 0o640
    tst = (w / "t.bin").stat()
    assert (tst.st_uid, tst.st_gid, int(tst.st_mtime)) == (1234, 5678, 981173106)
    assert stat.S_ISFIFO((w / "fifo").lstat().st_mode)
    assert not (w / "ul.txt").exists()
    if dotl:  # 9P2000.u has no xattr messages (and the guest part ran only with "L")
        assert os.getxattr(w / "hello.txt", "user.color") == b"blue"
        assert "user.gone" not in os.listxattr(w / "hello.txt")
    # the secret is untouched and nothing was written outside the export
    assert (outside / "secret.txt").read_text() == token
    assert sorted(os.listdir(outside)) == ["secret.txt"]
