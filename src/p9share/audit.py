"""The audit trail: one JSON object per line, written off the request path.

Callers hand a record to emit(), which only puts it on a queue; a writer
thread serialises and writes it. A full queue drops the record and counts the
drop (reported in the next record written) rather than stall a request.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

EVENTS = frozenset(
    {
        "start",  # server started: listeners, exports, sandbox status
        "connect",  # connection opened, with the peer and the matched client
        "disconnect",
        "refused",  # connection refused: no client matched, or a limit
        "attach",  # attach granted
        "attach-denied",
        "auth-ok",
        "auth-failed",
        "denied",  # a policy denial: op, path inside the export, rule
        "limit",  # a limit hit: which, and what happened
        "reload",  # policy reloaded (or refused, with why)
        "sandbox",  # what the self-sandbox did or could not do
    }
)


class AuditLog:
    """Writes audit records as JSON lines to a file (or a stream)."""

    def __init__(self, target: str | IO[str] | None = None, *, maxsize: int = 10_000) -> None:
        self._own = isinstance(target, str)
        if isinstance(target, str):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._out: IO[str] | None = os.fdopen(fd, "a", buffering=1)
        else:
            self._out = target
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize)
        self._dropped = 0
        # the writer thread starts with the first record: the file is open
        # before the self-sandbox, which needs a single-threaded process
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # told of every record, written or not (live metrics count from them)
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def emit(self, event: str, **fields: Any) -> None:
        """Queue one record; never blocks, never raises."""
        for observe in self.observers:
            observe(event, fields)
        if self._out is None:
            return
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        rec: dict[str, Any] = {"ts": round(time.time(), 6), "event": event, **fields}
        if self._thread is None:
            self._start()
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            self._dropped += 1

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and self._out is not None:
                t = threading.Thread(target=self._run, name="p9share-audit", daemon=True)
                t.start()
                self._thread = t

    def _run(self) -> None:
        assert self._out is not None
        while True:
            rec = self._q.get()
            if rec is None:
                break
            if self._dropped:
                rec["dropped_before"], self._dropped = self._dropped, 0
            try:
                self._out.write(json.dumps(rec, default=str, separators=(",", ":")) + "\n")
                if self._q.empty():
                    self._out.flush()
            except (OSError, ValueError) as e:
                print(f"p9share: audit log write failed: {e}", file=sys.stderr)

    def close(self) -> None:
        """Write what is queued and stop."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(10)
            self._thread = None
        if self._own and self._out is not None:
            self._out.close()
        self._out = None


NULL_AUDIT = AuditLog(None)
