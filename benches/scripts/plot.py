#!/usr/bin/env python3
"""Plots the samples the benchmark scripts left in a directory, as SVG
written by hand (no plotting library needed).

Usage: python3 benches/scripts/plot.py SAMPLES_DIR OUT_DIR

Reads (whichever exist): dataplane_throughput.txt ("path streams run gbps"),
dataplane_rtt_<path>.txt (one RTT in ms per line), convergence_samples.txt
(one latency in ms per line), memory_samples.txt ("label KiB"),
program_peers_samples.txt ("n run twill_s iproute2_s"). Writes one SVG per
figure into OUT_DIR and prints their names.
"""

import math
import os
import statistics
import sys
from html import escape

W, H = 640, 360
ML, MR, MT, MB = 70, 20, 40, 60
COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"]


def nice_max(v):
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k) at or above v."""
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * mag >= v * (1 - 1e-9):
            return step * mag
    return 10 * mag


class Svg:
    def __init__(self, title, xlabel, ylabel):
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
            f'<text x="{ML + (W - ML - MR) / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>',
            f'<text transform="translate(16 {MT + (H - MT - MB) / 2}) rotate(-90)" '
            f'text-anchor="middle">{escape(ylabel)}</text>',
        ]

    def add(self, s):
        self.parts.append(s)

    def yaxis(self, ymax, fmt="{:g}"):
        for i in range(6):
            v = ymax * i / 5
            y = self.y(v, ymax)
            self.add(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            self.add(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt.format(v)}</text>')
        self.add(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{H - MB}" stroke="black"/>')
        self.add(f'<line x1="{ML}" x2="{W - MR}" y1="{H - MB}" y2="{H - MB}" stroke="black"/>')

    @staticmethod
    def y(v, ymax):
        return H - MB - (H - MT - MB) * v / ymax

    def legend(self, names, bottom_right=False):
        width = sum(14 + 7 * len(n) + 16 for n in names)
        x = W - MR - width if bottom_right else ML + 10
        y = H - MB - 20 if bottom_right else MT + 2
        for i, n in enumerate(names):
            self.add(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>')
            self.add(f'<text x="{x + 14}" y="{y + 9}">{escape(n)}</text>')
            x += 14 + 7 * len(n) + 16

    def write(self, path):
        self.add("</svg>")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.parts) + "\n")


def bars(path, title, ylabel, groups, series, values, points=None, fmt="{:g}"):
    """values[(group, series)] = bar height; points[(group, series)] = dots."""
    ymax = nice_max(max([v for v in values.values()] + [max(p) for p in (points or {}).values() if p]) * 1.15)
    s = Svg(title, "", ylabel)
    s.yaxis(ymax, fmt)
    gw = (W - ML - MR) / len(groups)
    bw = gw * 0.8 / len(series)
    for gi, g in enumerate(groups):
        x0 = ML + gi * gw + gw * 0.1
        s.add(f'<text x="{ML + gi * gw + gw / 2:.1f}" y="{H - MB + 18}" text-anchor="middle">{escape(g)}</text>')
        for si, name in enumerate(series):
            v = values.get((g, name))
            if v is None:
                continue
            x = x0 + si * bw
            y = s.y(v, ymax)
            s.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.9:.1f}" height="{H - MB - y:.1f}" '
                  f'fill="{COLORS[si % len(COLORS)]}"><title>{escape(name)}: {v:g}</title></rect>')
            inside = H - MB - y > 16
            s.add(f'<text x="{x + bw * 0.45:.1f}" y="{(H - MB - 6) if inside else (y - 4):.1f}" '
                  f'text-anchor="middle" font-size="10" fill="{"white" if inside else "black"}">{v:.3g}</text>')
            for p in (points or {}).get((g, name), []):
                s.add(f'<circle cx="{x + bw * 0.45:.1f}" cy="{s.y(p, ymax):.1f}" r="2.5" fill="black" opacity="0.6"/>')
    s.legend(series)
    s.write(path)


def cdf(path, title, xlabel, curves, xmax=None):
    """curves: [(name, values)]. Empirical CDF, x linear from 0."""
    allv = [v for _, vs in curves for v in vs]
    xmax = xmax or nice_max(max(allv))
    s = Svg(title, xlabel, "fraction of samples ≤ x")
    s.yaxis(1.0, "{:.1f}")
    for i in range(6):
        v = xmax * i / 5
        x = ML + (W - ML - MR) * v / xmax
        s.add(f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle">{v:g}</text>')
    for ci, (_, vs) in enumerate(curves):
        vs = sorted(vs)
        pts = []
        for k, v in enumerate(vs):
            x = ML + (W - ML - MR) * min(v, xmax) / xmax
            pts.append(f"{x:.1f},{s.y((k + 1) / len(vs), 1.0):.1f}")
        s.add(f'<polyline fill="none" stroke="{COLORS[ci % len(COLORS)]}" stroke-width="2" points="{" ".join(pts)}"/>')
    s.legend([n for n, _ in curves], bottom_right=True)
    s.write(path)


def line(path, title, xlabels, ylabel, values, xlabel=""):
    ymax = nice_max(max(values) * 1.1)
    s = Svg(title, xlabel, ylabel)
    s.yaxis(ymax)
    step = (W - ML - MR) / max(1, len(values) - 1)
    pts = []
    for i, (lab, v) in enumerate(zip(xlabels, values)):
        x = ML + i * step
        pts.append(f"{x:.1f},{s.y(v, ymax):.1f}")
        s.add(f'<circle cx="{x:.1f}" cy="{s.y(v, ymax):.1f}" r="3" fill="{COLORS[0]}"/>')
        s.add(f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle" font-size="10">{escape(lab)}</text>')
    s.add(f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="2" points="{" ".join(pts)}"/>')
    s.write(path)


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return [l.split() for l in f if l.strip()]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    made = []

    p = os.path.join(src, "dataplane_throughput.txt")
    if os.path.exists(p):
        runs = {}
        for path_, streams, _, gbps in read_rows(p):
            runs.setdefault((f"{streams} stream" + ("s" if streams != "1" else ""), path_), []).append(float(gbps))
        groups = sorted({g for g, _ in runs})
        series = [n for n in ("underlay", "handbuilt", "twill") if any(k[1] == n for k in runs)]
        med = {k: statistics.median(v) for k, v in runs.items()}
        f = os.path.join(out, "dataplane_throughput.svg")
        bars(f, "TCP throughput (iperf3; bar = median, dots = runs)", "Gbit/s", groups, series, med, runs)
        made.append(f)

    curves = []
    for n in ("underlay", "handbuilt", "twill"):
        p = os.path.join(src, f"dataplane_rtt_{n}.txt")
        if os.path.exists(p):
            curves.append((n, [float(r[0]) for r in read_rows(p)]))
    if curves:
        allv = sorted(v for _, vs in curves for v in vs)
        f = os.path.join(out, "dataplane_rtt.svg")
        cdf(f, "ping RTT (10 ms interval)", "RTT, ms", curves, nice_max(allv[int(len(allv) * 0.995) - 1]))
        made.append(f)

    p = os.path.join(src, "convergence_samples.txt")
    if os.path.exists(p):
        vs = [float(r[0]) for r in read_rows(p)]
        f = os.path.join(out, "convergence.svg")
        cdf(f, "lease put → ARP + FDB + route in the kernel", "ms", [("twilld", vs)],
            nice_max(sorted(vs)[max(0, int(len(vs) * 0.995) - 1)]))
        made.append(f)

    p = os.path.join(src, "memory_samples.txt")
    if os.path.exists(p):
        rows = read_rows(p)
        def short(label):
            if label.startswith("cycle"):
                return "c" + label[5:]
            n = int(label)
            return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
        labels = [short(r[0]) for r in rows]
        f = os.path.join(out, "memory.svg")
        line(f, "twilld VmRSS: 0, 1k, N peers, then after each cycle of -N/+N", labels, "MiB",
             [int(r[1]) / 1024 for r in rows], "peers programmed / cycles done (cN: after cycle N, N peers)")
        made.append(f)

    p = os.path.join(src, "program_peers_samples.txt")
    if os.path.exists(p):
        runs = {}
        for n, _, tw, ipr in read_rows(p):
            runs.setdefault((f"{int(n):,} peers", "twill batch"), []).append(float(tw))
            runs.setdefault((f"{int(n):,} peers", "ip/bridge -batch"), []).append(float(ipr))
        groups = sorted({g for g, _ in runs}, key=lambda g: int(g.split()[0].replace(",", "")))
        med = {k: statistics.median(v) for k, v in runs.items()}
        f = os.path.join(out, "program_peers.svg")
        bars(f, "Programming N peers (ARP + FDB + route each)", "seconds", groups,
             ["twill batch", "ip/bridge -batch"], med, runs)
        made.append(f)

    for m in made:
        print(m)


if __name__ == "__main__":
    main()
