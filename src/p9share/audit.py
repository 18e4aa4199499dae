"""The audit trail: one JSON object per line, written off the request path.

Callers hand a record to emit(), which only puts it on a queue; a writer
thread serialises and writes it. A full queue drops the record and counts the
drop (reported in the next record written) rather than stall a request.

A guest decides much of what its records say and how many there are, so
neither may grow the log without bound (issue 11: 65,000-byte names filled it
at 50-200 MiB/s):

* every text field is cut to MAX_FIELD characters; a cut record says so in
  "truncated" (field -> its original length);
* the records a client's actions cause (GUEST_EVENTS) are rate-limited per
  client (the "client" field; records without one share one bucket, so that
  unidentified peers cannot multiply it): RATE a second, BURST at once. What
  is held back is counted, and a "suppressed" record with the counts per
  event is written for each client at most every SUPPRESS_INTERVAL seconds.

So one client adds at most about RATE * (MAX_FIELD * text fields) bytes a
second, and the queue (maxsize records) is bounded in bytes too.
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
        "suppressed",  # records of a client held back by the rate limit, counted
    }
)

# records that a client's own actions cause, rate-limited per client
GUEST_EVENTS = frozenset(
    {"connect", "disconnect", "refused", "attach", "attach-denied", "auth-ok", "auth-failed",
     "denied", "limit"}
)  # fmt: skip
MAX_FIELD = 512  # characters of one text field (a Linux name is at most 255 bytes)
RATE = 20.0  # guest records a second per client
BURST = 200.0  # and at once
SUPPRESS_INTERVAL = 10.0  # seconds between two "suppressed" records of a client
_MAX_BUCKETS = 4096  # clients tracked at once; past it they share one bucket
_UNIDENTIFIED = "(unidentified)"


def _bounded(fields: dict[str, Any]) -> dict[str, Any]:
    """fields with long text cut to MAX_FIELD, noting what was cut."""
    cut: dict[str, int] = {}
    for k, v in fields.items():
        if isinstance(v, bytes | bytearray | memoryview):
            v = bytes(v).decode("utf-8", "backslashreplace")
            fields[k] = v
        if isinstance(v, str) and len(v) > MAX_FIELD:
            fields[k] = v[:MAX_FIELD]
            cut[k] = len(v)
    if cut:
        fields["truncated"] = cut
    return fields


class _Budget:
    """One client's token bucket and what it held back since the last report."""

    __slots__ = ("held", "reported", "stamp", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = BURST
        self.stamp = now
        self.reported = now
        self.held: dict[str, int] = {}


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
        self._budgets: dict[str, _Budget] = {}  # by client, for GUEST_EVENTS
        self._budget_lock = threading.Lock()
        self._checked = 0.0  # when the writer last looked for held-back counts
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
        if event in GUEST_EVENTS and not self._admit(event, fields.get("client")):
            return
        rec: dict[str, Any] = {"ts": round(time.time(), 6), "event": event, **_bounded(fields)}
        self._put(rec)

    def _put(self, rec: dict[str, Any]) -> None:
        if self._thread is None:
            self._start()
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            self._dropped += 1

    def _admit(self, event: str, client: object) -> bool:
        """Charge the client's record budget; False: held back (and counted)."""
        key = str(client)[:MAX_FIELD] if client else _UNIDENTIFIED
        now = time.monotonic()
        with self._budget_lock:
            b = self._budgets.get(key)
            if b is None:
                if len(self._budgets) >= _MAX_BUCKETS:
                    self._report_held(now, force=False)  # forgets the quiet ones
                if len(self._budgets) >= _MAX_BUCKETS:
                    key = "(many clients)"
                    b = self._budgets.get(key)
                if b is None:
                    b = self._budgets[key] = _Budget(now)
            b.tokens = min(BURST, b.tokens + (now - b.stamp) * RATE)
            b.stamp = now
            if b.tokens >= 1:
                b.tokens -= 1
                return True
            b.held[event] = b.held.get(event, 0) + 1
        return False

    def _report_held(self, now: float, force: bool) -> None:
        """Queue a "suppressed" record for each client that had records held
        back (at most one per SUPPRESS_INTERVAL unless force); forget clients
        that are back to a full budget with nothing held. Caller holds
        _budget_lock."""
        for key, b in list(self._budgets.items()):
            if b.held and (force or now - b.reported >= SUPPRESS_INTERVAL):
                held, b.held, b.reported = b.held, {}, now
                self._put({"ts": round(time.time(), 6), "event": "suppressed", "client": key,
                           "count": sum(held.values()), "events": held,
                           "rate": RATE, "burst": BURST})  # fmt: skip
            elif not b.held and b.tokens + (now - b.stamp) * RATE >= BURST:
                del self._budgets[key]

    def flush_suppressed(self, force: bool = True) -> None:
        """Write the counts of held-back records now (the writer thread does
        it every SUPPRESS_INTERVAL; close() does it at the end)."""
        with self._budget_lock:
            self._report_held(time.monotonic(), force)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and self._out is not None:
                t = threading.Thread(target=self._run, name="p9share-audit", daemon=True)
                t.start()
                self._thread = t

    def _run(self) -> None:
        assert self._out is not None
        while True:
            try:
                rec = self._q.get(timeout=SUPPRESS_INTERVAL / 2)
            except queue.Empty:
                self.flush_suppressed(force=False)
                continue
            if rec is None:
                break
            if self._budgets and time.monotonic() - self._checked >= 1.0:
                self._checked = time.monotonic()
                self.flush_suppressed(force=False)
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
        if self._out is not None:
            self.flush_suppressed()
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(10)
            self._thread = None
        if self._own and self._out is not None:
            self._out.close()
        self._out = None


NULL_AUDIT = AuditLog(None)
