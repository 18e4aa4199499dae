"""Limits that keep one hostile client from hurting the others.

Per connection: fids, requests in flight, message size, idle time and the
time a half-sent message may take. Per client (all its connections
together): connections, operations per second and bytes per second. The
rates are token buckets with a burst, like QEMU's fsdev throttling: a client
over its rate is slowed down (its requests are delayed), never failed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..audit import NULL_AUDIT, AuditLog
from ..protocol.constants import DEFAULT_MAX_MSIZE, MIN_MSIZE

Clock = Callable[[], float]

_COUNTS = ("max_fids", "max_inflight", "max_msize", "max_connections")


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit; 0 means "none" except where a field says otherwise.

    The defaults never disturb a normal Linux guest: its client keeps a fid
    per cached dentry, so a guest that walks a large tree holds tens of
    thousands of fids; 262,144 is far above that yet bounds the memory one
    connection can pin. A mounted guest may be idle for hours and Linux's
    9P client never reconnects, so there is no idle timeout by default;
    instead a connection that has attached nothing within attach_timeout
    (a port scanner, a connection flood) is closed, and one whose peer stops
    taking its replies is closed after send_timeout.
    """

    max_fids: int = 262_144  # per connection; past it, a new fid is EMFILE
    max_inflight: int = 16  # per connection, at least 1; past it, reading pauses
    max_msize: int = DEFAULT_MAX_MSIZE  # per connection, at least 4096
    max_connections: int = 64  # per client; past it, a connection is refused
    ops_per_second: float = 0  # per client
    ops_burst: float = 0  # 0: one second's worth
    bytes_per_second: float = 0  # per client, Tread counts and Twrite payloads
    bytes_burst: float = 0  # 0: one second's worth
    idle_timeout: float = 0  # seconds with no request and none in flight
    header_timeout: float = 30.0  # seconds for a message from its first byte to its last
    send_timeout: float = 60.0  # seconds a reply may wait for the peer to take any of it
    attach_timeout: float = 60.0  # seconds from connecting to the first attach

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _COUNTS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"limit {f.name} must be an integer, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"limit {f.name} must be a number, not {value!r}")
            elif not math.isfinite(value):
                raise ValueError(f"limit {f.name} must be finite, not {value!r}")
            if value < 0:
                raise ValueError(f"limit {f.name} must not be negative, not {value!r}")
        if self.max_inflight < 1:
            raise ValueError("limit max_inflight must be at least 1")
        if self.max_msize < MIN_MSIZE:
            raise ValueError(f"limit max_msize must be at least {MIN_MSIZE} (Linux needs it)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Limits | None = None) -> Limits:
        """Limits from a configuration table (e.g. TOML [limits]): the given
        keys override `base` (or the defaults). Unknown keys are a ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown limit {unknown[0]!r}; known: {', '.join(sorted(known))}")
        current = {name: getattr(base or cls(), name) for name in known}
        current.update(data)
        return cls(**current)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up (0: one second's
    worth). Rate 0 is unlimited. Thread-safe."""

    def __init__(self, rate: float, burst: float = 0, clock: Clock = time.monotonic) -> None:
        if rate < 0 or burst < 0 or not math.isfinite(rate) or not math.isfinite(burst):
            raise ValueError(f"bad token bucket: rate {rate!r}, burst {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst > 0 else float(rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = max(now, self._stamp)

    def take(self, n: float = 1) -> float:
        """Spend n tokens and return how long the caller must wait before
        acting (0 if within budget). Tokens may go into debt: a request larger
        than the burst waits for the tokens it lacks, and later ones queue
        behind it."""
        if n < 0:
            raise ValueError(f"cannot take {n!r} tokens")
        if self.rate == 0:
            return 0.0
        with self._lock:
            self._refill(self._clock())
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def full(self) -> bool:
        """Whether the bucket is back at its burst (a meter with no debt can go)."""
        if self.rate == 0:
            return True
        with self._lock:
            self._refill(self._clock())
            return self._tokens >= self.burst


class ClientMeter:
    """One client's rate buckets and connection count, shared by all its
    connections."""

    def __init__(self, name: str, limits: Limits, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.limits = limits
        self.ops = TokenBucket(limits.ops_per_second, limits.ops_burst, clock)
        self.bytes = TokenBucket(limits.bytes_per_second, limits.bytes_burst, clock)
        self._connections = 0
        self._lock = threading.Lock()

    @property
    def connections(self) -> int:
        return self._connections

    def try_connect(self) -> bool:
        """Count a new connection; False (and not counted) if over the limit."""
        with self._lock:
            cap = self.limits.max_connections
            if cap and self._connections >= cap:
                return False
            self._connections += 1
            return True

    def disconnect(self) -> None:
        with self._lock:
            self._connections = max(0, self._connections - 1)

    def charge(self, nbytes: int = 0) -> tuple[float, str]:
        """Charge one operation moving nbytes: the delay it must wait and
        the name of the limit that imposes it ("" if none)."""
        delay = self.ops.take(1)
        name = "ops_per_second" if delay > 0 else ""
        if nbytes > 0:
            bdelay = self.bytes.take(nbytes)
            if bdelay > delay:
                delay, name = bdelay, "bytes_per_second"
        return delay, name

    def idle(self) -> bool:
        """No connection and no debt: forgetting this meter loses nothing."""
        with self._lock:
            if self._connections:
                return False
        return self.ops.full() and self.bytes.full()


class RecordGate:
    """Lets at most one record per key through per `interval` and counts the
    ones held back, so a client hammering a limit cannot flood the audit log."""

    def __init__(self, interval: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> int | None:
        """None: hold this record back. Otherwise write it, noting the
        returned number of records held back since the last one."""
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if len(self._last) >= 1024:  # many keys (many clients): forget the stale ones
                for k in [k for k, t in self._last.items() if now - t >= self._interval]:
                    del self._last[k]
                    self._suppressed.pop(k, None)
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class LimitReporter:
    """Audit records of the limits one connection hits: at most one per
    limit per `interval` (see RecordGate)."""

    def __init__(
        self,
        audit: AuditLog = NULL_AUDIT,
        peer: str = "",
        client: str = "",
        *,
        interval: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.audit = audit
        self.peer = peer
        self.client = client
        self._gate = RecordGate(interval, clock)

    def hit(self, limit: str, action: str, **extra: Any) -> None:
        """Record that `limit` was hit and what was done about it."""
        suppressed = self._gate.allow(limit)
        if suppressed is None:
            return
        self.audit.emit(
            "limit",
            peer=self.peer,
            client=self.client,
            limit=limit,
            action=action,
            **({"suppressed_since": suppressed} if suppressed else {}),
            **extra,
        )


__all__ = ["ClientMeter", "LimitReporter", "Limits", "RecordGate", "TokenBucket"]
