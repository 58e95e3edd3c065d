"""On-disk cache of augmented models, keyed by (model content hash, pass options).

Building an augmented model (opset conversion, folding, shape inference, the gradient pass,
onnx.checker) costs seconds on a large network; the cache makes it a one-time cost per model and
option set, across processes. Location: `$NXRT_CACHE` (or `~/.cache/nxrt`); `NXRT_CACHE=off`
disables it.

Entries are written to a unique temporary name and renamed into place (two processes racing on one
entry both succeed; the last rename wins with an identical file). Each entry carries a sidecar
with the SHA-256 of its bytes: an entry that is truncated, corrupted or unreadable is detected,
removed and rebuilt.

The cache is capped: `NXRT_CACHE_MAX` (bytes or like 4G; default 2G) — after each new entry the
least recently used ones (by the time they were last read or written) are removed until the rest
fit. An entry a running process has already opened stays readable for it (POSIX unlink). `nxrt
cache info` shows the folder, its entries and size; `nxrt cache clear` empties it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from .graph import PROTOBUF_LIMIT, model_bytes, save_model

#: bump when the augmentation output changes, so old entries are not reused
FORMAT = 5  # 2: an intermediate `output=` tensor is a graph output; 3: keyed by the original model's hash;
# 4: zero-gradient nodes recorded in the metadata; 5: a static region-mask input, the activation in the key


#: the default size cap of the cache folder
DEFAULT_MAX = 2 << 30


def cache_max() -> int:
    """The cache's size cap in bytes (`NXRT_CACHE_MAX`, default 2 GiB)."""
    from .engine import parse_bytes

    value = os.environ.get("NXRT_CACHE_MAX", "")
    return parse_bytes(value) if value else DEFAULT_MAX


def cache_dir() -> Path | None:
    value = os.environ.get("NXRT_CACHE", "")
    if value.lower() in ("off", "0", "none", "disabled"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "nxrt"


def model_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of a model's content (works above 2 GiB: tensors are hashed one by one)."""
    h = hashlib.sha256()
    if model_bytes(model) < PROTOBUF_LIMIT - (64 << 20):
        h.update(model.SerializeToString(deterministic=True))
        return h.hexdigest()
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:
        t.ClearField("raw_data")
    h.update(skeleton.SerializeToString(deterministic=True))
    for t in model.graph.initializer:
        h.update(t.name.encode())
        h.update(t.raw_data)
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """SHA-256 of the code that writes augmented graphs (the rules, the traversal, the passes, the
    graph helpers, the op facts): an entry made by other code is never reused, bumped FORMAT or not."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for name in ("autodiff/rules.py", "autodiff/grad.py", "passes.py", "graph.py", "ops.py", "region.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()


def entry_key(model_digest: str, options: dict) -> str:
    import onnxruntime

    blob = json.dumps({"model": model_digest, "options": options, "format": FORMAT, "onnx": onnx.__version__,
                       "ort": onnxruntime.__version__, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_entry(path: Path) -> onnx.ModelProto | None:
    """The cached model at `path`, or None when it is missing or fails its checksum."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if _file_digest(path) != info["sha256"]:
            raise ValueError("checksum mismatch")
        data = path.with_name(path.name + ".data")
        if data.exists() and _file_digest(data) != info.get("data_sha256"):
            raise ValueError("data checksum mismatch")
        model = onnx.load(str(path))
        _touch(path)
        return model
    except Exception:
        for p in (path, meta, path.with_name(path.name + ".data")):
            try:
                p.unlink()
            except OSError:
                pass
        return None


def store_entry(path: Path, model: onnx.ModelProto) -> None:
    """Write atomically: model (+ external data) under temporary names, checksum sidecar, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        tmp_model = save_model(model, Path(tmp) / path.name)
        info = {"sha256": _file_digest(tmp_model)}
        data = tmp_model.with_name(tmp_model.name + ".data")
        if data.exists():
            info["data_sha256"] = _file_digest(data)
            os.replace(data, path.with_name(path.name + ".data"))
        os.replace(tmp_model, path)
        meta_tmp = Path(tmp) / "meta.json"
        meta_tmp.write_text(json.dumps(info))
        os.replace(meta_tmp, path.with_suffix(".json"))


def cached_entry(model_digest: str, options: dict,
                 build: Callable[[], onnx.ModelProto]) -> tuple[onnx.ModelProto, Path | None]:
    """The augmented model for (model, options) — from the disk cache, else built and stored — and
    the entry's file when the cache holds it: onnxruntime can then load the session from the file,
    with no serialised copy of the model in this process's memory. model_digest: `model_hash` of
    the original model (options must then say everything that makes the result differ: sample
    shape, score, layers, guided mode). `build` is called only when the entry must be built."""
    root = cache_dir()
    if root is None:
        return build(), None
    path = root / f"{entry_key(model_digest, options)}.onnx"
    hit = load_entry(path)
    if hit is not None:
        return hit, path
    result = build()
    try:
        store_entry(path, result)
        evict(root, cache_max(), keep=path)
    except OSError:
        return result, None  # a read-only or full cache folder must not stop the explanation
    return result, path


def _touch(path: Path) -> None:
    """Mark an entry as just used (its modification time orders the eviction)."""
    try:
        os.utime(path)
    except OSError:
        pass


def entries(root: Path | None = None) -> list[tuple[Path, int, float]]:
    """(entry file, bytes with its sidecar and external data, last use) of every cache entry."""
    root = root if root is not None else cache_dir()
    if root is None or not root.is_dir():
        return []
    out = []
    for path in root.glob("*.onnx"):
        parts = [path, path.with_suffix(".json"), path.with_name(path.name + ".data")]
        try:
            size = sum(p.stat().st_size for p in parts if p.exists())
            out.append((path, size, path.stat().st_mtime))
        except OSError:  # removed meanwhile by another process
            continue
    return out


def remove_entry(path: Path) -> None:
    for p in (path, path.with_suffix(".json"), path.with_name(path.name + ".data")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def evict(root: Path, cap: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the folder's entries fit `cap` (never `keep`,
    the entry just written); returns what was removed."""
    found = sorted(entries(root), key=lambda e: e[2])
    total = sum(size for _, size, _ in found)
    removed = []
    for path, size, _ in found:
        if total <= cap:
            break
        if keep is not None and path == keep:
            continue
        remove_entry(path)
        removed.append(path)
        total -= size
    return removed


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry (and any build folder left by a killed process); returns (entries, bytes)."""
    root = root if root is not None else cache_dir()
    found = entries(root)
    for path, _, _ in found:
        remove_entry(path)
    if root is not None and root.is_dir():
        import shutil

        for leftover in root.glob(".build-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return len(found), sum(size for _, size, _ in found)
