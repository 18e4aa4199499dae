"""Boot the test guest once: mount the share (9P or virtio-fs), run a script, collect the result."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .assets import VIRTIOFS_MODULES, Assets, VMLabError, kernel_cmdline, qemu_command, setup
from .cpio import CpioWriter

log = logging.getLogger("p9share.vmlab")

Transport = Literal["tcp", "fd", "virtio", "virtiofs", "none"]
TRANSPORTS: tuple[Transport, ...] = ("tcp", "fd", "virtio", "virtiofs", "none")

#: ``GuestResult.status`` values that are not the script's own exit status.
STATUS_TIMEOUT = 124  # QEMU was killed after ``timeout`` seconds
STATUS_NO_RESULT = 125  # the guest never reported a result (QEMU/boot problem)
STATUS_MOUNT_FAILED = 126  # the mount failed in the guest; output = error + dmesg tail

GUEST_IP = "10.0.2.15"
GATEWAY = "10.0.2.2"  # QEMU user networking maps this to the host's 127.0.0.1
FD_PORT_NAME = "p9share.9p"
VIRTIO_TAG = "p9share"  # mount tag of QEMU's built-in virtio-9p device
VIRTIO_SECURITY_MODELS = ("mapped-xattr", "mapped-file", "passthrough", "none")
VIRTIOFS_TAG = "p9share"  # default mount tag of the vhost-user-fs device
VIRTIOFS_TAG_MAX = 36  # bytes in the device's config space (VIRTIO 1.2, 5.11.4)
KEEP_RUN_DIRS = 20

ExtraFile = bytes | str | os.PathLike[str]


class GuestError(AssertionError):
    """Raised by :meth:`GuestResult.check` when a guest run did not succeed."""


@dataclass
class GuestResult:
    """The outcome of :func:`run_guest`.

    ``status`` is the script's exit status, or one of ``STATUS_TIMEOUT`` (124),
    ``STATUS_NO_RESULT`` (125), ``STATUS_MOUNT_FAILED`` (126). ``output`` is what the
    script wrote to stdout and stderr (for a mount failure: the mount error and the
    guest's dmesg tail). ``console`` is the whole serial console. ``boot_seconds`` is
    the host wall time from starting QEMU until the share was mounted (or the mount
    failed); ``mount_line`` the guest's /proc/mounts line of the share ("" for
    transport "none").
    """

    status: int
    output: str
    console: str
    boot_seconds: float | None
    mount_line: str
    wall_seconds: float = 0.0
    error: str = ""
    run_dir: Path | None = None  # kept only when the run failed (or keep=True)

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def timed_out(self) -> bool:
        return self.status == STATUS_TIMEOUT and bool(self.error)

    @property
    def mount_failed(self) -> bool:
        return self.status == STATUS_MOUNT_FAILED and bool(self.error)

    def describe(self) -> str:
        lines = [f"guest status {self.status}" + (f": {self.error}" if self.error else "")]
        if self.run_dir:
            lines.append(f"run dir: {self.run_dir}")
        lines.append("--- output ---")
        lines.append(self.output.rstrip())
        if self.status in (STATUS_TIMEOUT, STATUS_NO_RESULT):
            lines.append("--- console (tail) ---")
            lines += self.console.rstrip().splitlines()[-30:]
        return "\n".join(lines)

    def check(self) -> GuestResult:
        """Return self if the status is 0, else raise :class:`GuestError` with details."""
        if self.status != 0:
            raise GuestError(self.describe())
        return self


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _mount_options(
    transport: Transport,
    port: int | None,
    version: str,
    aname: str,
    mount_opts: str,
    tag: str = VIRTIOFS_TAG,
) -> tuple[str, str]:
    if transport == "virtiofs":
        # the 6.1 virtiofs client rejects 9P options; only the caller's are passed
        return tag, mount_opts.strip(",")
    if transport == "tcp":
        src, opts = GATEWAY, f"trans=tcp,port={port}"
    elif transport == "fd":
        src, opts = "p9share", "trans=fd,rfdno=3,wfdno=4"
    elif transport == "virtio":
        src, opts = VIRTIO_TAG, "trans=virtio"
    else:
        return "", ""
    opts += f",version={version}"
    if aname:
        opts += f",aname={aname}"
    if mount_opts:
        opts += "," + mount_opts.strip(",")
    return src, opts


def _valid_tag(tag: str) -> bool:
    return (
        0 < len(tag.encode()) <= VIRTIOFS_TAG_MAX
        and re.fullmatch(r"[A-Za-z0-9._-]+", tag) is not None
    )


def _overlay(
    token: str,
    script: str,
    args: Sequence[str],
    config: Mapping[str, str],
    extra_files: Mapping[str, ExtraFile] | None,
) -> bytes:
    """The per-run uncompressed cpio appended to the base initramfs."""
    buf = io.BytesIO()
    w = CpioWriter(buf, first_ino=1_000_000)
    w.add_dir("p9vmlab")
    cfg = "".join(f"{k}={_shq(v)}\n" for k, v in config.items())
    cfg += "export " + " ".join(k for k in config if k.startswith("P9_")) + "\n"
    w.add_file("p9vmlab/config", cfg.encode())
    w.add_file("p9vmlab/script", script.encode())
    run = "#!/bin/sh\n. /p9vmlab/config\n. /p9vmlab/lib.sh\nset --"
    run += "".join(" " + _shq(a) for a in args)
    run += "\n. /p9vmlab/script\n"
    w.add_file("p9vmlab/run", run.encode(), 0o755)
    for guest_path, src in (extra_files or {}).items():
        if not guest_path.startswith("/"):
            raise ValueError(f"extra_files: guest path {guest_path!r} must be absolute")
        w.add_parents(guest_path)
        if isinstance(src, bytes):
            exe = src.startswith((b"#!", b"\x7fELF"))
            w.add_file(guest_path, src, 0o755 if exe else 0o644)
            continue
        p = Path(src)
        if not p.is_file():
            raise VMLabError(f"extra_files: {p} is not a file")
        w.add_file(guest_path, p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    w.close()
    return buf.getvalue()


class _ConsoleReader(threading.Thread):
    """Copies QEMU's stdout (the guest serial console) to a file and a buffer."""

    def __init__(self, stream: io.BufferedReader, logfile: Path, ready_marks: Sequence[bytes]):
        super().__init__(daemon=True, name="vmlab-console")
        self.stream = stream
        self.logfile = logfile
        self.data = bytearray()
        self.ready_marks = ready_marks
        self.ready_at: float | None = None

    def run(self) -> None:
        fd = self.stream.fileno()
        with open(self.logfile, "wb") as log_f:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                log_f.write(chunk)
                log_f.flush()
                start = max(0, len(self.data) - 64)
                self.data += chunk
                if self.ready_at is None and any(
                    self.data.find(m, start) >= 0 for m in self.ready_marks
                ):
                    self.ready_at = time.monotonic()


def _prune_runs(runs: Path) -> None:
    dirs = sorted((d for d in runs.glob("run-*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for d in dirs[:-KEEP_RUN_DIRS]:
        shutil.rmtree(d, ignore_errors=True)


def run_guest(
    script: str,
    *,
    transport: Transport = "tcp",
    port: int | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    virtio_dir: str | os.PathLike[str] | None = None,
    virtio_security: str = "mapped-xattr",
    virtiofs_tag: str = VIRTIOFS_TAG,
    aname: str = "",
    version: str = "9p2000.L",
    mount_opts: str = "",
    timeout: float = 300,
    extra_files: Mapping[str, ExtraFile] | None = None,
    args: Sequence[str] = (),
    memory_mb: int = 1024,
    mount_retries: int = 3,
    keep: bool = False,
    debug: bool = False,
    assets: Assets | None = None,
) -> GuestResult:
    """Boot the guest, mount the share at /mnt, run ``script`` there, power off.

    ``script`` is busybox ``sh`` source, run with cwd = /mnt (an empty directory for
    transport "none"), ``"$@"`` = ``args``, stdin = /dev/null, stderr merged into
    stdout, and the helpers of ``guest/lib.sh`` loaded. Transports:

    * ``"tcp"``: the server listens on host 127.0.0.1:``port``; the guest mounts
      ``10.0.2.2`` with ``trans=tcp,port=PORT`` (QEMU user networking).
    * ``"fd"``: the server listens on the host Unix socket ``socket_path``; QEMU
      connects to it and exposes it as the virtio-serial port ``p9share.9p``; the
      guest mounts with ``trans=fd,rfdno=3,wfdno=4`` through a FIFO relay.
    * ``"virtio"``: no host server; QEMU's built-in virtio-9p device serves the host
      directory ``virtio_dir`` (``-fsdev local,security_model=virtio_security``:
      mapped-xattr, mapped-file, passthrough or none) and the guest mounts the tag
      ``p9share`` with ``trans=virtio``.
    * ``"virtiofs"``: a vhost-user-fs back end (virtiofsd, or p9share with
      ``--listen vhost-user:SOCK``) listens on the host Unix socket ``socket_path``;
      QEMU connects to it as the device ``vhost-user-fs-pci`` with the tag
      ``virtiofs_tag``, guest RAM is a shared memfd the back end maps, and the guest
      loads fuse + virtiofs and mounts ``mount -t virtiofs TAG /mnt``. The socket is
      never probed by connecting (virtiofsd serves exactly one connection). The
      cache mode is the back end's choice; ``mount_opts`` are the client's only
      (the 6.1 client knows ``dax`` and the generic ones).
    * ``"none"``: no mount.

    ``mount_opts`` is appended last, so it overrides the defaults. ``extra_files``
    maps absolute guest paths to file contents (bytes; mode 0755 if they start with
    ``#!`` or are ELF, else 0644) or host file paths (str or PathLike; mode kept).
    The static helpers ``p9xattr``, ``p9lock``, ``p9posix`` and ``p9now`` (a microsecond
    clock) are always in /bin. ``timeout``
    covers the whole run, boot included; then QEMU is killed (status 124). The run
    directory (console.log, qemu.cmd, qemu.log, initrd) is removed afterwards unless
    the status is non-zero or ``keep`` is set; the newest 20 kept ones survive.

    Never raises for guest-side problems: see :class:`GuestResult` for the status
    codes. Raises :class:`VMLabError` when the host cannot run a guest at all, and
    ValueError for bad arguments.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be tcp, fd, virtio, virtiofs or none, not {transport!r}")
    if transport == "tcp" and not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError("transport 'tcp' needs port=N (the server's port on 127.0.0.1)")
    sock: Path | None = None
    if transport in ("fd", "virtiofs"):
        server = "9P server" if transport == "fd" else "vhost-user-fs back end"
        if socket_path is None:
            raise ValueError(
                f"transport {transport!r} needs socket_path= (the {server}'s Unix socket)"
            )
        sock = Path(socket_path).resolve()
        if not sock.is_socket():
            raise VMLabError(f"{sock} is not a Unix socket (is the {server} listening there?)")
        if "," in str(sock):
            raise ValueError("socket_path must not contain ',' (QEMU option syntax)")
    if transport == "virtiofs" and not _valid_tag(virtiofs_tag):
        raise ValueError(
            f"virtiofs_tag must be 1-{VIRTIOFS_TAG_MAX} bytes of letters, digits, '.', '_' "
            f"or '-', not {virtiofs_tag!r}"
        )
    share: Path | None = None
    if transport == "virtio":
        if virtio_dir is None:
            raise ValueError("transport 'virtio' needs virtio_dir= (the host directory to share)")
        if virtio_security not in VIRTIO_SECURITY_MODELS:
            raise ValueError(
                f"virtio_security must be one of {', '.join(VIRTIO_SECURITY_MODELS)}, "
                f"not {virtio_security!r}"
            )
        share = Path(virtio_dir).resolve()
        if not share.is_dir():
            raise VMLabError(f"virtio_dir {share} is not a directory")
        if "," in str(share):
            raise ValueError("virtio_dir must not contain ',' (QEMU option syntax)")
    if assets is None:
        assets = setup()

    token = secrets.token_hex(6)
    src, opts = _mount_options(transport, port, version, aname, mount_opts, virtiofs_tag)
    config = {
        "P9_TOKEN": token,
        "P9_TRANSPORT": transport,
        "P9_FSTYPE": "virtiofs" if transport == "virtiofs" else "9p",
        # 9P guests boot as before: fuse and virtiofs stay in the image, unloaded
        "P9_SKIP_MODULES": "" if transport == "virtiofs" else " ".join(VIRTIOFS_MODULES),
        "P9_MNT": "/mnt",
        "P9_MOUNT_SRC": src,
        "P9_MOUNT_OPTS": opts,
        "P9_VERSION": version,
        "P9_ANAME": aname,
        "P9_PORT": str(port or ""),
        "P9_PORT_NAME": FD_PORT_NAME,
        "P9_NET": "1" if transport == "tcp" else "0",
        "P9_GUEST_IP": GUEST_IP,
        "P9_GATEWAY": GATEWAY,
        "P9_MOUNT_RETRIES": str(max(1, mount_retries)),
        "P9_DEBUG": "1" if debug else "0",
        "P9_PROBE": "0",
    }
    runs = assets.cache_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    initrd = run_dir / "initrd.img"
    initrd.write_bytes(
        assets.initramfs.read_bytes() + _overlay(token, script, args, config, extra_files)
    )
    cmd = qemu_command(
        assets.qemu,
        assets.accel,
        assets.kernel_image,
        initrd,
        memory_mb=memory_mb,
        append=kernel_cmdline(debug),
    )
    if transport == "tcp":
        cmd += ["-netdev", "user,id=n0,ipv6=off", "-device", "virtio-net-pci,netdev=n0,romfile="]
    if transport == "virtiofs":
        assert sock is not None
        # vhost-user: the back end maps guest RAM, so it must be a shared memfd of
        # exactly -m; QEMU is the socket's client and blocks until the back end answers
        cmd += [
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=vfs,path={sock}",
            "-device", f"vhost-user-fs-pci,chardev=vfs,tag={virtiofs_tag}",
        ]  # fmt: skip
    elif sock is not None:
        cmd += [
            "-chardev", f"socket,id=c9p,path={sock}",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", f"virtserialport,bus=vser0.0,chardev=c9p,name={FD_PORT_NAME}",
        ]  # fmt: skip
    if share is not None:
        cmd += [
            "-fsdev", f"local,id=fs9p,path={share},security_model={virtio_security}",
            "-device", f"virtio-9p-pci,fsdev=fs9p,mount_tag={VIRTIO_TAG}",
        ]  # fmt: skip
    (run_dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
    (run_dir / "script.sh").write_text(script)
    log.info("booting guest (%s%s) in %s", transport, f" {opts}" if opts else "", run_dir)

    marker = f"P9VMLAB-{token}-"
    ready_marks = [f"{marker}READY".encode(), f"{marker}MOUNT-FAILED".encode()]
    t0 = time.monotonic()
    timed_out = False
    with open(run_dir / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=qlog,
            start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        reader = _ConsoleReader(proc.stdout, run_dir / "console.log", ready_marks)  # type: ignore[arg-type]
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            log.warning("guest timed out after %ss; killing QEMU (pid %d)", timeout, proc.pid)
            proc.kill()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.error("QEMU pid %d did not die after SIGKILL", proc.pid)
        except BaseException:
            proc.kill()
            proc.wait(timeout=30)
            raise
        finally:
            reader.join(timeout=10)
            proc.stdout.close()
    wall = time.monotonic() - t0
    boot = (reader.ready_at - t0) if reader.ready_at is not None else None
    result = _parse_console(bytes(reader.data), marker, token, timed_out, timeout)
    result.wall_seconds = wall
    result.boot_seconds = boot
    if result.status == STATUS_NO_RESULT:
        qemu_err = (run_dir / "qemu.log").read_text(errors="replace").strip()
        if proc.returncode not in (0, None) or qemu_err:
            result.error += (
                f" (QEMU exit status {proc.returncode}: {qemu_err[-2000:] or 'no message'})"
            )
    if keep or result.status != 0:
        (run_dir / "result.txt").write_text(result.describe() + "\n")
        result.run_dir = run_dir
        log.info("run directory kept: %s", run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    _prune_runs(runs)
    return result


_END_RE_TMPL = r"\n=====P9VMLAB-{token}-END rc=(\d+)====="


def _parse_console(
    raw: bytes, marker: str, token: str, timed_out: bool, timeout: float
) -> GuestResult:
    text = raw.decode("utf-8", errors="replace")
    console = text.replace("\r\n", "\n")
    mount_line = ""
    m = re.search(re.escape(marker) + r"READY uptime=\S+ mount=(.*?)\r?\n", text)
    if m:
        mount_line = m.group(1).strip()
    begin = f"=====P9VMLAB-{token}-BEGIN====="
    b = text.find(begin)
    if b >= 0:
        nl = text.find("\n", b)
        crlf = text[nl - 1 : nl + 1] == "\r\n"  # console still translates \n -> \r\n
        body_start = nl + 1
        ends = list(re.finditer(_END_RE_TMPL.format(token=token), text[body_start - 1 :]))
        if ends:
            e = ends[-1]
            output = text[body_start : body_start - 1 + e.start()]
            if crlf:
                output = output.replace("\r\n", "\n")
                output = output.removesuffix("\r")
            status = int(e.group(1))
            return GuestResult(status, output, console, None, mount_line)
        output = text[body_start:].replace("\r\n", "\n") if crlf else text[body_start:]
        if timed_out:
            return GuestResult(
                STATUS_TIMEOUT, output, console, None, mount_line,
                error=f"the script did not finish within {timeout:g}s; QEMU was killed",
            )  # fmt: skip
        return GuestResult(
            STATUS_NO_RESULT, output, console, None, mount_line,
            error="the guest stopped while the script was running (no end marker)",
        )  # fmt: skip
    mf = re.search(
        re.escape(marker)
        + r"MOUNT-FAILED (.*?)\r?\n(.*?)"
        + re.escape(marker)
        + "MOUNT-FAILED-END",
        text,
        re.S,
    )
    if mf:
        return GuestResult(
            STATUS_MOUNT_FAILED, mf.group(2).replace("\r\n", "\n"), console, None, "",
            error=f"the mount failed in the guest ({mf.group(1).strip()})",
        )  # fmt: skip
    if timed_out:
        return GuestResult(
            STATUS_TIMEOUT, "", console, None, mount_line,
            error=f"the guest did not get to the script within {timeout:g}s; QEMU was killed",
        )  # fmt: skip
    return GuestResult(
        STATUS_NO_RESULT, "", console, None, mount_line,
        error="the guest never reported a result (boot or QEMU problem)",
    )  # fmt: skip
