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


def remote_error(
    err: int, path: str | None = None, path2: str | None = None, text: str | None = None
) -> OSError:
    """OSError(errno, strerror, path) picks the matching subclass itself."""
    text = text or (os.strerror(err) if err else "Unknown error")
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
        return OSError(reply.errno or errno.EIO, reply.ename)
    return None


def with_path(e: OSError, path: str, path2: str | None = None) -> OSError:
    """The same error naming path (and path2), the first paths given winning."""
    if e.errno is None or isinstance(e, ConnectionLost):
        return e
    if e.filename is not None and (path2 is None or e.filename2 is not None):
        return e
    return remote_error(e.errno, path, path2, e.strerror)
