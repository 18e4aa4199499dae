"""Real tools on the FUSE mount, as on a local disk: tar, cp -a, rsync -a,
git clone / status / commit, and make + gcc of a small C project."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import Target


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (./scripts/install.sh --test installs it)")


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def make_tree(root: Path) -> None:
    """Files, modes, nested directories, symlinks (relative, absolute,
    dangling, to a directory), hard links, an empty file and directory."""
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_text("alpha\n" * 100)
    (root / "docs" / "b.bin").write_bytes(bytes(range(256)) * 700)
    (root / "docs" / "deep" / "er" / "c").write_text("c")
    (root / "empty").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "private").write_text("secret")
    (root / "private").chmod(0o600)
    os.symlink("a.txt", root / "link-rel")
    os.symlink("/etc/hostname", root / "link-abs")
    os.symlink("missing", root / "link-dangling")
    os.symlink("docs/deep", root / "link-dir")
    os.link(root / "a.txt", root / "docs" / "hard-a")
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i * 1000),
                 follow_symlinks=False)  # fmt: skip


def snapshot(root: Path, *, mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Each path's type, mode, contents or target, mtime and hard-link group."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = None
            group = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
            mtime = st.st_mtime_ns if mtimes and not stat.S_ISDIR(st.st_mode) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), body, mtime, group)
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    return src


def test_tar(fuse_target: Target, source: Path, tmp_path: Path) -> None:
    need("tar")
    dst, host = fuse_target.fresh()
    archive = tmp_path / "t.tar"
    run("tar", "--format=posix", "-C", source, "-cf", archive, ".")
    run("tar", "-C", dst, "-xpf", archive)
    assert snapshot(dst) == snapshot(source)
    assert snapshot(host) == snapshot(source)
    # and back: an archive made on the mount unpacks to the same tree
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "--format=posix", "-C", dst, "-cf", dst / "out.tar", "--exclude=out.tar", ".")
    run("tar", "-C", back, "-xpf", dst / "out.tar")
    assert snapshot(back) == snapshot(source)


def test_cp_a(fuse_target: Target, source: Path, tmp_path: Path) -> None:
    need("cp")
    dst, _ = fuse_target.fresh()
    run("cp", "-a", source, dst / "copy")
    assert snapshot(dst / "copy") == snapshot(source)
    run("cp", "-a", dst / "copy", tmp_path / "again")
    assert snapshot(tmp_path / "again") == snapshot(source)


def test_rsync_a(fuse_target: Target, source: Path) -> None:
    need("rsync")
    dst, _ = fuse_target.fresh()
    run("rsync", "-aH", f"{source}/", f"{dst}/")
    assert snapshot(dst) == snapshot(source)
    # a second run finds nothing to do: sizes and mtimes round-trip exactly
    changes = run("rsync", "-aHi", f"{source}/", f"{dst}/")
    assert changes.strip() == "", changes
    (source / "a.txt").write_text("changed\n")
    changes = run("rsync", "-aHi", f"{source}/", f"{dst}/")
    assert "a.txt" in changes
    assert (dst / "a.txt").read_text() == "changed\n"


def test_git_clone_status_commit(fuse_target: Target, tmp_path: Path) -> None:
    need("git")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
           "-c", "init.defaultBranch=main", "-c", "safe.directory=*")  # fmt: skip
    origin = tmp_path / "origin"
    origin.mkdir()
    run(*git, "init", "-q", cwd=origin)
    for i in range(20):
        (origin / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
    (origin / "sub").mkdir()
    (origin / "sub" / "x.py").write_text("print('x')\n")
    run(*git, "add", ".", cwd=origin)
    run(*git, "commit", "-qm", "first", cwd=origin)
    dst, _ = fuse_target.fresh()
    run(*git, "clone", "-q", origin, dst / "clone")
    clone = dst / "clone"
    assert run(*git, "status", "--porcelain", cwd=clone) == ""
    assert run(*git, "fsck", "--no-progress", cwd=clone) is not None
    (clone / "file3.txt").write_text("edited\n")
    (clone / "new.txt").write_text("new\n")
    status = run(*git, "status", "--porcelain", cwd=clone)
    assert " M file3.txt" in status and "?? new.txt" in status, status
    run(*git, "add", "-A", cwd=clone)
    run(*git, "commit", "-qm", "second", cwd=clone)
    assert run(*git, "status", "--porcelain", cwd=clone) == ""
    log = run(*git, "log", "--format=%s", cwd=clone)
    assert log.split() == ["second", "first"]


def test_make_c_project(fuse_target: Target) -> None:
    need("gcc")
    need("make")
    d, _ = fuse_target.fresh()
    (d / "util.h").write_text("int add(int a, int b);\nconst char *greet(void);\n")
    (d / "util.c").write_text('#include "util.h"\nint add(int a, int b) { return a + b; }\n')
    (d / "greet.c").write_text('#include "util.h"\nconst char *greet(void) { return "hello"; }\n')
    (d / "main.c").write_text(
        '#include <stdio.h>\n#include "util.h"\n'
        'int main(void) { printf("%s %d\\n", greet(), add(40, 2)); return 0; }\n'
    )
    (d / "Makefile").write_text(
        "OBJS = main.o util.o greet.o\n"
        "app: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n"
        "%.o: %.c util.h\n\t$(CC) -O1 -c -o $@ $<\n"
        "clean:\n\trm -f app $(OBJS)\n"
    )
    run("make", "-s", "-j2", cwd=d)
    assert run(d / "app") == "hello 42\n"
    assert "up to date" in run("make", cwd=d)  # mtimes are right
    os.utime(d / "greet.c")  # touch one source: only it is rebuilt
    out = run("make", cwd=d)
    assert "greet.c" in out and "main.c" not in out, out
    run("make", "-s", "clean", cwd=d)
    assert sorted(p.name for p in d.iterdir()) == [
        "Makefile",
        "greet.c",
        "main.c",
        "util.c",
        "util.h",
    ]
