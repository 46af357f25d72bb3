"""Small server-rendered SVG charts for the operator dashboard: no JavaScript, nothing fetched at run time."""

from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 24
# Colour-blind-safe palette (Okabe-Ito), one colour per series in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OUTCOME_COLOURS = {"succeeded": "#009E73", "failed": "#D55E00", "cancelled": "#999999"}
FAILURE_COLOURS = {"system failed": "#D55E00", "job's own failure": "#E69F00"}


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above `value`, so axis labels are round numbers."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def _frame(top: float, starts: list[datetime], title: str) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'role="img" aria-label="{escape(title)}" class="ops-chart">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        value = top * fraction
        label = f"{value:g}"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#666">{label}</text>'
        )
    n = len(starts)
    for i in range(0, n, max(n // 6, 1)):
        x = LEFT + plot_w * (i + 0.5) / n
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10" fill="#666">'
            f"{starts[i]:%H:%M}</text>"
        )
    return parts


def stacked_bars(
    starts: list[datetime], series: dict[str, list[int]], *, title: str, colours: dict[str, str]
) -> SafeString:
    """One bar per minute, the series stacked in the order given."""
    n = len(starts)
    totals = [sum(values[i] for values in series.values()) for i in range(n)]
    top = _nice_max(max(totals, default=0))
    parts = _frame(top, starts, title)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / n
    for i in range(n):
        base = 0
        for name, values in series.items():
            if not values[i]:
                continue
            y0 = TOP + plot_h * (1 - base / top)
            base += values[i]
            y1 = TOP + plot_h * (1 - base / top)
            parts.append(
                f'<rect x="{LEFT + bar_w * i + 0.5:.1f}" y="{y1:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                f'height="{y0 - y1:.1f}" fill="{colours.get(name, "#888")}">'
                f"<title>{starts[i]:%H:%M} {escape(name)}: {values[i]}</title></rect>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every interpolated text above is escaped or numeric)


def lines(starts: list[datetime], series: dict[str, list[int]], *, title: str) -> SafeString:
    """One polyline per series over the minutes."""
    n = len(starts)
    top = _nice_max(max((max(values, default=0) for values in series.values()), default=0))
    parts = _frame(top, starts, title)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    for colour, (name, values) in zip(PALETTE, series.items(), strict=False):
        points = " ".join(
            f"{LEFT + plot_w * (i + 0.5) / n:.1f},{TOP + plot_h * (1 - value / top):.1f}"
            for i, value in enumerate(values)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}: now {values[-1] if values else 0}</title></polyline>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every interpolated text above is escaped or numeric)


def legend(names, colours: dict[str, str] | None = None) -> list[dict]:
    """(name, colour) pairs for the template's legend, in the charts' order."""
    if colours is None:
        colours = dict(zip(names, PALETTE, strict=False))
    return [{"name": name, "colour": colours.get(name, "#888")} for name in names]
