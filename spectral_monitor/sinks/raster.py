"""A small RGB drawing surface for pictures drawn while a model trains.

Lines and markers go straight to matplotlib's Agg rasteriser (antialiased, C++), filled cells
and text are numpy writes into the same buffer, and text comes from glyph bitmaps cached per
string. There is no ``Figure``, ``Axes``, tick machinery or layout engine: those are what make a
matplotlib figure of the alpha heatmap take 0.3-0.5 s, all of it holding the GIL, so a worker
thread drawing it stalls the training thread next to it (``benchmarks/training_overhead.py
--figures``). The same picture drawn here takes milliseconds.

Coordinates are pixels from the top-left corner, x to the right, y down; colours are anything
``matplotlib.colors.to_rgb`` takes.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backend_bases import GraphicsContextBase
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import to_rgb
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font
from matplotlib.path import Path
from matplotlib.transforms import Affine2D, IdentityTransform

__all__ = ["Canvas", "rgb255", "text_size"]

Color = Any  # a matplotlib colour: "#1f77b4", "black", (r, g, b) in 0..1
Points = Sequence[float] | np.ndarray  # pixel coordinates, one axis

# FT2Font objects are not thread-safe; the figures are drawn on a worker thread, the docs and
# tests draw on the main one.
_FONT_LOCK = threading.Lock()


def _nearest(value: float) -> int:
    """The nearest integer (a plain int also for numpy floats)."""
    return math.floor(value + 0.5)


@functools.cache
def _font(bold: bool) -> FT2Font:
    # DejaVu Sans ships inside matplotlib, so this finds the same font on every machine.
    prop = FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return FT2Font(findfont(prop))


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: float, bold: bool) -> tuple[np.ndarray, int]:
    """The coverage bitmap of ``text`` ((h, w) float32 in 0..1) and its descent in pixels (rows
    below the baseline). Cached: layer names and step numbers recur in every picture."""
    with _FONT_LOCK:
        font = _font(bold)
        font.clear()
        font.set_size(size, 72)  # 72 dpi: one point is one pixel
        font.set_text(text, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        bitmap = np.asarray(font.get_image()).astype(np.float32) / 255.0
        descent = _nearest(font.get_descent() / 64)
    return bitmap, descent


def text_size(text: str, size: float = 11, bold: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn at ``size`` pixels."""
    bitmap, _ = _glyphs(text, float(size), bold)
    return bitmap.shape[1], bitmap.shape[0]


def rgb255(color: Color) -> np.ndarray:
    """A colour as a (3,) float array in 0..255."""
    return np.asarray(to_rgb(color), dtype=np.float32) * 255.0


class Canvas:
    """An RGB picture of ``width`` × ``height`` pixels, white unless ``background`` says else.

    Args:
        width: pixels, >= 1.
        height: pixels, >= 1.
        background: the colour the canvas starts with.
    """

    def __init__(self, width: int, height: int, background: Color = "white") -> None:
        if width < 1 or height < 1:
            raise ValueError(f"a canvas needs a positive size, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        # dpi 72: a line width in points is a width in pixels.
        self._renderer = RendererAgg(self.width, self.height, 72)
        self._pixels = np.asarray(self._renderer.buffer_rgba())  # a view: Agg draws into it
        # One 32-bit word per pixel: a contiguous fill, far faster than a strided RGB write.
        rgba = np.append(rgb255(background).astype(np.uint8), np.uint8(255))
        self._pixels.reshape(-1).view(np.uint32)[:] = rgba.view(np.uint32)[0]

    # --- Agg: lines and markers ------------------------------------------------------------

    def _gc(self, color: Color, width: float, dashes: Sequence[float] | None) -> Any:
        gc = GraphicsContextBase()
        gc.set_foreground(to_rgb(color))
        gc.set_linewidth(width)
        gc.set_antialiased(True)
        gc.set_capstyle("round" if dashes is None else "butt")
        gc.set_joinstyle("round")
        if dashes is not None:
            gc.set_dashes(0, list(dashes))
        return gc

    def _path(self, x: Points, y: Points) -> Path:
        xs = np.asarray(x, dtype=np.float64)
        ys = self.height - np.asarray(y, dtype=np.float64)  # Agg's y axis points up
        return Path(np.column_stack([xs, ys]))

    def polyline(
        self,
        x: Points,
        y: Points,
        color: Color,
        width: float = 1.5,
        dashes: Sequence[float] | None = None,
    ) -> None:
        """A line through the points in order; a NaN coordinate breaks it there.

        Args:
            dashes: on/off lengths in pixels (None: solid).
        """
        if len(x) < 2:
            return
        self._renderer.draw_path(self._gc(color, width, dashes), self._path(x, y), _IDENTITY)

    def markers(
        self,
        x: Points,
        y: Points,
        color: Color,
        radius: float = 3.0,
        fill: Color | None = None,
        edge_width: float = 1.2,
    ) -> None:
        """A circle at each point (NaN points left out): edge ``color``, filled with ``fill``
        (None: the edge colour, a solid dot; e.g. "white": a hollow ring)."""
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        if not keep.any():
            return
        face = to_rgb(color if fill is None else fill)
        self._renderer.draw_markers(
            self._gc(color, edge_width, None),
            _CIRCLE,
            Affine2D().scale(radius),
            self._path(xs[keep], ys[keep]),
            _IDENTITY,
            (*face, 1.0),
        )

    # --- numpy: rectangles, images, text ----------------------------------------------------

    def _clip(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        cx0, cx1 = (_nearest(min(max(v, 0), self.width)) for v in (x0, x1))
        cy0, cy1 = (_nearest(min(max(v, 0), self.height)) for v in (y0, y1))
        return cx0, cy0, cx1, cy1

    def fill(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill the rectangle [x0, x1) × [y0, y1) (pixel edges)."""
        cx0, cy0, cx1, cy1 = self._clip(x0, y0, x1, y1)
        self._pixels[cy0:cy1, cx0:cx1, :3] = rgb255(color).astype(np.uint8)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """The one-pixel outline of the rectangle [x0, x1) × [y0, y1)."""
        self.fill(x0, y0, x1, y0 + 1, color)
        self.fill(x0, y1 - 1, x1, y1, color)
        self.fill(x0, y0, x0 + 1, y1, color)
        self.fill(x1 - 1, y0, x1, y1, color)

    def image(self, x: int, y: int, rgb: np.ndarray) -> None:
        """Paste an (h, w, 3) uint8 image with its top-left corner at (x, y), clipped."""
        h, w = rgb.shape[:2]
        cx0, cy0, cx1, cy1 = self._clip(x, y, x + w, y + h)
        if cx1 > cx0 and cy1 > cy0:
            part = rgb[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
            self._pixels[cy0:cy1, cx0:cx1, :3] = part

    def text(
        self,
        x: float,
        y: float,
        text: str,
        color: Color = "black",
        size: float = 11,
        bold: bool = False,
        align: str = "left",
        valign: str = "middle",
        vertical: bool = False,
    ) -> tuple[int, int]:
        """Draw ``text`` anchored at (x, y) and return its (width, height) as drawn.

        Args:
            size: pixels (the font's em).
            align: where x is: ``"left"``, ``"center"`` or ``"right"`` of the text.
            valign: where y is: ``"top"``, ``"middle"`` (of the capital letters), ``"baseline"``
                or ``"bottom"``; for ``vertical`` text, middle is the middle of the box.
            vertical: read bottom to top (an axis label on the left).
        """
        if not text:
            return 0, 0
        coverage, descent = _glyphs(text, float(size), bold)
        h, w = coverage.shape
        if vertical:
            coverage = np.rot90(coverage)
            h, w = coverage.shape
            top = y - h / 2 if valign == "middle" else y if valign == "top" else y - h
            left = x - w if align == "right" else x - w / 2 if align == "center" else x
        else:
            left = x - w if align == "right" else x - w / 2 if align == "center" else x
            baseline = {
                "top": y + h - descent,
                "middle": y + 0.36 * size,  # half the height of DejaVu's capitals
                "baseline": y,
                "bottom": y - descent,
            }[valign]
            top = baseline - (h - descent)
        self._blend(_nearest(left), _nearest(top), coverage, rgb255(color))
        return w, h

    def _blend(self, x: int, y: int, coverage: np.ndarray, color: np.ndarray) -> None:
        h, w = coverage.shape
        cx0, cy0, cx1, cy1 = self._clip(x, y, x + w, y + h)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        cover = coverage[cy0 - y : cy1 - y, cx0 - x : cx1 - x, None]
        under = self._pixels[cy0:cy1, cx0:cx1, :3].astype(np.float32)
        self._pixels[cy0:cy1, cx0:cx1, :3] = (under + cover * (color - under) + 0.5).astype(
            np.uint8
        )

    def to_array(self) -> np.ndarray:
        """The picture as an (height, width, 3) uint8 RGB array (a copy)."""
        return self._pixels[..., :3].copy()


_IDENTITY = IdentityTransform()
_CIRCLE = Path.unit_circle()
