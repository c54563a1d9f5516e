"""Charts for the mailable report as inline SVG, written by hand: a file that opens anywhere, with no
plotting library, script or font to fetch.

Two kinds: lines (latency against batch size, one polyline per engine) and a scatter with its Pareto
front drawn (latency against fidelity). Every text is escaped: engine and model names come from specs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

WIDTH, PLOT_HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 40  # margins around the plot area: tick labels, axis titles, the chart title
LEGEND_ROW = 16
LEGEND_CHARS = 100  # about what fits beside the sample at 11 px
# Tableau 10: distinguishable, and readable in grey print
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
Format = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    """One line: an engine's value at each x (a batch size)."""

    name: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Point:
    """One build on the latency-fidelity plane; `front`: no other build is both faster and more faithful."""

    name: str
    x: float
    y: float
    front: bool


@dataclass(frozen=True)
class _Axis:
    """Data values lo..hi onto pixels start..end (end < start for a y axis: SVG's y grows downwards)."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round steps (1, 2 or 5 times a power of ten) covering lo..hi."""
    if not hi > lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    return [round(first + i * step, 12) for i in range(math.ceil((hi - first) / step - 1e-9) + 1)]


def tick_labels(values: list[float], fmt: Format) -> list[str]:
    """Each tick in the metric's own format, unless that makes two ticks read alike (0.035 and 0.040 as 0.04):
    then with as many decimals as the step needs."""
    labels = [fmt(v) for v in values]
    if len(set(labels)) == len(labels) or len(values) < 2:
        return labels
    decimals = max(0, -math.floor(math.log10(values[1] - values[0]) + 1e-9))
    return [f"{v:.{decimals}f}" for v in values]


def _svg(kind: str, title: str, legend_rows: int, body: list[str]) -> str:
    height = TOP + PLOT_HEIGHT + BOTTOM + legend_rows * LEGEND_ROW + 8
    return (f'<svg class="{kind}" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">'
            f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>")


def _frame(x: _Axis, y: _Axis, x_ticks: list[tuple[float, str]], y_ticks: list[float], y_format: Format,
           x_label: str, y_label: str) -> list[str]:
    """Grid lines with their tick labels, and the two axis titles."""
    bottom = TOP + PLOT_HEIGHT
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{PLOT_HEIGHT}" fill="none" stroke="#999"/>']
    for value, text in zip(y_ticks, tick_labels(y_ticks, y_format), strict=True):
        at = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at:.1f}" y2="{at:.1f}" stroke="#e6e6e6"/>'
                     f'<text x="{LEFT - 6}" y="{at + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    for value, text in x_ticks:
        at = x(value)
        parts.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{TOP}" y2="{bottom}" stroke="#e6e6e6"/>'
                     f'<text x="{at:.1f}" y="{bottom + 14}" text-anchor="middle">{escape(text)}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{bottom + 30}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text transform="translate(14 {TOP + PLOT_HEIGHT / 2:.0f}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    return parts


def _legend(rows: list[tuple[str, str]]) -> list[str]:
    """One row per entry under the plot: a colour sample (or a number) and its name."""
    top = TOP + PLOT_HEIGHT + BOTTOM
    parts = []
    for i, (mark, name) in enumerate(rows):
        y = top + i * LEGEND_ROW + 8
        sample = (f'<line x1="{LEFT}" x2="{LEFT + 18}" y1="{y - 4}" y2="{y - 4}" stroke="{mark}" stroke-width="2"/>' if mark.startswith("#")
                  else f'<text x="{LEFT + 9}" y="{y}" text-anchor="middle" font-weight="bold">{escape(mark)}</text>')
        shown = name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "\u2026"  # the whole name is the line's tooltip
        parts.append(f'{sample}<text x="{LEFT + 26}" y="{y}">{escape(shown)}<title>{escape(name)}</title></text>')
    return parts


def line_chart(title: str, series: list[Series], x_label: str, y_label: str, y_format: Format) -> str:
    """One polyline per series over the x values they share, evenly spaced (batch sizes 1, 8, 32 read better
    as steps than on a linear axis); y from zero, so that a line's slope reads as it is."""
    xs = sorted({x for s in series for x, _ in s.points})
    y_ticks = ticks(0.0, max((y for s in series for _, y in s.points), default=1.0))
    slot = {x: i for i, x in enumerate(xs)}
    # half a step of room at each side, so that the first and last batch size do not sit on the frame
    x = _Axis(-0.5, len(xs) - 0.5, LEFT, WIDTH - RIGHT)
    y = _Axis(y_ticks[0], y_ticks[-1], TOP + PLOT_HEIGHT, TOP)
    body = _frame(x, y, [(slot[v], f"{v:g}") for v in xs], y_ticks, y_format, x_label, y_label)
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        coords = [(x(slot[a]), y(b)) for a, b in sorted(s.points)]
        body.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in coords)}"><title>{escape(s.name)}</title></polyline>')
        body += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"><title>{escape(s.name)}: {escape(y_format(v))}</title></circle>'
                 for (a, b), (_, v) in zip(coords, sorted(s.points), strict=True)]
    body += _legend([(PALETTE[i % len(PALETTE)], s.name) for i, s in enumerate(series)])
    return _svg("latency", title, len(series), body)


def pareto_chart(title: str, points: list[Point], x_label: str, y_label: str, x_format: Format, y_format: Format,
                 floor: float | None = None) -> str:
    """Every build as a hollow circle, the front as numbered dots joined by a line, the fidelity floor (where one
    is set) dashed; the legend names the front."""
    x_ticks = ticks(min(p.x for p in points), max(p.x for p in points))
    low, high = min(p.y for p in points), max(p.y for p in points)
    if floor is not None:
        low, high = min(low, floor), max(high, floor)
    y_ticks = ticks(low, high + (high - low) * 0.05)  # room above the best, so that a point on 1.000 is not on the frame
    x = _Axis(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
    y = _Axis(y_ticks[0], y_ticks[-1], TOP + PLOT_HEIGHT, TOP)
    body = _frame(x, y, list(zip(x_ticks, tick_labels(x_ticks, x_format), strict=True)), y_ticks, y_format, x_label, y_label)
    front = sorted((p for p in points if p.front), key=lambda p: p.x)
    if floor is not None:
        body.append(f'<line class="floor" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(floor):.1f}" y2="{y(floor):.1f}" stroke="{PALETTE[2]}" '
                    f'stroke-dasharray="5 4"/><text x="{WIDTH - RIGHT - 4}" y="{y(floor) - 4:.1f}" text-anchor="end" '
                    f'fill="{PALETTE[2]}">floor {escape(y_format(floor))}</text>')
    body.append(f'<polyline class="front" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5" '
                f'points="{" ".join(f"{x(p.x):.1f},{y(p.y):.1f}" for p in front)}"/>')
    for p in points:
        tip = f"<title>{escape(p.name)}: {escape(x_format(p.x))}, {escape(y_format(p.y))}</title>"
        if not p.front:
            body.append(f'<circle cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="3.5" fill="none" stroke="#888">{tip}</circle>')
    for n, p in enumerate(front, 1):
        tip = f"<title>{escape(p.name)}: {escape(x_format(p.x))}, {escape(y_format(p.y))}</title>"
        body.append(f'<circle cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="4.5" fill="{PALETTE[0]}">{tip}</circle>'
                    f'<text x="{x(p.x) + 7:.1f}" y="{y(p.y) - 6:.1f}" font-weight="bold">{n}</text>')
    rows = [(str(n), f"{p.name}: {x_format(p.x)}, {y_format(p.y)}") for n, p in enumerate(front, 1)]
    return _svg("pareto", title, len(rows), body + _legend(rows))
