#!/usr/bin/python3
"""Turns bench/run's raw results into one markdown report.

Usage: report.py --workdir DIR [--output FILE]

DIR holds results.tsv (one row per fio job: workload, image, server, status,
server CPU ticks, fio JSON path, repetition) and extra.tsv (memory, open times, machine).
The report goes to stdout, and to FILE when given.
"""

import argparse
import json
import os
import sys

GIB = 1 << 30
MIB = 1 << 20

WORKLOAD_ORDER = ["rr4k-qd1", "rr4k-qd16", "rw4k-qd1", "rw4k-qd16", "sr1m-qd16",
                  "sw1m-qd16", "rw4k-4conn"]
IMAGE_ORDER = ["empty", "alloc", "fixed", "diff", "raw-sparse", "raw"]
SERVER_ORDER = ["vhdnbd", "qemu-nbd", "nbdkit-raw"]
IMAGE_NOTES = {
    "empty": "empty dynamic VHD (fresh copy per job)",
    "alloc": "fully allocated dynamic VHD",
    "fixed": "fixed VHD",
    "diff": "differencing VHD (fresh, empty) over an allocated dynamic parent",
    "raw-sparse": "sparse raw file (fresh per job), nbdkit only",
    "raw": "raw file with the same data, nbdkit only",
}


def load_fio_job(path):
    # fio's nbd engine prints "fio: connected to NBD server" into the same
    # output as the JSON when jobs run as threads: skip to the JSON proper.
    with open(path) as f:
        text = f.read()
    start = text.find("\n{")
    start = 0 if text.startswith("{") else start + 1
    return json.loads(text[start:])["jobs"][0]


def load_rows(workdir):
    rows = []
    with open(os.path.join(workdir, "results.tsv")) as f:
        for line in f:
            wl, image, server, status, ticks, jpath, _rep = line.rstrip("\n").split("\t")
            row = {"wl": wl, "image": image, "server": server, "status": status,
                   "ticks": int(ticks), "iops": None, "bps": None, "bytes": None}
            if status == "ok":
                try:
                    job = load_fio_job(os.path.join(workdir, jpath))
                    rd, wr = job["read"], job["write"]
                    row["iops"] = rd["iops"] + wr["iops"]
                    row["bps"] = rd["bw_bytes"] + wr["bw_bytes"]
                    row["bytes"] = rd["io_bytes"] + wr["io_bytes"]
                    if job.get("error"):
                        row["status"] = "fio error %d" % job["error"]
                except (OSError, ValueError, KeyError, IndexError) as e:
                    row["status"] = "bad fio output (%s)" % e.__class__.__name__
            rows.append(row)
    return rows


def median_runs(rows):
    """One row per (workload, image, server): the run with the median IOPS.
    A failed run makes the whole row failed, so breakage is never hidden."""
    groups = {}
    for r in rows:
        groups.setdefault((r["wl"], r["image"], r["server"]), []).append(r)
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
    meta, rss, opens = {}, [], []
    with open(os.path.join(workdir, "extra.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "meta":
                meta[parts[1]] = parts[2]
            elif parts[0] == "rss":
                rss.append((parts[1], int(parts[2]), parts[3]))
            elif parts[0] == "open":
                opens.append((parts[1], parts[2]))
    return meta, rss, opens


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


def sort_key(r):
    def idx(lst, v):
        return lst.index(v) if v in lst else len(lst)
    return (idx(WORKLOAD_ORDER, r["wl"]), idx(IMAGE_ORDER, r["image"]),
            idx(SERVER_ORDER, r["server"]))


def add_ratios(rows):
    by = {(r["wl"], r["image"], r["server"]): r for r in rows}
    for r in rows:
        r["vs_qemu"] = r["vs_raw"] = None
        if r["server"] != "vhdnbd" or r["iops"] is None:
            continue
        q = by.get((r["wl"], r["image"], "qemu-nbd"))
        raw = by.get((r["wl"], "raw-sparse" if r["image"] == "empty" else "raw", "nbdkit-raw"))
        if q and q["iops"]:
            r["vs_qemu"] = r["iops"] / q["iops"]
        if raw and raw["iops"]:
            r["vs_raw"] = r["iops"] / raw["iops"]


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def cpu_per_gib(r, clk):
    if not r["bytes"]:
        return None
    return (r["ticks"] / clk) / (r["bytes"] / GIB)


def table(rows, clk):
    out = ["| workload | image | server | MiB/s | IOPS | server CPU s/GiB | ×qemu-nbd | ×nbdkit-raw |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=sort_key):
        if r["status"] != "ok":
            out.append("| %s | %s | %s | %s | | | | |" % (r["wl"], r["image"], r["server"],
                                                       r["status"]))
            continue
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["wl"], r["image"], r["server"], fmt(r["bps"] / MIB, ".1f"),
            fmt(r["iops"], ".0f"), fmt(cpu_per_gib(r, clk), ".2f"),
            fmt(r["vs_qemu"], ".2f"), fmt(r["vs_raw"], ".2f")))
    return out


def ratio_target(rows, name, key, limit, pred):
    sel = [r for r in rows if r["server"] == "vhdnbd" and pred(r)]
    vals = [(r[key], r) for r in sel if r[key] is not None]
    if not sel:
        return (name, "n/a", "no rows measured")
    if len(vals) < len(sel):
        missing = [r["wl"] + "/" + r["image"] for r in sel if r[key] is None]
        return (name, "FAIL", "no comparison for " + ", ".join(missing))
    worst, wr = min(vals, key=lambda x: x[0])
    ok = sum(1 for v, _ in vals if v >= limit)
    status = "PASS" if ok == len(vals) else "FAIL"
    failing = ", ".join("%s/%s %.2f×" % (r["wl"], r["image"], v)
                        for v, r in sorted(vals, key=lambda x: x[0]) if v < limit)
    detail = "%d/%d rows ≥ %g×; worst %s/%s %.2f×" % (ok, len(vals), limit, wr["wl"],
                                                     wr["image"], worst)
    if failing and len(failing) < 400:
        detail += "; below: " + failing
    return (name, status, detail)


def targets(rows, opens):
    t = []
    t.append(ratio_target(
        rows, "4k randwrite into empty dynamic ≥ 10× qemu-nbd", "vs_qemu", 10,
        lambda r: r["image"] == "empty" and r["wl"].startswith("rw4k")))
    t.append(ratio_target(
        rows, "4k reads ≥ 2× qemu-nbd", "vs_qemu", 2,
        lambda r: r["wl"].startswith("rr4k") and r["image"] in ("alloc", "fixed")))
    t.append(ratio_target(
        rows, "1M sequential ≥ 1.5× qemu-nbd", "vs_qemu", 1.5,
        lambda r: r["wl"][:2] in ("sr", "sw") and r["image"] in ("empty", "alloc", "fixed")))
    t.append(ratio_target(
        rows, "allocated dynamic and fixed ≥ 0.9× nbdkit-raw", "vs_raw", 0.9,
        lambda r: r["image"] in ("alloc", "fixed")))
    engine = [kv(v) for k, v in opens if k == "vhd_open" and v != "failed"]
    server = [kv(v) for k, v in opens if k == "vhdnbd start to greeting" and v != "failed"]
    if engine and "median" in engine[0]:
        ms = engine[0]["median"]
        cpu = engine[0].get("cpu_median")
        t.append(("open 2040 GiB dynamic < 50 ms", "PASS" if ms < 50 else "FAIL",
                  "vhd_open median %.1f ms wall (warm cache), %s ms CPU"
                  % (ms, fmt(cpu, ".1f"))))
    elif server and "median" in server[0]:
        ms = server[0]["median"]
        t.append(("open 2040 GiB dynamic < 50 ms", "PASS" if ms < 50 else "FAIL",
                  "vhdnbd start to greeting median %.1f ms" % ms))
    else:
        t.append(("open 2040 GiB dynamic < 50 ms", "n/a", "not measured"))
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--output")
    args = ap.parse_args()

    rows = median_runs(load_rows(args.workdir))
    meta, rss, opens = load_extra(args.workdir)
    clk = int(meta.get("clk_tck", "100"))
    add_ratios(rows)

    out = ["## vhdnbd benchmark (%s mode)" % meta.get("mode", "?"), ""]
    out.append("- images: %s MiB; fio %s ms per job, nbd engine over a Unix socket%s"
               % (meta.get("size_mb", "?"), meta.get("runtime_ms", "?"),
                  "" if meta.get("repeat", "1") == "1"
                  else "; each row is the median of %s interleaved runs" % meta["repeat"]))
    out.append("- machine: %s CPUs, %s, kernel %s" % (meta.get("nproc", "?"),
                                                       meta.get("cpu", "?"),
                                                       meta.get("kernel", "?")))
    out.append("- qemu-utils %s, nbdkit %s, fio %s" % (meta.get("pkg qemu-utils", "?"),
                                                       meta.get("pkg nbdkit", "?"),
                                                       meta.get("pkg fio", "?")))
    out.append("- load average at start %s, at end %s; %s s in all"
               % (meta.get("load_start", "?"), meta.get("load_end", "?"),
                  meta.get("elapsed_s", "?")))
    out.append("- ratios: vhdnbd's IOPS (= throughput) over the named server's, measured "
               "in this same invocation; CPU: the server's utime+stime per GiB moved")
    out.append("")
    out.extend(table(rows, clk))
    out.append("")
    out.append("Images: " + "; ".join("%s = %s" % (k, v) for k, v in IMAGE_NOTES.items()))
    out.append("")

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

    out.append("| target | result | detail |")
    out.append("|---|---|---|")
    for name, status, detail in targets(rows, opens):
        out.append("| %s | %s | %s |" % (name, status, detail))

    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        out.append("")
        out.append("%d job(s) failed; see the logs (run with --keep)." % len(bad))

    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
