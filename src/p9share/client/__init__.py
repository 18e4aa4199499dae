"""Clients of the 9P protocol.

- sync.FS / connect(): blocking, os-like API (usable from many threads)
- fs.AsyncFS: the same API for asyncio
- aio.Client: asyncio, one method per 9P2000.L message
- raw.RawClient: blocking, message-level, sends exactly what it is given (tests)
"""

from .errors import ConnectionLost
from .fs import AsyncFS
from .sync import FS, connect

__all__ = ["FS", "AsyncFS", "ConnectionLost", "connect"]
