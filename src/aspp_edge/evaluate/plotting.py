"""Figure helpers shared by the run's report and the sweep (matplotlib is imported by the callers)."""

from __future__ import annotations

from ..formats import BACKENDS

PRECISION_COLORS = {"fp32": "tab:blue", "fp16": "tab:cyan", "int8": "tab:red"}


def marker(backend: str) -> str:
    """The backend's plot marker (`Backend.marker`; "o" for a name the registry does not know)."""
    b = BACKENDS.get(backend)
    return b.marker if b else "o"


def log_axes(ax, *, y: bool = True) -> None:
    """Log scale on x (and y), every major and minor tick labelled plainly: 0.4, 0.6, 1 rather than 4x10^-1."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axes = (ax.xaxis, ax.yaxis) if y else (ax.xaxis,)
    ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    for axis in axes:
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.tick_params(axis="both" if y else "x", which="minor", labelsize=7)


def place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its label at the first candidate offset whose text box lies inside the
    axes and overlaps no label already placed and no marker; the last candidate when none is free."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker_boxes = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        marker_boxes.append((px - 5, py - 5, px + 5, py + 5))
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (6, 14), (-6, 14), (6, -22), (-6, -22), (12, 24), (-12, 24), (12, -32), (-12, -32)]

    def free(box) -> bool:
        x0, y0, x1, y1 = box
        inside = frame.x0 <= x0 and x1 <= frame.x1 and frame.y0 <= y0 and y1 <= frame.y1  # not cut off by the axes
        return inside and not any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in placed + marker_boxes)

    for x, y, text in points:
        for i, (dx, dy) in enumerate(offsets):
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                              ha="left" if dx > 0 else "right",
                              arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if abs(dy) > 14 else None)
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            if free(box) or i == len(offsets) - 1:
                placed.append(box)
                break
            ann.remove()
