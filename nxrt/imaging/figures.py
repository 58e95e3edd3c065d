"""Pictures: the overview (methods side by side on three orthogonal slices) and the layer sweep."""

from __future__ import annotations

import numpy as np

ORIENTATIONS = ("axial", "coronal", "sagittal")


def load_matplotlib():
    """Import matplotlib with the file-only Agg backend (the pipeline does it early, in the background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slice(vol: np.ndarray, orientation: str, index) -> np.ndarray:
    x, y, z = (int(round(v)) for v in index)
    if orientation == "axial":
        s = vol[:, :, z]
    elif orientation == "coronal":
        s = vol[:, y, :]
    else:
        s = vol[x, :, :]
    return np.rot90(s)  # radiological display: superior / anterior up


def _window(vol: np.ndarray) -> tuple[float, float]:
    vals = vol[vol != 0] if np.any(vol != 0) else vol.ravel()
    lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def _blend(grey: np.ndarray, overlay: np.ndarray, cmap, alpha: float = 0.55, floor: float = 0.05) -> np.ndarray:
    """The panel's RGB image: the grey scan with the colour-mapped map laid over it at `alpha`
    where the map exceeds `floor` (what two stacked imshow calls would show, drawn as one image:
    half the figure's rendering time)."""
    rgb = np.repeat(grey, 3, axis=-1)
    shown = overlay > floor
    rgb[shown] = (1 - alpha) * rgb[shown] + alpha * cmap(overlay[shown])[:, :3]
    return rgb


def overview(path, background: np.ndarray, maps: dict[str, np.ndarray], center, title: str = "",
             contour: np.ndarray | None = None) -> None:
    """Rows: methods; columns: axial, coronal, sagittal slices through `center` (voxel index).

    background: [X, Y, Z] (a modality); maps: {method: [X, Y, Z] display map in 0..1}; contour:
    optional tumour mask outlined on every panel. Written atomically as PNG.
    """
    from .writer import atomic_path

    plt = load_matplotlib()

    rows = max(1, len(maps))
    fig, axes = plt.subplots(rows, 3, figsize=(9.6, 3.1 * rows + 0.5), squeeze=False)
    # only the three shown slices are touched (a full-volume pass costs more than the drawing)
    backgrounds = {o: _slice(background, o, center) for o in ORIENTATIONS}
    lo, hi = _window(np.concatenate([b.ravel() for b in backgrounds.values()]))
    outlines = {o: _slice(contour, o, center).astype(np.float32) for o in ORIENTATIONS} \
        if contour is not None else {}
    jet = plt.get_cmap("jet")
    greys = {o: np.clip((b - lo) / (hi - lo), 0, 1)[..., None] for o, b in backgrounds.items()}
    for r, (name, m) in enumerate(maps.items()):
        for c, orient in enumerate(ORIENTATIONS):
            ax = axes[r, c]
            ax.imshow(_blend(greys[orient], _slice(m, orient, center), jet), interpolation="nearest")
            if orient in outlines and outlines[orient].any():
                ax.contour(outlines[orient], levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(orient, fontsize=10)
            if c == 0:
                ax.set_ylabel(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    # fixed margins in inches (tight_layout renders the whole figure once more just to measure it:
    # a third of the figure's time); the row labels and the column titles fit in them
    width, height = fig.get_size_inches()
    top = 1 - (0.75 if title else 0.35) / height
    fig.subplots_adjust(left=0.45 / width, right=0.9, bottom=0.1 / height, top=top, wspace=0.04,
                        hspace=0.25 / 3.1)
    if maps:
        cax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
        scale = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap=jet)
        fig.colorbar(scale, cax=cax, label="attribution (0..1, 99th percentile)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def layer_grid(path, background: np.ndarray, maps: list[np.ndarray], names: list[str], center,
               orientation: str = "axial") -> None:
    """One panel per layer (the paper's Fig. 5): the same slice, each layer's Grad-CAM over the scan."""
    from .writer import atomic_path

    plt = load_matplotlib()

    n = len(maps)
    cols = min(6, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    lo, hi = _window(background)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(_slice(background, orientation, center), cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(np.ma.masked_less_equal(_slice(maps[k], orientation, center), 0.05), cmap="jet", vmin=0,
                  vmax=1, alpha=0.55)
        ax.set_title(f"{k + 1}. {names[k][-24:]}", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
