"""Shared fixtures: a live p9share server on loopback over a real temp dir.

Two checks hold for every test session:

- A test skipped outside tests/skip-allowlist.txt fails the session (exit 1),
  and the summary names it: a skip hides whatever the test checks, so each
  allowed one is listed there with its reason.
- A test during which a p9share server logged an internal error (an ERROR
  record of logger p9share.server or p9share.virtiofs: log.exception after an unexpected
  exception) fails, whether the server ran in the test's process or as a
  subprocess whose stderr a helper hands to watch_server_stderr().
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.client.raw import RawClient
from p9share.policy import Export, Policy
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address


class LiveServer:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.tcp = str(server.addresses[0])
        self.unix = str(server.addresses[1]) if len(server.addresses) > 1 else ""

    def client(
        self,
        address: str | None = None,
        *,
        attach: bool = True,
        aname: str = "",
        dialect: Dialect = Dialect.P9P2000L,
        msize: int = 65536 + 24,
    ) -> RawClient:
        c = RawClient.connect(address or self.tcp, timeout=10)
        c.dialect = dialect
        c.version(msize)
        if attach:
            c.attach(0, aname)
        return c


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[Server] = []

    def make(exports: dict[str, tuple[Path, bool]] | None = None, **kw: object) -> LiveServer:
        root = tmp_path / "export"
        root.mkdir(exist_ok=True)
        policy = Policy()
        for name, (path, ro) in (exports or {"export": (root, False)}).items():
            policy.exports[name] = Export(name, str(path), ro)
        srv = Server(policy, **kw)  # type: ignore[arg-type]
        servers.append(srv)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        srv.listen(parse_address(f"unix:{tmp_path}/p9.sock"))
        return LiveServer(srv, root)

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def live(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


def is_root() -> bool:
    return os.geteuid() == 0


# ------------------------------------------------------ skips: the allow-list --
SKIP_ALLOWLIST = Path(__file__).with_name("skip-allowlist.txt")
_skipped: list[tuple[str, str]] = []  # (nodeid, reason) of every skip this session


def load_allowlist(path: Path = SKIP_ALLOWLIST) -> list[tuple[str, str]]:
    """(pattern, reason) per entry: `NODEID-GLOB | reason`, # comments."""
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition(" | ")
        if not sep or not pattern.strip() or not reason.strip():
            raise pytest.UsageError(f"{path}:{n}: an entry is 'NODEID-GLOB | reason'")
        entries.append((pattern.strip(), reason.strip()))
    return entries


def unexpected_skips(
    skipped: list[tuple[str, str]], allowed: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    return [(n, r) for n, r in skipped if not any(fnmatch.fnmatchcase(n, p) for p, _ in allowed)]


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is not a skip
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module (pytest.importorskip, module-level skip)
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if unexpected_skips(_skipped, load_allowlist()) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    bad = unexpected_skips(_skipped, load_allowlist())
    if not bad:
        return
    terminalreporter.section("skipped outside tests/skip-allowlist.txt", sep="!", red=True)
    for nodeid, reason in bad:
        terminalreporter.line(f"{nodeid}: {reason}")
    if any("root" in reason for _, reason in bad) and os.geteuid() != 0:
        terminalreporter.line("(the tests that need root must run as root in CI: run as root)")
    terminalreporter.line(f"{len(bad)} test(s) skipped that must run: the session fails")


# ------------------------------------------- internal errors of any server --
# the 9P server's and the virtio-fs device's and session's loggers
SERVER_LOGGERS = ("p9share.server", "p9share.virtiofs")
# what a subprocess server's log (cli.py's format) shows for one
_INTERNAL_LINE = re.compile(
    r"\bp9share\.(server|virtiofs)(\.\S+)? (ERROR|CRITICAL) |^Traceback \(most recent"
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServerErrors:
    """The internal errors servers logged during one test."""

    def __init__(self) -> None:
        self.handler = _Records()
        self.logs: list[tuple[Path, int]] = []  # (file, size when watching began)
        self.procs: list[subprocess.Popen[Any]] = []

    def found(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" for r in self.handler.records]
        for path, start in self.logs:
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    text = f.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            out += [
                f"{path.name}: {line}" for line in text.splitlines() if _INTERNAL_LINE.search(line)
            ]
        for proc in self.procs:
            if proc.poll() is not None and proc.stderr is not None and not proc.stderr.closed:
                raw = proc.stderr.read()
                text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                out += [
                    f"pid {proc.pid}: {line}"
                    for line in text.splitlines()
                    if _INTERNAL_LINE.search(line)
                ]
        return out


_watch: ServerErrors | None = None


def watch_server_stderr(where: Path | subprocess.Popen[Any]) -> None:
    """Have the running test fail if a subprocess server logs an internal
    error: where is the file its stderr goes to (read from its size now), or
    the process itself with stderr=PIPE (what is left unread when it has
    exited is read at the end of the test)."""
    if _watch is None:
        return
    if isinstance(where, Path):
        _watch.logs.append((where, where.stat().st_size if where.exists() else 0))
    else:
        _watch.procs.append(where)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "internal_error_expected: the test provokes a server's internal error itself"
    )


@pytest.fixture(autouse=True)
def server_errors(request: pytest.FixtureRequest) -> Iterator[ServerErrors]:
    global _watch
    watch = ServerErrors()
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    for logger in loggers:
        logger.addHandler(watch.handler)
    _watch = watch
    try:
        yield watch
    finally:
        _watch = None
        for logger in loggers:
            logger.removeHandler(watch.handler)
    found = watch.found()
    if found and request.node.get_closest_marker("internal_error_expected") is None:
        pytest.fail("a server logged an internal error during this test:\n" + "\n".join(found[:20]))
