"""p9share: a 9P file server for host-to-VM sharing."""

__version__ = "0.1.0"
