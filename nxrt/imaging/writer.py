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
    raw = img.to_bytes()
    data = _gzip(raw) if str(path).endswith(".gz") else raw
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _gzip(raw: bytes, level: int = 1) -> bytes:
    """gzip in parallel: one gzip member per core, concatenated (a valid .gz that every gzip reader,
    nibabel and the viewers' zlib included, reads as one stream). zlib releases the GIL, so the
    members compress concurrently; level 1 as nibabel's default."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    parts = max(1, min(os.cpu_count() or 1, len(raw) // (8 << 20)))
    if parts == 1:
        return gzip.compress(raw, compresslevel=level, mtime=0)
    step = -(-len(raw) // parts)
    with ThreadPoolExecutor(parts) as pool:
        members = pool.map(lambda i: gzip.compress(raw[i:i + step], compresslevel=level, mtime=0),
                           range(0, len(raw), step))
        return b"".join(members)


def save_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
