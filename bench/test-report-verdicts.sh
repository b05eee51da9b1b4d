#!/bin/bash
# The target lines of bench/report.py, on rows made up for the purpose (no
# server, no fio): each target holds when every row meets it and otherwise
# names the failing rows, worst first, with what bounds them.  A failing
# (a) row names the event-loop floor and the thread-per-connection floor
# and, for 4k writes at depth into allocated blocks, the page-cache ceiling
# (the floor table lists both floors beside nbdkit-raw and vhdnbd); a failing (b) row says
# "round-trip bound" when nbdkit null is under 2x qemu-nbd and otherwise
# "raw-bound" when nbdkit-raw is; (c) compares p99 at QD1; (d) CPU per GiB.
. "$top_srcdir/tests/functions.sh"

cat >"$TMPD/verdicts.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import report

GIB = 1024 ** 3


def row(server, wl, image, iops, p99=100.0, ticks=100, cond="unix/warm"):
    return {"server": server, "wl": wl, "image": image, "cond": cond, "iops": iops,
            "p99": p99, "bytes": iops * 4096, "ticks": ticks}


def vhd(wl, image, iops, qemu=None, raw=None, null=None, floor=None, tfloor=None,
        ceiling=None, **kw):
    r = row("vhdnbd", wl, image, iops, **kw)
    r.update(qemu=qemu, raw=raw, null=null, floor=floor, tfloor=tfloor, ceiling=ceiling,
             vs_qemu=iops / qemu["iops"] if qemu else None,
             vs_raw=iops / raw["iops"] if raw else None)
    return r


def line(lines, letter):
    got = [l for l in lines if l.startswith("- target (%s) " % letter)]
    assert len(got) == 1, "no single line for target (%s): %r" % (letter, lines)
    return got[0]


def expect(text, *parts, absent=()):
    for p in parts:
        assert p in text, "%r not in: %s" % (p, text)
    for p in absent:
        assert p not in text, "%r in: %s" % (p, text)


raw = row("nbdkit-raw", "rw4k-qd16", "raw", 1000)
rows = [
    # Holds everything.
    vhd("rw4k-qd16", "alloc", 2500, qemu=row("qemu-nbd", "rw4k-qd16", "alloc", 1000),
        raw=raw),
    # (b) fails, but nbdkit-raw is itself under 2x qemu-nbd.
    vhd("rw4k-qd16", "fixed", 1500, qemu=row("qemu-nbd", "rw4k-qd16", "fixed", 1000),
        raw=raw, ceiling=row("page-cache", "rw4k-qd16", "raw", 5000, ticks=-1)),
    # (b) fails where neither bound applies; (a) fails with the floor named.
    vhd("rw4k-qd1", "alloc", 700, qemu=row("qemu-nbd", "rw4k-qd1", "alloc", 400),
        raw=row("nbdkit-raw", "rw4k-qd1", "raw", 1000, p99=50.0),
        null=row("nbdkit-null", "rw4k-qd1", "null", 3000),
        floor=row("loop-floor", "rw4k-qd1", "raw", 800), p99=80.0, ticks=300),
    # (b) fails and both bounds apply: the round trip is named, not raw.
    vhd("rr4k-qd1", "fixed", 1100, qemu=row("qemu-nbd", "rr4k-qd1", "fixed", 1000),
        raw=row("nbdkit-raw", "rr4k-qd1", "raw", 1050, p99=100.0),
        null=row("nbdkit-null", "rr4k-qd1", "null", 1500)),
]
# (a) fails over four connections, with both floors measured.
raw4 = row("nbdkit-raw", "rw4k-4conn", "raw", 1000)
loop4 = row("loop-floor", "rw4k-4conn", "raw", 700)
thread4 = row("thread-floor", "rw4k-4conn", "raw", 1200)
conn4 = vhd("rw4k-4conn", "alloc", 900, raw=raw4, floor=loop4, tfloor=thread4)
lines = report.targets(rows + [conn4], [], 100)

a = line(lines, "a")
expect(a, "does not hold", "2 of 5 rows fail", "rw4k-qd1/alloc unix warm 0.70×",
       "(event-loop floor 0.80×)",
       "rw4k-4conn/alloc unix warm 0.90× (event-loop floor 0.70×, "
       "a thread per connection 1.20×)",
       absent=("rw4k-qd16/fixed", "page-cache ceiling"))
assert a.index("rw4k-qd1/alloc") < a.index("rw4k-4conn/alloc"), "(a) rows not worst first: " + a

# The floor table: one row per workload with a floor, vhdnbd's best row
# (the faster of two images) against nbdkit-raw and against the one loop.
other = vhd("rw4k-4conn", "fixed", 800, raw=raw4)
table = report.floor_table([raw4, loop4, thread4, conn4, other,
                            row("loop-floor", "rr4k-qd1", "raw", 500)])
expect("\n".join(table),
       "| rw4k-4conn | 1000 | 700 | 0.70 | 1200 | 1.20 | alloc 900 | 0.90 | 1.29 |",
       "| rr4k-qd1 | — | 500 | — | — | — | — | — | — |")
assert report.floor_table([raw4, conn4]) == [], "a floor table with no floor rows"

b = line(lines, "b")
expect(b, "does not hold", "3 of 4 rows fail",
       "rw4k-qd1/alloc unix warm 1.75×", "rr4k-qd1/fixed unix warm 1.10× (round-trip bound: "
       "nbdkit null 1.50×)", "rw4k-qd16/fixed unix warm 1.50× (raw-bound: nbdkit-raw 1.00×)")
assert "rw4k-qd1/alloc unix warm 1.75× (" not in b, "a row with no bound got one: " + b
assert b.index("rr4k-qd1/fixed") < b.index("rw4k-qd16/fixed") < b.index("rw4k-qd1/alloc"), \
    "(b) rows not worst first: " + b
assert "raw-bound: nbdkit-raw 1.05×" not in b, "raw-bound named beside round-trip: " + b

c = line(lines, "c")
expect(c, "does not hold", "1 of 2 rows fails", "rw4k-qd1/alloc unix warm 80.0 µs vs 50.0 µs (1.60×)")

d = line(lines, "d")
expect(d, "does not hold", "rw4k-qd1/alloc unix warm")

# Every row within every bound: each line holds.
good = [vhd("rw4k-qd16", "alloc", 2500, qemu=row("qemu-nbd", "rw4k-qd16", "alloc", 1000),
            raw=raw, ticks=90)]
for letter in "abd":
    expect(line(report.targets(good, [], 100), letter), "holds — 1 row")
print("verdict lines checked:", len(lines))
PY

"$PY3" -B "$TMPD/verdicts.py" "$top_srcdir/bench" || fail "bench/report.py target lines"
