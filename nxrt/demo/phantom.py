"""BraTS-like phantoms on real anatomy: four MRI contrasts and a glioma with BraTS compartments.

Anatomy is the ICBM 2009a template at 2 mm (shipped in nxrt/demo/data, see its NOTICE): grey- and
white-matter probability maps give the tissue mixture of every voxel, CSF fills the rest of the
intracranial space. Each modality is a mixture of per-tissue intensities with the usual relative
contrasts, a smooth bias field and noise. A tumour is placed at a random white-matter position with
random size and an irregular (smoothly perturbed) shape:

- high grade (HGG): necrotic core (label 1), enhancing rim (label 4; 3 in the 2023 convention),
  surrounding oedema (label 2);
- low grade (LGG): a non-enhancing core (label 1) and little oedema (label 2).

Everything is seeded: the same seed gives the same case, voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
#: tissue -> (flair, t1, t1ce, t2) relative intensity
TISSUE = {
    "csf": (0.15, 0.25, 0.25, 1.00),
    "gm": (0.70, 0.62, 0.62, 0.62),
    "wm": (0.55, 1.00, 1.00, 0.45),
    "necrosis": (0.60, 0.30, 0.30, 1.10),
    "enhancing": (0.90, 0.60, 1.60, 0.80),
    "edema": (1.25, 0.50, 0.50, 0.95),
    "lgg_core": (1.10, 0.50, 0.52, 1.00),
}
LABELS_2021 = {"necrosis": 1, "edema": 2, "enhancing": 4}
LABELS_2023 = {"necrosis": 1, "edema": 2, "enhancing": 3}
SCALE = 1000.0  # stored intensities ~ scanner-like integers


@dataclass
class Phantom:
    """One synthetic case: modalities [X, Y, Z] float32, labels int16, the 2 mm affine, grade."""

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    grade: str
    center: tuple[int, int, int]

    def stack(self, channels=MODALITIES) -> np.ndarray:
        return np.stack([self.images[c] for c in channels], axis=-1)


@lru_cache(maxsize=1)
def template() -> dict[str, np.ndarray]:
    """The shipped 2 mm template: t1, gm, wm in 0..1 (float32) and the affine."""
    with resources.as_file(resources.files("nxrt.demo") / "data" / "icbm152_2009a_2mm.npz") as path:
        data = np.load(Path(path))
        out = {k: data[k].astype(np.float32) / 255.0 for k in ("t1", "gm", "wm")}
        out["affine"] = data["affine"].astype(np.float64)
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        for axis in range(3):
            grown |= np.roll(out, 1, axis) | np.roll(out, -1, axis)
        out = grown
    return out


def _smooth_field(shape, rng: np.random.Generator, terms: int = 6, scale: float = 1.0) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a few low-frequency cosines."""
    grids = np.meshgrid(*(np.linspace(0, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    field = np.zeros(shape, np.float32)
    for _ in range(terms):
        k = rng.uniform(0.5, 2.5, 3) * scale
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(2 * np.pi * (k[0] * grids[0] + k[1] * grids[1] + k[2] * grids[2]) + phase)
    return field / terms


def make_phantom(seed: int, grade: str | None = None, convention: int = 2021, crop: bool = True) -> Phantom:
    """A seeded BraTS-like case. grade: 'HGG', 'LGG' or None (chosen by the seed)."""
    rng = np.random.default_rng(seed)
    tpl = template()
    gm, wm = tpl["gm"], tpl["wm"]
    brain = (gm + wm) > 0.25
    head = _dilate(brain, 2)
    csf = np.clip(1.0 - gm - wm, 0, 1) * head
    affine = tpl["affine"].copy()
    if crop:  # the brain's bounding box plus a margin: smaller volumes for CPU training
        idx = np.argwhere(head)
        lo = np.maximum(idx.min(0) - 2, 0)
        hi = np.minimum(idx.max(0) + 3, head.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        gm, wm, csf, brain, head = gm[sl], wm[sl], csf[sl], brain[sl], head[sl]
        affine[:3, 3] += affine[:3, :3] @ lo
    grade = grade or ("HGG" if rng.random() < 0.5 else "LGG")
    if grade not in ("HGG", "LGG"):
        raise ValueError(f"grade must be HGG or LGG, got {grade!r}")
    shape = gm.shape
    # tumour centre: a white-matter voxel well inside the brain
    inner = (wm > 0.6) & ~_dilate(~brain, 6)
    candidates = np.argwhere(inner)
    center = tuple(int(v) for v in candidates[rng.integers(len(candidates))])
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"), axis=-1)
    stretch = rng.uniform(0.8, 1.25, 3).astype(np.float32)
    dist = np.linalg.norm((grid - np.array(center, np.float32)) / stretch, axis=-1)
    dist = dist * (1.0 + 0.18 * _smooth_field(shape, rng, scale=2.0))  # irregular outline
    core = rng.uniform(2.5, 5.0)
    seg = np.zeros(shape, np.int16)
    labels = LABELS_2021 if convention == 2021 else LABELS_2023
    if grade == "HGG":
        rim = core + rng.uniform(1.5, 2.5)
        edema = rim + rng.uniform(3.0, 7.0)
        parts = [("edema", dist < edema), ("enhancing", dist < rim), ("necrosis", dist < core)]
    else:
        solid = core + rng.uniform(1.0, 2.5)
        edema = solid + rng.uniform(0.5, 1.5)
        parts = [("edema", dist < edema), ("lgg_core", dist < solid)]
    fractions = {"csf": csf, "gm": gm, "wm": wm}
    total = csf + gm + wm + 1e-6
    images = {}
    for m, name in enumerate(MODALITIES):
        vol = sum(TISSUE[t][m] * f for t, f in fractions.items()) / total * head
        images[name] = vol.astype(np.float32)
    for tissue, region in parts:
        region = region & brain
        for m, name in enumerate(MODALITIES):
            images[name][region] = TISSUE[tissue][m]
        seg[region] = labels.get(tissue, 1)
    for name in MODALITIES:
        bias = 1.0 + 0.08 * _smooth_field(shape, rng, terms=3, scale=0.5)
        noisy = images[name] * bias + rng.normal(0, 0.025, shape).astype(np.float32)
        images[name] = np.where(head, np.clip(noisy, 0, None) * SCALE, 0).astype(np.float32)
    return Phantom(images, seg, affine, grade, center)


def write_brats_case(phantom: Phantom, folder, name: str, convention: int = 2021, with_seg: bool = True) -> Path:
    """Write the case like BraTS does: one int16 NIfTI per modality plus the label map."""
    import nibabel as nib

    folder = Path(folder) / name
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"flair": ("_flair", "-t2f"), "t1": ("_t1", "-t1n"), "t1ce": ("_t1ce", "-t1c"),
              "t2": ("_t2", "-t2w"), "seg": ("_seg", "-seg")}
    which = 0 if convention == 2021 else 1
    for m in MODALITIES:
        img = nib.Nifti1Image(np.round(phantom.images[m]).astype(np.int16), phantom.affine)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(folder / f"{name}{suffix[m][which]}.nii.gz"))
    if with_seg:
        nib.save(nib.Nifti1Image(phantom.seg, phantom.affine), str(folder / f"{name}{suffix['seg'][which]}.nii.gz"))
    return folder
