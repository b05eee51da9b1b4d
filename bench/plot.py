#!/usr/bin/python3
"""Draws bench/run's results as SVG files (python3-matplotlib).

Usage: plot.py --workdir DIR --outdir OUT

Reads DIR/results.tsv and the fio JSON it names (as report.py does) and
writes into OUT:

  qd-iops.svg     4k random read and write IOPS against queue depth (1, 4,
                  16, 64), allocated dynamic VHD, for vhdnbd, qemu-nbd and
                  nbdkit-raw (the raw file)
  qd-p99.svg      the same jobs' p99 completion latency
  conns-iops.svg  4k random read and write IOPS against connections (1, 4,
                  16, each at QD4)
  seq-mbps.svg    1M sequential read and write MB/s (QD16) per image type

The queue-depth and connection figures use the condition bench/run ran its
sweeps under (the Unix socket with a warm page cache when it ran that);
points that were not measured are left out, so a run without sweeps still
gives every file, with fewer points.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

SERVERS = [("vhdnbd", "alloc"), ("qemu-nbd", "alloc"), ("nbdkit-raw", "raw")]
STYLE = {"vhdnbd": "o-", "qemu-nbd": "s--", "nbdkit-raw": "^:"}
DEPTHS = [1, 4, 16, 64]
CONNS = [(1, "qd4"), (4, "4conn"), (16, "16conn")]
KINDS = [("rr4k", "4k random read"), ("rw4k", "4k random write")]
SEQ = [("sr1m-qd16", "1M sequential read, QD16"), ("sw1m-qd16", "1M sequential write, QD16")]
SEQ_IMAGES = ["empty", "alloc", "fixed", "diff"]


def pick(by, cond, wl, image, server, field):
    r = by.get((wl, image, server, cond))
    return None if r is None else r.get(field)


def line_panels(by, cond, title, ylabel, field, xs, wl_of, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (kind, label) in zip(axes, KINDS):
        for server, image in SERVERS:
            pts = [(x, pick(by, cond, wl_of(kind, x), image, server, field)) for x in xs]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE[server],
                        label=server)
        ax.set_xscale("log", base=2)
        ax.set_xticks([x for x in xs])
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_title(label)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    axes[0].set_xlabel(title[1])
    axes[1].set_xlabel(title[1])
    fig.suptitle("%s (%s)" % (title[0], report.cond_title(cond)))
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def seq_panels(by, cond, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    servers = ["vhdnbd", "qemu-nbd", "nbdkit-raw"]
    width = 0.8 / len(servers)
    for ax, (wl, label) in zip(axes, SEQ):
        drawn = False
        # Only the image types the VHD servers were run on: nbdkit-raw's
        # bar beside each is its figure on the raw file with the same data.
        images = [i for i in SEQ_IMAGES
                  if any(pick(by, cond, wl, i, s, "bps") is not None
                         for s in ("vhdnbd", "qemu-nbd"))]
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, image in enumerate(images):
                # nbdkit serves the raw file with the image's data.
                img = report.raw_image(image) if server == "nbdkit-raw" else image
                bps = pick(by, cond, wl, img, server, "bps")
                if bps is not None:
                    xs.append(j + (i - 1) * width)
                    ys.append(bps / 1e6)
            if xs:
                ax.bar(xs, ys, width, label=server)
                drawn = True
        ax.set_xticks(range(len(images)))
        ax.set_xticklabels(images)
        ax.set_title(label)
        ax.set_ylabel("MB/s")
        ax.grid(True, axis="y", alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.suptitle("1M sequential throughput per image (%s)" % report.cond_title(cond))
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--outdir", required=True)
    args = ap.parse_args()

    rows = [r for r in report.median_runs(report.load_rows(args.workdir))
            if r["status"] == "ok"]
    meta = report.load_extra(args.workdir)[0]
    conds = meta.get("conditions", "").split()
    cond = meta.get("sweep_condition") or (conds[0] if conds else "unix/warm")
    by = {report.row_key(r): r for r in rows}
    os.makedirs(args.outdir, exist_ok=True)

    def qd_wl(kind, depth):
        return "%s-qd%d" % (kind, depth)

    def conn_wl(kind, n):
        return "%s-%s" % (kind, dict(CONNS)[n])

    out = lambda name: os.path.join(args.outdir, name)  # noqa: E731
    line_panels(by, cond, ("4k random IOPS, allocated dynamic VHD", "queue depth"),
                "IOPS", "iops", DEPTHS, qd_wl, out("qd-iops.svg"))
    line_panels(by, cond, ("4k random p99 completion latency, allocated dynamic VHD",
                           "queue depth"),
                "p99 µs", "p99", DEPTHS, qd_wl, out("qd-p99.svg"))
    line_panels(by, cond, ("4k random IOPS against connections, QD4 each",
                           "connections"),
                "IOPS", "iops", [n for n, _ in CONNS], conn_wl, out("conns-iops.svg"))
    seq_panels(by, conds[0] if conds else cond, out("seq-mbps.svg"))
    for name in ("qd-iops.svg", "qd-p99.svg", "conns-iops.svg", "seq-mbps.svg"):
        print("plot.py: wrote %s" % out(name), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
