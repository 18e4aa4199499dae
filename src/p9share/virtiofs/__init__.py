"""virtio-fs: FUSE over vhost-user, served from the same policy engine and backends as 9P."""
