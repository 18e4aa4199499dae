"""Host-side preparation of the test guest: packages, kernel, modules, initramfs.

Everything is cached under :func:`cache_dir` and rebuilt only when an input changes.
:func:`setup` is idempotent, cheap when the cache is warm, and serialised between
processes with a file lock, so every test may call it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .cpio import CpioWriter

log = logging.getLogger("p9share.vmlab")

#: Kernel modules the guest needs; their ``depends=`` closure is added automatically.
MODULES: tuple[str, ...] = (
    "9p",
    "9pnet",
    "9pnet_fd",
    "9pnet_virtio",
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "fuse",
    "virtiofs",
)
#: Modules in the image that only a virtio-fs guest loads (9P guests boot as before).
VIRTIOFS_MODULES: tuple[str, ...] = ("fuse", "virtiofs")
#: Guest helper programs compiled from ``guest/NAME.c`` and installed as ``/bin/NAME``.
HELPERS: tuple[str, ...] = ("p9xattr", "p9lock", "p9posix", "p9now")
#: Bumped whenever the layout of the cache or the initramfs changes.
LAYOUT_VERSION = 1
KERNEL_META_PACKAGE = "linux-image-amd64"
_KERNEL_DEB_RE = re.compile(r"^linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-amd64_.*\.deb$")
APT_TIMEOUT = 1800
LOCK_TIMEOUT = 1800


class VMLabError(RuntimeError):
    """Something the harness needs is missing or broken (message says what to do)."""


@dataclass(frozen=True)
class Assets:
    """What a guest boot needs; returned by :func:`setup`."""

    cache_dir: Path
    kernel_package: str
    kernel_version: str
    kernel_image: Path
    boot_mode: str  # "pvh" (uncompressed ELF vmlinux) or "bzimage"
    initramfs: Path  # gzip cpio, NUL-padded to a multiple of 512 bytes
    modules: tuple[str, ...]  # .ko paths relative to lib/modules/KVER, in load order
    qemu: str
    accel: str


def cache_dir() -> Path:
    env = os.environ.get("P9SHARE_VMLAB_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "p9share-vmlab"


def _no_apt() -> bool:
    return os.environ.get("P9SHARE_VMLAB_NO_APT", "") not in ("", "0")


def _sha256(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(hashlib.sha256(c).digest())
    return h.hexdigest()


def _guest_source(name: str) -> bytes:
    return resources.files("p9share.vmlab").joinpath("guest", name).read_bytes()


def _run(
    cmd: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as e:
        raise VMLabError(f"{cmd[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise VMLabError(f"{' '.join(cmd)} did not finish within {timeout:.0f}s") from e


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# --------------------------------------------------------------------- lock ---
@contextlib.contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another vmlab setup to finish (lock %s)", path)
                    waited = True
                if time.monotonic() > deadline:
                    raise VMLabError(f"could not lock {path} within {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- host deps ---
def _elf_is_static(path: str) -> bool:
    """True if ``path`` is an ELF64 executable without a PT_INTERP (dynamic loader)."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return False
            endian = "<" if ident[5] == 1 else ">"
            phoff, phentsize, phnum = (
                struct.unpack_from(endian + "Q", ident, 32)[0],
                struct.unpack_from(endian + "H", ident, 54)[0],
                struct.unpack_from(endian + "H", ident, 56)[0],
            )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> str | None:
    cands = [os.environ.get("P9SHARE_VMLAB_BUSYBOX", ""), "/bin/busybox", "/usr/bin/busybox"]
    for c in cands:
        if c and os.access(c, os.X_OK) and _elf_is_static(c):
            return c
    return None


def _qemu_binary() -> str:
    return os.environ.get("P9SHARE_VMLAB_QEMU", "qemu-system-x86_64")


def _libc_a_available() -> bool:
    gcc = shutil.which("gcc")
    if not gcc:
        return False
    r = _run([gcc, "-print-file-name=libc.a"], timeout=30)
    return os.path.isabs(r.stdout.strip()) and os.path.exists(r.stdout.strip())


def apt_install(packages: Sequence[str]) -> None:
    """``apt-get install`` the packages; ``apt-get update`` once if that fails."""
    pkgs = " ".join(packages)
    if _no_apt():
        raise VMLabError(f"missing host packages: {pkgs} (P9SHARE_VMLAB_NO_APT is set)")
    if os.geteuid() != 0:
        raise VMLabError(
            f"missing host packages: {pkgs}; install them as root: apt-get install {pkgs}"
        )
    if not shutil.which("apt-get"):
        raise VMLabError(f"missing host packages: {pkgs}, and there is no apt-get on this host")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log.info("apt-get install %s", pkgs)
    r = _run(cmd, timeout=APT_TIMEOUT, env=env)
    if r.returncode != 0:
        log.info("apt-get install failed; running apt-get update and retrying")
        u = _run(["apt-get", "update"], timeout=APT_TIMEOUT, env=env)
        r = _run(cmd, timeout=APT_TIMEOUT, env=env)
        if r.returncode != 0:
            raise VMLabError(
                f"apt-get install {pkgs} failed (is the Debian mirror reachable?):\n"
                f"{_tail(u.stderr, 5)}\n{_tail(r.stderr)}"
            )


def ensure_host_deps() -> tuple[str, str]:
    """Install what is missing; return (qemu binary, static busybox path)."""
    missing: list[str] = []
    if not shutil.which(_qemu_binary()):
        missing.append("qemu-system-x86")
    if not find_busybox():
        missing.append("busybox-static")
    if not shutil.which("gcc"):
        missing += ["gcc", "libc6-dev"]
    elif not _libc_a_available():
        missing.append("libc6-dev")
    if missing:
        apt_install(missing)
    qemu = shutil.which(_qemu_binary())
    if not qemu:
        raise VMLabError(f"{_qemu_binary()} not found after installing qemu-system-x86")
    bb = find_busybox()
    if not bb:
        raise VMLabError("no statically linked busybox found (apt-get install busybox-static)")
    return qemu, bb


# ------------------------------------------------------------------- kernel ---
def _deb_sort_key(p: Path) -> tuple[int, ...]:
    m = _KERNEL_DEB_RE.match(p.name)
    return tuple(int(x) for x in m.groups()) if m else ()


def _cached_kernel_debs(debs: Path) -> list[Path]:
    return sorted(
        (p for p in debs.glob("*.deb") if _KERNEL_DEB_RE.match(p.name)), key=_deb_sort_key
    )


def _resolve_kernel_package() -> str:
    def query() -> str | None:
        r = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=120)
        m = re.search(r"Depends:\s*(linux-image-\d[\w.+-]*-amd64)\b", r.stdout)
        return m.group(1) if m else None

    pkg = query()
    if not pkg and not _no_apt():
        log.info("apt-cache knows no %s; running apt-get update", KERNEL_META_PACKAGE)
        _run(["apt-get", "update"], timeout=APT_TIMEOUT)
        pkg = query()
    if not pkg:
        raise VMLabError(
            f"cannot resolve the Debian kernel package from {KERNEL_META_PACKAGE} "
            "(apt-cache depends found nothing). Put a linux-image-*-amd64 .deb into "
            f"{cache_dir() / 'debs'} or set P9SHARE_VMLAB_KERNEL_DEB=/path/to.deb"
        )
    return pkg


def kernel_deb(cache: Path) -> Path:
    """The kernel .deb to use: $P9SHARE_VMLAB_KERNEL_DEB, a cached one, or a download."""
    env = os.environ.get("P9SHARE_VMLAB_KERNEL_DEB")
    if env:
        p = Path(env)
        if not p.is_file():
            raise VMLabError(f"P9SHARE_VMLAB_KERNEL_DEB={env} does not exist")
        return p
    debs = cache / "debs"
    cached = _cached_kernel_debs(debs)
    if cached:
        return cached[-1]
    if _no_apt():
        raise VMLabError(f"no kernel .deb in {debs} and P9SHARE_VMLAB_NO_APT is set")
    pkg = _resolve_kernel_package()
    debs.mkdir(parents=True, exist_ok=True)
    log.info("apt-get download %s", pkg)
    r = _run(["apt-get", "download", pkg], timeout=APT_TIMEOUT, cwd=debs)
    if r.returncode != 0:
        _run(["apt-get", "update"], timeout=APT_TIMEOUT)
        r = _run(["apt-get", "download", pkg], timeout=APT_TIMEOUT, cwd=debs)
    cached = _cached_kernel_debs(debs)
    if r.returncode != 0 or not cached:
        raise VMLabError(
            f"apt-get download {pkg} failed (no network to the Debian mirror?):\n{_tail(r.stderr)}\n"
            f"Alternatively put the .deb into {debs} or set P9SHARE_VMLAB_KERNEL_DEB"
        )
    return cached[-1]


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the data.tar member of a .deb (an ar archive) as a streaming tarfile."""
    f = open(deb, "rb")  # noqa: SIM115 - owned by the returned TarFile's stream
    if f.read(8) != b"!<arch>\n":
        f.close()
        raise VMLabError(f"{deb} is not a .deb (ar) archive")
    while True:
        hdr = f.read(60)
        if len(hdr) < 60:
            f.close()
            raise VMLabError(f"{deb}: no data.tar member")
        name = hdr[:16].decode().strip().rstrip("/")
        size = int(hdr[48:58].decode().strip())
        if name.startswith("data.tar"):
            break
        f.seek(size + (size & 1), io.SEEK_CUR)
    if name in ("data.tar.xz", "data.tar.gz", "data.tar.bz2", "data.tar"):
        return tarfile.open(fileobj=f, mode="r|*")
    f.close()
    # e.g. data.tar.zst, which the standard library cannot decompress
    if not shutil.which("dpkg-deb"):
        raise VMLabError(f"{deb} has {name}; dpkg-deb is needed to unpack it")
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    return tarfile.open(fileobj=proc.stdout, mode="r|")


def _modinfo_depends(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


class _KoReader:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


def resolve_module_order(
    available: dict[str, str],
    builtin: set[str],
    read: Callable[[str], bytes],
    wanted: Sequence[str],
) -> list[str]:
    """Relative .ko paths of ``wanted`` and their dependencies, dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in available:
            if name in builtin:
                return
            raise VMLabError(
                f"kernel module {name} not found (needed by {' -> '.join(chain) or 'vmlab'})"
            )
        for dep in _modinfo_depends(read(available[name])):
            visit(dep, (*chain, name))
        order.append(available[name])

    for w in wanted:
        visit(w, ())
    return order


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """Find and decompress the ELF payload of a bzImage (like scripts/extract-vmlinux)."""
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gz")):
        start = 0
        for _ in range(8):
            off = bzimage.find(magic, start)
            if off < 0:
                break
            start = off + 1
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[off:])
                else:
                    out = zlib.decompressobj(31).decompress(bzimage[off:])
            except (lzma.LZMAError, zlib.error):
                continue
            if out[:4] == b"\x7fELF":
                return out
    zstd = shutil.which("zstd")
    off = bzimage.find(b"\x28\xb5\x2f\xfd")
    if zstd and off >= 0:
        r = subprocess.run(
            [zstd, "-dcq"], input=bzimage[off:], capture_output=True, timeout=120, check=False
        )
        if r.stdout[:4] == b"\x7fELF":
            return r.stdout
    return None


def prepare_kernel(cache: Path, deb: Path, modules: Sequence[str]) -> tuple[str, Path]:
    """Extract vmlinuz, vmlinux and the module closure; return (kernel version, dir)."""
    m = re.match(r"linux-image-(.+?)_", deb.name)
    if not m:
        raise VMLabError(f"cannot tell the kernel version from {deb.name}")
    kver = m.group(1)
    kdir = cache / f"kernel-{kver}"
    want = json.dumps({"deb": deb.name, "modules": list(modules), "layout": LAYOUT_VERSION})
    stamp = kdir / "stamp.json"
    if stamp.is_file() and stamp.read_text() == want:
        return kver, kdir
    log.info("extracting %s (takes ~10 s)", deb.name)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="extract-", dir=cache) as tmp_s:
        tmp = Path(tmp_s)
        mprefix = f"lib/modules/{kver}/"
        vmlinuz: bytes | None = None
        builtin: set[str] = set()
        available: dict[str, str] = {}
        with _deb_data_tar(deb) as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if name == f"boot/vmlinuz-{kver}":
                    ef = tf.extractfile(member)
                    assert ef is not None
                    vmlinuz = ef.read()
                elif name == mprefix + "modules.builtin":
                    ef = tf.extractfile(member)
                    assert ef is not None
                    for line in ef.read().decode().splitlines():
                        builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
                elif name.startswith(mprefix + "kernel/") and ".ko" in name:
                    rel = name[len(mprefix) :]
                    if ".." in Path(rel).parts:
                        continue
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    ef = tf.extractfile(member)
                    assert ef is not None
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(ef, out)
                    modname = Path(rel).name.split(".ko")[0].replace("-", "_")
                    available[modname] = rel
        if vmlinuz is None:
            raise VMLabError(f"{deb.name} contains no boot/vmlinuz-{kver}")
        if any(not rel.endswith(".ko") for rel in available.values()):
            log.debug("compressed modules present; busybox insmod must support them")
        order = resolve_module_order(available, builtin, _KoReader(tmp), modules)
        new = cache / f"kernel-{kver}.new"
        shutil.rmtree(new, ignore_errors=True)
        for rel in order:
            (new / "modules" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp / rel, new / "modules" / rel)
        (new / "vmlinuz").write_bytes(vmlinuz)
        vmlinux = extract_vmlinux(vmlinuz)
        if vmlinux is not None:
            (new / "vmlinux").write_bytes(vmlinux)
        else:
            log.warning("could not extract an ELF vmlinux; booting the bzImage (slower)")
        (new / "modules.load").write_text("".join(r + "\n" for r in order))
        (new / "stamp.json").write_text(want)
        shutil.rmtree(kdir, ignore_errors=True)
        new.rename(kdir)
    log.info(
        "kernel %s ready in %.1fs: modules %s",
        kver,
        time.monotonic() - t0,
        " ".join(Path(r).name.removesuffix(".ko") for r in order),
    )
    return kver, kdir


# ------------------------------------------------------------------ helpers ---
def build_helpers(cache: Path) -> dict[str, Path]:
    """Compile the static guest helpers (guest/*.c) into cache/bin."""
    out: dict[str, Path] = {}
    bindir = cache / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in HELPERS:
        src = _guest_source(f"{name}.c")
        key = _sha256(src, b"gcc -static -O2 -s")
        exe = bindir / name
        keyfile = bindir / f"{name}.sha256"
        if exe.is_file() and keyfile.is_file() and keyfile.read_text() == key:
            out[name] = exe
            continue
        gcc = shutil.which("gcc")
        if not gcc:
            raise VMLabError("gcc not found (apt-get install gcc libc6-dev)")
        log.info("compiling guest helper %s", name)
        with tempfile.TemporaryDirectory(prefix="cc-", dir=cache) as tmp:
            csrc = Path(tmp) / f"{name}.c"
            csrc.write_bytes(src)
            tmpexe = Path(tmp) / name
            r = _run(
                [gcc, "-static", "-O2", "-s", "-Wall", "-o", str(tmpexe), str(csrc)], timeout=300
            )
            if r.returncode != 0:
                raise VMLabError(
                    f"gcc -static {name}.c failed (libc6-dev installed?):\n{_tail(r.stderr)}"
                )
            shutil.move(str(tmpexe), exe)
        keyfile.write_text(key)
        out[name] = exe
    return out


# ---------------------------------------------------------------- initramfs ---
def _busybox_applets(busybox: str) -> list[str]:
    r = _run([busybox, "--list-full"], timeout=30)
    if r.returncode != 0 or not r.stdout.strip():
        raise VMLabError(f"{busybox} --list-full failed: {r.stderr.strip()}")
    return [a.strip() for a in r.stdout.split() if a.strip()]


def pad_to(data: bytes, align: int) -> bytes:
    return data + b"\0" * ((align - len(data) % align) % align)


def build_base_initramfs(
    cache: Path, kver: str, kdir: Path, busybox: str, helpers: dict[str, Path]
) -> Path:
    """Build (or reuse) the gzip'd base initramfs; returns its path."""
    bb = Path(busybox).read_bytes()
    init = _guest_source("init.sh")
    lib = _guest_source("lib.sh")
    load = (kdir / "modules.load").read_text()
    mods = {rel: (kdir / "modules" / rel).read_bytes() for rel in load.split()}
    helper_bytes = {n: p.read_bytes() for n, p in sorted(helpers.items())}
    key = _sha256(
        str(LAYOUT_VERSION).encode(),
        bb,
        init,
        lib,
        load.encode(),
        *mods.values(),
        *helper_bytes.values(),
    )[:16]
    path = cache / f"initramfs-{kver}-{key}.cpio.gz"
    if path.is_file():
        return path
    log.info("building base initramfs for %s", kver)
    raw = io.BytesIO()
    w = CpioWriter(raw)
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "mnt",
        "p9vmlab",
        "lib",
        "lib/modules",
        f"lib/modules/{kver}",
    ):
        w.add_dir(d)
    w.add_dir("tmp", 0o1777)
    w.add_chardev("dev/console", 5, 1)
    w.add_chardev("dev/null", 1, 3, 0o666)
    w.add_file("bin/busybox", bb, 0o755)
    for applet in _busybox_applets(busybox):
        a = applet.lstrip("/")
        if a != "bin/busybox" and a not in w.names:
            w.add_parents(a)
            w.add_symlink(a, "/bin/busybox")
    for name, data in helper_bytes.items():
        w.add_file(f"bin/{name}", data, 0o755)
    for rel, data in mods.items():
        w.add_parents(f"lib/modules/{kver}/{rel}")
        w.add_file(f"lib/modules/{kver}/{rel}", data)
    w.add_file("p9vmlab/modules.load", load.encode())
    w.add_file("p9vmlab/lib.sh", lib)
    w.add_file("init", init, 0o755)
    w.add_file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    w.add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    w.close()
    # Per-run archives are appended uncompressed. The kernel finds an appended cpio only
    # at a 4-byte aligned offset; NULs between archives are skipped, so pad the gzip
    # member to 512 bytes (otherwise: "invalid magic at start of compressed archive").
    data = pad_to(gzip.compress(raw.getvalue(), compresslevel=6, mtime=0), 512)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)
    # keep a few: two checkouts of different versions share this cache, and
    # pruning the other's image would break its runs
    images = sorted(cache.glob(f"initramfs-{kver}-*.cpio.gz"), key=lambda p: p.stat().st_mtime)
    for old in images[:-4]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


# -------------------------------------------------------------------- setup ---
def kernel_cmdline(debug: bool = False, extra: str = "") -> str:
    base = "console=ttyS0 panic=-1 mitigations=off"
    base += " loglevel=7" if debug else " quiet loglevel=3"
    return f"{base} {extra}".strip()


def qemu_command(
    qemu: str,
    accel: str,
    kernel: Path,
    initrd: Path,
    *,
    memory_mb: int = 1024,
    append: str = "",
    smp: int = 1,
) -> list[str]:
    """The transport-independent part of the QEMU command line (serial on stdout)."""
    return [
        qemu, "-accel", accel, "-M", "pc", "-m", str(memory_mb), "-smp", str(smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]  # fmt: skip


def probe_boot(
    qemu: str, accel: str, kernel: Path, base_initrd: Path, timeout: float = 90
) -> tuple[bool, str]:
    """Boot ``kernel`` to /init and straight back off; return (reached /init, console)."""
    token = "probe"
    ov = io.BytesIO()
    w = CpioWriter(ov, first_ino=1_000_000)
    w.add_file("p9vmlab/config", f"P9_PROBE=1\nP9_DEBUG=0\nP9_TOKEN={token}\n".encode())
    w.close()
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        initrd = Path(tmp) / "initrd"
        initrd.write_bytes(base_initrd.read_bytes() + ov.getvalue())
        cmd = qemu_command(qemu, accel, kernel, initrd, memory_mb=256, append=kernel_cmdline())
        try:
            r = subprocess.run(
                cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
            )
            out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") + "\n[probe timed out]"
    return f"P9VMLAB-{token}-PROBE-OK" in out, out


def _accel() -> str:
    accel = os.environ.get("P9SHARE_VMLAB_ACCEL", "tcg")
    if accel not in ("tcg", "kvm"):
        raise VMLabError(f"P9SHARE_VMLAB_ACCEL must be tcg or kvm, not {accel!r}")
    return accel


def setup(cache: Path | None = None) -> Assets:
    """Make sure everything a guest boot needs is installed, built and cached.

    Idempotent; the first call takes ~20 s (plus downloads), later ones a few ms.
    Raises :class:`VMLabError` with an explanation when something cannot be had.
    """
    cache = (cache or cache_dir()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / "setup.lock"):
        qemu, busybox = ensure_host_deps()
        deb = kernel_deb(cache)
        kver, kdir = prepare_kernel(cache, deb, MODULES)
        helpers = build_helpers(cache)
        initrd = build_base_initramfs(cache, kver, kdir, busybox, helpers)
        accel = _accel()
        mode_file = cache / f"boot-mode-{kver}.json"
        mode_key = json.dumps(
            {
                "initrd": initrd.name,
                "accel": accel,
                "forced": os.environ.get("P9SHARE_VMLAB_BOOT", "auto"),
            }
        )
        mode = None
        if mode_file.is_file():
            saved = json.loads(mode_file.read_text())
            if saved.get("key") == mode_key:
                mode = saved["mode"]
        if mode is None:
            mode = _choose_boot_mode(qemu, accel, kdir, initrd)
            mode_file.write_text(json.dumps({"key": mode_key, "mode": mode}))
        image = kdir / ("vmlinux" if mode == "pvh" else "vmlinuz")
        mods = tuple((kdir / "modules.load").read_text().split())
        pkg = f"linux-image-{kver}"
    return Assets(cache, pkg, kver, image, mode, initrd, mods, qemu, accel)


def _choose_boot_mode(qemu: str, accel: str, kdir: Path, initrd: Path) -> str:
    forced = os.environ.get("P9SHARE_VMLAB_BOOT", "auto")
    if forced in ("pvh", "bzimage"):
        return forced
    if forced != "auto":
        raise VMLabError("P9SHARE_VMLAB_BOOT must be auto, pvh or bzimage")
    if (kdir / "vmlinux").is_file():
        t0 = time.monotonic()
        ok, _ = probe_boot(qemu, accel, kdir / "vmlinux", initrd)
        if ok:
            log.info("PVH direct boot of vmlinux works (probe %.1fs)", time.monotonic() - t0)
            return "pvh"
        log.warning("PVH boot probe failed; falling back to the bzImage (slower boots)")
    ok, console = probe_boot(qemu, accel, kdir / "vmlinuz", initrd, timeout=180)
    if not ok:
        raise VMLabError(f"the guest does not boot even from the bzImage:\n{_tail(console, 30)}")
    return "bzimage"
