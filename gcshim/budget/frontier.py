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
    figure, axes = plt.subplots(figsize=(8, 4.8))
    markers = "oDv^<>phP*X"
    # A legend entry per plan: labels written beside points collide where plans coincide.
    for index, (label, seconds, peak) in enumerate(points):
        anchor = label in anchors
        axes.scatter(seconds * 1e3, peak / mib, s=70 if anchor else 45, zorder=3,
                     marker="s" if anchor else markers[index % len(markers)],
                     color=plt.cm.tab10(index % 10), edgecolors="black" if anchor else "none",
                     label=f"{label} (anchor)" if anchor else label)
    if budget is not None:
        axes.axhline(budget / mib, color="tab:green", linestyle="--", label="budget")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    axes.set_xlabel("median step time (ms)")
    axes.set_ylabel("peak memory of a step (MiB)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
