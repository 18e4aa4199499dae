"""Fast tests of the harness internals (no guest is booted here)."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from p9share.vmlab import STATUS_MOUNT_FAILED, STATUS_NO_RESULT, STATUS_TIMEOUT, VMLabError
from p9share.vmlab.assets import (
    _elf_is_static,
    _modinfo_depends,
    extract_vmlinux,
    pad_to,
    resolve_module_order,
)
from p9share.vmlab.cpio import CpioWriter, read_archive
from p9share.vmlab.recorder import Recorder, message_name
from p9share.vmlab.runner import _mount_options, _overlay, _parse_console, run_guest
from p9share.vmlab.virtiofsd import (
    BackendError,
    P9shareVhostUser,
    Virtiofsd,
    find_virtiofsd,
    unix_socket_listening,
)


def _sample_archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_dir("bin")
    w.add_file("bin/tool", b"\x7fELF...", 0o755)
    w.add_symlink("bin/sh", "/bin/busybox")
    w.add_chardev("dev/console", 5, 1)
    w.add_parents("a/b/c/file")
    w.add_file("a/b/c/file", b"x" * 5)
    w.close()
    return buf.getvalue()


def test_cpio_roundtrip_and_alignment() -> None:
    data = _sample_archive()
    assert len(data) % 4 == 0
    entries = {e.name: e for e in read_archive(io.BytesIO(data))}
    assert set(entries) == {"bin", "bin/tool", "bin/sh", "dev/console", "a", "a/b", "a/b/c",
                            "a/b/c/file"}  # fmt: skip
    assert stat.S_ISDIR(entries["bin"].mode)
    assert entries["bin/tool"].data == b"\x7fELF..." and entries["bin/tool"].mode & 0o777 == 0o755
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["a/b/c/file"].data == b"xxxxx"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_cpio_readable_by_gnu_cpio() -> None:
    r = subprocess.run(
        ["cpio", "-it", "--quiet"], input=_sample_archive(), capture_output=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == [
        "bin", "bin/tool", "bin/sh", "dev/console", "a", "a/b", "a/b/c", "a/b/c/file"
    ]  # fmt: skip


def test_gzip_padding_keeps_appended_archive_aligned() -> None:
    base = pad_to(gzip.compress(_sample_archive()), 512)
    assert len(base) % 512 == 0
    # the kernel skips NULs between archives; so does gzip after the end of its member
    assert gzip.decompress(base) == _sample_archive()


def test_modinfo_and_module_order() -> None:
    def ko(deps: str) -> bytes:
        return b"\0junk\0license=GPL\0depends=" + deps.encode() + b"\0vermagic=6.1\0"

    assert _modinfo_depends(ko("")) == []
    assert _modinfo_depends(ko("9pnet,netfs")) == ["9pnet", "netfs"]
    files = {
        "fs/9p/9p.ko": ko("9pnet,netfs,fscache"),
        "net/9p/9pnet.ko": ko(""),
        "fs/netfs/netfs.ko": ko(""),
        "fs/fscache/fscache.ko": ko("netfs"),
        "net/9p/9pnet_fd.ko": ko("9pnet"),
    }
    avail = {Path(p).stem: p for p in files}
    order = resolve_module_order(avail, set(), files.__getitem__, ["9p", "9pnet_fd"])
    assert order == [
        "net/9p/9pnet.ko", "fs/netfs/netfs.ko", "fs/fscache/fscache.ko", "fs/9p/9p.ko",
        "net/9p/9pnet_fd.ko",
    ]  # fmt: skip
    assert resolve_module_order(avail, {"virtio"}, files.__getitem__, ["virtio"]) == []
    with pytest.raises(VMLabError, match="virtio_net not found"):
        resolve_module_order(avail, set(), files.__getitem__, ["virtio_net"])


def test_extract_vmlinux_finds_xz_payload() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    image = b"MZ setup code \xfd7zXZ\x00 false magic " + payload + b"trailing data"
    assert extract_vmlinux(image) == elf
    assert extract_vmlinux(b"no payload here") is None


def test_elf_static_check(tmp_path: Path) -> None:
    assert _elf_is_static("/bin/sh") is False  # dynamically linked on Debian
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf")
    assert _elf_is_static(str(junk)) is False


def test_mount_options() -> None:
    assert _mount_options("tcp", 5640, "9p2000.L", "/srv", "msize=8192,") == (
        "10.0.2.2",
        "trans=tcp,port=5640,version=9p2000.L,aname=/srv,msize=8192",
    )
    assert _mount_options("fd", None, "9p2000.u", "", "") == (
        "p9share",
        "trans=fd,rfdno=3,wfdno=4,version=9p2000.u",
    )
    assert _mount_options("virtio", None, "9p2000.L", "", "msize=512000") == (
        "p9share",
        "trans=virtio,version=9p2000.L,msize=512000",
    )
    assert _mount_options("none", None, "9p2000.L", "x", "y") == ("", "")
    # virtio-fs: the tag, and only the caller's options (the client rejects 9P ones)
    assert _mount_options("virtiofs", 5640, "9p2000.L", "/srv", "", "vfs1") == ("vfs1", "")
    assert _mount_options("virtiofs", None, "9p2000.L", "", ",dax,") == ("p9share", "dax")


def test_virtio_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="virtio_dir"):
        run_guest("true", transport="virtio")
    with pytest.raises(ValueError, match="virtio_security"):
        run_guest("true", transport="virtio", virtio_dir=tmp_path, virtio_security="bogus")
    comma = tmp_path / "a,b"
    comma.mkdir()
    with pytest.raises(ValueError, match="','"):
        run_guest("true", transport="virtio", virtio_dir=comma)
    with pytest.raises(VMLabError, match="not a directory"):
        run_guest("true", transport="virtio", virtio_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="tcp, fd, virtio, virtiofs or none"):
        run_guest("true", transport="vsock")  # type: ignore[arg-type]


def test_virtiofs_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="socket_path"):
        run_guest("true", transport="virtiofs")
    (tmp_path / "plain").write_text("")
    with pytest.raises(VMLabError, match=r"not a Unix socket.*vhost-user-fs back end"):
        run_guest("true", transport="virtiofs", socket_path=tmp_path / "plain")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "vu.sock"))
        for bad in ("", "a" * 37, "two words", "a,b"):
            with pytest.raises(ValueError, match="virtiofs_tag"):
                run_guest(
                    "true", transport="virtiofs", socket_path=tmp_path / "vu.sock",
                    virtiofs_tag=bad,
                )  # fmt: skip


def test_unix_socket_listening_reads_proc_without_connecting(tmp_path: Path) -> None:
    path = tmp_path / "l.sock"
    assert not unix_socket_listening(path)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert not unix_socket_listening(path)  # bound, not listening
        s.listen(1)
        assert unix_socket_listening(path)
        assert not unix_socket_listening(tmp_path / "l.soc")
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.accept()  # nobody connected to find out
    assert not unix_socket_listening(path)


def test_virtiofsd_starts_listens_and_stops(tmp_path: Path) -> None:
    find_virtiofsd()
    with pytest.raises(ValueError, match="cache"):
        Virtiofsd(tmp_path, cache="loose")
    v = Virtiofsd(tmp_path / "export", cache="none", xattr=True, socket_path=tmp_path / "v.sock")
    assert v.command()[1:] == [
        f"--socket-path={tmp_path / 'v.sock'}", "-o", f"source={tmp_path / 'export'}",
        "-o", "cache=none", "-o", "sandbox=namespace", "-o", "xattr",
    ]  # fmt: skip
    with v:
        assert unix_socket_listening(tmp_path / "v.sock")
        assert v.proc is not None and v.proc.poll() is None
        assert "Waiting for vhost-user socket connection" in v.log_text()
    assert v.proc.poll() is not None and not (tmp_path / "v.sock").exists()


def test_a_back_end_that_exits_is_a_clear_error(tmp_path: Path) -> None:
    v = Virtiofsd(tmp_path / "export", extra_args=["-o", "no_such_option"])
    with pytest.raises(BackendError, match="virtiofsd exited with status") as e:
        v.__enter__()
    assert not e.value.unsupported


@pytest.mark.parametrize("cache", [None, "none"])
def test_p9share_vhost_user_starts_or_is_reported_unsupported(
    tmp_path: Path, cache: str | None
) -> None:
    # The VM tests and the benchmark skip p9share's virtio-fs rows on
    # ``unsupported`` only: a server that does not know the address (or --cache)
    # yet. Once it serves vhost-user, the start succeeds and it listens.
    b = P9shareVhostUser(tmp_path, cache=cache, socket_path=tmp_path / "p.sock")
    try:
        b.start()
    except BackendError as e:
        assert e.unsupported, e
        assert "vhost-user" in str(e) or "--cache" in str(e)
    else:
        assert unix_socket_listening(tmp_path / "p.sock")
    finally:
        b.close()


def test_p9share_vhost_user_with_a_policy_file(tmp_path: Path) -> None:
    # the policy names the socket, the export and the client: serve --config only
    (tmp_path / "share").mkdir()
    sock = tmp_path / "vm1.fs"
    conf = tmp_path / "policy.toml"
    conf.write_text(
        f'[server]\nlisten = [{{ address = "vhost-user:{sock}", name = "vm1", export = "s" }}]\n'
        f'[exports.s]\npath = "{tmp_path / "share"}"\ncache = "none"\n'
        '[clients.vm1]\nmatch = { listener = "vm1" }\nexports = { s = "ro" }\n'
    )
    b = P9shareVhostUser(tmp_path / "share", config=conf, socket_path=sock)
    assert b.command()[-2:] == ["--config", str(conf)]
    with b:
        assert unix_socket_listening(sock)
    with pytest.raises(ValueError, match="socket_path"):
        P9shareVhostUser(tmp_path, config=conf)
    with pytest.raises(ValueError, match="cache"):
        P9shareVhostUser(tmp_path, config=conf, cache="auto", socket_path=sock)


def test_overlay_quotes_config_and_args() -> None:
    data = _overlay("tok", "echo hi\n", ["it's", "$HOME"], {"P9_ANAME": "/a b'c"}, {"/x/y": b"z"})
    entries = {e.name: e for e in read_archive(io.BytesIO(data))}
    assert entries["p9vmlab/config"].data == b"P9_ANAME='/a b'\\''c'\nexport P9_ANAME\n"
    assert b"set -- 'it'\\''s' '$HOME'\n" in entries["p9vmlab/run"].data
    assert entries["x/y"].data == b"z" and "x" in entries
    with pytest.raises(ValueError):
        _overlay("tok", "", [], {}, {"relative": b""})


TOKEN = "abc123"
M = f"P9VMLAB-{TOKEN}-"


def test_parse_console_success_exact_output() -> None:
    con = (
        f"{M}BOOT uptime=1.0\n{M}READY uptime=2.0 mount=10.0.2.2 /mnt 9p rw,trans=tcp 0 0\n"
        f"====={M}BEGIN=====\nline 1\nno eol\n====={M}END rc=3=====\n{M}POWEROFF rc=3\n"
    )
    r = _parse_console(con.encode(), M, TOKEN, False, 10)
    assert (r.status, r.output, r.error) == (3, "line 1\nno eol", "")
    assert r.mount_line == "10.0.2.2 /mnt 9p rw,trans=tcp 0 0"


def test_parse_console_empty_output_and_crlf() -> None:
    con = f"{M}READY uptime=2.0 mount=\r\n====={M}BEGIN=====\r\n\r\n====={M}END rc=0=====\r\n"
    r = _parse_console(con.encode(), M, TOKEN, False, 10)
    assert (r.status, r.output) == (0, "")
    con = f"====={M}BEGIN=====\r\na\r\nb\r\n\r\n====={M}END rc=0=====\r\n"
    assert _parse_console(con.encode(), M, TOKEN, False, 10).output == "a\nb\n"


def test_parse_console_failures() -> None:
    mf = f"{M}MOUNT-FAILED transport=tcp src=x opts=y\nmount: failed\n{M}MOUNT-FAILED-END\n"
    r = _parse_console(mf.encode(), M, TOKEN, False, 10)
    assert r.status == STATUS_MOUNT_FAILED and r.mount_failed
    assert r.output == "mount: failed\n" and "opts=y" in r.error
    running = f"====={M}BEGIN=====\npartial\n"
    r = _parse_console(running.encode(), M, TOKEN, True, 10)
    assert r.status == STATUS_TIMEOUT and r.timed_out and r.output == "partial\n"
    r = _parse_console(running.encode(), M, TOKEN, False, 10)
    assert r.status == STATUS_NO_RESULT
    r = _parse_console(b"SeaBIOS...\n", M, TOKEN, False, 10)
    assert r.status == STATUS_NO_RESULT and "never reported" in r.error
    with pytest.raises(AssertionError, match="never reported"):
        r.check()


def test_message_names() -> None:
    assert message_name(100) == "Tversion"
    assert message_name(7) == "Rlerror"
    assert message_name(53) == "Rlock"
    assert message_name(200) == "type200"


def _fake_server(listener: socket.socket) -> None:
    """Answers every frame with an R-frame echoing its tag and body."""
    conn, _ = listener.accept()
    with conn:
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while len(buf) >= 4 and len(buf) >= int.from_bytes(buf[:4], "little"):
                n = int.from_bytes(buf[:4], "little")
                frame, buf = buf[:n], buf[n:]
                conn.sendall(frame[:4] + bytes([frame[4] + 1]) + frame[5:])


def _frame(mtype: int, tag: int, body: bytes) -> bytes:
    return (7 + len(body)).to_bytes(4, "little") + bytes([mtype]) + tag.to_bytes(2, "little") + body


def test_recorder_splits_and_logs_frames(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    t = threading.Thread(target=_fake_server, args=(listener,), daemon=True)
    t.start()
    out = tmp_path / "rec.jsonl"
    upstream = ("127.0.0.1", listener.getsockname()[1])
    t_version = _frame(100, 0xFFFF, b"\x00\x20\x00\x00\x08\x009P2000.L")
    t_clunk = _frame(120, 1, b"\x05\x00\x00\x00")
    with (
        Recorder(out, upstream, meta={"k": "v"}) as rec,
        socket.create_connection(("127.0.0.1", rec.port), timeout=10) as c,
    ):
        for req in (t_version, t_clunk):
            for i in range(len(req)):  # one byte at a time: frames must be reassembled
                c.sendall(req[i : i + 1])
            got = b""
            while len(got) < len(req):
                chunk = c.recv(4096)
                assert chunk
                got += chunk
            assert got == req[:4] + bytes([req[4] + 1]) + req[5:]
    t.join(10)
    listener.close()
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[0] == {"meta": {"k": "v"}}
    assert recs[1] == {"conn": 0, "event": "open"}
    frames = [r for r in recs if "hex" in r]
    assert [(r["dir"], r["name"], r["tag"]) for r in frames] == [
        ("c2s", "Tversion", 0xFFFF),
        ("s2c", "Rversion", 0xFFFF),
        ("c2s", "Tclunk", 1),
        ("s2c", "Rclunk", 1),
    ]
    assert bytes.fromhex(frames[0]["hex"]) == t_version
    assert recs[-1]["event"] == "close"
    assert rec.frames == 4 and not rec.errors


def test_vector_file_is_well_formed() -> None:
    path = Path(__file__).resolve().parents[1] / "vectors" / "linux-6.1-dotl.jsonl"
    if not path.exists():
        pytest.skip("no recorded vectors")
    assert path.stat().st_size < 200_000
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert "meta" in recs[0] and recs[0]["meta"]["version"] == "9p2000.L"
    frames = [r for r in recs if "hex" in r]
    names = {r["name"] for r in frames}
    for n in ("Tversion", "Tattach", "Tlcreate", "Twrite", "Tread", "Tmkdir", "Treaddir",
              "Tgetattr", "Tsetattr", "Tsymlink", "Treadlink", "Tlink", "Trenameat",
              "Tstatfs", "Txattrcreate", "Txattrwalk", "Tlock", "Tgetlock", "Tclunk"):  # fmt: skip
        assert n in names, n
    for r in frames:
        raw = bytes.fromhex(r["hex"])
        assert int.from_bytes(raw[:4], "little") == len(raw) and raw[4] == r["type"]
