"""A FUSE mount of a 9P2000.L export (`p9share mount`): pyfuse3 on libfuse3,
on top of the asyncio client, with transparent reconnection.

- tree.RemoteTree: inodes, handles and the reconnecting session (asyncio)
- mount: the pyfuse3 Operations, the trio/asyncio bridge, run_mount()

Needs the `fuse` extra (pyfuse3) and libfuse3; importing p9share.fuse.mount
without them raises ImportError.
"""
