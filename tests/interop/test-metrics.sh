#!/bin/bash
# --metrics-file: known I/O through libnbd (writes and reads of known sizes,
# a FLUSH, a READ the server refuses, a client over --max-connections) must
# show up exactly in the Prometheus
# text file, per export and in total; every version of the file a reader can
# open while the server rewrites it each second must parse whole (it is
# replaced by a rename, never rewritten in place); SIGUSR1 logs one line per
# export.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

sock=$TMPD/sock
M=$((1024 * 1024))
mkdir "$TMPD/prom"
prom=$TMPD/prom/vhdnbd.prom
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/d0.vhd" $((8 * M))
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/d1.vhd" $((8 * M))
start_vhdnbd "$sock" -e "alpha=$TMPD/d1.vhd" --metrics-file "$prom" --metrics-interval 1 \
  --max-connections 1 \
  "$TMPD/d0.vhd" 2>"$TMPD/server.log"

# A parser of the text exposition format: every sample belongs to a family
# declared by HELP and TYPE lines before it, names and labels are well
# formed, histograms are cumulative and end in +Inf equal to _count.
cat > "$TMPD/prom.py" <<'EOF'
import math, re, sys

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')

def parse(text):
    if not text.endswith("\n"):
        raise ValueError("no final newline")
    types, helps, samples = {}, set(), {}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            if not NAME.match(name) or name in helps:
                raise ValueError(f"line {n}: bad or repeated HELP {name}")
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            if typ not in ("counter", "gauge", "histogram") or name in types:
                raise ValueError(f"line {n}: bad TYPE {line}")
            if name not in helps:
                raise ValueError(f"line {n}: TYPE before HELP for {name}")
            types[name] = typ
            continue
        if line.startswith("#") or not line:
            raise ValueError(f"line {n}: unexpected {line!r}")
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m:
            raise ValueError(f"line {n}: bad sample {line!r}")
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and not (fam in types and types[fam] == "histogram"):
            raise ValueError(f"line {n}: sample {name} of no declared family")
        if not name.startswith("vhdnbd_"):
            raise ValueError(f"line {n}: {name} without the vhdnbd_ prefix")
        lab, pos = {}, 0
        while pos < len(labels):
            lm = LABEL.match(labels, pos)
            if not lm:
                raise ValueError(f"line {n}: bad labels {labels!r}")
            lab[lm.group(1)] = lm.group(2)
            pos = lm.end()
        v = float(value)
        if math.isnan(v) or v < 0:
            raise ValueError(f"line {n}: value {value}")
        key = (name, tuple(sorted(lab.items())))
        if key in samples:
            raise ValueError(f"line {n}: repeated sample {key}")
        samples[key] = v
    for (name, lab), v in samples.items():
        if name.endswith("_bucket"):
            le = dict(lab)["le"]
            rest = tuple(kv for kv in lab if kv[0] != "le")
            count = samples[(name[:-7] + "_count", rest)]
            if le == "+Inf" and v != count:
                raise ValueError(f"{name}{lab}: +Inf bucket {v} != count {count}")
            if le != "+Inf" and v > count:
                raise ValueError(f"{name}{lab}: bucket above count")
    return samples

def get(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]
EOF

# --- known I/O on export alpha ----------------------------------------------------
"$PY3" - "$sock" <<'EOF' || fail "driving I/O through libnbd"
import errno, sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)  # let the out-of-range READ reach the server
h.connect_uri(f"nbd+unix:///alpha?socket={sys.argv[1]}")
for i in range(5):
    h.pwrite(bytes([i + 1]) * 4096, i * 4096)
for i in range(3):
    h.pwrite(b"x" * 65536, 65536 * (i + 1))
for i in range(4):
    assert len(h.pread(8192, i * 8192)) == 8192
h.flush()
try:
    h.pread(512, h.get_size())
    sys.exit("READ past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
# A second client while the first is connected: over --max-connections.
h2 = nbd.NBD()
try:
    h2.connect_uri(f"nbd+unix:///alpha?socket={sys.argv[1]}")
    sys.exit("a second connection got past --max-connections 1")
except nbd.Error:
    pass
h.shutdown()
EOF

check_counts() {
  "$PY3" - "$prom" "$TMPD/prom.py" <<'EOF'
import sys
sys.path.insert(0, sys.argv[2].rsplit("/", 1)[0])
from prom import parse, get
s = parse(open(sys.argv[1]).read())
A = dict(export="alpha")
want = {("WRITE", "ok"): 8, ("READ", "ok"): 4, ("READ", "error"): 1, ("FLUSH", "ok"): 1}
for cmd in ("READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS",
            "unknown"):
    for res in ("ok", "error"):
        got = get(s, "vhdnbd_requests_total", command=cmd, result=res, **A)
        if got != want.get((cmd, res), 0):
            sys.exit(f"alpha {cmd} {res}: {got}, want {want.get((cmd, res), 0)}")
        if get(s, "vhdnbd_requests_total", export="", command=cmd, result=res) != 0:
            sys.exit(f"default export counted {cmd} {res}")
        if get(s, "vhdnbd_server_requests_total", command=cmd, result=res) != got:
            sys.exit(f"server total {cmd} {res} differs from the only busy export")
assert get(s, "vhdnbd_written_bytes_total", **A) == 5 * 4096 + 3 * 65536
assert get(s, "vhdnbd_read_bytes_total", **A) == 4 * 8192
assert get(s, "vhdnbd_server_written_bytes_total") == 5 * 4096 + 3 * 65536
assert get(s, "vhdnbd_errors_total", errno="EINVAL", **A) == 1
assert get(s, "vhdnbd_errors_total", errno="EIO", **A) == 0
assert get(s, "vhdnbd_server_errors_total", errno="EINVAL") == 1
assert get(s, "vhdnbd_request_duration_seconds_count", command="WRITE", **A) == 8
assert get(s, "vhdnbd_request_duration_seconds_count", command="READ", **A) == 5
assert get(s, "vhdnbd_request_duration_seconds_bucket", command="WRITE", le="+Inf", **A) == 8
assert get(s, "vhdnbd_requests_in_flight", **A) == 0
assert get(s, "vhdnbd_requests_queued", **A) == 0
assert get(s, "vhdnbd_connections_total") == 2
assert get(s, "vhdnbd_connections_refused_total", reason="max_connections") == 1
assert get(s, "vhdnbd_connections_refused_total", reason="per_address") == 0
assert get(s, "vhdnbd_connections") == 0
# Every write fell in the first 2 MiB block; the default export has none.
assert get(s, "vhdnbd_allocated_bytes", **A) == 2 << 20, get(s, "vhdnbd_allocated_bytes", **A)
assert get(s, "vhdnbd_allocated_bytes", export="") == 0
EOF
}
# Quiet while the file still holds earlier figures; the last try speaks.
check_counts_quietly() { check_counts 2>/dev/null; }
wait_for 30 "metrics file with the I/O done" check_counts_quietly
check_counts || fail "metrics file: counters differ from the I/O done"

# --- atomic replacement: poll while the server rewrites it every second --------------
"$PY3" - "$prom" "$TMPD/prom.py" <<'EOF' || fail "a reader saw a metrics file that does not parse"
import os, sys, time
sys.path.insert(0, sys.argv[2].rsplit("/", 1)[0])
from prom import parse
inodes, reads, end = set(), 0, time.monotonic() + 4.5
while time.monotonic() < end or len(inodes) < 3:
    if time.monotonic() > end + 30:
        sys.exit(f"the file was replaced only {len(inodes) - 1} times")
    with open(sys.argv[1]) as f:
        inodes.add(os.fstat(f.fileno()).st_ino)
        text = f.read()
    s = parse(text)  # raises on a partial file
    assert any(k[0] == "vhdnbd_allocated_bytes" for k in s), "last family missing"
    reads += 1
print(f"{reads} reads of {len(inodes)} versions, each whole")
EOF

# --- SIGUSR1 ------------------------------------------------------------------------------
kill -USR1 "$VHDNBD_PID"
wait_for 20 "SIGUSR1 summary" grep -q \
  "export 'alpha': 14 requests, 1 failed; 32768 bytes read, 217088 bytes written; 0 in flight" \
  "$TMPD/server.log"
grep -q "export '': 0 requests" "$TMPD/server.log" || fail "no SIGUSR1 line for the default export"

stop_vhdnbd
ls "$TMPD/prom" | grep -v '^vhdnbd.prom$' && fail "temporary files left next to the metrics file"
"$PY3" -c "import sys; sys.path.insert(0, '$TMPD'); from prom import parse; parse(open('$prom').read())" ||
  fail "final metrics file does not parse"

# --- exports a reload adds and removes ------------------------------------------------
# Counters live with their export: after a SIGHUP that drops one export and
# adds two, the file lists exactly the exports served, and a request to a
# new one is counted.
cp "$TMPD/d1.vhd" "$TMPD/d2.vhd"
cp "$TMPD/d1.vhd" "$TMPD/d3.vhd"
printf '[global]\nmetrics-file = %s\nmetrics-interval = 1\n[export first]\nimage = %s\n' \
  "$prom" "$TMPD/d1.vhd" >"$TMPD/reload.conf"
start_vhdnbd "$sock" -C "$TMPD/reload.conf" 2>"$TMPD/server2.log"
printf '[global]\nmetrics-file = %s\nmetrics-interval = 1\n[export second]\nimage = %s\n[export third]\nimage = %s\n' \
  "$prom" "$TMPD/d2.vhd" "$TMPD/d3.vhd" >"$TMPD/reload.conf"
kill -HUP "$VHDNBD_PID"
wait_for 30 "the reload" grep -q 'export="third"' "$prom"
"$PY3" - "$sock" <<'PYEOF' || fail "reading from an export a reload added"
import sys, nbd
h = nbd.NBD()
h.set_export_name("third")
h.connect_unix(sys.argv[1])
h.pread(4096, 0)
h.shutdown()
PYEOF
wait_for 30 "the new export's READ counted" grep -q \
  'vhdnbd_requests_total{export="third",command="READ",result="ok"} 1' "$prom"
grep -q 'export="first"' "$prom" && fail "a removed export is still in the metrics file"
"$PY3" -c "import sys; sys.path.insert(0, '$TMPD'); from prom import parse; parse(open('$prom').read())" ||
  fail "the metrics file after a reload does not parse"
stop_vhdnbd
exit 0
