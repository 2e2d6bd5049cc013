"""Plots samples/s by num_workers for each loader from loader_bench.py's --json files.

    python benches/python/plot.py OUT.png RESULTS.json [RESULTS2.json ...]   (one panel per file)
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    out, files = sys.argv[1], sys.argv[2:]
    fig, axes = plt.subplots(1, len(files), figsize=(6.5 * len(files), 4.5), squeeze=False)
    for ax, path in zip(axes[0], files):
        with open(path) as f:
            doc = json.load(f)
        rows = [r for r in doc["rows"] if "failed" not in r]
        for r in rows:
            if r["workers"] == "-":
                ax.axhline(r["samples_per_s"], linestyle="--", linewidth=1, color="grey")
                ax.text(0, r["samples_per_s"], " " + r["loader"], va="bottom", fontsize=8, color="grey")
        loaders = sorted({r["loader"] for r in rows if r["workers"] != "-"})
        for name in loaders:
            pts = sorted((r["workers"], r["samples_per_s"]) for r in rows if r["loader"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for r in doc["rows"]:
            if "failed" in r:
                ax.plot([r["workers"]], [0], marker="x", color="red")
                ax.annotate(f"{r['loader']} failed", (r["workers"], 0), fontsize=7, color="red",
                            textcoords="offset points", xytext=(4, 6))
        ax.set_title(doc["conditions"], fontsize=9)
        ax.set_xlabel("num_workers")
        ax.set_ylabel("samples/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
