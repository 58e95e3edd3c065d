"""Reading cases: 4D NIfTI, BraTS 2021/2023 folders or prefixes, explicit channel files.

A case is plain data (nibabel in, numpy out): the channels stacked last in the image's own voxel
grid, with the affine and header of the first channel, the channel names, and the optional
ground-truth segmentation. Nothing here knows about models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .preprocess import Moments
from .writer import gunzip

#: BraTS file suffixes per modality, 2021 naming then 2023 naming
BRATS_SUFFIXES = {
    "flair": ("_flair", "-t2f"),
    "t1": ("_t1", "-t1n"),
    "t1ce": ("_t1ce", "-t1c"),
    "t2": ("_t2", "-t2w"),
    "seg": ("_seg", "-seg"),
}
NIFTI_EXTS = (".nii.gz", ".nii")
DEFAULT_CHANNELS = ("flair", "t1", "t1ce", "t2")


@dataclass
class Case:
    """One subject: data [X, Y, Z, C] float32 in the image grid, and where it came from."""

    name: str
    data: np.ndarray
    affine: np.ndarray
    header: object
    channels: list[str]
    sources: list[str]
    seg: np.ndarray | None = None
    seg_source: str | None = None
    #: each channel's Moments (z-score sums) of `data` as read, gathered while the files were read;
    #: None: not known (set it to None when you change `data`: they are not recomputed)
    moments: list[Moments] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:-1])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each voxel axis (the lengths of the affine's columns)."""
        n = len(self.spatial_shape)
        return tuple(float(v) for v in np.linalg.norm(np.asarray(self.affine)[:n, :n], axis=0))


def strip_nifti(name: str) -> str:
    for ext in NIFTI_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


#: files being read ahead of time: resolved path -> Future of the decoded file (`_decode`)
_prefetched: dict[Path, Future] = {}


def prefetch(source: str | Path | None) -> None:
    """Start reading, inflating and summing the NIfTI files of a case on helper threads, so that
    `load_case` finds them ready (the CLI starts this for the first case before it loads the
    model). Anything odd about `source` is ignored here: `load_case` reports it."""
    if source is None:
        return
    try:
        path = Path(source)
        if path.is_dir():
            files = [f for f in sorted(path.iterdir()) if f.name.endswith(NIFTI_EXTS)]
        elif path.is_file():
            files = [path] if path.name.endswith(NIFTI_EXTS) else []
        else:  # a BraTS file prefix
            files = sorted(path.parent.glob(f"{path.name}*.nii*")) if path.parent.is_dir() else []
        files = [f.resolve() for f in files if f.is_file()][:8]
    except OSError:
        return
    if not files:
        return
    pool = ThreadPoolExecutor(min(len(files), os.cpu_count() or 1))
    for f in files:  # (a segmentation's sums are never used)
        _prefetched[f] = pool.submit(_decode, f, not strip_nifti(f.name).endswith(("_seg", "-seg")))
    pool.shutdown(wait=False)


def forget_prefetched() -> None:
    """Drop read-ahead files nobody asked for (after the first case is loaded)."""
    _prefetched.clear()


def _read(path: Path) -> bytes:
    # one read + ISA-L inflate instead of nibabel's streamed zlib: the gzip step is most of a load
    raw = path.read_bytes()
    return gunzip(raw) if path.name.endswith(".gz") else raw


def _decode(path: Path, moments: bool = True):
    """(image, voxels, Moments of each channel or None) of one NIfTI file. The moments are taken
    here, on the loading thread, from the file's own values when their float32 copies equal them
    (integers up to 16 bits, float32); else the caller takes them from its float32 copy."""
    raw = _read(path)  # (before nibabel's import, which may wait on another thread's import of it)
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(raw)
    data = _voxels(img, raw)
    exact = (np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize <= 2) or data.dtype == np.float32
    sums = None
    if moments and exact and data.ndim in (3, 4):
        sums = [Moments.of(data)] if data.ndim == 3 else [Moments.of(data[..., c]) for c in range(data.shape[-1])]
    return img, data, sums


def _load_nifti(path: Path, moments: bool = True):
    """`_decode` (its read-ahead result when there is one), every failure one clear InputError."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".onnx":
        raise InputError(f"{path}: an ONNX model, not a case; the model comes first: nxrt explain MODEL CASE...")
    if not any(path.name.endswith(e) for e in NIFTI_EXTS):
        raise InputError(f"{path}: not a NIfTI file (.nii or .nii.gz); convert it first (e.g. dcm2niix)")
    ahead = _prefetched.pop(path.resolve(), None)
    if ahead is not None:
        try:
            return ahead.result()
        except Exception:  # decode it again below, to report the problem
            pass
    try:
        return _decode(path, moments)
    except Exception as exc:
        raise InputError(unreadable(path, exc)) from None


#: how a file that is not what its name says starts (for the message that says what it is)
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a zip archive"),
          (b"\x1f\x8b", "gzip-compressed data"), (b"\x08", "an ONNX model or other protobuf"))


def _looks_like(head: bytes) -> str:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):  # sizeof_hdr 348: NIfTI-1 / Analyze
        return "an uncompressed NIfTI file"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "not a NIfTI file"


def unreadable(path: Path, exc: Exception) -> str:
    """One line saying why a .nii/.nii.gz file cannot be read: named .gz but not compressed (and
    what it is), truncated, or not NIfTI (nibabel's reason, its first line)."""
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        return f"{path}: cannot be read ({err.strerror})"
    if path.name.endswith(".gz") and not head.startswith(b"\x1f\x8b"):
        return (f"{path}: named .gz but not gzip-compressed (it looks like {_looks_like(head)}); "
                "give a NIfTI file (.nii or .nii.gz)")
    text = str(exc)
    sizes = re.search(r"Expected (\d+) bytes, got (\d+)", text)
    if isinstance(exc, EOFError) or sizes or "truncated" in text.lower():
        found = f" ({sizes.group(2)} of its {sizes.group(1)} bytes of voxels are there)" if sizes else ""
        return f"{path}: the file is truncated{found}; copy or export it again"
    if not path.name.endswith(".gz") and not head.startswith((b"\x5c\x01", b"\x00\x00\x01\x5c", b"\x1c\x02",
                                                            b"\x00\x00\x02\x1c")):
        return f"{path}: not a NIfTI file (it looks like {_looks_like(head)}); give a NIfTI file (.nii or .nii.gz)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{path}: not a readable NIfTI image ({first}); check that it is NIfTI-1 or NIfTI-2"


def _voxels(img, raw: bytes) -> np.ndarray:
    """The image's voxel array: a read-only view of the file's bytes when nothing needs scaling
    (the usual case; no 18 MB copy per BraTS volume), else nibabel's scaled array."""
    proxy = img.dataobj
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    offset, dtype = getattr(proxy, "offset", None), getattr(proxy, "dtype", None)
    count = int(np.prod(img.shape, dtype=np.int64))
    if offset is not None and dtype is not None and getattr(proxy, "order", "F") == "F" and \
            slope == 1.0 and inter == 0.0 and len(raw) >= offset + count * np.dtype(dtype).itemsize:
        return np.ndarray(img.shape, dtype, buffer=raw, offset=offset, order="F")
    return np.asanyarray(proxy)


def _find(stem: Path, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        for ext in NIFTI_EXTS:
            candidate = stem.parent / f"{stem.name}{suffix}{ext}"
            if candidate.exists():
                return candidate
    return None


def _brats_stem(path: Path) -> Path | None:
    """The file prefix of a BraTS case given its folder or its prefix (e.g. .../BraTS2021_00000)."""
    if path.is_dir():
        for f in sorted(path.iterdir()):
            m = re.match(r"(.+?)(_flair|_t1ce|_t1|_t2|_seg|-t2f|-t1n|-t1c|-t2w|-seg)\.nii(\.gz)?$", f.name)
            if m:
                return path / m.group(1)
        return None
    return path if not path.exists() or not path.is_file() else None


def case_name(source: str | Path) -> str:
    """The name `load_case` gives the case at `source` (its output folder), without reading it."""
    path = Path(source)
    if path.is_file():
        return strip_nifti(path.name)
    stem = _brats_stem(path)
    return stem.name if stem is not None else path.name


def load_case(source: str | Path | None = None, channels: Sequence[str] | None = None,
              channel_files: dict[str, str] | None = None, name: str | None = None) -> Case:
    """Read a case from a 4D NIfTI, a BraTS folder/prefix, or explicit {channel: file} pairs.

    channels: the order the model wants (the card's `nxrt.channels`; default flair,t1,t1ce,t2 for
    BraTS inputs). All channels must share shape and affine.
    """
    if channel_files:
        order = list(channels) if channels else list(channel_files)
        missing = [c for c in order if c not in channel_files]
        if missing:
            raise InputError(f"--channel is missing {', '.join(missing)}; the model wants {', '.join(order)}")
        paths = [Path(channel_files[c]) for c in order]
        seg = Path(channel_files["seg"]) if "seg" in channel_files else None
        return _stack(name or strip_nifti(paths[0].name), order, paths, seg)
    if source is None:
        raise InputError("no case given; pass a NIfTI file, a BraTS case folder/prefix or --channel NAME=FILE")
    path = Path(source)
    if path.is_file():
        img, data, sums = _load_nifti(path)
        if data.ndim == 4:
            return _from_4d(path, img, data, sums, channels, name)
        if data.ndim == 3:
            if channels and len(channels) > 1:
                raise InputError(f"{path}: a single 3D volume, but the model wants {len(channels)} channels "
                                 f"({', '.join(channels)}); give a 4D NIfTI, a BraTS folder or --channel pairs")
            return _stack(name or strip_nifti(path.name), list(channels or ["image"]), [path], None,
                          {path: (img, data, sums)})
        raise InputError(f"{path}: a {data.ndim}D image; expected 3D (one channel) or 4D (channels last)")
    stem = _brats_stem(path)
    if stem is None and path.is_dir():
        nifti = [f.name for f in sorted(path.iterdir()) if f.name.endswith(NIFTI_EXTS)]
        if not nifti:
            raise InputError(f"{path}: a folder with no NIfTI files in it; give a BraTS case folder "
                             "(NAME_flair.nii.gz, ...), a NIfTI file or --channel NAME=FILE pairs")
        raise InputError(f"{path}: its NIfTI files ({', '.join(nifti[:3])}{', ...' if len(nifti) > 3 else ''}) do "
                         "not carry BraTS names (NAME_flair.nii.gz, ... or -t2f/-t1n/-t1c/-t2w); give the files "
                         "with --channel NAME=FILE, or a 4D NIfTI")
    if stem is None or (not path.exists() and not stem.parent.exists()):
        raise InputError(f"{path}: no such file or folder")
    order = list(channels) if channels else list(DEFAULT_CHANNELS)
    found, missing = [], []
    for c in order:
        f = _find(stem, BRATS_SUFFIXES.get(c.lower(), (f"_{c}", f"-{c}")))
        (found if f else missing).append(f or c)
    if missing and not path.exists() and len(missing) == len(order):
        raise InputError(f"{path}: no such file, folder or BraTS case prefix")
    if missing:
        raise InputError(f"{path}: missing modality {', '.join(missing)} (looked for {stem.name}_<name>.nii.gz "
                         "and BraTS 2023 names -t2f/-t1n/-t1c/-t2w); give it with --channel NAME=FILE")
    return _stack(name or stem.name, order, found, _find(stem, BRATS_SUFFIXES["seg"]))


def _from_4d(path: Path, img, data: np.ndarray, sums, channels, name) -> Case:
    n = data.shape[-1]
    if channels and len(channels) != n:
        raise InputError(f"{path}: has {n} channels (last axis) but the model wants {len(channels)} "
                         f"({', '.join(channels)})")
    arr = np.asarray(data, dtype=np.float32)
    moments = [_checked(sums[c] if sums else None, arr[..., c], path) for c in range(n)]
    return Case(name or strip_nifti(path.name), arr, img.affine.copy(), img.header.copy(),
                list(channels) if channels else [f"c{i}" for i in range(n)], [str(path)], moments=moments)


def _checked(moments: Moments | None, values: np.ndarray, path) -> Moments:
    """The channel's Moments (taken from its float32 `values` when the reader had none); a
    NaN/Inf voxel (non-finite sums) is an error."""
    m = moments or Moments.of(values)
    if not m.finite:
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise InputError(f"{path}: {bad} NaN/Inf voxel(s); fix the volume (nxrt does not guess values)")
    return m


def _stack(name: str, order: list[str], paths: list[Path], seg: Path | None, loaded: dict | None = None) -> Case:
    """The channel files stacked last; `loaded`: files already decoded (path -> `_decode` result)."""
    loaded = loaded or {}
    ref = stacked = None
    moments = []
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # inflate, decode and sum in parallel
        # each channel is copied in as soon as it is decoded, while the others still decode
        decoded = pool.map(lambda p: loaded.get(p) or _load_nifti(Path(p)), paths)
        for k, (c, p, (img, data, sums)) in enumerate(zip(order, paths, decoded, strict=True)):
            if data.ndim != 3:
                raise InputError(f"{p}: channel '{c}' is {data.ndim}D; each channel file must be a 3D volume")
            if ref is None:
                ref = (img, data.shape, p)
                # Fortran order, like NIfTI itself: each channel is one contiguous block, so the copy
                # in and the writes back out are straight memory passes, not strided gathers
                stacked = np.empty((*data.shape, len(paths)), np.float32, order="F")
            elif data.shape != ref[1]:
                raise InputError(f"{p}: shape {data.shape} differs from {ref[2]} {ref[1]}; all channels must share "
                                 "one voxel grid (resample them first)")
            elif not np.allclose(img.affine, ref[0].affine, atol=1e-4):
                raise InputError(f"{p}: affine differs from {ref[2]}; all channels must share one voxel grid "
                                 "(register/resample them first)")
            stacked[..., k] = data
            moments.append(_checked(sums[0] if sums else None, stacked[..., k], p))
    seg_data = None
    if seg is not None:
        img, data, _ = _load_nifti(Path(seg), moments=False)
        if data.shape != ref[1]:
            raise InputError(f"{seg}: segmentation shape {data.shape} differs from the images {ref[1]}")
        seg_data = np.asarray(data).astype(np.int16)
    return Case(name, stacked, ref[0].affine.copy(), ref[0].header.copy(), list(order),
                [str(p) for p in paths], seg_data, str(seg) if seg else None, moments)
