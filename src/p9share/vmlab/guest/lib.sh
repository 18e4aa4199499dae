# /p9vmlab/lib.sh - helpers for guest scripts (busybox ash), pre-loaded before the script.
#
#   p9_now                 guest uptime in seconds (10 ms resolution)
#   p9_mount [opts]        mount the share on $P9_MNT (9p or virtiofs; extra options appended)
#   p9_umount              unmount it (and stop the trans=fd relay)
#   p9_remount [opts]      both, then cd into the mount again
#   p9_drop_caches         sync + drop the guest page/dentry caches
#
# Variables: P9_MNT, P9_TRANSPORT, P9_FSTYPE (9p or virtiofs), P9_MOUNT_SRC (server
# address or mount tag), P9_MOUNT_OPTS (the full option string; may be empty for
# virtiofs), P9_VERSION, P9_ANAME, P9_PORT. /bin/p9now prints a microsecond clock.

p9_now() { local up rest; read -r up rest </proc/uptime; echo "$up"; }
p9_drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# /dev/vportNpM of the virtio-serial port called $1 (waits up to 5 s for udev-less devtmpfs)
p9_vport() {
  local i=0 d
  while [ $i -lt 50 ]; do
    for d in /sys/class/virtio-ports/*; do
      [ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && [ -e "/dev/${d##*/}" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    sleep 0.1; i=$((i+1))
  done
  echo "p9_vport: no virtio-serial port named $1" >&2
  return 1
}

p9_relay_stop() {
  [ -f /run/p9relay.pids ] || return 0
  local pids p busy i=0
  pids=$(cat /run/p9relay.pids); rm -f /run/p9relay.pids
  kill $pids 2>/dev/null
  # wait until the relays have really closed the port: it can be opened only once
  while [ $i -lt 30 ]; do
    busy=0
    for p in $pids; do [ -n "$(ls /proc/$p/fd 2>/dev/null)" ] && busy=1; done
    [ $busy = 0 ] && break
    sleep 0.1; i=$((i+1))
  done
  return 0
}

p9_mount() {
  local opts="$P9_MOUNT_OPTS" dev
  [ -n "$1" ] && opts="${opts:+$opts,}$1"
  mkdir -p "$P9_MNT"
  case "$P9_TRANSPORT" in
    fd)
      dev=$(p9_vport "$P9_PORT_NAME") || return 1
      # Linux 6.1: kernel_read()/kernel_write() need ->read_iter/->write_iter, which
      # virtio_console ports lack ("kernel write not supported for file /vport0p1").
      # So relay vport <-> two FIFOs with dd and give the FIFOs to trans=fd.
      # Both relays share ONE open of the port (a port can be opened only once).
      # The mount opens the FIFOs one-way (3< and 4>, not <>): trans_fd has only two
      # poll-wait slots, and a FIFO opened read-write registers both of its wait queues,
      # so with <> the tx FIFO's "space available" wakeup is never registered and any
      # message larger than the 64 KiB pipe buffer (msize > 64k) hangs forever.
      p9_relay_stop
      rm -f /run/p9.rx /run/p9.tx
      mkfifo /run/p9.rx /run/p9.tx || return 1
      ( exec 5<>"$dev" || exit 1
        dd bs=64k <&5 >/run/p9.rx 2>/dev/null & echo $! >> /run/p9relay.pids
        dd bs=64k </run/p9.tx >&5 2>/dev/null & echo $! >> /run/p9relay.pids ) || return 1
      mount -t 9p -o "$opts" "$P9_MOUNT_SRC" "$P9_MNT" 3</run/p9.rx 4>/run/p9.tx \
        || { p9_relay_stop; return 1; } ;;
    virtiofs)
      # the 6.1 virtiofs client knows only dax and the generic options: no 9P ones
      if [ -n "$opts" ]; then mount -t virtiofs -o "$opts" "$P9_MOUNT_SRC" "$P9_MNT"
      else mount -t virtiofs "$P9_MOUNT_SRC" "$P9_MNT"; fi ;;
    none) echo "p9_mount: transport none" >&2; return 1 ;;
    *) mount -t 9p -o "$opts" "$P9_MOUNT_SRC" "$P9_MNT" ;;
  esac
}

p9_umount() {
  cd / && umount "$P9_MNT" && { [ "$P9_TRANSPORT" != fd ] || p9_relay_stop; }
}

p9_remount() { p9_umount && p9_mount "$@" && cd "$P9_MNT"; }
