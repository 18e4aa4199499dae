# Guest side of benchmarks/run.py (busybox ash, run in the mounted share by vmlab).
#
#   "$@" = SEQ_MIB MSIZES NFILES PAR_MIB [SEQ_CACHES]
#
# Prints one line per measurement; the host computes rates from the timestamps
# (CLOCK_MONOTONIC from the static /bin/p9now, microseconds: busybox date has no %N
# and /proc/uptime ticks in 10 ms, too coarse for a cached virtio-fs find):
#   RESULT <workload> <t0> <t1> <amount> <unit> <msize>
# and "FAIL <workload>" when a step failed (the host then reports no number). Each
# interval includes one fork+exec of p9now (a few ms under TCG), the same for every
# server. Over 9P the sequential runs go through each msize and client cache mode;
# over virtio-fs (P9_TRANSPORT=virtiofs) the cache mode is the server's, so they run
# once, as "seq-write/virtio-fs". The guest's caches are dropped before each workload
# that should reach the server (reads, stats, find, read-back).
seq_mib=$1 msizes=$2 nfiles=$3 par_mib=$4 caches=${5:-"none loose"}
msize_now() { sed -n "s|.* $P9_MNT 9p .*msize=\([0-9]*\).*|\1|p" /proc/mounts; }
# timed NAME AMOUNT UNIT CMD...: run CMD, print a RESULT line (or FAIL)
timed() {
  local name=$1 amount=$2 unit=$3 t0 t1
  shift 3
  t0=$(p9now)
  if "$@"; then
    t1=$(p9now)
    echo "RESULT $name $t0 $t1 $amount $unit $(msize_now)"
  else
    echo "FAIL $name"
  fi
}

seq_write() { dd if=/dev/zero of=seq.bin bs=1M count="$seq_mib" conv=fsync 2>/dev/null; }
seq_read() { dd if=seq.bin of=/dev/null bs=1M 2>/dev/null; }
create_files() { local i=0; while [ $i -lt "$nfiles" ]; do : > "m/f$i" || return 1; i=$((i+1)); done; }
stat_files() { stat -c %s m/* > /dev/null; }
unlink_files() { rm -f m/*; }
untar() { tar -xf /root/tree.tar; }
list_tree() { find tree > /dev/null; }
du_tree() { du -s tree > /dev/null; }
read_tree() { find tree -type f | xargs cat > /dev/null; }
rm_tree() { rm -rf tree; }
par_read() {
  dd if=par1.bin of=/dev/null bs=1M 2>/dev/null & a=$!
  dd if=par2.bin of=/dev/null bs=1M 2>/dev/null & b=$!
  wait $a && wait $b
}

seq_pass() {  # seq_pass LABEL: write, drop the guest's caches, read back
  timed "seq-write/$1" $((seq_mib * 1048576)) bytes seq_write
  p9_drop_caches
  timed "seq-read/$1" $((seq_mib * 1048576)) bytes seq_read
  rm -f seq.bin
}

if [ "$P9_TRANSPORT" = virtiofs ]; then
  seq_pass virtio-fs
else
  for ms in $msizes; do
    for cache in $caches; do
      p9_remount "msize=$ms,cache=$cache" || { echo "FAIL remount msize=$ms cache=$cache"; continue; }
      seq_pass "$cache/$ms"
    done
  done
  # metadata and mixed work: the largest msize, no cache (every operation reaches the server)
  ms=${msizes##* }
  p9_remount "msize=$ms,cache=none" || { echo "FAIL remount msize=$ms cache=none"; exit 1; }
fi

mkdir m
timed files-create "$nfiles" ops create_files
p9_drop_caches
timed files-stat "$nfiles" ops stat_files
timed files-unlink "$nfiles" ops unlink_files
rmdir m
ntree=$(tar -tf /root/tree.tar | wc -l)
treebytes=$(sed -n 1p /root/tree.bytes)
timed tree-untar "$ntree" ops untar
p9_drop_caches
timed tree-find "$ntree" ops list_tree
timed tree-du "$ntree" ops du_tree
p9_drop_caches
timed tree-read "$treebytes" bytes read_tree
timed tree-rm "$ntree" ops rm_tree
dd if=/dev/zero of=par1.bin bs=1M count="$par_mib" 2>/dev/null
dd if=/dev/zero of=par2.bin bs=1M count="$par_mib" 2>/dev/null
p9_drop_caches
timed par-read $((2 * par_mib * 1048576)) bytes par_read
rm -f par1.bin par2.bin
echo DONE
