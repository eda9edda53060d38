"""Line charts as standalone SVG text: training curves for the report, IoU by epoch for the experiment.

SVG, not a plotting library: the pipeline depends on nothing that draws, and text is easy to embed in a static
HTML page, to diff, and to check in a test.
"""

from __future__ import annotations

import math
from html import escape

__all__ = ["svg_line_chart", "nice_ticks", "PALETTE"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARGIN = {"left": 58, "right": 12, "top": 28, "bottom": 40}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        pad = abs(low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-12 * step:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def _format_tick(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.0e}"


def _scaler(low: float, high: float, out_low: float, out_high: float):
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def _axes(xs: list[float], ys: list[float], width: int, height: int) -> tuple:
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    sx = _scaler(x_ticks[0], x_ticks[-1], MARGIN["left"], width - MARGIN["right"])
    sy = _scaler(y_ticks[0], y_ticks[-1], height - MARGIN["bottom"], MARGIN["top"])
    return x_ticks, y_ticks, sx, sy


def _grid(x_ticks, y_ticks, sx, sy, width: int, height: int) -> list[str]:
    parts = []
    for t in y_ticks:
        y = sy(t)
        parts.append(f'<line x1="{MARGIN["left"]}" y1="{y:.1f}" x2="{width - MARGIN["right"]}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text x="{MARGIN["left"] - 4}" y="{y + 4:.1f}" text-anchor="end">{_format_tick(t)}</text>')
    for t in x_ticks:
        x = sx(t)
        parts.append(f'<text x="{x:.1f}" y="{height - MARGIN["bottom"] + 14}" text-anchor="middle">'
                     f'{_format_tick(t)}</text>')
    return parts


def _polyline(xs: list[float], ys: list[float], sx, sy, colour: str) -> str:
    points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{colour}"/>' for x, y in zip(xs, ys))
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{points}"/>{dots}'


def _legend(names: list[str], width: int) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        y = MARGIN["top"] + 4 + 14 * i
        x = width - MARGIN["right"] - 8
        parts.append(f'<text x="{x - 16}" y="{y + 4}" text-anchor="end">{escape(name)}</text>'
                     f'<line x1="{x - 12}" y1="{y}" x2="{x}" y2="{y}" stroke="{PALETTE[i % len(PALETTE)]}" '
                     'stroke-width="3"/>')
    return parts


def svg_line_chart(series: dict[str, tuple[list[float], list[float]]], title: str, x_label: str, y_label: str,
                   width: int = 420, height: int = 260) -> str:
    """One ``<svg>`` element: a line per named series of (xs, ys); non-finite points are left out."""
    clean = {name: [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
             for name, (xs, ys) in series.items()}
    points = [p for pts in clean.values() for p in pts] or [(0.0, 0.0)]
    x_ticks, y_ticks, sx, sy = _axes([p[0] for p in points], [p[1] for p in points], width, height)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<title>{escape(title)}</title>',
             f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
             *_grid(x_ticks, y_ticks, sx, sy, width, height),
             f'<text x="{width / 2:.0f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="12" y="{height / 2:.0f}" text-anchor="middle" '
             f'transform="rotate(-90 12 {height / 2:.0f})">{escape(y_label)}</text>']
    for i, pts in enumerate(clean.values()):
        if pts:
            parts.append(_polyline([p[0] for p in pts], [p[1] for p in pts], sx, sy, PALETTE[i % len(PALETTE)]))
    parts += _legend(list(clean), width)
    return "\n".join(parts + ["</svg>"])
