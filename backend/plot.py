"""The learning curve of /ui: AP50 and pre-annotation acceptance against annotated tasks.

Drawn on the server with matplotlib's Agg canvas (no display, no pyplot and so
no global figure state shared between request threads), served as a PNG: the
page needs no JavaScript charting bundle and works offline.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# (figure key, legend, marker style) of each line, in drawing order.
LINES = (
    ("map_50", "AP50", "o-"),
    ("accepted", "pre-annotation boxes kept", "s-"),
    ("recall", "annotators' boxes predicted", "^--"),
)


def points(rows: list[dict]) -> list[dict]:
    """The versions that have figures: x is the number of annotated tasks each was trained on."""
    return [{"x": r["trained_on_tasks"], "version": r["model_version"], **r["figures"]} for r in rows if r["figures"]]


def quality_png(rows: list[dict], min_tasks: int) -> bytes:
    """The plot of ``report.version_rows``; a figure that says why when no version has figures yet."""
    figure = Figure(figsize=(5.2, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    shown = points(rows)
    for key, label, style in LINES:
        xs = [p["x"] for p in shown if key in p]
        axes.plot(xs, [p[key] for p in shown if key in p], style, label=label)
    for p in shown:
        axes.annotate(
            p["version"], (p["x"], p.get("map_50", 0.0)), textcoords="offset points", xytext=(4, 6), fontsize=8
        )
    if not shown:
        axes.text(
            0.5,
            0.5,
            f"no figures yet: a version is measured on at least {min_tasks} tasks\n"
            "annotated after it, when the next training starts",
            ha="center",
            va="center",
            transform=axes.transAxes,
            fontsize=9,
        )
    else:
        axes.legend(loc="upper left", fontsize=8)
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlim(-0.5, 1.1 * max([p["x"] for p in shown] + [1]) + 0.5)  # from no annotation on
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # tasks are counted
    axes.set_xlabel("annotated tasks the version was trained on")
    axes.set_ylabel("on the tasks annotated next")
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
