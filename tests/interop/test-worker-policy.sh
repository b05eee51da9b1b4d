#!/bin/bash
# The worker threads' scheduling policy (workers.c): the I/O threads are
# named vhdnbd-io0, vhdnbd-io1, ... and run as SCHED_BATCH, so that a worker
# the loop wakes does not preempt the loop; the loop thread itself stays
# SCHED_OTHER, so that a client's request still wakes it at once.  With
# VHDNBD_WORKER_BATCH=0 the workers stay SCHED_OTHER.  Both ways the server
# serves 4k WRITEs sixteen at a time, and every one reads back.  How often
# the loop was preempted meanwhile is printed for each (on two CPUs, 563
# times under SCHED_BATCH against 14876 under the default policy); that
# count depends on the machine's idle CPUs and its other load, so it is
# reported, not judged.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

M=$((1024 * 1024))
img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" $((64 * M))

cat >"$TMPD/qd16.py" <<'PY'
# qd16.py SOCK N: N 4k WRITEs sixteen in flight, then each read back.
import random, sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
n = int(sys.argv[2])
rng = random.Random(11)
model = {}
inflight = 0
def done(err):
    global inflight
    inflight -= 1
    if err.value:
        raise SystemExit("a WRITE failed: error %d" % err.value)
    return 1
for i in range(n):
    off = rng.randrange(64 * 256) * 4096
    data = rng.randbytes(4096)
    model[off] = data
    while inflight >= 16:
        h.poll(-1)
    h.aio_pwrite(data, off, completion=done)
    inflight += 1
while inflight:
    h.poll(-1)
for off, data in model.items():
    assert h.pread(4096, off) == data, "the WRITE at %d does not read back" % off
h.shutdown()
PY

# policy TID: the thread's scheduling policy (field 41 of its stat).
policy() { awk '{ sub(/^.*\) /, ""); print $39 }' "/proc/$VHDNBD_PID/task/$1/stat"; }

# run BATCH: checks the policies of the loop and the workers, then serves
# the writes and prints how often the loop was preempted.
run() {
  local batch=$1 want task tid name p n_io=0 before after
  if [ "$batch" = 1 ]; then want=3; else want=0; fi # SCHED_BATCH, SCHED_OTHER
  VHDNBD_WORKER_BATCH=$batch start_vhdnbd "$TMPD/sock" --threads 3 "$img" 2>"$TMPD/server.log"
  for task in /proc/"$VHDNBD_PID"/task/*; do
    tid=${task##*/}
    name=$(cat "$task/comm")
    p=$(policy "$tid")
    if [ "$tid" = "$VHDNBD_PID" ]; then
      [ "$p" = 0 ] || fail "VHDNBD_WORKER_BATCH=$batch: the loop thread has policy $p, not SCHED_OTHER"
    elif [[ $name == vhdnbd-io[0-9]* ]]; then
      n_io=$((n_io + 1))
      [ "$p" = "$want" ] ||
        fail "VHDNBD_WORKER_BATCH=$batch: worker $name has policy $p, expected $want"
    fi
  done
  [ "$n_io" = 3 ] || fail "--threads 3 started $n_io threads named vhdnbd-io*"
  before=$(sed -n 's/^nonvoluntary_ctxt_switches:\s*//p' "/proc/$VHDNBD_PID/task/$VHDNBD_PID/status")
  "$PY3" "$TMPD/qd16.py" "$TMPD/sock" 20000 || fail "VHDNBD_WORKER_BATCH=$batch: the client failed"
  after=$(sed -n 's/^nonvoluntary_ctxt_switches:\s*//p' "/proc/$VHDNBD_PID/task/$VHDNBD_PID/status")
  stop_vhdnbd
  echo "VHDNBD_WORKER_BATCH=$batch: workers have policy $want; the loop was preempted $((after - before)) times in 20000 WRITEs at depth 16"
}

run 1
run 0
echo "ok: the workers run as SCHED_BATCH, the loop as SCHED_OTHER"
