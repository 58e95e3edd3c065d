"""Colour maps for the figures and the HTML report, as 256-entry RGB lookup tables (no matplotlib).

- "ember" (the default): nxrt's own perceptually uniform map. Its CIELAB lightness rises linearly
  from 20 to 90 (equal steps of the map read as equal steps of brightness, in grey print too), its
  hue turns from violet through magenta, red and orange to yellow; each entry keeps the largest
  chroma (up to 90) that sRGB can show at that lightness and hue, so lightness is never traded for
  colour. Its top stays yellow, not white: a bright FLAIR oedema under it does not pass for the map.
- "jet": matplotlib's 'jet' (the NeuroXAI paper's pictures), from its piecewise-linear knots. Not
  perceptually uniform: its bright cyan and yellow bands read as edges that are not in the map.
"""

from __future__ import annotations

import functools

import numpy as np

LUT_SIZE = 256
DEFAULT = "ember"
NAMES = ("ember", "jet")

# matplotlib's 'jet' as (position, value) knots per channel
_JET_KNOTS = (((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
              ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
              ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)))

_D65 = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_RGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                               [-0.9692660, 1.8760108, 0.0415560],
                               [0.0556434, -0.2040259, 1.0572252]])


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in 0..1, unclipped ([..., 3] -> [..., 3])."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    delta = 6 / 29
    xyz = np.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4 / 29)) * _D65
    linear = xyz @ _XYZ_TO_LINEAR_RGB.T
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.abs(linear) ** (1 / 2.4) - 0.055)


def _in_gamut(rgb: np.ndarray) -> np.ndarray:
    return ((rgb >= -1e-9) & (rgb <= 1 + 1e-9)).all(axis=-1)


@functools.cache
def lut(name: str = DEFAULT) -> np.ndarray:
    """[256, 3] float32 RGB in 0..255 of colour map `name`."""
    t = np.linspace(0, 1, LUT_SIZE)
    if name == "jet":
        return (np.stack([np.interp(t, *zip(*knots, strict=True)) for knots in _JET_KNOTS], axis=-1)
                * 255).astype(np.float32)
    if name != "ember":
        raise ValueError(f"colour map {name!r}: choose from {', '.join(NAMES)}")
    lightness = 20 + 70 * t
    hue = np.deg2rad(300 + 150 * t)  # violet (300 deg) -> magenta -> red (~400) -> yellow (~450)
    lo, hi = np.zeros_like(t), np.full_like(t, 90.0)
    for _ in range(40):  # the largest chroma in gamut, by bisection (the gamut is convex along chroma)
        mid = (lo + hi) / 2
        lab = np.stack([lightness, mid * np.cos(hue), mid * np.sin(hue)], axis=-1)
        ok = _in_gamut(lab_to_srgb(lab))
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    rgb = lab_to_srgb(np.stack([lightness, lo * np.cos(hue), lo * np.sin(hue)], axis=-1))
    return (np.clip(rgb, 0, 1) * 255).astype(np.float32)


def apply(values: np.ndarray, name: str = DEFAULT) -> np.ndarray:
    """Values in 0..1 -> RGB in 0..255 (float32), binned into 256 colours like matplotlib does."""
    index = np.clip((np.asarray(values, np.float32) * LUT_SIZE).astype(np.intp), 0, LUT_SIZE - 1)
    return lut(name)[index]
