"""Draw the score-against-training-time curve of docs/benchmarks.md as a PNG.

Reads ``bench/results/score_vs_time.json`` (written by ``bench/score_vs_time.py``) and the
Otsu baseline from ``bench/results/dsb_unet_vs_otsu_30min.json``, and writes
``docs/images/score_vs_time.png``. Uses Pillow only (installed with scikit-image), so the
docs need no plotting library::

    python docs/plot_score_vs_time.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "images" / "score_vs_time.png"

SCALE = 2  # drawn at twice the size, then shrunk: smoother lines and text
WIDTH, HEIGHT = 1000, 600
PLOT = (80, 70, 700, 500)  # left, top, right, bottom of the axes, in output pixels

# (label, colour, line width, how to read the value from a point)
SERIES = [
    ("F1, all 67 images", (31, 87, 165), 4, lambda p: p["f1"]),
    ("DSB score, all 67 images", (230, 120, 20), 4, lambda p: p["dsb_score"]),
    ("F1, fluorescence (54)", (60, 160, 90), 2, lambda p: p["by_kind"]["fluorescence"]["f1"]),
    ("F1, colour tissue (11)", (150, 70, 160), 2, lambda p: p["by_kind"]["tissue_colour"]["f1"]),
    (
        "F1, grey brightfield (2)",
        (140, 100, 60),
        2,
        lambda p: p["by_kind"]["brightfield_grey"]["f1"],
    ),
]
GRID = (225, 225, 225)
AXIS = (60, 60, 60)
BASELINE = (120, 120, 120)


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` output pixels (a bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size * SCALE)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def _dashed(draw: ImageDraw.ImageDraw, xy, fill, width: int, dash: int = 10) -> None:
    """Draw a horizontal dashed line from ``xy[0]`` to ``xy[1]`` (same y)."""
    (x0, y), (x1, _) = xy
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + dash, x1), y)], fill=fill, width=width)
        x += 2 * dash


def plot(points: list[dict], otsu_f1: float | None, out: Path) -> None:
    """Draw the curve of ``points`` (score_vs_time.json's list) and save it to ``out``.

    Parameters
    ----------
    points : list of dict
        One entry per training budget: ``minutes``, ``train_steps``, ``f1``, ``dsb_score``
        and ``by_kind``.
    otsu_f1 : float or None
        F1 of the Otsu + watershed baseline on the same images, drawn as a dashed line.
    out : Path
        Where the PNG goes.
    """
    s = SCALE
    img = Image.new("RGB", (WIDTH * s, HEIGHT * s), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = (v * s for v in PLOT)
    minutes = [p["minutes"] for p in points]
    lo, hi = math.log(min(minutes) / 1.25), math.log(max(minutes) * 1.25)

    def px(m: float) -> float:
        return left + (math.log(m) - lo) / (hi - lo) * (right - left)

    def py(v: float) -> float:
        return bottom - v * (bottom - top)

    small, normal, big = _font(13), _font(15), _font(19)
    # grid, y ticks
    for i in range(11):
        v = i / 10
        y = py(v)
        draw.line([(left, y), (right, y)], fill=GRID, width=s)
        draw.text((left - 8 * s, y), f"{v:.1f}", font=small, fill=AXIS, anchor="rm")
    # x ticks: the budgets, with the steps each made
    for p in points:
        x = px(p["minutes"])
        draw.line([(x, top), (x, bottom)], fill=GRID, width=s)
        draw.line([(x, bottom), (x, bottom + 6 * s)], fill=AXIS, width=s)
        draw.text((x, bottom + 9 * s), f"{p['minutes']:g}", font=normal, fill=AXIS, anchor="mt")
        draw.text(
            (x, bottom + 28 * s),
            f"{p['train_steps']:,} steps",
            font=small,
            fill=BASELINE,
            anchor="mt",
        )
    draw.rectangle([(left, top), (right, bottom)], outline=AXIS, width=s)
    draw.text(
        ((left + right) / 2, bottom + 52 * s),
        "training time, minutes (log scale), on a 2-core CPU",
        font=normal,
        fill=AXIS,
        anchor="mt",
    )
    label = Image.new("RGBA", (300 * s, 24 * s), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((150 * s, 12 * s), "score", font=normal, fill=AXIS, anchor="mm")
    label = label.rotate(90, expand=True)
    img.paste(
        label, (int(18 * s - label.width / 2), int((top + bottom) / 2 - label.height / 2)), label
    )
    # title
    draw.text(
        (WIDTH * s / 2, 16 * s),
        "Score against training time: DSB2018, 67 held-back images",
        font=big,
        fill=(20, 20, 20),
        anchor="mt",
    )
    draw.text(
        (WIDTH * s / 2, 42 * s),
        "default settings, one fresh training per budget, AMD EPYC, 2 threads",
        font=small,
        fill=BASELINE,
        anchor="mt",
    )
    # baseline and curves
    if otsu_f1 is not None:
        _dashed(draw, [(left, py(otsu_f1)), (right, py(otsu_f1))], BASELINE, 2 * s)
    for _, colour, width, value in SERIES:
        xy = [(px(p["minutes"]), py(value(p))) for p in points]
        draw.line(xy, fill=colour, width=width * s, joint="curve")
        r = (width + 3) * s
        for x, y in xy:
            draw.ellipse([(x - r, y - r), (x + r, y + r)], fill=colour, outline="white", width=s)
    # legend, right of the axes
    lx, ly = right + 24 * s, top + 10 * s
    entries = [(name, colour, width) for name, colour, width, _ in SERIES]
    if otsu_f1 is not None:
        entries.append((f"Otsu + watershed, F1 {otsu_f1:.3f}", BASELINE, 0))
    for name, colour, width in entries:
        y = ly + 12 * s
        if width:
            draw.line([(lx, y), (lx + 34 * s, y)], fill=colour, width=width * s)
            r = (width + 3) * s
            draw.ellipse([(lx + 17 * s - r, y - r), (lx + 17 * s + r, y + r)], fill=colour)
        else:
            _dashed(draw, [(lx, y), (lx + 34 * s, y)], colour, 2 * s, dash=6 * s)
        draw.text((lx + 44 * s, y), name, font=small, fill=(30, 30, 30), anchor="lm")
        ly += 30 * s
    out.parent.mkdir(parents=True, exist_ok=True)
    img.resize((WIDTH, HEIGHT), Image.LANCZOS).save(out, optimize=True)


def main() -> None:
    """Read the results and write the PNG."""
    points = json.loads((RESULTS / "score_vs_time.json").read_text())["points"]
    points.sort(key=lambda p: p["minutes"])
    baseline = RESULTS / "dsb_unet_vs_otsu_30min.json"
    otsu_f1 = (
        json.loads(baseline.read_text())["otsu_watershed"]["f1"] if baseline.exists() else None
    )
    plot(points, otsu_f1, OUT)
    print(f"saved {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
