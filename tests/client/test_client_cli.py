"""The client subcommands run as real processes (python -m p9share) against
p9share and diod."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p9share.cli import main
from p9share.client_cli import Progress

from .conftest import Target


def p9(
    target: Target, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd, rest = args[0], args[1:]
    return subprocess.run(
        [sys.executable, "-m", "p9share", cmd, target.address, "--aname", target.aname, *rest],
        input=stdin, capture_output=True, timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (root / "sub" / "deeper" / "c").write_text("c")
    (root / "sub" / "empty").mkdir()
    os.symlink("a.txt", root / "link")


def same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    assert names_a == names_b
    for name in names_a:
        pa, pb = a / name, b / name
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb)
        elif pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), name


def test_ls_stat_cat(target: Target) -> None:
    make_tree(target.root)
    r = p9(target, "ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["a.txt", "link", "sub"]
    r = p9(target, "ls", "-l", "/sub")
    lines = r.stdout.decode().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["b.bin", "deeper", "empty"]
    assert lines[0].startswith("-rw") and " 200000 " in lines[0] and lines[1].startswith("d")
    r = p9(target, "stat", "/sub/b.bin")
    fields = dict(ln.split(": ", 1) for ln in r.stdout.decode().splitlines())
    assert fields["type"] == "file" and fields["size"] == "200000"
    assert fields["inode"] == str(os.stat(target.root / "sub" / "b.bin").st_ino)
    r = p9(target, "stat", "/link")
    assert b"type: symlink" in r.stdout and b"target: a.txt" in r.stdout
    r = p9(target, "cat", "/sub/b.bin")
    assert r.returncode == 0 and r.stdout == (target.root / "sub" / "b.bin").read_bytes()


def test_recursive_get_and_put(target: Target, tmp_path: Path) -> None:
    make_tree(target.root)
    out = tmp_path / "out"
    r = p9(target, "get", "/sub", str(out))
    assert r.returncode == 0, r.stderr
    same_tree(target.root / "sub", out)
    r = p9(target, "get", "/", str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr
    same_tree(target.root, tmp_path / "all")
    # put a local tree back under a new name, then into an existing directory
    r = p9(target, "put", str(out), "/copy")
    assert r.returncode == 0, r.stderr
    same_tree(out, target.root / "copy")
    r = p9(target, "put", str(tmp_path / "all"), "/copy")
    assert r.returncode == 0, r.stderr
    same_tree(tmp_path / "all", target.root / "copy" / "all")
    single = tmp_path / "one.txt"
    single.write_text("one")
    assert p9(target, "put", str(single), "/one.txt").returncode == 0
    assert (target.root / "one.txt").read_text() == "one"
    assert p9(target, "get", "/one.txt", str(tmp_path / "back.txt")).returncode == 0
    assert (tmp_path / "back.txt").read_text() == "one"


def test_rm_mkdir_mv(target: Target) -> None:
    assert p9(target, "mkdir", "/d").returncode == 0
    assert (target.root / "d").is_dir()
    assert p9(target, "mkdir", "-p", "/d/e/f").returncode == 0
    assert (target.root / "d" / "e" / "f").is_dir()
    (target.root / "x").write_text("x")
    assert p9(target, "mv", "/x", "/d/y").returncode == 0
    assert (target.root / "d" / "y").read_text() == "x"
    assert p9(target, "mv", "/d/y", "/d/e").returncode == 0  # into a directory
    assert (target.root / "d" / "e" / "y").exists()
    assert p9(target, "rm", "/d/e/y").returncode == 0
    r = p9(target, "rm", "/d")
    assert r.returncode == 1 and b"use -r" in r.stderr
    assert p9(target, "rm", "-r", "/d").returncode == 0
    assert os.listdir(target.root) == []


def test_errors_are_one_line_with_exit_1(target: Target) -> None:
    r = p9(target, "ls", "/x")
    assert r.returncode == 1
    assert r.stderr.decode() == "p9share: ls: /x: No such file or directory\n"
    assert r.stdout == b""
    r = p9(target, "mkdir", "/a/b/c")
    assert r.returncode == 1 and r.stderr.decode().startswith("p9share: mkdir: /a/b/c: ")
    (target.root / "f").write_text("")
    r = p9(target, "mkdir", "/f")
    assert r.returncode == 1 and r.stderr.decode() == "p9share: mkdir: /f: File exists\n"
    r = p9(target, "put", "/definitely/not/here", "/z")
    assert r.returncode == 1 and b"/definitely/not/here: No such file" in r.stderr


def test_usage_and_connection_errors(p9share_target: Target) -> None:
    r = subprocess.run([sys.executable, "-m", "p9share", "ls"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"usage" in r.stderr
    bad = Target("p9share", "nonsense", "", p9share_target.root)
    r = p9(bad, "ls")
    assert r.returncode == 2 and b"bad address" in r.stderr
    gone = Target("p9share", "tcp:127.0.0.1:1", "", p9share_target.root)
    r = p9(gone, "ls")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    assert r.stderr.startswith(b"p9share: ls: tcp:127.0.0.1:1: ")


def test_progress_bar_forced_on(p9share_target: Target, tmp_path: Path) -> None:
    (p9share_target.root / "big").write_bytes(os.urandom(3_000_000))
    r = p9(p9share_target, "get", "--progress", "always", "/big", str(tmp_path / "big"))
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "\r" in err and "100% [########################]" in err and "2.9 MiB/2.9 MiB" in err
    r = p9(p9share_target, "get", "/big", str(tmp_path / "big2"))  # stderr is a pipe: no bar
    assert r.returncode == 0 and r.stderr == b""


def test_progress_renders_fraction_and_rate() -> None:
    import io

    buf = io.StringIO()
    bar = Progress("file", 2048, buf, enabled=True)
    bar.update(1024)
    bar.finish()
    assert "50% [############            ]" in buf.getvalue()
    last = buf.getvalue().rsplit("\r", 1)[-1]
    assert "1.0 KiB/2.0 KiB " in last and last.endswith("/s\n")
    quiet = io.StringIO()
    Progress("file", 10, quiet, enabled=False).finish()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("cmd", ["ls", "stat", "cat", "get", "put", "rm", "mkdir", "mv"])
def test_every_command_has_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])  # in-process: the parser is what is tested here
    assert e.value.code == 0 and "--aname" in capsys.readouterr().out
