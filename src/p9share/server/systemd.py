"""systemd's socket activation and service notification, with the standard library.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets from
fd 3 on, with LISTEN_PID (this process), LISTEN_FDS (how many) and
LISTEN_FDNAMES (their FileDescriptorName=, colon separated). A listener
address `systemd:NAME` takes the passed socket of that name, so the policy's
identity-per-socket works unchanged.

Notification (sd_notify(3)): datagrams of KEY=VALUE lines to NOTIFY_SOCKET
(a path, or '@' for the abstract namespace): READY=1 once serving,
RELOADING=1 and READY=1 around a reload, STOPPING=1, STATUS=..., and
WATCHDOG=1 every half WATCHDOG_USEC while the main loop runs.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

FIRST_FD = 3  # SD_LISTEN_FDS_START
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ValueError):
    """Passed sockets that do not fit the listeners; the message says how."""


def passed_sockets(environ: MutableMapping[str, str] | None = None) -> dict[str, int]:
    """The sockets systemd passed to this process, by name (an unnamed one
    is "unknown", as systemd names it). The variables are removed so that
    no child takes them for its own; the fds become close-on-exec."""
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(k, None) for k in _ENV)
    if pid is None or count is None:
        return {}
    if not pid.isdigit() or int(pid) != os.getpid():
        return {}  # meant for another process (a parent that did not exec us)
    if not count.isdigit() or not 0 < int(count) <= 1024:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a count of sockets")
    n = int(count)
    labels = names.split(":") if names else ["unknown"] * n
    if len(labels) != n:
        raise ActivationError(f"LISTEN_FDNAMES names {len(labels)} sockets, LISTEN_FDS {n}")
    out: dict[str, int] = {}
    for i, label in enumerate(labels):
        fd = FIRST_FD + i
        if label in out:
            raise ActivationError(f"two passed sockets are named {label!r} (FileDescriptorName=)")
        os.set_inheritable(fd, False)
        out[label] = fd
    return out


def resolve(names: list[str], passed: dict[str, int]) -> dict[str, int]:
    """The fd for each `systemd:NAME` listener; every passed socket must be
    named by one, and every name must have been passed."""
    missing = [n for n in names if n not in passed]
    if missing:
        have = ", ".join(sorted(passed)) or "none"
        raise ActivationError(f"listener systemd:{missing[0]}: no socket of that name was "
                              f"passed (FileDescriptorName=; passed: {have})")  # fmt: skip
    unused = sorted(set(passed) - set(names))
    if unused:
        raise ActivationError(f"passed socket {unused[0]!r} is named by no listener "
                              f"(add --listen systemd:{unused[0]})")  # fmt: skip
    return {n: passed[n] for n in names}


class Notifier:
    """sd_notify to NOTIFY_SOCKET; every call is a no-op without one."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.pop("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if addr.startswith("@"):
            self.address = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_interval = 0.0  # seconds between WATCHDOG=1; 0: none asked for
        usec, wpid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._next_watchdog = 0.0
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def notify(self, **fields: str | int) -> bool:
        """Send KEY=VALUE lines (newlines in values become spaces); False
        when there is nobody to tell or the send failed."""
        if self._sock is None or self.address is None:
            return False
        text = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def reloading(self) -> None:
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    // 1000)  # fmt: skip

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def tick(self) -> float:
        """Called from the main loop: WATCHDOG=1 when due. Returns how long
        the loop may wait before calling again."""
        if not self.watchdog_interval:
            return 1.0
        now = time.monotonic()
        if now >= self._next_watchdog:
            self.notify(WATCHDOG=1)
            self._next_watchdog = now + self.watchdog_interval
        return min(1.0, max(0.05, self._next_watchdog - now))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
