"""A run's history: `history.csv` (iteration, each loss, seconds), written a row per iteration as the run
goes, so an interrupted run keeps it and `--resume` continues it; and `losses.png`, the losses over
iterations (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

COLUMNS = ("iteration", "total", "local", "adj", "glob", "push", "robust", "attack_dist", "seconds")


class History:
    """Appends one row per iteration. Resuming at iteration `start` first drops the rows after it (the run
    was killed after its last checkpoint: those iterations are done again)."""

    def __init__(self, path: Path, start: int = 0):
        from ..engine.files import atomic_write

        self.path = path
        kept = [r for r in read(path) if int(r["iteration"]) <= start] if start and path.is_file() else []

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, COLUMNS)
                w.writeheader()
                w.writerows(kept)

        atomic_write(path, write)

    def append(self, iteration: int, losses: dict, seconds: float) -> None:
        row = {"iteration": iteration, "seconds": f"{seconds:.4f}",
               **{k: f"{losses[k]:.6g}" for k in COLUMNS[1:-1] if k in losses}}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(csv_path: Path, png_path: Path) -> None:
    """The three GUIDE losses, the total (and the robust hinge when present) over iterations, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..engine.files import atomic_write

    rows = read(csv_path)
    it = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for key, style in (("total", "k-"), ("local", "C0-"), ("adj", "C1-"), ("glob", "C2-"), ("push", "C4-"),
                       ("robust", "C3--")):
        ys = [float(r[key]) if r.get(key) else math.nan for r in rows]
        if any(y > 0 for y in ys if not math.isnan(y)):
            ax.plot(it, [y if y > 0 else math.nan for y in ys], style, lw=1.2, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("unlearning losses")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
