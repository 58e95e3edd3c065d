"""Atomic writes: every file goes to a temporary name in its folder and is renamed into place."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_nifti(path, data: np.ndarray, affine: np.ndarray, header) -> None:
    """Write data in the image grid with the case's affine and header (qform/sform codes, units kept)."""
    import nibabel as nib

    hdr = header.copy()
    hdr.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, affine, hdr)
    # keep the source's coordinate codes (nibabel would otherwise keep or reset them depending on the header)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    img.set_qform(affine, code=qcode if qcode else 1)
    img.set_sform(affine, code=scode if scode else 1)
    name = Path(path).name
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        tmp_named = tmp.with_name(tmp.name + ext)  # nibabel picks compression from the extension
        try:
            nib.save(img, str(tmp_named))
            os.replace(tmp_named, tmp)
        finally:
            if tmp_named.exists():
                tmp_named.unlink()


def save_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
