#!/bin/sh
# /init of the p9share.vmlab guest (PID 1, busybox ash).
# Reads /p9vmlab/config (appended per run by the host), loads the 9p/virtio modules
# (fuse and virtiofs only for a virtio-fs guest), configures the network for trans=tcp,
# mounts the share (9P or virtio-fs), runs /p9vmlab/script in the mount and reports
# everything on the serial console between per-run markers.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run /tmp /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
. /p9vmlab/config
. /p9vmlab/lib.sh
[ "$P9_DEBUG" = 1 ] || dmesg -n 1
# no \n -> \r\n translation on the console: the host gets the script's bytes as written
stty -onlcr 2>/dev/null
mark() { echo "P9VMLAB-$P9_TOKEN-$*"; }
finish() {
  cd /
  sync
  if grep -q " $P9_MNT ${P9_FSTYPE:-9p} " /proc/mounts; then
    timeout 30 umount "$P9_MNT" 2>/dev/null || umount -l "$P9_MNT" 2>/dev/null
  fi
  mark "POWEROFF rc=$1 uptime=$(p9_now)"
  poweroff -f
  echo o > /proc/sysrq-trigger
  sleep 10
}
mark "BOOT uptime=$(p9_now) kernel=$(uname -r)"
hostname p9vmlab
[ "$P9_PROBE" = 1 ] && { mark "PROBE-OK"; finish 0; }

while read -r ko; do
  m=${ko##*/}; m=${m%%.ko*}
  case " $P9_SKIP_MODULES " in *" $m "*) continue ;; esac
  insmod "/lib/modules/$(uname -r)/$ko" 2>/tmp/insmod.err \
    || { [ "$P9_DEBUG" = 1 ] && cat /tmp/insmod.err; }
done < /p9vmlab/modules.load

if [ "$P9_NET" = 1 ]; then
  ip link set lo up
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  { ip link set eth0 up && ip addr add "$P9_GUEST_IP/24" dev eth0 \
      && ip route add default via "$P9_GATEWAY"; } || mark "WARN network setup failed"
fi

if [ "$P9_TRANSPORT" != none ]; then
  n=0
  : > /tmp/mount.err
  dm0=$(dmesg | wc -l)
  until p9_mount 2>>/tmp/mount.err; do
    n=$((n+1))
    if [ $n -ge "$P9_MOUNT_RETRIES" ]; then
      mark "MOUNT-FAILED transport=$P9_TRANSPORT src=$P9_MOUNT_SRC opts=$P9_MOUNT_OPTS"
      cat /tmp/mount.err
      echo "--- guest kernel messages since the modules were loaded ---"
      dmesg | tail -n +$((dm0 + 1)) | tail -n 40 > /tmp/dmesg.new
      if [ -s /tmp/dmesg.new ]; then cat /tmp/dmesg.new; else echo "(none)"; fi
      mark "MOUNT-FAILED-END"
      finish 126
    fi
    sleep 1
  done
fi
mark "READY uptime=$(p9_now) mount=$(grep " $P9_MNT $P9_FSTYPE " /proc/mounts)"
echo "=====P9VMLAB-$P9_TOKEN-BEGIN====="
( cd "$P9_MNT" 2>/dev/null || cd /; exec sh /p9vmlab/run </dev/null 2>&1 )
rc=$?
# the leading newline guarantees the marker starts a line; the host strips it again
printf '\n=====P9VMLAB-%s-END rc=%s=====\n' "$P9_TOKEN" "$rc"
finish "$rc"
