#!/usr/bin/env python3
"""Derive the seccomp allow-list from traces of real servers (docs/security.md, "System-call filter").

    strace -f -qq -s 48 -o TRACE <anything that starts `p9share serve`>
    python scripts/seccomp_trace.py analyse TRACE... [--compare]
    python scripts/seccomp_trace.py drive OUTDIR [--seccomp required]
                                       # a traced server driven by a workload

A server is recognised in the trace by its start-up line `p9share: sandbox: ...`
(written to stderr right after the sandbox, where the filter is installed).
From that line on, every system call of that thread and of every thread it
starts counts; what the process did before (imports, binding, the sandbox
itself) does not, because the filter is not there yet. `analyse` prints the
calls seen with their counts; with --compare, also those seen but not in
p9share.security.seccomp's list (which must be added or explained) and those
listed but never seen. Calls that returned ENOSYS after the marker are
flagged: under an installed filter that is a refusal.

`drive` starts `p9share serve --seccomp off` under strace with a policy that
has every kind of export (passthrough, squash, mapped, read-only, quotas,
devices, an audit log, a key), drives it with the conformance suite in all
three dialects and the client commands, reloads it (SIGHUP) and stops it
(SIGTERM), then analyses the trace.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")
_RET = re.compile(r"\)\s+=\s+(-?\d+|\?)(?:\s+(\w+))?")
_MARKER = 'write(2, "p9share: sandbox: '
_SPAWN = {"clone", "clone3", "fork", "vfork"}


def analyse(path: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """(calls after the marker, calls that returned ENOSYS there, servers found)."""
    lines_by_tid: dict[int, list[tuple[str, bool, str | None, str | None]]] = {}
    markers: dict[int, int] = {}  # tid -> index of its marker line
    children: dict[int, list[int]] = collections.defaultdict(list)
    with open(path, errors="replace") as fh:
        for raw in fh:
            m = _LINE.match(raw)
            if not m:
                continue
            tid = int(m.group(1))
            resumed = m.group(2) is not None
            name = m.group(2) or m.group(3)
            r = _RET.search(raw)
            ret, err = (r.group(1), r.group(2)) if r else (None, None)
            seq = lines_by_tid.setdefault(tid, [])
            if _MARKER in raw and tid not in markers:
                markers[tid] = len(seq)
            seq.append((name, resumed, ret, err))
            if name in _SPAWN and ret is not None and ret.isdigit() and int(ret) > 0:
                children[tid].append(int(ret))
    calls: collections.Counter[str] = collections.Counter()
    enosys: collections.Counter[str] = collections.Counter()

    def take(tid: int, start: int) -> None:
        for name, resumed, _ret, err in lines_by_tid.get(tid, [])[start:]:
            if not resumed:
                calls[name] += 1
            if err == "ENOSYS":
                enosys[name] += 1

    for tid, start in markers.items():
        take(tid, start)
        todo = [c for c in children[tid]]
        # children made after the marker only: before it the process was single-threaded
        seen: set[int] = set()
        while todo:
            child = todo.pop()
            if child in seen:
                continue
            seen.add(child)
            take(child, 0)
            todo.extend(children[child])
    return calls, enosys, len(markers)


def report(paths: list[str], compare: bool) -> int:
    total: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    servers = 0
    for p in paths:
        calls, enosys, n = analyse(p)
        total.update(calls)
        refused.update(enosys)
        servers += n
    print(f"{servers} servers traced, {len(total)} distinct system calls after the sandbox")
    for name, n in sorted(total.items()):
        print(f"  {name:24} {n}")
    if refused:
        print("returned ENOSYS (refused by a filter, or not in this kernel):")
        for name, n in sorted(refused.items()):
            print(f"  {name:24} {n}")
    if compare:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from p9share.security.seccomp import ALLOWED

        missing = sorted(set(total) - set(ALLOWED))
        print("seen but not allowed:", " ".join(missing) or "none")
        print("allowed but not seen here:", " ".join(sorted(set(ALLOWED) - set(total))) or "none")
    return 0


POLICY = """
[server]
listen = [{{ address = "unix:{d}/rw.sock", name = "rw" }}, "tcp:127.0.0.1:{port}",
          {{ address = "tls:127.0.0.1:{tls_port}", name = "tls" }}]
audit_log = "{d}/audit.jsonl"
tls = {{ cert = "{d}/server.pem", key = "{d}/server.key", client_ca = "{d}/ca.pem" }}

[exports.pass]
path = "{d}/pass"
idmap = "passthrough"
quota_bytes = 100000000
quota_files = 100000

[exports.ro]
path = "{d}/pass"
readonly = true

[exports.mapped]
path = "{d}/mapped"
idmap = "mapped"

[exports.squash]
path = "{d}/squash"
idmap = "squash"

[clients.all]
match = [{{ listener = "rw" }}, {{ network = "127.0.0.0/8" }}]
allow = {{ fifos = true, sockets = true, setid = true, xattrs = ["user", "system"] }}
exports = {{ pass = "rw", ro = {{ access = "ro", xattrs = ["user", "security"] }}, mapped = {{ access = "rw", devices = true }}, squash = "rw" }}

[clients.keyed]
match = {{ listener = "tls" }}
key_file = "{d}/keyed.key"
exports = {{ pass = "ro" }}
"""

OPENSSL_CNF = """[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""


def _pki(d: Path) -> None:
    """A CA, a server and a client certificate (as tests/server/test_tls.py makes them)."""
    (d / "openssl.cnf").write_text(OPENSSL_CNF)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-config", "openssl.cnf", "-extensions", "ca_ext", *newkey,
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=trace CA")  # fmt: skip
    for serial, name, ext in ((2, "server", "server_ext"), (3, "client", "client_ext")):
        ossl("req", "-new", "-config", "openssl.cnf", *newkey, "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", str(serial), "-days", "2", "-extfile", "openssl.cnf",
             "-extensions", ext, "-out", f"{name}.pem")  # fmt: skip


def drive(outdir: str, seccomp: str = "off") -> int:
    import socket

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="p9share-trace-"))
    for sub in ("pass", "mapped", "squash"):
        (d / sub).mkdir()
        os.chmod(d / sub, 0o777)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    port, tls_port = ports
    _pki(d)
    (d / "pass" / "hello").write_text("hello\n")
    (d / "hello").write_text("hello\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p9 = [sys.executable, "-m", "p9share"]
    subprocess.run([*p9, "keygen", "--id", "keyed", "-o", str(d / "keyed.key")], env=env,
                   check=True, capture_output=True)  # fmt: skip
    (d / "policy.toml").write_text(POLICY.format(d=d, port=port, tls_port=tls_port))
    trace = out / "serve.trace"
    cmd = ["strace", "-f", "-qq", "-s", "48", "-o", str(trace), sys.executable, "-m",
           "p9share", "serve", "--config", str(d / "policy.toml"), "--seccomp", seccomp]  # fmt: skip
    log = out / "serve.log"  # a file, not a pipe: a full pipe would stop the server
    with open(log, "w") as fh:
        srv = subprocess.Popen(cmd, env=env, stderr=fh)
    deadline = time.monotonic() + 120
    while "p9share: serving on tcp" not in log.read_text():
        if srv.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the traced server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    # signals go to the server, not to strace
    pid = int(Path(f"/proc/{srv.pid}/task/{srv.pid}/children").read_text().split()[0])
    tcp, unix = f"tcp:127.0.0.1:{port}", f"unix:{d}/rw.sock"

    def run(*args: str) -> None:
        r = subprocess.run([*p9, *args], env=env, capture_output=True, text=True, timeout=600)
        last = ((r.stderr + r.stdout).strip().splitlines() or [""])[-1]
        print(f"  {' '.join(args[:6])}: exit {r.returncode} {last}", file=sys.stderr)

    # the conformance suite in every dialect, and .L on every kind of export
    # (cases that wait for a reply that must not come wait out the timeout)
    runs = [("pass", "9P2000.L"), ("pass", "9P2000.u"), ("pass", "9P2000"),
            ("mapped", "9P2000.L"), ("squash", "9P2000.L")]  # fmt: skip
    for aname, dialect in runs:
        run("conformance", unix, "--aname", aname, "--ro-aname", "ro", "--dialect", dialect,
            "--timeout", "10")  # fmt: skip
    run("conformance", tcp, "--aname", "pass", "--only", "§5.9", "--timeout", "10")
    src = d / "local.bin"
    src.write_bytes(os.urandom(3 << 20))
    run("put", "--aname", "pass", tcp, str(src), "big.bin")
    run("get", "--aname", "pass", tcp, "big.bin", str(d / "back.bin"))
    run("ls", "-l", "--aname", "pass", tcp, "/")
    run("mv", "--aname", "pass", tcp, "big.bin", "moved.bin")
    run("rm", "--aname", "pass", tcp, "moved.bin")
    tls = [f"--tls-ca={d}/ca.pem", f"--tls-cert={d}/client.pem", f"--tls-key={d}/client.key"]
    run("ls", "-l", "--aname", "pass", *tls, f"--key={d}/keyed.key", f"tls:127.0.0.1:{tls_port}")
    run("cat", "--aname", "pass", *tls, f"--key={d}/keyed.key", f"tls:127.0.0.1:{tls_port}",
        "/hello")  # fmt: skip
    # a reload that changes an export: a new backend and quota scan after the sandbox
    text = (d / "policy.toml").read_text()
    (d / "policy.toml").write_text(
        text.replace('idmap = "squash"', 'idmap = "squash"\nquota_files = 1000')
    )
    os.kill(pid, signal.SIGHUP)
    time.sleep(2)
    run("ls", "--aname", "mapped", unix, "/")
    run("put", "--aname", "squash", unix, str(d / "hello"), "after-reload")
    os.kill(pid, signal.SIGTERM)
    srv.wait(60)
    return report([str(trace)], compare=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("analyse")
    a.add_argument("trace", nargs="+")
    a.add_argument("--compare", action="store_true")
    dr = sub.add_parser("drive")
    dr.add_argument("outdir")
    dr.add_argument("--seccomp", choices=["off", "required"], default="off",
                    help="required: run it with the filter on, to see what it refuses")  # fmt: skip
    args = ap.parse_args()
    if args.cmd == "analyse":
        return report(args.trace, args.compare)
    return drive(args.outdir, args.seccomp)


if __name__ == "__main__":
    sys.exit(main())
