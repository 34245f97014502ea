#!/usr/bin/env python3
"""Plots `dume bench --json` results of a scaling study (one JSON per rank count): each phase's
rate against the number of ranks, and the scaling efficiency of the rank-parallel phases
(tokens/s on N ranks / (N x tokens/s on one rank), counting every rank's work).

    python3 tools/plot_bench.py build/bench/bench-np*.json --output build/bench/bench.png

Needs matplotlib (pip install matplotlib); CI does not run it.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--output", default="bench.png")
    args = parser.parse_args()
    runs = sorted((json.load(open(f)) for f in args.files), key=lambda r: r["ranks"])
    ranks = [r["ranks"] for r in runs]

    def series(phase, unit):
        return [next((p["measured"] for p in r["phases"] if p["phase"] == phase and p["unit"] == unit), None)
                for r in runs]

    fig, (rates, efficiency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for phase in ["forward", "forward+statistics", "statistics (f64)", "solve (one layer)"]:
        values = series(phase, "GFLOP/s")
        rates.plot(ranks, values, marker="o", label=f"{phase} (GFLOP/s per rank)")
    reduce = series("reduce (packed, to rank 0)", "GB/s")
    rates.plot(ranks, reduce, marker="s", linestyle="--", label="reduce (GB/s)")
    rates.set_xlabel("ranks")
    rates.set_ylabel("rate")
    rates.set_xticks(ranks)
    rates.set_title(f"dume bench, preset {runs[0]['preset']}: rates per rank")
    rates.legend(fontsize=8)
    for phase in ["forward", "forward+statistics"]:
        tokens = series(phase, "tokens/s")
        if tokens[0]:
            efficiency.plot(ranks, [t / tokens[0] for t in tokens], marker="o", label=phase)
    efficiency.axhline(1.0, color="gray", linewidth=0.8)
    efficiency.set_xlabel("ranks")
    efficiency.set_ylabel("per-rank tokens/s relative to 1 rank")
    efficiency.set_xticks(ranks)
    efficiency.set_ylim(0, 1.2)
    efficiency.set_title("scaling efficiency (1.0 = perfect)")
    efficiency.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
