"""Plots the lessons share. Part of the course, not of the library: it needs matplotlib (the
[course] extra), and no library module imports it. Each returns the figure; a notebook cell that
shows one ends with plt.show()."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_curves(runs: dict[str, list[dict]], key: str = "val", x: str = "iter", ax=None,
                title: str | None = None, ylabel: str = "val loss"):
    """runs: name -> list of records (e.g. TrainResult.evals); one line per run."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, recs in runs.items():
        pts = [(r[x], r[key]) for r in recs if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure
