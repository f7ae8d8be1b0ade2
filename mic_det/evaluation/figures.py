"""Figures drawn without ``pyplot``: every PNG mic_det writes starts here.

A bare Agg canvas works headless and never switches the backend of a user's
interactive session; one grid-of-panels helper serves training curves of any task.
"""
import math
from typing import Mapping, Optional, Sequence, Tuple

__all__ = ["new_figure", "plot_panels"]

Series = Tuple[Sequence[float], Sequence[float]]


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no GUI)."""
    # Figure + Agg canvas without pyplot: no global backend switch, no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_panels(
    path: str,
    panels: Mapping[str, Mapping[str, Series]],
    ylabel: str = "",
    xlabel: str = "iteration",
    ncols: int = 3,
    title: Optional[str] = None,
) -> str:
    """A grid of axes, one per panel, each with one line per series. Returns ``path``.

    Used for training curves: one panel per dataset (student and teacher AP50
    as two lines) or one panel per loss.
    """
    n = max(len(panels), 1)
    ncols = max(1, min(ncols, n))
    nrows = int(math.ceil(n / ncols))
    fig = new_figure(4.2 * ncols, 3.0 * nrows + (0.4 if title else 0.0))
    for i, (panel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for label, (x, y) in series.items():
            marker = "o" if len(x) <= 30 else None
            ax.plot(x, y, label=label, marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
