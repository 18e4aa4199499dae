"""virtio-fs: FUSE over virtqueues, served to a vhost-user front end (QEMU, ...).

Layers, lowest first: `vhost_user` (sans-IO message codec and back-end state
machine), `memory` (the front end's memory regions, mapped, with bounds-checked
translation), `virtqueue` (the split-ring engine and the ChainReader/ChainWriter
a request handler sees), `device` (the socket/eventfd/thread edge:
`VhostUserListener`).  The FUSE codec and session sit above `device`.
"""

from .device import ChainHandler, HandlerFactory, VhostUserListener
from .virtqueue import ChainError, ChainReader, ChainWriter

__all__ = [
    "ChainError",
    "ChainHandler",
    "ChainReader",
    "ChainWriter",
    "HandlerFactory",
    "VhostUserListener",
]
