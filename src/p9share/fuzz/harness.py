"""Run generated sessions against a live `p9share serve` and judge it.

The server runs as a subprocess (its own core, its own crash) with a policy
that has one export per id-map mode (passthrough, squash, range, mapped with
both xattr layouts) plus read-only ones, limits and a quota, and logs to a
file at level warning. Sessions are played one request at a time, so every
reply is owed within the deadline and every log line belongs to the request
just sent:

- internal error: a traceback in the log ("internal error handling ...");
  grouped by where it was raised, the first of each group shrunk to the
  shortest message sequence that still raises it on a fresh connection;
- hang: a request not answered within the deadline, or a connection whose
  framing was broken that the server does not close within it;
- crash: the server process gone;
- canary: a separate connection, served every `canary_every` messages;
- bad reply: a reply that does not decode, has the wrong tag or type.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol import messages as m
from ..protocol.constants import NOFID, NOTAG, Dialect, GetattrMask
from ..protocol.wire import HEADER, U32, ProtocolError
from .gen import PROBE_TAG, Frame, Options, SessionGen, encode_body, frame_of

EXPORTS = ("pass", "squash", "range", "mapped", "mappedv", "ro", "rogrant")
IDMAP_OF = {
    "pass": "passthrough",
    "squash": "squash",
    "range": "range",
    "mapped": "mapped",
    "mappedv": "mapped",
    "ro": "squash",
    "rogrant": "passthrough",
}


def policy_toml(root: Path, sock: str) -> str:
    """Every id-map mode, a quota, limits, rights wide open where they are safe."""
    p = {name: root / name for name in EXPORTS}
    return f"""
[server]
listen = [{{ address = "unix:{sock}", name = "fuzz" }}]

[exports.pass]
path = "{p["pass"]}"
idmap = "passthrough"
max_file_size = 1073741824

[exports.squash]
path = "{p["squash"]}"
idmap = "squash"
squash_uid = 1000
squash_gid = 1000
guest_uid = 0
guest_gid = 0
quota_bytes = 67108864
quota_files = 3000

[exports.range]
path = "{p["range"]}"
idmap = "range"
uid_map = [[0, 100000, 65536]]
gid_map = [[0, 100000, 65536]]
unmapped = "refuse"

[exports.mapped]
path = "{p["mapped"]}"
idmap = "mapped"

[exports.mappedv]
path = "{p["mappedv"]}"
idmap = "mapped"
xattr_layout = "virtfs"
quota_files = 2000

[exports.ro]
path = "{p["ro"]}"
readonly = true
idmap = "squash"

[exports.rogrant]
path = "{p["rogrant"]}"
idmap = "passthrough"

[limits]
max_fids = 512
header_timeout = 30

[clients.fuzz]
match = {{ listener = "fuzz" }}
allow = {{ fifos = true, sockets = true, symlinks = true, hardlinks = true, xattrs = ["user", "system"] }}
exports = {{ pass = "rw", squash = "rw", range = "rw", ro = "ro", rogrant = "ro", mapped = {{ access = "rw", devices = true, setid = true }}, mappedv = {{ access = "rw", devices = true, setid = true }} }}
"""


def _seed_tree(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "f0").write_bytes(b"hello fuzz\n" * 100)
    (d / "d0").mkdir(exist_ok=True)
    (d / "d0" / "f1").write_bytes(b"x" * 5000)
    with contextlib.suppress(OSError):
        os.symlink("f0", d / "l0")


class ServerProcess:
    """`p9share serve` on a Unix socket in workdir, its log in workdir/server.log."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}  # on top of ours (the tests plant bugs through it)
        self.sock = str(workdir / "p9.sock")
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wipe: bool = True) -> None:
        root = self.workdir / "exports"
        if wipe and root.exists():
            shutil.rmtree(root, ignore_errors=True)
        for name in EXPORTS:
            _seed_tree(root / name)
        for name in ("pass", "rogrant", "range", "squash"):
            os.chmod(root / name, 0o777)  # other ids can create in it
        policy = self.workdir / "policy.toml"
        policy.write_text(policy_toml(root, self.sock))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        for k, v in self.env.items():
            env[k] = v + os.pathsep + env[k] if k == "PYTHONPATH" else v
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p9share",
                "serve",
                "--config",
                str(policy),
                "--log-level",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start: {self.log_path.read_text()[-2000:]}")
            if os.path.exists(self.sock):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.sock)
                    s.close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("server did not start listening in 30 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_FRAME_RE = re.compile(r'^\s+File "([^"]+)", line (\d+), in (\S+)')


class LogWatch:
    """New tracebacks in the server's log since the last poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = path.stat().st_size if path.exists() else 0
        self.text_seen = ""

    def poll(self) -> list[tuple[str, str]]:
        """[(signature, traceback text)] of the internal errors logged since."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size <= self.pos:
            self.pos = min(self.pos, size)
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            new = f.read(size - self.pos).decode("utf-8", "replace")
        self.pos = size
        return parse_tracebacks(new)


def parse_tracebacks(text: str) -> list[tuple[str, str]]:
    """(signature, text) of each logged traceback: the signature is the
    exception type and the innermost frame in p9share (where it was raised)."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last)"):
            start = max(0, i - 1)
            where = "?"
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                mt = _FRAME_RE.match(lines[j])
                if mt and "p9share" in mt.group(1):
                    path = mt.group(1)
                    path = path[path.rfind("p9share/") :]
                    where = f"{path}:{mt.group(2)} in {mt.group(3)}"
                j += 1
            exc = lines[j] if j < len(lines) else "?"
            out.append((f"{exc.split(':')[0]} at {where}", "\n".join(lines[start : j + 1])))
            i = j + 1
        else:
            i += 1
    return out


# Internal errors already reported (issue 11), by exception and function: a
# byte-level mutation can reach them with a message known_bug() cannot read.
KNOWN_SIGNATURES = {
    ("OverflowError", " in mknod"): "mknod-major-minor-2^31",
    ("OverflowError", " in _parse_device"): "dotu-create-device-2^31",
}


def known_signature(sig: str) -> str:
    for (exc, func), label in KNOWN_SIGNATURES.items():
        if sig.startswith(exc + " ") and sig.endswith(func):
            return label
    return ""


class Hang(Exception):
    pass


class Closed(Exception):
    pass


def recv_exact(sock: socket.socket, n: int, until: float = 0.0) -> bytes:
    """n bytes, or Hang when the socket's timeout (or the time until) runs out."""
    buf = bytearray()
    while len(buf) < n:
        if until and time.monotonic() > until:
            raise Hang(f"reply not complete within the deadline ({len(buf)} of {n} bytes)")
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            raise Hang(f"no reply within the deadline ({len(buf)} of {n} bytes)") from None
        except ConnectionResetError:
            raise Closed("connection reset") from None
        if not chunk:
            raise Closed("server closed the connection")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_size: int = 16 << 20) -> bytes:
    """One reply frame, all of it within the socket's timeout."""
    t = sock.gettimeout()
    until = time.monotonic() + t if t else 0.0
    head = recv_exact(sock, 4, until)
    (size,) = U32.unpack(head)
    if size < 7 or size > max_size:
        raise ProtocolError(f"reply size field {size} (msize {max_size})")
    return head + recv_exact(sock, size - 4, until)


def drain_to_eof(sock: socket.socket) -> None:
    """Read until the server closes; Hang if it does not within the timeout."""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise Hang("server kept a broken connection open") from None
        except ConnectionResetError:
            return
        if not chunk:
            return


def describe(fr: Frame, dialect: Dialect) -> str:
    if fr.msg is not None and not fr.mutation.startswith(("type=", "truncated", "trailing")):
        text = repr(fr.msg)
        if len(text) > 300:
            text = text[:300] + "...)"
    else:
        text = "raw"
    hexed = fr.data.hex() if len(fr.data) <= 200 else fr.data[:200].hex() + "..."
    mut = f" [mutation: {fr.mutation}]" if fr.mutation else ""
    return f"tag {fr.tag} {text}{mut} bytes={hexed}"


@dataclass
class Finding:
    kind: str  # "internal-error" | "hang" | "bad-reply" | "unexpected-close" | "crash"
    signature: str
    count: int = 0
    known: str = ""
    dialect: str = ""
    export: str = ""
    detail: str = ""
    reproducer: list[str] = field(default_factory=list)
    reproduced: bool | None = None


@dataclass
class Stats:
    messages: int = 0
    sessions: int = 0
    mutated: int = 0
    fatal_frames: int = 0
    bursts: int = 0
    error_replies: int = 0
    internal_errors: int = 0
    internal_errors_known: int = 0
    hangs: int = 0
    crashes: int = 0
    bad_replies: int = 0
    unexpected_closes: int = 0
    expected_closes: int = 0
    canary_checks: int = 0
    canary_failures: int = 0
    server_restarts: int = 0
    by_dialect: Counter[str] = field(default_factory=Counter)
    by_export: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)


class Canary:
    """A connection that must be served throughout."""

    def __init__(self, sock_path: str, deadline: float) -> None:
        self.sock_path, self.deadline = sock_path, deadline
        self.sock: socket.socket | None = None
        self.tag = 0

    def _rpc(self, msg: m.Message, tag: int | None = None) -> m.Message:
        assert self.sock is not None
        self.tag = (self.tag + 1) % 0xFFFE
        t = self.tag if tag is None else tag
        self.sock.sendall(frame_of(msg.TYPE, t, encode_body(msg, Dialect.P9P2000L)))
        rtag, reply = m.decode_message(recv_frame(self.sock), Dialect.P9P2000L)
        if rtag != t:
            raise ProtocolError(f"canary reply tag {rtag} for {t}")
        return reply

    def connect(self) -> None:
        self.close()
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(self.deadline)
        s.connect(self.sock_path)
        self.sock = s
        self._rpc(m.Tversion(65536, "9P2000.L"), NOTAG)
        r = self._rpc(m.Tattach(0, NOFID, "root", "ro", 0))  # fuzzing cannot change it
        if not isinstance(r, m.Rattach):
            raise ProtocolError(f"canary attach failed: {r}")

    def check(self) -> bool:
        try:
            if self.sock is None:
                self.connect()
            r = self._rpc(m.Tgetattr(0, GetattrMask.BASIC))
            w = self._rpc(m.Twalk(0, 1, ["f0"]))
            self._rpc(m.Tclunk(1))
            return isinstance(r, m.Rgetattr) and isinstance(w, m.Rwalk)
        except (OSError, Hang, Closed, ProtocolError):
            self.close()
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Fuzzer:
    def __init__(
        self,
        workdir: Path,
        seed: int,
        dialects: tuple[Dialect, ...] = tuple(Dialect),
        exports: tuple[str, ...] = EXPORTS,
        opts: Options | None = None,
        deadline: float = 10.0,
        canary_every: int = 500,
        epoch: int = 200_000,
        minimize: bool = True,
        server_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.dialects, self.exports = dialects, exports
        self.opts = opts or Options()
        self.deadline = deadline
        self.canary_every = canary_every
        self.epoch = epoch
        self.minimize = minimize
        self.server = ServerProcess(workdir, server_env)
        self.stats = Stats()
        self.findings: dict[str, Finding] = {}
        self.watch: LogWatch | None = None
        self.canary: Canary | None = None
        self._since_epoch = 0
        self.elapsed = 0.0
        self.json_path: Path | None = None  # the report is kept up to date here

    def checkpoint(self) -> None:
        if self.json_path is not None:
            tmp = self.json_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report(), indent=1) + "\n")
            tmp.replace(self.json_path)

    # ------------------------------------------------------------ server --
    def _start_server(self, wipe: bool = True) -> None:
        self.server.start(wipe)
        self.watch = LogWatch(self.server.log_path)
        self.canary = Canary(self.server.sock, self.deadline)
        self._since_epoch = 0

    def _restart(self) -> None:
        if self.canary is not None:
            self.canary.close()
        self.server.stop()
        self.stats.server_restarts += 1
        self._start_server()

    def _check_alive(self) -> bool:
        if self.server.alive():
            return True
        self.stats.crashes += 1
        code = self.server.proc.returncode if self.server.proc else None
        f = self.findings.setdefault(f"crash: exit {code}", Finding("crash", f"exit {code}"))
        f.count += 1
        f.detail = self.server.log_path.read_text(errors="replace")[-3000:]
        self._restart()
        return False

    def _canary_check(self) -> None:
        assert self.canary is not None
        self.stats.canary_checks += 1
        if not self.canary.check():
            self.stats.canary_failures += 1
            self._check_alive()

    # --------------------------------------------------------------- run --
    def run(self, max_messages: int, max_seconds: float = 0.0) -> Stats:
        self._start_server()
        t0 = time.monotonic()
        try:
            next_canary = 0
            while self.stats.messages < max_messages:
                if max_seconds and time.monotonic() - t0 > max_seconds:
                    break
                if self.stats.messages >= next_canary:
                    self._canary_check()
                    next_canary = self.stats.messages + self.canary_every
                if self._since_epoch >= self.epoch:
                    self._restart()
                    self.elapsed = time.monotonic() - t0
                    self.checkpoint()
                self._session()
            self._canary_check()
        finally:
            self.elapsed = time.monotonic() - t0
            if self.canary is not None:
                self.canary.close()
            self.server.stop()
        return self.stats

    def _session(self) -> None:
        r = self.rng
        dialect = r.choice(self.dialects)
        export = r.choice(self.exports)
        gen = SessionGen(random.Random(r.getrandbits(64)), dialect, export, self.opts)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(self.deadline)
        try:
            sock.connect(self.server.sock)
        except OSError:
            sock.close()
            self._check_alive()
            return
        self.stats.sessions += 1
        history: list[Frame] = []
        rdialect: Dialect | None = None  # what replies are decoded as
        try:
            while True:
                fr = gen.next_frame()
                if fr is None:
                    break
                history.append(fr)
                self._count(fr, gen.dialect, export)
                try:
                    sock.sendall(fr.data)
                except OSError:
                    self._unexpected_close(history, gen.dialect, export, "send failed")
                    return
                if fr.fatal:
                    self.stats.fatal_frames += 1
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    try:
                        drain_to_eof(sock)
                    except Hang as e:
                        self._hang(history, gen.dialect, export, str(e))
                    self._after_request(fr, history, gen.dialect, export)
                    return
                try:
                    raw = recv_frame(sock)
                except Hang as e:
                    self._hang(history, gen.dialect, export, str(e))
                    self._after_request(fr, history, gen.dialect, export)
                    return
                except (Closed, ProtocolError) as e:
                    self._after_request(fr, history, gen.dialect, export)
                    self._unexpected_close(history, gen.dialect, export, str(e))
                    return
                reply = self._check_reply(fr, raw, rdialect, history, gen, export)
                if isinstance(reply, m.Rversion):
                    v = reply.version
                    rdialect = Dialect(v) if v in {d.value for d in Dialect} else None
                self._after_request(fr, history, gen.dialect, export)
                gen.on_reply(fr, reply)
            if r.random() < self.opts.burst_rate:
                self._burst(sock, gen, history, export)
        finally:
            sock.close()

    def _burst(
        self, sock: socket.socket, gen: SessionGen, history: list[Frame], export: str
    ) -> None:
        """Pipelined requests; then either hang up at once, or ask one more
        question (PROBE_TAG) whose answer must come within the deadline."""
        frames = gen.burst()
        for fr in frames:
            self._count(fr, gen.dialect, export)
        history.extend(frames)
        self.stats.bursts += 1
        try:
            sock.sendall(b"".join(fr.data for fr in frames))
            if self.rng.random() < 0.5:
                return  # hang up with requests in flight
            probe = m.Tclunk(0xFFFFFFF0)
            sock.sendall(frame_of(probe.TYPE, PROBE_TAG, encode_body(probe, gen.dialect)))
            until = time.monotonic() + self.deadline
            while True:
                sock.settimeout(max(0.01, until - time.monotonic()))
                raw = recv_frame(sock)
                if HEADER.unpack_from(raw, 0)[2] == PROBE_TAG:
                    break
        except Hang as e:
            self._hang(history, gen.dialect, export, "after a burst: " + str(e))
        except (OSError, Closed, ProtocolError) as e:
            # the server closes a connection that reuses a tag in flight (docs/protocol.md
            # KI-1), and one whose burst changed the msize under later frames (Tversion)
            if any("duplicate tag" in fr.mutation or fr.data[4] == 100 for fr in frames):
                self.stats.expected_closes += 1
            else:
                self._unexpected_close(history, gen.dialect, export, f"after a burst: {e}")
        finally:
            self._after_request(frames[-1] if frames else history[-1], history, gen.dialect, export)

    def _count(self, fr: Frame, dialect: Dialect, export: str) -> None:
        st = self.stats
        st.messages += 1
        self._since_epoch += 1
        st.by_dialect[dialect.value] += 1
        st.by_export[export] += 1
        st.by_type[type(fr.msg).__name__ if fr.msg is not None else "raw"] += 1
        if fr.mutation:
            st.mutated += 1

    def _check_reply(
        self,
        fr: Frame,
        raw: bytes,
        rdialect: Dialect | None,
        history: list[Frame],
        gen: SessionGen,
        export: str,
    ) -> m.Message | None:
        size, rtype, rtag = HEADER.unpack_from(raw, 0)
        dialect = gen.dialect
        problem = ""
        if size > gen.msize and not isinstance(fr.msg, m.Tversion):
            problem = f"reply of {size} bytes over msize {gen.msize}"
        reply: m.Message | None = None
        try:
            _, reply = m.decode_message(raw, rdialect or Dialect.P9P2000)
        except ProtocolError as e:
            problem = f"undecodable reply type {rtype}: {e}"
        if not problem:
            if rtag != fr.tag:
                problem = f"reply tag {rtag} for request tag {fr.tag}"
            elif isinstance(reply, m.Rlerror | m.Rerror):
                self.stats.error_replies += 1
            elif (
                fr.msg is not None
                and not fr.mutation.startswith("type=")
                and rtype != fr.msg.TYPE + 1
            ):
                problem = f"reply type {rtype} to {type(fr.msg).__name__}"
        if problem:
            self.stats.bad_replies += 1
            key = f"bad-reply: {re.sub(r'[0-9]+', 'N', problem)}"
            f = self.findings.setdefault(
                key, Finding("bad-reply", problem, dialect=dialect.value, export=export)
            )
            f.count += 1
            if not f.reproducer:
                f.reproducer = [describe(h, dialect) for h in history]
        return reply

    def _hang(self, history: list[Frame], dialect: Dialect, export: str, why: str) -> None:
        self.stats.hangs += 1
        last = history[-1]
        key = f"hang: {type(last.msg).__name__ if last.msg else 'raw'} {last.mutation[:20]}"
        f = self.findings.setdefault(
            key, Finding("hang", key, dialect=dialect.value, export=export, detail=why)
        )
        f.count += 1
        if not f.reproducer:
            f.reproducer = [describe(h, dialect) for h in history]
        self._canary_check()  # is the server still serving others?

    def _unexpected_close(
        self, history: list[Frame], dialect: Dialect, export: str, why: str
    ) -> None:
        self.stats.unexpected_closes += 1
        last = history[-1]
        key = f"close: {type(last.msg).__name__ if last.msg else 'raw'} ({why})"
        f = self.findings.setdefault(
            key, Finding("unexpected-close", key, dialect=dialect.value, export=export, detail=why)
        )
        f.count += 1
        if not f.reproducer:
            f.reproducer = [describe(h, dialect) for h in history]
        self._check_alive()

    def _after_request(
        self, fr: Frame, history: list[Frame], dialect: Dialect, export: str
    ) -> None:
        assert self.watch is not None
        for sig, text in self.watch.poll():
            self.stats.internal_errors += 1
            known = fr.known or known_signature(sig)
            if known:
                self.stats.internal_errors_known += 1
            key = f"internal: {sig}"
            f = self.findings.get(key)
            if f is None:
                f = self.findings[key] = Finding(
                    "internal-error",
                    sig,
                    known=known,
                    dialect=dialect.value,
                    export=export,
                    detail=text[-4000:],
                )
                if self.minimize:
                    frames, ok = self._shrink(list(history), sig)
                    f.reproducer = [describe(h, dialect) for h in frames]
                    f.reproduced = ok
                else:
                    f.reproducer = [describe(h, dialect) for h in history]
            f.count += 1

    # -------------------------------------------------------- minimising --
    def _replay(self, frames: list[Frame], sig: str) -> bool:
        """Whether frames, sent one by one on a fresh connection, log sig."""
        assert self.watch is not None
        self.watch.poll()
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(self.deadline)
        try:
            sock.connect(self.server.sock)
            for fr in frames:
                sock.sendall(fr.data)
                if fr.fatal:
                    sock.shutdown(socket.SHUT_WR)
                    drain_to_eof(sock)
                    break
                recv_frame(sock)
        except (OSError, Hang, Closed, ProtocolError):
            pass
        finally:
            sock.close()
        time.sleep(0.01)
        return any(s == sig for s, _ in self.watch.poll())

    def _shrink(self, frames: list[Frame], sig: str) -> tuple[list[Frame], bool]:
        """ddmin over the frames before the last one (which is kept)."""
        if not self._replay(frames, sig):
            return frames, False
        last, prefix = frames[-1], frames[:-1]
        n, budget = 2, 300
        while len(prefix) >= 1 and budget > 0:
            chunk = max(1, len(prefix) // n)
            reduced = False
            for i in range(0, len(prefix), chunk):
                cand = prefix[:i] + prefix[i + chunk :]
                budget -= 1
                if self._replay([*cand, last], sig):
                    prefix, n, reduced = cand, max(n - 1, 2), True
                    break
                if budget <= 0:
                    break
            if not reduced:
                if chunk == 1:
                    break
                n = min(len(prefix), n * 2)
        return [*prefix, last], True

    # ------------------------------------------------------------ report --
    def report(self) -> dict[str, Any]:
        st = self.stats
        return {
            "seed": self.seed,
            "dialects": [d.value for d in self.dialects],
            "exports": {e: IDMAP_OF[e] for e in self.exports},
            "messages": st.messages,
            "sessions": st.sessions,
            "seconds": round(self.elapsed, 1),
            "messages_per_second": round(st.messages / self.elapsed, 1) if self.elapsed else 0,
            "mutated": st.mutated,
            "fatal_frames": st.fatal_frames,
            "bursts": st.bursts,
            "error_replies": st.error_replies,
            "internal_errors": st.internal_errors,
            "internal_errors_known": st.internal_errors_known,
            "hangs": st.hangs,
            "crashes": st.crashes,
            "bad_replies": st.bad_replies,
            "unexpected_closes": st.unexpected_closes,
            "expected_closes": st.expected_closes,
            "canary_checks": st.canary_checks,
            "canary_failures": st.canary_failures,
            "server_restarts": st.server_restarts,
            "by_dialect": dict(st.by_dialect),
            "by_export": dict(st.by_export),
            "by_type": dict(st.by_type.most_common()),
            "findings": [vars(f) for f in self.findings.values()],
        }


def summary_line(r: dict[str, Any]) -> str:
    unknown = r["internal_errors"] - r["internal_errors_known"]
    return (
        f"fuzz: {r['messages']} messages in {r['sessions']} sessions, {r['seconds']} s "
        f"({r['messages_per_second']}/s), {r['mutated']} mutated, {r.get('bursts', 0)} bursts; "
        f"internal errors "
        f"{r['internal_errors']} ({unknown} unknown, {r['internal_errors_known']} known); "
        f"hangs {r['hangs']}; crashes {r['crashes']}; bad replies {r['bad_replies']}; "
        f"unexpected closes {r['unexpected_closes']}; canary {r['canary_checks']} checks, "
        f"{r['canary_failures']} failed"
    )


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs (parallel slices): totals, findings
    grouped by kind and signature, known bugs recognised by signature."""
    keys = ("messages", "sessions", "mutated", "fatal_frames", "bursts", "error_replies",
            "internal_errors", "hangs", "crashes", "bad_replies", "unexpected_closes", "expected_closes",
            "canary_checks", "canary_failures", "server_restarts")  # fmt: skip
    out: dict[str, Any] = {k: sum(r.get(k, 0) for r in reports) for k in keys}
    out["seconds_wall"] = max((r["seconds"] for r in reports), default=0)
    out["messages_per_second"] = round(out["messages"] / out["seconds_wall"], 1) if out[
        "seconds_wall"] else 0  # fmt: skip
    for k in ("by_dialect", "by_export", "by_type"):
        c: Counter[str] = Counter()
        for r in reports:
            c.update(r.get(k, {}))
        out[k] = dict(c.most_common())
    out["exports"] = {e: IDMAP_OF[e] for e in out["by_export"]}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in reports:
        for f in r["findings"]:
            known = f["known"] or (
                known_signature(f["signature"]) if f["kind"] == "internal-error" else ""
            )
            g = groups.setdefault((f["kind"], f["signature"]), {**f, "count": 0, "known": known})
            g["count"] += f["count"]
            if f.get("reproduced") and len(f["reproducer"]) < len(g["reproducer"]):
                for k in ("reproducer", "detail", "dialect", "export", "reproduced"):
                    g[k] = f[k]
    out["findings"] = list(groups.values())
    out["internal_errors_known"] = sum(
        g["count"] for g in groups.values() if g["kind"] == "internal-error" and g["known"]
    )
    out["slices"] = [
        {k: r.get(k) for k in ("seed", "messages", "seconds", "messages_per_second",
                               "internal_errors", "hangs", "canary_checks", "canary_failures")}
        for r in reports
    ]  # fmt: skip
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Fuzzing p9share over 9P", "",
        "`python -m p9share.fuzz` (src/p9share/fuzz): sessions generated from the codec, "
        "mutated, against a live `p9share serve` over a Unix socket.", "",
        summary_line({**r, "seconds": r["seconds_wall"]}), "",
        "| dialect | messages |", "|---|---|",
        *[f"| {d} | {n} |" for d, n in r["by_dialect"].items()], "",
        "| export | id map | messages |", "|---|---|---|",
        *[f"| {e} | {IDMAP_OF[e]} | {n} |" for e, n in r["by_export"].items()], "",
        "| slice seed | messages | seconds | per second | internal errors | hangs | canary checks (failed) |",
        "|---|---|---|---|---|---|---|",
        *[f"| {s['seed']} | {s['messages']} | {s['seconds']} | {s['messages_per_second']} | "
          f"{s['internal_errors']} | {s['hangs']} | {s['canary_checks']} ({s['canary_failures']}) |"
          for s in r["slices"]], "",
        "## Findings", "",
    ]  # fmt: skip
    if not r["findings"]:
        lines.append("None.")
    for f in r["findings"]:
        lines += [
            f"### {f['kind']}: {f['signature']} (x{f['count']})"
            + (f" - known: {f['known']}" if f["known"] else ""), "",
            f"Dialect {f['dialect']}, export {f['export']}; reproduced on a fresh connection: "
            f"{f['reproduced']}. Reproducer (frames sent one by one, each answered before the next):",
            "", "```",
            *(["(first frames left out; the JSON has them all)"] if len(f["reproducer"]) > 15 else []),
            *[line[:240] for line in f["reproducer"][-15:]], "```", "",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m p9share.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: no limit)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dialect", action="append", choices=[d.value for d in Dialect])
    p.add_argument("--export", action="append", choices=EXPORTS)
    p.add_argument("--mutate-rate", type=float, default=0.3)
    p.add_argument("--skip-known", action="store_true", help="never send the known bugs' messages")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds a reply may take")
    p.add_argument("--canary-every", type=int, default=500)
    p.add_argument("--epoch", type=int, default=200_000, help="restart the server, wiped, every N")
    p.add_argument(
        "--workdir", help="where the exports and the server log go (default: a temp dir)"
    )
    p.add_argument("--json", help="write the report here")
    p.add_argument("--merge", nargs="+", metavar="REPORT", help="merge these reports and stop")
    p.add_argument("--md", help="with --merge: write a Markdown summary here")
    a = p.parse_args(argv)
    if a.merge:
        merged = merge([json.loads(Path(f).read_text()) for f in a.merge])
        if a.json:
            Path(a.json).write_text(json.dumps(merged, indent=1) + "\n")
        if a.md:
            Path(a.md).write_text(markdown(merged))
        print(summary_line({**merged, "seconds": merged["seconds_wall"]}))
        return 0
    dialects = tuple(Dialect(d) for d in a.dialect) if a.dialect else tuple(Dialect)
    exports = tuple(a.export) if a.export else EXPORTS
    opts = Options(mutate_rate=a.mutate_rate, skip_known=a.skip_known)
    with contextlib.ExitStack() as stack:
        workdir = (
            Path(a.workdir)
            if a.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p9fuzz-")))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        fz = Fuzzer(workdir, a.seed, dialects, exports, opts, a.deadline, a.canary_every, a.epoch)
        fz.json_path = Path(a.json) if a.json else None
        fz.run(a.messages, a.seconds)
        fz.checkpoint()
        rep = fz.report()
        for f in fz.findings.values():
            print(
                f"{f.kind}: {f.signature} x{f.count}{' (known: ' + f.known + ')' if f.known else ''}"
            )
            for line in f.reproducer[-12:]:
                print(f"    {line[:240]}")
        print(summary_line(rep))
        clean = rep["internal_errors"] == rep["internal_errors_known"]
        return 0 if clean and not (rep["hangs"] or rep["crashes"] or rep["canary_failures"]) else 1
    return 1
