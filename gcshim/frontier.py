"""The memory/time frontier as a picture: peak memory against step time, one point per plan."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

# (label, step seconds, peak bytes)
Point = Tuple[str, float, int]


def draw_frontier(points: Sequence[Point], path: str, title: str,
                  budget: Optional[int] = None, anchors: Sequence[str] = ()) -> str:
    """Write a PNG to `path`; labels in `anchors` are drawn as the reference points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("drawing the frontier needs matplotlib: pip install 'gcshim[plot]'"
                          ) from error
    mib = 2**20
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, seconds, peak in points:
        anchor = label in anchors
        axes.scatter(seconds * 1e3, peak / mib, marker="s" if anchor else "o",
                     color="tab:red" if anchor else "tab:blue", zorder=3)
        axes.annotate(label, (seconds * 1e3, peak / mib), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
    if budget is not None:
        axes.axhline(budget / mib, color="tab:green", linestyle="--", label="budget")
        axes.legend(loc="upper right")
    axes.set_xlabel("median step time (ms)")
    axes.set_ylabel("peak memory of a step (MiB)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
