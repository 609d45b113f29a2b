"""Small line charts as SVG, so benchmark plots need no plotting library.

A chart is a row of panels; each panel has axes starting at zero (so "flat" and "linear" are
judged against the origin, not a zoomed range) and one or more series of (x, y) points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
PANEL_W, PANEL_H, PAD_L, PAD_B, PAD_T, PAD_R = 360, 260, 60, 44, 34, 16


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    labels: list[str] = field(default_factory=list)  # written beside each point


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    proportional_fit: bool = False  # dashed y = k·x through the origin, least squares


def nice_top(value: float) -> tuple[float, float]:
    """An axis end at or above ``value`` and a tick step giving 4–6 ticks."""
    step = 10 ** math.floor(math.log10(value / 5))
    for multiple in (1, 2, 2.5, 5, 10):
        if value / (step * multiple) <= 5:
            step *= multiple
            break
    return step * math.ceil(value / step), step


def panel_svg(panel: Panel, left: float) -> list[str]:
    x_top, x_step = nice_top(max(x for s in panel.series for x in s.xs))
    y_top, y_step = nice_top(1.1 * max(y for s in panel.series for y in s.ys))  # room for point labels
    width, height = PANEL_W - PAD_L - PAD_R, PANEL_H - PAD_T - PAD_B
    x0, y0 = left + PAD_L, PAD_T + height

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + width * x / x_top, y0 - height * y / y_top

    out = [f'<text x="{x0 + width / 2}" y="18" class="title">{panel.title}</text>']
    for i in range(round(y_top / y_step) + 1):
        _, y = at(0, i * y_step)
        out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + width}" y2="{y}" class="grid"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4}" class="tick" text-anchor="end">{i * y_step:g}</text>')
    for i in range(round(x_top / x_step) + 1):
        x, _ = at(i * x_step, 0)
        out.append(f'<text x="{x}" y="{y0 + 16}" class="tick">{i * x_step:g}</text>')
    out.append(f'<path d="M{x0},{PAD_T} V{y0} H{x0 + width}" class="axis"/>')
    out.append(f'<text x="{x0 + width / 2}" y="{y0 + 34}" class="label">{panel.x_label}</text>')
    rotated = f"translate({left + 14},{PAD_T + height / 2}) rotate(-90)"
    out.append(f'<text transform="{rotated}" class="label">{panel.y_label}</text>')
    for n, series in enumerate(panel.series):
        colour = COLOURS[n % len(COLOURS)]
        points = [at(x, y) for x, y in zip(series.xs, series.ys, strict=True)]
        if panel.proportional_fit:
            k = sum(x * y for x, y in zip(series.xs, series.ys, strict=True)) / sum(x * x for x in series.xs)
            (fx0, fy0), (fx1, fy1) = at(0, 0), at(x_top, k * x_top) if k * x_top <= y_top else at(y_top / k, y_top)
            out.append(f'<line x1="{fx0}" y1="{fy0}" x2="{fx1}" y2="{fy1}" stroke="{colour}" class="fit"/>')
        else:
            path = " L".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<path d="M{path}" stroke="{colour}" class="line"/>')
        labels = series.labels if n == 0 else []  # the first series names the points for all
        for (x, y), label in zip(points, labels or [""] * len(points), strict=True):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
            if label:
                out.append(f'<text x="{x + 6:.1f}" y="{y - 8:.1f}" class="point">{label}</text>')
        key_x, key_y = x0 + width - 60, y0 - 12 - 16 * (len(panel.series) - 1 - n)  # bottom right
        key = f'x1="{key_x}" y1="{key_y}" x2="{key_x + 18}" y2="{key_y}"'
        out.append(f'<line {key} stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{key_x + 24}" y="{key_y + 4}" class="legend" style="fill:{colour}">{series.name}</text>')
    return out


def write_chart(panels: list[Panel], path: Path, caption: str) -> None:
    """Write ``panels`` side by side as one SVG file, ``caption`` underneath."""
    width, height = PANEL_W * len(panels), PANEL_H + 22
    body = [svg for i, panel in enumerate(panels) for svg in panel_svg(panel, i * PANEL_W)]
    style = (
        "text{font-family:sans-serif;fill:#222}.title{font-size:14px;font-weight:bold;text-anchor:middle}"
        ".tick{font-size:11px;text-anchor:middle}.label{font-size:12px;text-anchor:middle}"
        ".legend{font-size:12px}.point{font-size:10px}.caption{font-size:11px;fill:#555}"
        ".grid{stroke:#e4e4e4}.axis{stroke:#444;fill:none}.line{fill:none;stroke-width:1.5}"
        ".fit{stroke-dasharray:5 4;stroke-width:1.2}"
    )
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<style>{style}</style><rect width="100%" height="100%" fill="white"/>'
        + "".join(body)
        + f'<text x="8" y="{height - 6}" class="caption">{caption}</text></svg>\n'
    )
