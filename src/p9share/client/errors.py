"""How 9P failures surface: an error reply becomes the OSError subclass of
its errno (FileNotFoundError for ENOENT, ...), with the remote path as its
filename; a broken connection is a ConnectionError."""

from __future__ import annotations

import errno
import os

from ..protocol import messages as m


class ConnectionLost(ConnectionError):
    """The connection to the server is gone; every pending and later request
    on it fails with this."""


# Linux errors are 1..4095 (MAX_ERRNO); a server may send any u32.
MAX_ERRNO = 4095


def protocol_error(text: str) -> OSError:
    """The server broke the protocol (a reply that cannot be true)."""
    return OSError(errno.EPROTO, f"protocol error from the server: {text}")


def remote_error(
    err: int, path: str | None = None, path2: str | None = None, text: str | None = None
) -> OSError:
    """OSError(errno, strerror, path) picks the matching subclass itself. An
    error number outside 1..MAX_ERRNO (a hostile or broken server) is EIO,
    naming the number the server sent."""
    if not 0 < err <= MAX_ERRNO:
        text = f"server sent error number {err}" + (f" ({text})" if text else "")
        err = errno.EIO
    text = text or os.strerror(err)
    if path2 is not None:
        return OSError(err, text, path, None, path2)
    if path is not None:
        return OSError(err, text, path)
    return OSError(err, text)


def reply_error(reply: m.Message) -> OSError | None:
    """The error an Rlerror / Rerror reply carries, None for other replies."""
    if isinstance(reply, m.Rlerror):
        return remote_error(reply.ecode)
    if isinstance(reply, m.Rerror):
        return remote_error(reply.errno or errno.EIO, text=reply.ename)
    return None


def with_path(e: OSError, path: str, path2: str | None = None) -> OSError:
    """The same error naming path (and path2), the first paths given winning."""
    if e.errno is None or isinstance(e, ConnectionLost):
        return e
    if e.filename is not None and (path2 is None or e.filename2 is not None):
        return e
    return remote_error(e.errno, path, path2, e.strerror)
