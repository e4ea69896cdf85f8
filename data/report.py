"""The prepare step's account: data_report.json (input = kept + rejected, per reason), length
percentiles and the length histogram plot, and the refusal to go on when nothing is left to train on."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from data.cleaning import REJECT_REASONS
from data.io import DataError, atomic_path
from data.shards import SPLITS

# Lengths over this share the last bin of the length histogram: the histogram, the report and the
# plot stay this size whatever data.max_chars is (a bin per character up to 10 million made a
# 10 MB line cost minutes in the plot alone). The report's `max` is exact.
HIST_CHARS = 4096
LENGTHS_PNG = "lengths.png"


def data_report(stage1: list[dict], stage2: list[dict], out_dir: str, max_chars: int) -> dict:
    """Sum the tasks' counts into the report's numbers and draw out_dir/lengths.png (LENGTHS_PNG)."""
    rejected = Counter({r: 0 for r in REJECT_REASONS})
    for r in stage1:
        rejected.update(r["rejected"])
    rejected["duplicate"] += sum(s["duplicates"] for s in stage2)
    hist = {side: np.sum([s["hist"][side] for s in stage2], axis=0) for side in ("src", "tgt")}
    plot_lengths(hist, os.path.join(out_dir, LENGTHS_PNG), max_chars)
    return {
        "input": sum(r["input"] for r in stage1),
        "kept": sum(s["rows"] for s in stage2),
        "rejected": {r: int(rejected[r]) for r in REJECT_REASONS},
        "rejected_total": int(sum(rejected.values())),
        "splits": {sp: sum(s["splits"][sp] for s in stage2) for sp in SPLITS},
        "length_chars": {side: percentiles(h) | {"max": max(s["longest"][side] for s in stage2)}
                         for side, h in hist.items()},
    }


def check_not_empty(report: dict) -> None:
    """Stop here, with the reject counts, when cleaning left nothing to train on: the tokenizer would
    otherwise fail later with a message that names neither the data nor the reason."""
    counts = ", ".join(f"{r} {n}" for r, n in report["rejected"].items() if n) or "none"
    where = ", ".join(report["sources"][:3]) + (", ..." if len(report["sources"]) > 3 else "")
    if report["kept"] == 0:
        raise DataError(
            f"no pair of {where} survived cleaning: {report['input']} records read, all rejected ({counts}); "
            "see data.max_chars, data.max_length_ratio, data.format"
        )
    if report["splits"]["train"] == 0:
        raise DataError(
            f"the train split of {where} is empty: {report['kept']} pairs kept, all held out "
            f"({report['splits']}); lower data.valid_fraction/test_fraction or add data to data.paths"
        )


def percentiles(hist: np.ndarray) -> dict[str, float]:
    """Bincount of lengths -> {'p50': .., 'p95': .., 'p99': .., 'max': ..} (capped at the last bin, HIST_CHARS)."""
    total = int(hist.sum())
    if total == 0:
        return {"p50": 0, "p95": 0, "p99": 0, "max": 0}
    cdf = np.cumsum(hist)
    out = {f"p{q}": int(np.searchsorted(cdf, q / 100 * total)) for q in (50, 95, 99)}
    out["max"] = int(np.nonzero(hist)[0][-1])
    return out


def plot_lengths(hist: dict[str, np.ndarray], path: str, max_chars: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for side, h in hist.items():
        top = max(int(np.nonzero(h)[0][-1]) + 1 if h.any() else 1, 2)
        ax.step(np.arange(top), h[:top], where="mid", label=side)
    cap = "" if max_chars <= HIST_CHARS else f"; the last bin holds all over {HIST_CHARS}"
    ax.set_xlabel(f"characters (longer than {max_chars} are rejected{cap})")
    ax.set_ylabel("kept pairs")
    ax.set_title("Length histogram of kept pairs")
    ax.legend(loc="upper right")  # loc="best" searches every point of every line
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
