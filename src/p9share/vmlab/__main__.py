"""Command line: ``python -m p9share.vmlab setup | info | run | record``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .assets import VMLabError, setup
from .runner import TRANSPORTS, VIRTIOFS_TAG, ExtraFile, run_guest


def _cmd_setup(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    assets = setup()
    print(
        f"vmlab ready in {time.monotonic() - t0:.1f}s: kernel {assets.kernel_version} "
        f"({assets.boot_mode} boot, accel {assets.accel}), cache {assets.cache_dir}",
        file=sys.stderr,
    )
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    s = setup()
    print(f"cache:      {s.cache_dir}")
    print(f"kernel:     {s.kernel_package} ({s.kernel_version})")
    print(f"boot image: {s.kernel_image} ({s.boot_mode})")
    print(f"initramfs:  {s.initramfs} ({s.initramfs.stat().st_size // 1024} KiB)")
    print(f"modules:    {' '.join(Path(m).stem for m in s.modules)}")
    print(f"qemu:       {s.qemu} (accel {s.accel})")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    script = sys.stdin.read() if a.script == "-" else Path(a.script).read_text()
    files: dict[str, ExtraFile] = {}
    for spec in a.file:
        host, _, guest = spec.partition(":")
        files[guest or "/root/" + Path(host).name] = Path(host)
    res = run_guest(
        script,
        transport=a.transport,
        port=a.port,
        socket_path=a.socket,
        virtio_dir=a.dir,
        virtio_security=a.security_model,
        virtiofs_tag=a.tag,
        aname=a.aname,
        version=a.version,
        mount_opts=",".join(a.opts),
        timeout=a.timeout,
        extra_files=files,
        args=a.args,
        keep=a.keep,
        debug=a.debug,
    )
    sys.stdout.write(res.output)
    sys.stdout.flush()
    if res.error:
        print(f"vmlab: {res.error}", file=sys.stderr)
    if res.mount_line:
        print(f"vmlab: mounted: {res.mount_line}", file=sys.stderr)
    boot = f"{res.boot_seconds:.2f}s" if res.boot_seconds is not None else "?"
    print(
        f"vmlab: status={res.status} boot={boot} wall={res.wall_seconds:.2f}s"
        + (f" run_dir={res.run_dir}" if res.run_dir else ""),
        file=sys.stderr,
    )
    return res.status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:  # its own parser: python -m p9share.vmlab record --help
        from .recorder import main as record_main

        logging.basicConfig(level=logging.INFO, format="vmlab: %(message)s")
        try:
            return record_main(argv[1:])
        except VMLabError as e:
            print(f"vmlab: error: {e}", file=sys.stderr)
            return 2
    ap = argparse.ArgumentParser(prog="python -m p9share.vmlab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="install/build everything (idempotent)")
    sub.add_parser("info", help="show what would be used")
    r = sub.add_parser(
        "run",
        help="boot, mount, run SCRIPT in the mount, exit with its status "
        "(124 timeout, 125 no result, 126 mount failed)",
    )
    r.add_argument("--transport", "-t", choices=TRANSPORTS, default="tcp")
    r.add_argument("--port", "-p", type=int, help="server port on 127.0.0.1 (tcp)")
    r.add_argument(
        "--socket", "-s", help="server's Unix socket (fd), vhost-user-fs back end's (virtiofs)"
    )
    r.add_argument("--tag", default=VIRTIOFS_TAG, help="virtio-fs mount tag (virtiofs)")
    r.add_argument("--dir", help="host directory QEMU's virtio-9p shares (virtio)")
    r.add_argument(
        "--security-model",
        default="mapped-xattr",
        help="virtio-9p security_model: mapped-xattr (default), mapped-file, passthrough, none",
    )
    r.add_argument("--aname", "-a", default="", help="attach name (diod: the export path)")
    r.add_argument("--version", default="9p2000.L")
    r.add_argument(
        "-o", "--opts", action="append", default=[], help="extra mount options (appended last)"
    )
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="HOST[:GUEST]",
        help="copy a host file into the guest (default /root/NAME)",
    )
    r.add_argument("--keep", action="store_true", help="keep the run directory")
    r.add_argument("--debug", action="store_true", help="kernel messages on the console")
    r.add_argument("script", help="busybox sh script, or - for stdin")
    r.add_argument("args", nargs="*", help='arguments for the script ("$@")')
    sub.add_parser("record", help="record golden vectors against diod (record --help)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vmlab: %(message)s")
    try:
        if a.cmd == "setup":
            return _cmd_setup(a)
        if a.cmd == "info":
            return _cmd_info(a)
        return _cmd_run(a)
    except VMLabError as e:
        print(f"vmlab: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"vmlab: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
