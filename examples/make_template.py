"""Write nxrt's shipped copy of the ICBM 2009a template at 2 mm (nxrt/demo/data/icbm152_2009a_2mm.npz).

The source is the 1 mm T1 and grey/white-matter maps that nilearn's wheel ships in
`nilearn/datasets/data/` (installed nilearn, or an unpacked wheel given with --source). They are
block-averaged 2x2x2 and stored as uint8 with the 2 mm affine. See nxrt/demo/data/NOTICE.

    .venv/bin/python examples/make_template.py [--source DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np

NAMES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
OUT = Path(__file__).resolve().parents[1] / "nxrt" / "demo" / "data" / "icbm152_2009a_2mm.npz"


def nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nilearn is not installed; pip install nilearn, or pass --source <dir with the .nii.gz>")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def block_mean(a: np.ndarray, k: int = 2) -> np.ndarray:
    s = [n - n % k for n in a.shape]
    a = a[: s[0], : s[1], : s[2]].astype(np.float32)
    return a.reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k).mean(axis=(1, 3, 5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=None)
    args = ap.parse_args()
    src = args.source or nilearn_data_dir()
    arrays, affine = {}, None
    for key, name in NAMES.items():
        img = nib.load(str(src / name))
        arrays[key] = np.round(block_mean(np.asanyarray(img.dataobj))).astype(np.uint8)
        affine = img.affine.copy()
    affine[:3, :3] *= 2.0  # 2 mm voxels; the first voxel's centre moves half a 1 mm voxel
    affine[:3, 3] += img.affine[:3, :3] @ np.array([0.5, 0.5, 0.5])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, affine=affine, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB), shape {arrays['t1'].shape}")


if __name__ == "__main__":
    main()
