"""Translation of 9P open modes to host os.O_* flags, one flag at a time.

The .L flags are a portable set (they happen to equal x86 Linux's values, but
not other architectures'), so nothing is passed through unmapped.
"""

from __future__ import annotations

import errno
import os

from ..protocol import constants as c

# Flags that take effect on the host file. O_CREAT and O_EXCL only matter for
# Tlcreate (applied there); NOCTTY, FASYNC and DIRECT are dropped on purpose:
# a server must not acquire a controlling tty, has no signal-driven I/O, and
# O_DIRECT would impose alignment on the guest's buffers. LARGEFILE is the
# default for a 64-bit process. CLOEXEC is always set by the server.
_DOTL_TO_HOST = (
    (c.L_O_TRUNC, os.O_TRUNC),
    (c.L_O_APPEND, os.O_APPEND),
    (c.L_O_NONBLOCK, os.O_NONBLOCK),
    (c.L_O_DSYNC, os.O_DSYNC),
    (c.L_O_DIRECTORY, os.O_DIRECTORY),
    (c.L_O_NOFOLLOW, os.O_NOFOLLOW),
    (c.L_O_NOATIME, os.O_NOATIME),
    (c.L_O_SYNC, os.O_SYNC),
)
_IGNORED = (
    c.L_O_CREAT | c.L_O_EXCL | c.L_O_NOCTTY | c.L_O_FASYNC | c.L_O_DIRECT
    | c.L_O_LARGEFILE | c.L_O_CLOEXEC
)  # fmt: skip
_KNOWN = _IGNORED | c.L_O_ACCMODE
for _wire, _ in _DOTL_TO_HOST:
    _KNOWN |= _wire

_ACCESS = {c.L_O_RDONLY: os.O_RDONLY, c.L_O_WRONLY: os.O_WRONLY, c.L_O_RDWR: os.O_RDWR}


def dotl_to_host(flags: int) -> int:
    """Host flags for Tlopen/Tlcreate flags. Unknown bits or the NOACCESS mode
    raise OSError(EINVAL). O_SYNC includes O_DSYNC's bit on Linux, so SYNC is
    tested as a whole value, not by a shared bit."""
    if flags & ~_KNOWN:
        raise OSError(errno.EINVAL, f"unknown open flags {flags & ~_KNOWN:#o}")
    access = flags & c.L_O_ACCMODE
    if access not in _ACCESS:
        raise OSError(errno.EINVAL, "open mode 3 (NOACCESS) is not supported")
    host = _ACCESS[access]
    for wire, hostbit in _DOTL_TO_HOST:
        if flags & wire == wire:
            host |= hostbit
    return host


def dotl_create_flags(flags: int) -> int:
    """Host flags for Tlcreate: the open flags plus O_EXCL if asked (O_CREAT is implied)."""
    host = dotl_to_host(flags) | os.O_CREAT
    if flags & c.L_O_EXCL:
        host |= os.O_EXCL
    return host


def classic_to_host(mode: int) -> int:
    """Host flags for a 9P2000/.u Topen/Tcreate mode byte."""
    access = mode & 3
    host = {c.OREAD: os.O_RDONLY, c.OWRITE: os.O_WRONLY, c.ORDWR: os.O_RDWR, c.OEXEC: os.O_RDONLY}[
        access
    ]
    if mode & c.OTRUNC:
        host |= os.O_TRUNC
    if mode & c.OAPPEND:
        host |= os.O_APPEND
    if mode & ~(3 | c.OTRUNC | c.ORCLOSE | c.OCEXEC | c.OEXCL | c.OAPPEND):
        raise OSError(errno.EINVAL, f"unknown open mode bits {mode:#x}")
    return host
