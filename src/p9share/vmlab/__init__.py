"""p9share.vmlab - a throw-away Linux guest whose kernel mounts a host file server.

The guest kernel's own v9fs client (Linux 6.1 from Debian) is a real 9P2000.L/.u
client that we did not write, and its virtiofs client a real FUSE-over-virtqueue
one, so tests can check a server against them.

How it works
------------
* :func:`setup` (idempotent, cached in ``~/.cache/p9share-vmlab`` or
  ``$P9SHARE_VMLAB_CACHE``, serialised by a file lock) installs missing host packages
  with apt-get (qemu-system-x86, busybox-static, gcc + libc6-dev), fetches the Debian
  kernel package that ``linux-image-amd64`` depends on with ``apt-get download`` (the
  generic ``-amd64`` flavour: the ``-cloud`` one lacks the 9p modules), and extracts
  ``vmlinuz`` plus the modules 9p, 9pnet, 9pnet_fd, 9pnet_virtio, virtio_pci,
  virtio_net, virtio_console, fuse, virtiofs and their ``depends=`` closure, in load
  order (fuse and virtiofs are loaded only by virtio-fs guests). It
  decompresses the bzImage's payload into an ELF ``vmlinux``: QEMU boots that
  directly through its PVH entry point, which skips the in-guest decompression and
  saves ~5 s per boot under TCG (a probe boot checks it; otherwise the bzImage is
  used). It compiles the static guest helpers ``p9xattr``, ``p9lock``, ``p9posix``, ``p9now``
  (``guest/*.c``, ``gcc -static``) and writes the base initramfs (static busybox and
  its applet links, the modules, ``guest/init.sh`` as /init, the helpers) as a cpio
  "newc" archive in Python, gzip'd and NUL-padded to a multiple of 512 bytes.
* :func:`run_guest` appends a small uncompressed per-run cpio (config, script, extra
  files) to that base image. The kernel only finds an appended archive at a 4-byte
  aligned offset and skips NULs between archives, hence the padding. QEMU runs with
  ``-accel tcg`` (KVM on the development hosts is a nested "PVM" that cannot run a
  stock kernel at usable speed), ``-M pc -nodefaults -no-user-config -display none
  -no-reboot``, the serial console on QEMU's stdout. The guest's /init loads the
  modules, mounts the share at /mnt, runs the script there with busybox ``sh`` and
  prints its output between markers that contain a random per-run token, then the
  exit status, then powers off. Boot to a mounted share takes ~2.5-3.5 s.
* Transports. ``tcp``: QEMU user networking; the guest has 10.0.2.15/24 and dials
  10.0.2.2, which QEMU maps to the host's 127.0.0.1, so the server listens on
  127.0.0.1:PORT. ``fd``: QEMU connects to the server's listening Unix socket
  (``-chardev socket,path=SOCK``) and exposes the byte stream as the virtio-serial
  port ``p9share.9p``; the guest mounts with ``trans=fd,rfdno=3,wfdno=4``.
  ``virtio``: no host server at all; QEMU's built-in virtio-9p device
  (``-fsdev local,security_model=mapped-xattr|passthrough|...``) shares a host
  directory under the mount tag ``p9share`` and the guest mounts it with
  ``trans=virtio`` (the in-process reference point of the benchmarks).
  ``virtiofs``: a vhost-user-fs back end listens on a host Unix socket; QEMU
  connects as ``-chardev socket,path=SOCK -device vhost-user-fs-pci,tag=TAG`` with
  guest RAM as a shared memfd (``-object memory-backend-memfd,share=on -numa
  node,memdev=mem``) that the back end maps; the guest mounts ``mount -t virtiofs
  TAG /mnt``. Works under TCG. :class:`p9share.vmlab.virtiofsd.Virtiofsd` runs
  QEMU's own ``/usr/lib/qemu/virtiofsd`` as the reference back end.
* **The fd relay.** On Linux 6.1 the fd transport cannot use the port device
  directly: ``kernel_read()``/``kernel_write()`` need ``->read_iter``/``->write_iter``
  and virtio_console only has ``.read``/``.write`` (mount fails with EIO, dmesg
  ``kernel write not supported for file /vport0p1``). The guest therefore opens the
  port once and runs two busybox ``dd bs=64k`` relays, port -> FIFO and FIFO -> port;
  the mount gets the FIFOs as fds 3 and 4. The kernel's fd transport is still what is
  exercised, but every byte costs two extra user-space copies. The FIFOs must be
  opened one-way (``3<`` / ``4>``): trans_fd has two poll-wait slots, a read-write
  FIFO fills both, and then any message larger than the 64 KiB pipe buffer (msize
  above 64 KiB) hangs.
* :mod:`p9share.vmlab.recorder` is a frame-logging proxy for recording golden
  vectors of a real client session; :class:`p9share.vmlab.diod.Diod` runs Debian's
  diod as a reference 9P server, :class:`p9share.vmlab.virtiofsd.Virtiofsd` QEMU's
  virtiofsd as a reference virtio-fs back end.

CLI: ``python -m p9share.vmlab setup | info | run ... SCRIPT | record ...``.
"""

from .assets import Assets, VMLabError, cache_dir, setup
from .runner import (
    STATUS_MOUNT_FAILED,
    STATUS_NO_RESULT,
    STATUS_TIMEOUT,
    VIRTIOFS_TAG,
    GuestError,
    GuestResult,
    run_guest,
)

__all__ = [
    "STATUS_MOUNT_FAILED",
    "STATUS_NO_RESULT",
    "STATUS_TIMEOUT",
    "VIRTIOFS_TAG",
    "Assets",
    "GuestError",
    "GuestResult",
    "VMLabError",
    "cache_dir",
    "run_guest",
    "setup",
]
