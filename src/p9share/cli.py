"""The p9share command line.

    p9share serve [PATH] [--export NAME=PATH[:ro]]... [--listen ADDR]...
                  [--msize BYTES] [--log-level LEVEL] [--config FILE] [--audit-log FILE]
                  [--user NAME] [--landlock auto|required|off] [--seccomp auto|required|off]
                  [--cache none|auto|always] [--metrics ADDR]
      ADDR: tcp:HOST:PORT, tls:HOST:PORT, unix:PATH, fd:N, systemd:NAME (9P)
            or vhost-user:PATH (virtio-fs)
    p9share top ADDR [--interval SECONDS]
    p9share check-config FILE
    p9share keygen [--id NAME] [-o FILE]

This grammar is a contract that scripts and the tests rely on: keep it stable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .audit import AuditLog
from .conformance import cli as conformance_cli
from .policy import Export, Policy
from .policy.config import Config, ConfigError, Listener, load_config
from .protocol.constants import DEFAULT_MAX_MSIZE, MIN_MSIZE
from .server import systemd
from .server.limits import Limits
from .server.metrics import MetricsEndpoint
from .server.transport import Address, AddressError, TlsSettings, parse_address

DEFAULT_LISTEN = "tcp:127.0.0.1:5640"
MAX_MSIZE_LIMIT = 16 * 1024 * 1024


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _export_arg(text: str) -> Export:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise UsageError(f"bad --export {text!r}: expected NAME=PATH or NAME=PATH:ro")
    if "/" in name:
        raise UsageError(f"bad export name {name!r}: it must not contain '/'")
    readonly = False
    if rest.endswith(":ro"):
        rest, readonly = rest[:-3], True
    elif rest.endswith(":rw"):
        rest = rest[:-3]
    return Export(name, rest, readonly)


def _check_dir(exp: Export) -> Export:
    path = os.path.abspath(exp.path)
    if not os.path.exists(path):
        raise UsageError(f"export {exp.name!r}: {exp.path}: no such directory")
    if not os.path.isdir(path):
        raise UsageError(f"export {exp.name!r}: {exp.path}: not a directory")
    return dataclasses.replace(exp, path=path)


def build_policy(path: str | None, exports: Sequence[str], cache: str = "auto") -> Policy:
    """The one-export-per-flag policy the command line stands for."""
    items: list[Export] = [_export_arg(e) for e in exports]
    if path is not None or not items:
        p = os.path.abspath(path if path is not None else ".")
        items.insert(0, Export(os.path.basename(p.rstrip("/")) or "root", p))
    policy = Policy()
    for exp in (dataclasses.replace(e, cache=cache) for e in items):
        if exp.name in policy.exports:
            raise UsageError(f"export name {exp.name!r} is used twice")
        policy.exports[exp.name] = _check_dir(exp)
    return policy


def _msize_arg(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise UsageError(f"bad --msize {text!r}: expected a number of bytes") from None
    if not MIN_MSIZE <= n <= MAX_MSIZE_LIMIT:
        raise UsageError(f"--msize {n} out of range: {MIN_MSIZE} to {MAX_MSIZE_LIMIT}")
    return n


def mount_hint(addr: Address, export: str, msize: int) -> str:
    """The guest-side command that mounts this listener."""
    opts = f"version=9p2000.L,msize={msize},aname={export}"
    if addr.kind == "tcp":
        host = "10.0.2.2" if addr.host in ("127.0.0.1", "localhost", "::1") else addr.host
        note = (
            " (QEMU user networking: 10.0.2.2 is the host's loopback)" if host == "10.0.2.2" else ""
        )
        return f"mount -t 9p -o trans=tcp,port={addr.port},{opts} {host} /mnt{note}"
    if addr.kind == "unix":
        return (
            f"QEMU: -chardev socket,id=p9,path={addr.path} -device virtio-serial-pci "
            f"-device virtserialport,chardev=p9,name=p9share; guest: mount -t 9p -o "
            f"trans=fd,rfdno=3,wfdno=4,{opts} p9share /mnt 3<PORT-IN 4>PORT-OUT"
        )
    if addr.kind == "systemd":
        return f"the socket systemd passed as {addr.path!r}"
    if addr.kind == "vhost-user":
        return (
            f"QEMU: -object memory-backend-memfd,id=mem,size=RAM,share=on -numa node,memdev=mem "
            f"-chardev socket,id=fs,path={addr.path} -device vhost-user-fs-pci,chardev=fs,"
            f"tag={export}; guest: mount -t virtiofs {export} /mnt"
        )
    return f"serving the inherited connection {addr}"


def _activated(addrs: list[tuple[Address, str]]) -> list[tuple[Address, str]]:
    """systemd:NAME listeners with the fds systemd passed (socket activation);
    every passed socket must be named by a listener."""
    passed = systemd.passed_sockets()
    names = [a.path for a, _ in addrs if a.kind == "systemd"]
    if not names and not passed:
        return addrs
    try:
        fds = systemd.resolve(names, passed)
    except systemd.ActivationError as e:
        raise UsageError(str(e)) from None
    return [(dataclasses.replace(a, fd=fds[a.path]) if a.kind == "systemd" else a, name)
            for a, name in addrs]  # fmt: skip


def load_checked(path: str) -> tuple[Config, Limits]:
    """A policy file with every value checked, the limits included (their
    meaning lives with the server that enforces them)."""
    cfg = load_config(path)
    try:
        limits = Limits.from_mapping(cfg.limits)
    except ValueError as e:
        raise ConfigError(f"{path}: limits: {e}") from None
    for cl in (cfg.policy.clients or {}).values():
        try:
            Limits.from_mapping(cl.limits, base=limits)
        except ValueError as e:
            raise ConfigError(f"{path}: clients.{cl.name}.limits: {e}") from None
    return cfg, limits


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg, _ = load_checked(args.file)
    clients = cfg.policy.clients or {}
    print(f"{args.file}: OK: {len(cfg.policy.exports)} exports "
          f"({', '.join(cfg.policy.exports)}), {len(clients)} clients "
          f"({', '.join(clients)}), {len(cfg.listeners)} listeners")  # fmt: skip
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .security.auth import KeyFileError, keygen

    try:
        text = keygen(args.id, args.output)
    except KeyFileError as e:
        raise UsageError(str(e)) from None
    if args.output:
        print(f"p9share: key {text.split()[1]} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def self_sandbox(cfg: Config, args: argparse.Namespace, audit: AuditLog) -> None:
    """Apply the self-sandbox (Landlock on the exports, no_new_privs, the
    service account or, for a root server, only a file server's
    capabilities). Prints and audits what was done; UsageError if it cannot
    be done as configured."""
    from .security import seccomp
    from .security.sandbox import SandboxConfig, SandboxError, apply_sandbox, probe_open

    mode = args.landlock or cfg.sandbox.landlock
    user = args.user or cfg.sandbox.user
    exports = cfg.policy.exports.values()
    # passthrough and range exports give files the guests' ids: that needs
    # root's chown, so root stays, with only a file server's capabilities
    id_exports = [e.name for e in exports if e.idmap.mode in ("passthrough", "range")]
    if user is not None and id_exports and os.geteuid() == 0:
        print(f"p9share: sandbox note: staying root (a file server's capabilities only), "
              f"not {user}: exports {', '.join(id_exports)} map guest ids onto host ids",
              file=sys.stderr)  # fmt: skip
        user = None
    sc = SandboxConfig(
        rw_paths=[e.path for e in exports if not e.readonly],
        # read-only exports, and what SIGHUP reads again
        ro_paths=[e.path for e in exports if e.readonly]
        + ([cfg.source] if os.path.isfile(cfg.source) else [])
        + list(cfg.key_files),
        user=user,
        group=cfg.sandbox.group,
        keep_root_caps=user is None and os.geteuid() == 0,
        required=mode == "required",
        landlock=mode != "off",
        seccomp=args.seccomp or cfg.sandbox.seccomp,
    )
    try:
        report = apply_sandbox(sc)
    except SandboxError as e:
        raise UsageError(f"self-sandbox: {e}") from None
    print(f"p9share: sandbox: {report.summary()}", file=sys.stderr)
    if not report.landlock:
        print(f"p9share: warning: no Landlock ({report.landlock_reason}): a server bug "
              "could reach any file this account can", file=sys.stderr)  # fmt: skip
    if not report.seccomp:
        print(f"p9share: warning: no system-call filter ({report.seccomp_reason}): a server "
              "bug could make any system call this account can", file=sys.stderr)  # fmt: skip
    for note in report.notes:
        print(f"p9share: sandbox note: {note}", file=sys.stderr)
    audit.emit("sandbox", summary=report.summary(), landlock=report.landlock,
               seccomp=report.seccomp, seccomp_reason=report.seccomp_reason,
               seccomp_allowed=report.seccomp_allowed, notes=report.notes)  # fmt: skip
    # test hook: prove from inside the process what it can still open
    probe = os.environ.get("P9SHARE_SANDBOX_PROBE")
    if probe:
        for path, result in probe_open(probe.split(os.pathsep)).items():
            print(f"p9share: sandbox probe {path}: {result}", file=sys.stderr)
            audit.emit("sandbox", probe=path, result=result)
    calls = os.environ.get("P9SHARE_SECCOMP_PROBE")  # e.g. "execve,ptrace,mount"
    if calls:
        for name, result in seccomp.probe(calls.split(",")).items():
            print(f"p9share: sandbox probe {name}(): {result}", file=sys.stderr)
            audit.emit("sandbox", probe=f"{name}()", result=result)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.server import Server

    if args.config:
        if args.path is not None or args.export or args.cache:
            raise UsageError(
                "--config names the exports: give no PATH, --export or --cache with it"
            )
        cfg, limits = load_checked(args.config)
    else:
        policy = build_policy(args.path, args.export, args.cache or "auto")
        cfg, limits = Config(policy), Limits()
    policy = cfg.policy
    msize = _msize_arg(args.msize) if args.msize else (cfg.msize or DEFAULT_MAX_MSIZE)
    if args.listen:
        listeners = [Listener(a, a) for a in args.listen]
    else:
        listeners = cfg.listeners or [Listener(DEFAULT_LISTEN, DEFAULT_LISTEN)]
    addrs = _activated([(parse_address(ln.address), ln.name) for ln in listeners])
    served = {ln.name: ln.export for ln in listeners}  # vhost-user: the export of each
    tls = TlsSettings(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca) if cfg.tls else None
    if any(a.kind == "tls" for a, _ in addrs) and tls is None:
        raise UsageError(
            "a tls: listener needs a policy file with [server.tls] cert, key, client_ca"
        )
    try:
        audit = AuditLog(args.audit_log or cfg.audit_log)
    except OSError as e:
        raise UsageError(f"cannot open audit log {e.filename}: {e.strerror}") from None
    try:
        server = Server(
            policy, msize=msize, limits=limits, audit=audit, auth_required=cfg.auth_required,
            max_connections=cfg.max_connections, metrics=bool(args.metrics),
        )  # fmt: skip
    except OSError as e:
        audit.close()
        raise UsageError(f"cannot open export: {e.filename or ''} {e.strerror}".strip()) from None
    log = logging.getLogger("p9share")
    try:
        bound = [
            server.bind(a, tls=tls if a.kind == "tls" else None, name=name, export=served[name])
            for a, name in addrs
        ]
        endpoint = None
        if args.metrics and server.metrics is not None:
            try:
                endpoint = MetricsEndpoint(args.metrics, server.metrics)
            except ValueError as e:
                raise UsageError(str(e)) from None
        # its socket is made now: the sandbox refuses new sockets
        notifier = systemd.Notifier()
        # listeners bound, exports open, no thread started yet: confine ourselves
        self_sandbox(cfg, args, audit)
    except (AddressError, UsageError):
        server.stop()
        audit.close()
        raise

    # A handler runs between two bytecodes of the main thread, which may hold
    # a lock the work needs (the audit queue's, the server's): a reload done
    # there deadlocked when SIGHUP came during start-up. The handlers only
    # note the signal; the loop below acts on it.
    signals: list[int] = []

    def note(signum: int, _frame: object) -> None:
        signals.append(signum)

    def reload() -> None:
        if not args.config:
            log.warning("SIGHUP: no policy file to reload (serving the command line's exports)")
            return
        notifier.reloading()
        try:
            new, _ = load_checked(args.config)
            closed = server.reload(new.policy)
        except Exception as e:
            log.error("SIGHUP: policy not reloaded, the old one stays: %s", e)
            audit.emit("reload", ok=False, policy=args.config, reason=str(e))
            notifier.ready(f"policy {args.config} not reloaded: {e}")
            return
        log.info("SIGHUP: policy %s reloaded; %d connections closed", args.config, len(closed))
        audit.emit("reload", ok=True, policy=args.config, closed=closed)
        notifier.ready(f"serving {len(bound)} listeners; policy reloaded")

    # handlers before serving: a SIGHUP or SIGTERM never finds the default action
    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGHUP, note)
    server.start()
    if endpoint is not None:
        endpoint.start()
        print(f"p9share: metrics on {endpoint.address} (GET /metrics)", file=sys.stderr)
    for exp in policy.exports.values():
        log.info("export %r: %s%s (ids: %s)", exp.name, exp.path,
                 " (read-only)" if exp.readonly else "", exp.idmap.mode)  # fmt: skip
    first = next(iter(policy.exports))
    for b in bound:
        print(f"p9share: serving on {b}", file=sys.stderr)
        print(f"  guest: {mount_hint(b, first, msize)}", file=sys.stderr)
    if policy.clients is None:
        print(
            "p9share: warning: no policy file: any local user who can reach these "
            "listeners can read and write the exports",
            file=sys.stderr,
        )
    else:
        print(f"p9share: policy {cfg.source}: clients {', '.join(policy.clients)}",
              file=sys.stderr)  # fmt: skip
    audit.emit("start", listeners=[str(b) for b in bound], exports=list(policy.exports),
               policy=cfg.source)  # fmt: skip
    sys.stderr.flush()
    # ready: bound, sandboxed, serving (Type=notify)
    notifier.ready(f"serving {len(bound)} listeners, exports {', '.join(policy.exports)}")

    while not server.wait(min(0.2, notifier.tick())):
        while signals:
            signum = signals.pop(0)
            if signum == signal.SIGHUP:
                reload()
            else:
                log.info("signal %d: stopping", signum)
                notifier.stopping()
                server.stop()
    notifier.stopping()
    if endpoint is not None:
        endpoint.stop()
    server.stop()
    audit.close()
    notifier.close()
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from .top import main as top_main

    if not 0.1 <= args.interval <= 60:
        raise UsageError("--interval takes 0.1 to 60 seconds")
    return top_main(args.address, args.interval)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p9share", description="Share host directories with VMs over 9P and virtio-fs."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="export directories over 9P and virtio-fs")
    s.add_argument("path", nargs="?", help="directory to export (default: the current directory)")
    s.add_argument("--export", action="append", default=[], metavar="NAME=PATH[:ro]",
                   help="export PATH under attach name NAME (repeatable)")  # fmt: skip
    s.add_argument("--listen", action="append", metavar="ADDR",
                   help=f"tcp:HOST:PORT, unix:PATH, fd:N, systemd:NAME or vhost-user:PATH (repeatable; default {DEFAULT_LISTEN})")  # fmt: skip
    s.add_argument(
        "--msize",
        metavar="BYTES",
        help=f"largest message size offered (default {DEFAULT_MAX_MSIZE})",
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--config", metavar="FILE",
                   help="policy file (TOML): exports, clients, listeners; SIGHUP reloads it")  # fmt: skip
    s.add_argument("--audit-log", metavar="FILE", help="append JSON-lines audit records to FILE")
    s.add_argument("--user", metavar="NAME",
                   help="service account to run as after binding (default: stay; "
                        "root keeps only a file server's capabilities)")  # fmt: skip
    s.add_argument("--landlock", choices=["auto", "required", "off"],
                   help="confine the server to its exports (default auto: where available)")  # fmt: skip
    s.add_argument("--cache", choices=["none", "auto", "always"],
                   help="virtio-fs cache mode of the exports (default auto; a policy file "
                        "sets it per export)")  # fmt: skip
    s.add_argument("--metrics", metavar="ADDR",
                   help="serve Prometheus metrics (GET /metrics) on tcp:HOST:PORT or unix:PATH")  # fmt: skip
    s.add_argument("--seccomp", choices=["auto", "required", "off"],
                   help="filter the server's system calls (default auto: where available)")  # fmt: skip
    s.set_defaults(func=cmd_serve)
    tp = sub.add_parser("top", help="live view of a server's clients (reads serve --metrics)")
    tp.add_argument("address", metavar="ADDR", help="the server's --metrics address")
    tp.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    tp.set_defaults(func=cmd_top)
    cc = sub.add_parser("check-config", help="validate a policy file without serving")
    cc.add_argument("file", metavar="FILE")
    cc.set_defaults(func=cmd_check_config)
    kg = sub.add_parser("keygen", help="make a client key for 9P authentication (Tauth)")
    kg.add_argument("--id", metavar="NAME", help="key id (default: this host's name)")
    kg.add_argument("-o", "--output", metavar="FILE", help="write the key file (mode 0600)")
    kg.set_defaults(func=cmd_keygen)
    conformance_cli.add_command(sub)
    from .client_cli import add_commands  # ls, stat, cat, get, put, rm, mkdir, mv

    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", "info")).upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except (UsageError, AddressError, ConfigError) as e:
        print(f"p9share: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
