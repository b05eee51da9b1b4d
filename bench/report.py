#!/usr/bin/python3
"""Turns bench/run's raw results into one markdown report.

Usage: report.py --workdir DIR [--output FILE]

DIR holds results.tsv (one row per fio job: workload, image, server, status,
server CPU ticks, fio JSON path, repetition, transport, cache state),
extra.tsv (memory, open times, layout cost, machine) and plots/ (the SVGs plot.py drew).
The report goes to stdout, and to FILE when given: if FILE already holds the
BEGIN and END markers below, only the text from one to the other is
replaced, so the hand-written parts of bench/RESULTS.md stay as they are.
"""

import argparse
import json
import os
import sys

GIB = 1 << 30
MIB = 1 << 20

BEGIN = "<!-- BEGIN bench/run output: generated, do not edit by hand -->"
END = "<!-- END bench/run output -->"

WORKLOAD_ORDER = ["rr4k-qd1", "rr4k-qd4", "rr4k-qd16", "rr4k-qd64", "rr4k-4conn",
                  "rr4k-16conn", "rw4k-qd1", "rw4k-qd4", "rw4k-qd16", "rw4k-qd64",
                  "rw4k-4conn", "rw4k-16conn", "sr1m-qd1", "sr1m-qd16", "sr1m-4conn",
                  "sw1m-qd1", "sw1m-qd16", "sw1m-4conn"]
IMAGE_ORDER = ["empty", "alloc", "fixed", "diff", "raw-sparse", "raw", "null"]
SERVER_ORDER = ["vhdnbd", "qemu-nbd", "nbdkit-raw", "loop-floor", "thread-floor", "nbdkit-null",
                "page-cache"]
# Yardsticks, not servers anyone would run: never "the fastest server".
YARDSTICKS = ("nbdkit-null", "loop-floor", "thread-floor", "page-cache")
CONDITION_ORDER = ["unix/warm", "tcp/warm", "unix/cold", "tcp/cold"]
IMAGE_NOTES = {
    "empty": "empty dynamic VHD (fresh copy per job): writes into new blocks",
    "alloc": "fully allocated dynamic VHD (made by `vhdimg convert`: block data 4 KiB-aligned)",
    "fixed": "fixed VHD",
    "diff": "differencing VHD (fresh, empty) over an allocated dynamic parent",
    "raw-sparse": "sparse raw file (fresh per job), nbdkit only",
    "raw": "raw file with the same data (nbdkit-raw, loop-floor, thread-floor; page-cache = "
           "no server: fio writing into the file itself from one thread per CPU)",
    "null": "`nbdkit null`: no data, no I/O; the client's and kernel's round trip alone",
}
TRANSPORT_NAMES = {"unix": "Unix socket", "tcp": "TCP 127.0.0.1"}
CACHE_NAMES = {"warm": "page cache warm", "cold": "page cache dropped before each job"}
# The project's speed targets (bench/README.md).
RAW_RATIO = 1.0
QEMU_RATIO = 2.0
P99_QD1_RATIO = 1.2
RSS_LIMIT_MIB = 64
RSS_CONNS = 1000
LIST_MAX = 12


def load_fio_job(path):
    # fio's nbd engine prints "fio: connected to NBD server" into the same
    # output as the JSON when jobs run as threads: skip to the JSON proper.
    with open(path) as f:
        text = f.read()
    start = text.find("\n{")
    start = 0 if text.startswith("{") else start + 1
    return json.loads(text[start:])["jobs"][0]


def percentile_us(side, pct):
    """A latency percentile in µs: of lat_ns, from submission to completion,
    when fio reported it (--lat_percentiles), else of clat_ns.  With the nbd
    engine the request is sent while fio counts submission (slat), so clat
    alone misses up to half of a QD1 round trip and its median can be
    shorter than any real one."""
    for key in ("lat_ns", "clat_ns"):
        p = side.get(key, {}).get("percentile", {})
        for k, v in p.items():
            if abs(float(k) - pct) < 1e-6:
                return v / 1000.0
    return None


def load_rows(workdir):
    rows = []
    with open(os.path.join(workdir, "results.tsv")) as f:
        for line in f:
            (wl, image, server, status, ticks, jpath, rep, transport,
             cache) = line.rstrip("\n").split("\t")
            row = {"wl": wl, "image": image, "server": server, "status": status,
                   "ticks": int(ticks), "cond": transport + "/" + cache, "rep": rep,
                   "iops": None, "bps": None, "bytes": None, "p50": None, "p99": None}
            if status == "ok":
                try:
                    job = load_fio_job(os.path.join(workdir, jpath))
                    rd, wr = job["read"], job["write"]
                    row["iops"] = rd["iops"] + wr["iops"]
                    row["bps"] = rd["bw_bytes"] + wr["bw_bytes"]
                    row["bytes"] = rd["io_bytes"] + wr["io_bytes"]
                    side = rd if rd["io_bytes"] >= wr["io_bytes"] else wr
                    row["p50"] = percentile_us(side, 50)
                    row["p99"] = percentile_us(side, 99)
                    if job.get("error"):
                        row["status"] = "fio error %d" % job["error"]
                except (OSError, ValueError, KeyError, IndexError) as e:
                    row["status"] = "bad fio output (%s)" % e.__class__.__name__
            rows.append(row)
    return rows


def row_key(r):
    return (r["wl"], r["image"], r["server"], r["cond"])


def median_runs(rows):
    """One row per (workload, image, server, condition): the run with the
    median IOPS.  A failed run makes the whole row failed, so breakage is
    never hidden."""
    groups = {}
    for r in rows:
        groups.setdefault(row_key(r), []).append(r)
    out = []
    for runs in groups.values():
        bad = [r for r in runs if r["status"] != "ok"]
        if bad:
            out.append(bad[0])
            continue
        runs.sort(key=lambda r: r["iops"])
        out.append(runs[(len(runs) - 1) // 2])
    return out


def load_extra(workdir):
    meta, rss, opens, active, layout = {}, [], [], [], []
    with open(os.path.join(workdir, "extra.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "meta":
                meta[parts[1]] = parts[2] if len(parts) > 2 else ""
            elif parts[0] == "rss":
                rss.append((parts[1], int(parts[2]), parts[3]))
            elif parts[0] == "open":
                opens.append((parts[1], parts[2]))
            elif parts[0] == "active":
                d = kv(parts[2])
                d["failed"] = parts[2].startswith("failed")
                active.append((parts[1], d))
            elif parts[0] == "layout":
                layout.append((parts[1], parts[2], parts[3]))
    return meta, rss, opens, active, layout


def kv(text):
    """'open_ms min=1 median=2' -> {'min': 1.0, 'median': 2.0}"""
    out = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def idx(lst, v):
    return lst.index(v) if v in lst else len(lst)


def sort_key(r):
    return (idx(WORKLOAD_ORDER, r["wl"]), idx(IMAGE_ORDER, r["image"]),
            idx(SERVER_ORDER, r["server"]))


def raw_image(image):
    return "raw-sparse" if image == "empty" else "raw"


def add_ratios(rows):
    by = {row_key(r): r for r in rows}
    for r in rows:
        r["qemu"] = r["raw"] = r["null"] = r["floor"] = r["tfloor"] = r["ceiling"] = None
        r["vs_qemu"] = r["vs_raw"] = None
        if r["server"] != "vhdnbd":
            continue
        r["qemu"] = by.get((r["wl"], r["image"], "qemu-nbd", r["cond"]))
        r["raw"] = by.get((r["wl"], raw_image(r["image"]), "nbdkit-raw", r["cond"]))
        r["null"] = by.get((r["wl"], "null", "nbdkit-null", r["cond"]))
        r["floor"] = by.get((r["wl"], "raw", "loop-floor", r["cond"]))
        r["tfloor"] = by.get((r["wl"], "raw", "thread-floor", r["cond"]))
        r["ceiling"] = by.get((r["wl"], "raw", "page-cache", r["cond"]))
        if r["iops"] is None:
            continue
        if r["qemu"] and r["qemu"]["iops"]:
            r["vs_qemu"] = r["iops"] / r["qemu"]["iops"]
        if r["raw"] and r["raw"]["iops"]:
            r["vs_raw"] = r["iops"] / r["raw"]["iops"]


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def fmt_us(v):
    if v is None:
        return "—"
    return "%.1f" % v if v < 100 else "%.0f" % v


def cpu_per_gib(r, clk):
    # ticks < 0: a row with no server (page-cache).
    if not r or not r["bytes"] or r["ticks"] < 0:
        return None
    return (r["ticks"] / clk) / (r["bytes"] / GIB)


def cond_title(cond):
    t, c = cond.split("/")
    return "%s, %s" % (TRANSPORT_NAMES.get(t, t), CACHE_NAMES.get(c, c))


def cond_short(cond):
    return cond.replace("/", " ")


def table(rows, clk):
    out = ["| workload | image | server | MiB/s | IOPS | p50 µs | p99 µs | server CPU s/GiB "
           "| ×qemu-nbd | ×nbdkit-raw |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=sort_key):
        if r["status"] != "ok":
            out.append("| %s | %s | %s | %s | | | | | | |" % (r["wl"], r["image"], r["server"],
                                                             r["status"]))
            continue
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["wl"], r["image"], r["server"], fmt(r["bps"] / MIB, ".1f"),
            fmt(r["iops"], ".0f"), fmt_us(r["p50"]), fmt_us(r["p99"]),
            fmt(cpu_per_gib(r, clk), ".2f"), fmt(r.get("vs_qemu"), ".2f"),
            fmt(r.get("vs_raw"), ".2f")))
    return out


def raw_and_best(rows, r, images=None):
    """For the yardstick row r: nbdkit-raw's row on the raw file and
    vhdnbd's fastest row (among images, when given) of the same workload
    and condition."""
    raw = next((p for p in rows if p["wl"] == r["wl"] and p["cond"] == r["cond"]
                and p["server"] == "nbdkit-raw" and p["image"] == "raw" and p["iops"]), None)
    vhd = [p for p in rows if p["wl"] == r["wl"] and p["cond"] == r["cond"]
           and p["server"] == "vhdnbd" and p["iops"] and (images is None or p["image"] in images)]
    return raw, max(vhd, key=lambda p: p["iops"], default=None)


def ratio_text(a, b):
    return "%.2f" % (a / b) if a and b else "—"


def floor_table(rows):
    """What serving the raw file costs with nothing but the I/O, from one
    event loop and from a thread per connection, beside nbdkit-raw and
    vhdnbd's best row of the same workload: a row vhdnbd fails where one
    loop is slower than nbdkit-raw too, and vhdnbd passes that loop, is
    bound by the loop's shape; one where vhdnbd is short of the loop is
    bound by vhdnbd's own work."""
    loops = {r["wl"]: r for r in rows if r["server"] == "loop-floor" and r["iops"]}
    threads = {r["wl"]: r for r in rows if r["server"] == "thread-floor" and r["iops"]}
    wls = sorted(set(loops) | set(threads), key=lambda w: idx(WORKLOAD_ORDER, w))
    if not wls:
        return []
    out = ["Floors: `bench/loop-floor` serving the raw file with no queue, no checks and no "
           "format, writing on the thread that reads the request (which vhdnbd may not do on "
           "ext4): from one event loop for every connection (vhdnbd's shape) and, with `-t`, "
           "from a thread per connection blocked in `recv` (nbdkit's).", "",
           "| workload | nbdkit-raw IOPS | one loop IOPS | ×nbdkit-raw "
           "| a thread per connection IOPS | ×nbdkit-raw | vhdnbd's best row | ×nbdkit-raw "
           "| ×one loop |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for wl in wls:
        yard = loops.get(wl) or threads[wl]
        raw, best = raw_and_best(rows, yard)
        rawi = raw["iops"] if raw else None
        lp, th = loops.get(wl), threads.get(wl)
        lpi, thi = lp and lp["iops"], th and th["iops"]
        besti = best and best["iops"]
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            wl, fmt(rawi, ".0f"), fmt(lpi, ".0f"), ratio_text(lpi, rawi),
            fmt(thi, ".0f"), ratio_text(thi, rawi),
            "%s %.0f" % (best["image"], besti) if best else "—",
            ratio_text(besti, rawi), ratio_text(besti, lpi)))
    return out


def floor_line(rows):
    """Where a QD1 row is bound by the round trip: nbdkit null's figures
    next to the best any real server reached."""
    out = []
    for r in sorted(rows, key=sort_key):
        if r["server"] != "nbdkit-null" or r["iops"] is None:
            continue
        peers = [p for p in rows if p["wl"] == r["wl"] and p["iops"]
                 and p["server"] not in YARDSTICKS]
        best = max(peers, key=lambda p: p["iops"], default=None)
        text = ("Round-trip floor, %s: `nbdkit null` %.0f IOPS, p50 %s µs, p99 %s µs"
                % (r["wl"], r["iops"], fmt_us(r["p50"]), fmt_us(r["p99"])))
        if best:
            text += ("; the fastest server here (%s on %s) reaches %.0f%% of it"
                     % (best["server"], best["image"], 100 * best["iops"] / r["iops"]))
        out.append(text + ".")
    for r in sorted(rows, key=sort_key):
        if r["server"] != "page-cache" or r["iops"] is None:
            continue
        # Only the images whose data is the cached file's: writes into new
        # blocks (empty, diff) go to pages the write itself allocates.
        raw, best = raw_and_best(rows, r, ("alloc", "fixed"))
        text = ("Page-cache ceiling, %s %s: fio writing the same pattern straight into the "
                "raw file (psync, one thread per CPU; no server, no socket) %.0f IOPS"
                % (r["wl"], r["cond"], r["iops"]))
        if raw:
            text += "; nbdkit-raw reaches %.0f%% of it" % (100 * raw["iops"] / r["iops"])
        if best:
            text += (", vhdnbd's best row (%s) %.0f%%"
                     % (best["image"], 100 * best["iops"] / r["iops"]))
        out.append(text + ".")
    return out


def row_name(r):
    return "%s/%s %s" % (r["wl"], r["image"], cond_short(r["cond"]))


def verdict(letter, name, sel, ok, detail_fn, missing, worst_first):
    """One target line: every row in sel must satisfy ok; detail_fn names a
    failing row's figure; failing rows are listed by worst_first."""
    if not sel:
        return "- target (%s) %s: not measured — no rows" % (letter, name)
    failing = sorted((r for r in sel if not ok(r)), key=worst_first)
    line = "- target (%s) %s: " % (letter, name)
    if not failing and not missing:
        return line + "holds — %s" % ("all %d rows" % len(sel) if len(sel) > 1 else "1 row")
    parts = []
    if failing:
        shown = ", ".join(detail_fn(r) for r in failing[:LIST_MAX])
        more = len(failing) - LIST_MAX
        parts.append("%d of %d rows fail%s: %s%s" % (len(failing), len(sel),
                                                     "s" if len(failing) == 1 else "", shown,
                                                   " and %d more" % more if more > 0 else ""))
    if missing:
        parts.append("no comparison for " + ", ".join(row_name(r) for r in missing[:LIST_MAX]))
    return line + "does not hold — " + "; ".join(parts)


def targets(rows, active, clk):
    vhd = [r for r in rows if r["server"] == "vhdnbd"]
    out = []

    sel = [r for r in vhd if r["vs_raw"] is not None]
    miss = [r for r in vhd if r["vs_raw"] is None]

    def raw_detail(r):
        # Say what an event loop and a thread per connection with no work
        # at all reach on that row, and for 4k writes at depth what the
        # page cache itself allows (not for writes into new blocks, which
        # do not go into cached pages).
        text = "%s %.2f×" % (row_name(r), r["vs_raw"])
        floors = []
        f, t = r["floor"], r["tfloor"]
        if f and f["iops"] and r["raw"]["iops"]:
            floors.append("event-loop floor %.2f×" % (f["iops"] / r["raw"]["iops"]))
        if t and t["iops"] and r["raw"]["iops"]:
            floors.append("a thread per connection %.2f×" % (t["iops"] / r["raw"]["iops"]))
        if floors:
            text += " (%s)" % ", ".join(floors)
        c = r["ceiling"]
        if c and c["iops"] and r["raw"]["iops"] and r["image"] in ("alloc", "fixed"):
            text += " (page-cache ceiling %.2f×)" % (c["iops"] / r["raw"]["iops"])
        return text
    out.append(verdict(
        "a", "every row ≥ %.1f× nbdkit-raw" % RAW_RATIO, sel,
        lambda r: r["vs_raw"] >= RAW_RATIO,
        raw_detail, miss, lambda r: r["vs_raw"]))

    sel = [r for r in vhd if r["qemu"] is not None and r["vs_qemu"] is not None]
    miss = [r for r in vhd if r["qemu"] is not None and r["vs_qemu"] is None]

    def qemu_detail(r):
        # Say when no server could have held the row (the null server
        # itself is not twice as fast as qemu-nbd), or when serving the
        # same data raw did not either: then the VHD mapping costing
        # nothing, target (a), is not enough for this one.
        text = "%s %.2f×" % (row_name(r), r["vs_qemu"])
        q = r["qemu"]["iops"]
        n, raw = r["null"], r["raw"]
        if n and n["iops"] and q and n["iops"] < QEMU_RATIO * q:
            text += " (round-trip bound: nbdkit null %.2f×)" % (n["iops"] / q)
        elif raw and raw["iops"] and q and raw["iops"] < QEMU_RATIO * q:
            text += " (raw-bound: nbdkit-raw %.2f×)" % (raw["iops"] / q)
        return text
    out.append(verdict(
        "b", "every row where qemu-nbd runs ≥ %.0f× qemu-nbd" % QEMU_RATIO, sel,
        lambda r: r["vs_qemu"] >= QEMU_RATIO, qemu_detail, miss, lambda r: r["vs_qemu"]))

    qd1 = [r for r in vhd if r["wl"].endswith("-qd1")]
    sel = [r for r in qd1 if r["p99"] and r["raw"] and r["raw"]["p99"]]
    miss = [r for r in qd1 if r not in sel]
    out.append(verdict(
        "c", "p99 at QD1 ≤ %.1f× nbdkit-raw's" % P99_QD1_RATIO, sel,
        lambda r: r["p99"] <= P99_QD1_RATIO * r["raw"]["p99"],
        lambda r: "%s %s µs vs %s µs (%.2f×)" % (row_name(r), fmt_us(r["p99"]),
                                                 fmt_us(r["raw"]["p99"]),
                                                 r["p99"] / r["raw"]["p99"]), miss,
        lambda r: -r["p99"] / r["raw"]["p99"]))

    sel = [r for r in vhd if cpu_per_gib(r, clk) is not None and cpu_per_gib(r["raw"], clk)]
    miss = [r for r in vhd if r not in sel]
    out.append(verdict(
        "d", "server CPU per GiB ≤ nbdkit-raw's", sel,
        lambda r: cpu_per_gib(r, clk) <= cpu_per_gib(r["raw"], clk),
        lambda r: "%s %.2f vs %.2f s/GiB" % (row_name(r), cpu_per_gib(r, clk),
                                             cpu_per_gib(r["raw"], clk)), miss,
        lambda r: -cpu_per_gib(r, clk) / cpu_per_gib(r["raw"], clk)))

    name = "RSS with %d active connections ≤ %d MiB" % (RSS_CONNS, RSS_LIMIT_MIB)
    m = [d for s, d in active if s == "vhdnbd"]
    if not m or m[0]["failed"]:
        out.append("- target (e) %s: not measured — %s" % (
            name, "the measurement failed" if m else "no memory measurement (--no-extras)"))
    else:
        d = m[0]
        n = int(d["connections"])
        peak = max(d["rss_kib"], d["hwm_kib"])
        per = (peak - d["rss_idle_kib"]) / n
        detail = ("%.1f MiB with %d connections, %d reads in flight each (%.1f MiB above the "
                  "idle server, %.1f KiB per connection)"
                  % (peak / 1024, n, d["inflight"], (peak - d["rss_idle_kib"]) / 1024, per))
        if n < RSS_CONNS:
            out.append("- target (e) %s: not measured — only %s" % (name, detail))
        elif peak <= RSS_LIMIT_MIB * 1024 and d["min_per_conn"] > 0:
            out.append("- target (e) %s: holds — %s" % (name, detail))
        else:
            why = detail if d["min_per_conn"] > 0 else detail + "; some connection stood idle"
            out.append("- target (e) %s: does not hold — %s" % (name, why))
    return out


def open_line(opens):
    engine = [kv(v) for k, v in opens if k == "vhd_open" and v != "failed"]
    server = [kv(v) for k, v in opens if k == "vhdnbd start to greeting" and v != "failed"]
    name = "- open of a 2040 GiB dynamic VHD < 50 ms: "
    if engine and "median" in engine[0]:
        ms = engine[0]["median"]
        return name + "%s — vhd_open median %.1f ms wall (warm cache), %s ms CPU" % (
            "holds" if ms < 50 else "does not hold", ms, fmt(engine[0].get("cpu_median"), ".1f"))
    if server and "median" in server[0]:
        ms = server[0]["median"]
        return name + "%s — vhdnbd start to greeting median %.1f ms" % (
            "holds" if ms < 50 else "does not hold", ms)
    return name + "not measured"


PLOTS = [
    ("qd-iops.svg", "4k random IOPS against queue depth, allocated dynamic VHD"),
    ("qd-p99.svg", "4k random p99 completion latency against queue depth"),
    ("conns-iops.svg", "4k random IOPS against connections (QD4 each)"),
    ("seq-mbps.svg", "1M sequential MB/s per image type"),
]


LAYOUT_NOTES = {
    ("qemu-alloc.vhd", "vhdnbd"): "dynamic VHD made by `qemu-img convert -O vpc`: "
                                  "block data 512 bytes past a page boundary",
    ("raw-off512.img", "nbdkit-offset"): "raw file served from its byte 512 on "
                                         "(`--filter=offset offset=512`): every page split",
    ("raw.img", "nbdkit-raw"): "raw file, aligned",
    ("alloc.vhd", "vhdnbd"): "dynamic VHD made by `vhdimg convert`: block data 4 KiB-aligned",
}


def layout_section(workdir, meta, layout):
    """Cold-cache rw4k-qd16 on the same data laid out four ways."""
    if not layout and not meta.get("layout_skipped"):
        return []  # --no-extras
    out = ["### Layout cost", "",
           "rw4k-qd16 over a Unix socket, page cache dropped before each job: 4 KiB writes "
           "that cover two partial pages of the file make the kernel read both first, "
           "whichever server writes.", ""]
    if not layout:
        out.extend(["Not measured: %s." % meta["layout_skipped"], ""])
        return out
    iops = {}
    for f, s, j in layout:
        if j != "failed":
            try:
                iops[(f, s)] = load_fio_job(os.path.join(workdir, j))["write"]["iops"]
            except (OSError, ValueError, KeyError, IndexError):
                pass
    ref = iops.get(("raw.img", "nbdkit-raw"))
    out.append("| layout | server | IOPS | × nbdkit-raw aligned |")
    out.append("|---|---|---:|---:|")
    for f, s, j in layout:
        v = iops.get((f, s))
        note = LAYOUT_NOTES.get((f, s), f)
        if v is None:
            out.append("| %s | %s | failed | |" % (note, s))
        else:
            out.append("| %s | %s | %.0f | %s |" % (note, s, v,
                                                   "%.2f" % (v / ref) if ref else "—"))
    out.append("")
    return out


def report(workdir):
    rows = median_runs(load_rows(workdir))
    meta, rss, opens, active, layout = load_extra(workdir)
    clk = int(meta.get("clk_tck", "100"))
    add_ratios(rows)

    out = [BEGIN, "", "## vhdnbd benchmark (%s mode)" % meta.get("mode", "?"), ""]
    out.append("- images: %s MiB; fio %s ms per job, nbd engine%s"
               % (meta.get("size_mb", "?"), meta.get("runtime_ms", "?"),
                  "" if meta.get("repeat", "1") == "1"
                  else "; each row is the median of %s interleaved runs" % meta["repeat"]))
    conds = meta.get("conditions", "").split()
    out.append("- conditions: " + "; ".join(cond_title(c) for c in conds))
    if meta.get("cold_skipped"):
        out.append("- **not measured with the page cache dropped**: " + meta["cold_skipped"])
    out.append("- machine: %s CPUs, %s, kernel %s%s" % (meta.get("nproc", "?"),
                                                         meta.get("cpu", "?"),
                                                         meta.get("kernel", "?"),
                                                         "; " + meta["idle"] if meta.get("idle") else ""))
    out.append("- qemu-utils %s, nbdkit %s, fio %s" % (meta.get("pkg qemu-utils", "?"),
                                                       meta.get("pkg nbdkit", "?"),
                                                       meta.get("pkg fio", "?")))
    out.append("- load average at start %s, at end %s; %s s in all"
               % (meta.get("load_start", "?"), meta.get("load_end", "?"),
                  meta.get("elapsed_s", "?")))
    out.append("- ratios: vhdnbd's IOPS (= throughput) over the named server's under the same "
               "condition in this same invocation; p50/p99: fio's latency from submission to "
               "completion of each request (lat_ns percentiles; clat_ns alone leaves out the "
               "sending, which the nbd engine does while fio counts submission); "
               "CPU: the server's utime+stime per GiB moved")
    out.append("")
    out.append("Images: " + "; ".join("%s = %s" % (k, v) for k, v in IMAGE_NOTES.items()))
    out.append("")

    present = sorted({r["cond"] for r in rows}, key=lambda c: idx(CONDITION_ORDER, c))
    for cond in present:
        sub = [r for r in rows if r["cond"] == cond]
        out.append("### %s" % cond_title(cond))
        out.append("")
        out.extend(table(sub, clk))
        out.append("")
        ft = floor_table(sub)
        if ft:
            out.extend(ft + [""])
        for line in floor_line(sub):
            out.extend([line, ""])

    out.append("### Plots")
    out.append("")
    drawn = [(f, t) for f, t in PLOTS if os.path.exists(os.path.join(workdir, "plots", f))]
    if drawn:
        sweep = meta.get("sweep_condition")
        if sweep:
            out.append("Queue-depth and connection sweeps: %s." % cond_title(sweep))
        elif conds:
            out.append("No sweeps in this run: the plots show the matrix's own points "
                       "(%s)." % cond_title(conds[0]))
        out.append("")
        for f, t in drawn:
            out.extend(["![%s](plots/%s)" % (t, f), ""])
    else:
        out.extend(["No plots: %s." % meta.get("plots_missing", "plot.py drew none"), ""])

    if rss:
        out.append("| server | idle connections | VmRSS MiB | per extra connection KiB |")
        out.append("|---|---:|---:|---:|")
        base = {s: int(v) for s, n, v in rss if n == 1 and v != "failed"}
        for s, n, v in rss:
            if v == "failed":
                out.append("| %s | %d | failed | |" % (s, n))
                continue
            per = ""
            if n > 1 and s in base:
                per = "%.1f" % ((int(v) - base[s]) / (n - 1))
            out.append("| %s | %d | %.1f | %s |" % (s, n, int(v) / 1024, per))
        out.append("")
    if active:
        out.append("| server | busy connections | reads in flight each | idle VmRSS MiB "
                   "| busy VmRSS (peak) MiB | above idle MiB | per connection KiB "
                   "| reads while sampled | fewest on one connection |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s, d in active:
            if d["failed"]:
                out.append("| %s | %d | failed | | | | | | |" % (s, d.get("connections", 0)))
                continue
            peak = max(d["rss_kib"], d["hwm_kib"])
            n = d["connections"]
            out.append("| %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %d | %d |" % (
                s, n, d["inflight"], d["rss_idle_kib"] / 1024, peak / 1024,
                (peak - d["rss_idle_kib"]) / 1024, (peak - d["rss_idle_kib"]) / n,
                d["requests"], d["min_per_conn"]))
        out.append("")
    if opens:
        out.append("| opening a 2040 GiB sparse dynamic VHD | min ms | median ms | max ms "
                   "| CPU ms (median) |")
        out.append("|---|---:|---:|---:|---:|")
        for what, v in opens:
            d = kv(v)
            if v == "failed" or "median" not in d:
                out.append("| %s | failed | | | |" % what)
            else:
                out.append("| %s | %.1f | %.1f | %.1f | %s |" % (
                    what, d["min"], d["median"], d["max"], fmt(d.get("cpu_median"), ".1f")))
        out.append("")

    out.extend(layout_section(workdir, meta, layout))

    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        out.append("%d job(s) failed; see the logs (run with --keep)." % len(bad))
        out.append("")
    out.append("### Targets")
    out.append("")
    out.extend(targets(rows, active, clk))
    out.append(open_line(opens))
    out.extend(["", END])
    return "\n".join(out) + "\n", bad


def write_output(path, text):
    """Replaces the generated part of an existing file, or writes it whole."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    b, e = old.find(BEGIN), old.find(END)
    if b >= 0 and e > b:
        text = old[:b] + text.rstrip("\n") + old[e + len(END):]
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--output")
    args = ap.parse_args()
    text, bad = report(args.workdir)
    sys.stdout.write(text)
    if args.output:
        write_output(args.output, text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
