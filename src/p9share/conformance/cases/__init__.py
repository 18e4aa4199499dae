"""The case modules, one per group of docs/protocol.md sections. Importing
this package registers every case."""

from . import (  # noqa: F401
    classic,
    confinement,
    dialects,
    dirs,
    fids,
    files,
    framing,
    notes,
    session,
    xattr_lock,
)
