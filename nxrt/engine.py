"""onnxruntime sessions: provider choice, session options, running the augmented graph, the
automatic batch size, and the session pool (one session per model digest and pass options, its
batch size decided once) with the one chunking rule every evaluation uses (`batches`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import InputError, ModelError
from .graph import PROTOBUF_LIMIT, model_bytes, save_model

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(providers: str | Sequence[str] | None, spatial_rank: int | None = None) -> list[str]:
    """Map 'cpu' / 'cuda' / 'openvino' / 'auto' / full provider names to a provider list.

    'auto' picks CUDA only when a GPU is really usable (the onnxruntime-gpu wheel lists CUDA as
    available even on machines without one, then logs a loud error); else, for a 3D model
    (`spatial_rank` 3), OpenVINO on the CPU when it is installed and its CPU plugin loads (as exact,
    and faster than onnxruntime's CPU provider there: DynUNet 96^3 IG 0.73x its time); else
    onnxruntime's CPU provider, quietly -- also for 2D models, where OpenVINO measured slower
    (ResNet50 224^2: README "Backends"). The environment variable
    NXRT_PROVIDER (cpu, cuda, openvino) replaces what 'auto' would choose: a deployment that must
    stay on one backend sets it once instead of changing every command.
    """
    import onnxruntime as ort

    from .backend_openvino import OPENVINO
    from .backend_openvino import available as openvino_available
    from .backend_openvino import require as require_openvino

    if providers is None or providers == "auto":
        chosen = os.environ.get("NXRT_PROVIDER", "auto").strip().lower() or "auto"
        if chosen != "auto":
            if chosen not in ("cpu", "cuda", "openvino"):
                raise InputError(f"NXRT_PROVIDER={chosen}: not a provider; set it to cpu, cuda, openvino or auto")
            return resolve_providers(chosen)
        if cuda_usable():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [OPENVINO] if spatial_rank == 3 and openvino_available() else ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    if any(str(p).lower() == OPENVINO.lower() for p in providers):
        if len(providers) > 1:
            raise InputError("provider 'openvino' runs alone; give it without onnxruntime providers")
        require_openvino()
        return [OPENVINO]
    out = []
    for p in providers:
        name = PROVIDERS.get(p.lower(), p)
        if name not in ort.get_available_providers():
            raise InputError(f"provider '{p}' is not available in this onnxruntime "
                             f"({', '.join(ort.get_available_providers())}); use --provider cpu")
        if name == "CUDAExecutionProvider" and not cuda_usable():
            raise InputError("provider 'cuda' was asked for but no usable CUDA GPU was found; use --provider cpu")
        out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def cuda_usable() -> bool:
    """True when the CUDA provider can run here: a GPU device node and the CUDA runtime libraries."""
    import ctypes
    import glob

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    if not glob.glob("/dev/nvidia[0-9]*") and os.name != "nt":
        return False
    for lib in ("libcublasLt.so.13", "libcublasLt.so.12", "libcudart.so.13", "libcudart.so.12"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


def session_options(threads: int | None = None, low_memory: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.log_severity_level = 3
    # Gradients of confident models underflow: a pooled segmentation score is a mean over ~1e6
    # voxels and a saturated softmax multiplies by p(1-p) ~ 1e-30, so the backward carries subnormal
    # floats, which x86 processes ~100x slower. Flushing them to zero (values below 1.2e-38, far
    # beneath float32's resolution of any attribution) took the demo segmenter's gradient from 5.1 s to 1.5 s.
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    # The CPU arena stays on: without it peak RSS halves (DynUNet gradient, batch 4, 64^3: 1.1 GB vs
    # 1.9-2.3 GB) but every large buffer is page-faulted in afresh, and IG at 96^3 ran 30% slower
    # (108-122 s vs 79-87 s). `low_memory=True` trades the other way.
    so.enable_cpu_mem_arena = not low_memory
    # onnxruntime's memory pattern (one pre-planned block per run after the first) is off: on the
    # DynUNet gradient at 96^3 it raised peak RSS from 869 to 1581 MB (vanilla) and from 3381 to
    # 4498 MB (IG, batch 4) at the same speed (IG 16 steps: 47.3 / 42.4 s without, 48.1 / 44.5 s
    # with); ResNet50 IG: same time and memory either way.
    so.enable_mem_pattern = False
    if not low_memory and _shared_cpu_arena():
        # every session of the process draws from one CPU arena: an Explainer keeps a session per
        # kind of gradient (plain, guided, layers), and each private arena would keep its own peak
        # (DynUNet 96^3, vanilla + guided backprop + Grad-CAM in one Explainer: peak RSS 1878 MB
        # with private arenas, 1057 MB shared, same speed)
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so


@functools.cache
def _shared_cpu_arena() -> bool:
    """Register onnxruntime's process-wide CPU arena allocator once; False if this build can't."""
    import onnxruntime as ort

    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({}))
        return True
    except Exception:
        return False


def cuda_provider_options(model: onnx.ModelProto | None = None, static_shapes: bool | None = None) -> dict[str, str]:
    """Options of onnxruntime's CUDA provider for an nxrt session.

    - use_tf32 off: TF32 matmuls/convolutions keep 10 mantissa bits, ~1e-3 relative error, which
      is the size of the tolerances nxrt is validated at against Captum (NXRT_CUDA_TF32=1 turns
      it on for speed once results have been checked).
    - cudnn_conv_algo_search: EXHAUSTIVE when every non-batch input dim is static (nxrt fixes them
      per sample shape, so an IG or SmoothGrad run repeats a handful of identical shapes and the
      one-off benchmark of each convolution's algorithms pays back), HEURISTIC when some are
      dynamic (each new shape would be benchmarked again). NXRT_CUDNN_ALGO_SEARCH overrides.
      static_shapes, when given, says so without looking at `model`.
    """
    if static_shapes is None and model is not None and model.graph.input:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        static_shapes = bool(dims) and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:])
    search = "EXHAUSTIVE" if static_shapes else "HEURISTIC"
    return {"use_tf32": "1" if os.environ.get("NXRT_CUDA_TF32") == "1" else "0",
            "cudnn_conv_algo_search": os.environ.get("NXRT_CUDNN_ALGO_SEARCH", search),
            "do_copy_in_default_stream": "1"}


class Session:
    """An onnxruntime InferenceSession whose runs flush subnormal floats to zero on every thread,
    and, on a GPU, keep the data on the device between the operations of a run.

    onnxruntime's `session.set_denormal_as_zero` flushes on its pool threads; `run` also sets the
    calling (Python) thread's flush-to-zero / denormals-are-zero bits for the duration of the run
    and restores them after, so numpy and the user's code never see the change (demo segmenter
    gradient: 2.3-2.6 s with the option alone, 1.3-1.7 s with this too, 5.1 s with neither).

    device ("cuda" when the session runs on the CUDA provider): runs go through IO binding; inputs
    are copied to the device once per run, outputs are allocated there and copied back in one go,
    and small constant feeds (the score seeds: the same one-hot rows for every chunk of an IG or
    SmoothGrad run) stay on the device across runs. Everything else is the wrapped session's.
    """

    RESIDENT_BYTES = 1 << 16  # feeds up to this size are kept on the device, keyed by content

    def __init__(self, session, device: str | None = None, device_id: int = 0):
        self._session = session
        self.device, self.device_id = device, device_id
        self._resident: dict[tuple, object] = {}

    def __getattr__(self, name):
        return getattr(self._session, name)

    @property
    def resident_feeds(self) -> int:
        """How many small constant feeds (score seeds) are kept on the device now."""
        return len(self._resident)

    def run(self, output_names, feeds, run_options=None):
        with flush_subnormals():
            if self.device is None:
                return self._session.run(output_names, feeds, run_options)
            return self._run_bound(output_names, feeds, run_options)

    def _run_bound(self, output_names, feeds, run_options):
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, self._on_device(name, value))
        for name in output_names or [o.name for o in self._session.get_outputs()]:
            binding.bind_output(name, self.device, self.device_id)
        self._session.run_with_iobinding(binding, run_options)
        return binding.copy_outputs_to_cpu()

    def _on_device(self, name: str, value):
        import onnxruntime as ort

        value = np.ascontiguousarray(value)
        if value.nbytes > self.RESIDENT_BYTES:
            return ort.OrtValue.ortvalue_from_numpy(value, self.device, self.device_id)
        key = (name, value.dtype.str, value.shape, value.tobytes())
        resident = self._resident.get(key)
        if resident is None:
            if len(self._resident) >= 64:
                self._resident.clear()
            resident = self._resident[key] = ort.OrtValue.ortvalue_from_numpy(value, self.device, self.device_id)
        return resident


# x86-64 glibc: fenv_t is 32 bytes and ends with the SSE control/status register (MXCSR)
_MXCSR_OFFSET, _FTZ_DAZ = 28, 0x8000 | 0x0040


@contextmanager
def flush_subnormals(enable: bool = True):
    """Flush-to-zero and denormals-are-zero on this thread inside the block, the thread's previous
    floating-point mode restored after it (x86-64 Linux; elsewhere a no-op: ARM cores and GPUs
    handle subnormals at full speed or flush them already). enable=False only saves and restores
    the mode: onnxruntime's `session.set_denormal_as_zero` switches FTZ/DAZ on for good in the
    thread that creates the session, which would silently change the user's numpy results."""
    libm = _libm()
    saved = (ctypes.c_uint8 * 32)()
    if libm is None or libm.fegetenv(saved) != 0:
        yield
        return
    if enable:
        env = (ctypes.c_uint8 * 32).from_buffer_copy(saved)
        mxcsr = int.from_bytes(bytes(env[_MXCSR_OFFSET:_MXCSR_OFFSET + 4]), "little") | _FTZ_DAZ
        env[_MXCSR_OFFSET:_MXCSR_OFFSET + 4] = list(mxcsr.to_bytes(4, "little"))
        libm.fesetenv(env)
    try:
        yield
    finally:
        libm.fesetenv(saved)


@functools.cache
def _libm():
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64") or \
            platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


def make_session(model: onnx.ModelProto | str | os.PathLike, providers=None, threads: int | None = None,
                 static_shapes: bool | None = None) -> Session:
    """A Session for a ModelProto (any size) or a path. static_shapes: whether every non-batch
    input dim is fixed (picks cuDNN's algorithm search; None: read from a ModelProto, and assumed
    not for a path, which is not parsed here just for that)."""
    import onnxruntime as ort

    from .backend_openvino import OPENVINO, OpenVINOSession

    names = resolve_providers(providers)
    if names == [OPENVINO]:
        return OpenVINOSession(model, threads)
    so = session_options(threads)
    cuda = names[0] == "CUDAExecutionProvider"
    prov = list(names)
    if cuda:
        proto = model if isinstance(model, onnx.ModelProto) else None
        prov[0] = ("CUDAExecutionProvider", cuda_provider_options(proto, static_shapes))

    def wrap(session):
        return Session(session, device="cuda" if cuda else None)

    try:
        with flush_subnormals(enable=False):  # keep this thread's mode as it was (see flush_subnormals)
            if isinstance(model, onnx.ModelProto):
                if model_bytes(model) < PROTOBUF_LIMIT - (64 << 20):
                    return wrap(ort.InferenceSession(model.SerializeToString(), so, providers=prov))
                with tempfile.TemporaryDirectory() as tmp:
                    path = save_model(model, os.path.join(tmp, "model.onnx"), external=True)
                    return wrap(ort.InferenceSession(str(path), so, providers=prov))
            return wrap(ort.InferenceSession(str(model), so, providers=prov))
    except Exception as exc:
        if isinstance(exc, InputError):
            raise
        raise ModelError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc


def parse_bytes(text: str | int | float) -> int:
    """A memory size: bytes, or a number with K/M/G/T (powers of 1024; 'GB', 'GiB' alike), e.g. '8G'."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().upper().removesuffix("IB").removesuffix("B")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1:], 1)
        try:
            value = float(raw[:-1] if scale > 1 else raw) * scale
        except ValueError:
            raise InputError(f"memory size '{text}' is not a number of bytes or like 512M, 8G") from None
    if not value > 0:
        raise InputError(f"memory size '{text}' must be positive")
    return int(value)


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable, capped by a cgroup limit)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit():
                limit = int(text)
                avail = min(avail, limit) if avail else limit
        except OSError:
            continue
    return avail or (4 << 30)


def activation_bytes_per_sample(model: onnx.ModelProto) -> int:
    """Estimated peak bytes one sample adds, from the graph's tensor sizes (shape inference).

    Reverse mode keeps every forward tensor that a gradient node reads until the backward pass
    reaches it; the rest of the forward and the gradients stream through a few buffers at a time
    (onnxruntime reuses them). So: saved forward tensors + 3 x the largest tensor. Measured on a
    DynUNet gradient at 128^3 this is within ~1.5x of the real peak RSS increase per sample.
    """
    from .autodiff.grad import NODE_PREFIX
    from .graph import GraphInfo

    info = GraphInfo.of(model)
    sizes: dict[str, int] = {}
    for name in info.value_info:
        if name in info.initializers or not info.is_float(name):
            continue
        shape = info.shape(name)
        if not shape or isinstance(shape[0], int) and shape[0] != 1:
            continue  # no batch axis (weights-like tensors, shape arithmetic)
        if any(not isinstance(d, int) for d in shape[1:]):
            continue
        sizes[name] = 4 * int(np.prod(shape[1:], dtype=np.int64))
    if not sizes:
        return 1
    saved = set()
    for node in model.graph.node:
        if node.name.startswith(NODE_PREFIX):
            saved.update(i for i in node.input if i in sizes and not i.startswith(NODE_PREFIX))
    return max(1, sum(sizes[t] for t in saved) + 3 * max(sizes.values()))


def auto_batch_size(model: onnx.ModelProto, budget: int | None = None, cap: int = 64) -> int:
    """The largest batch whose estimated activations fit the budget (default: half the free memory;
    `Explainer(max_memory=...)` / `--max-memory` set it).

    Half, not more: the estimate counts tensors, not onnxruntime's arena slack and per-kernel
    scratch (im2col buffers). On the full 1x4x192x224x160 DynUNet it says 6.9 GB per sample, and
    batch 2 (70% of 22 GB) went past 19 GB of RSS; at half, batch 1 stays well under 16 GB.

    Raises InputError, with the estimate and the memory available, when not even one sample fits.
    """
    per_sample = activation_bytes_per_sample(model)
    budget = budget if budget is not None else int(available_memory() * 0.5)
    if per_sample > budget:
        raise InputError(f"one sample needs about {per_sample / 2**30:.1f} GiB of activations and gradients, "
                         f"but only {budget / 2**30:.1f} GiB are available; use a smaller input (crop), a larger "
                         "--max-memory or a machine with more memory")
    return int(max(1, min(cap, budget // per_sample)))


# --------------------------------------------------------------------------- the session pool


@dataclass(frozen=True)
class Built:
    """What a pool's build function returns: the graph (a ModelProto, or the cache file holding
    it, which onnxruntime then reads itself) and the batch size estimated from that graph."""

    graph: onnx.ModelProto | Path
    batch_size: int
    notes: tuple[str, ...] = ()  # what every result of this session must say (Explanation.warnings)
    fixed_batch: int | None = None  # the graph takes exactly this many samples per run


@dataclass(frozen=True)
class PooledSession:
    """A session of the pool, with the batch size decided once, when it was built. A session whose
    graph takes a fixed batch (`fixed_batch`) pads a shorter run to it and drops the padding from
    every output: callers give it at most `batch_size` samples, like any other."""

    session: Session
    batch_size: int
    inputs: frozenset[str]
    outputs: frozenset[str]
    layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fixed_batch: int | None = None
    batched: frozenset[str] = frozenset()  # the inputs with a batch axis (padded when fixed)

    def run(self, names: Sequence[str], feeds: dict) -> list[np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        n = next((feeds[k].shape[0] for k in feeds if k in self.batched), None)
        if self.fixed_batch is None or n is None or n == self.fixed_batch:
            return self.session.run(list(names), feeds)
        if n > self.fixed_batch:
            raise ValueError(f"{n} samples given to a session that takes {self.fixed_batch}")
        for k in self.batched & set(feeds):  # zero rows (and zero score seeds: they add nothing)
            v = feeds[k]
            feeds[k] = np.concatenate([v, np.zeros((self.fixed_batch - n, *v.shape[1:]), v.dtype)], axis=0)
        return [out[:n] for out in self.session.run(list(names), feeds)]


#: inputs of nxrt's graphs without a batch axis of their own (the region mask broadcasts)
NOT_BATCHED = frozenset({"nxrt_region"})


def batches(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` of range(count): the one chunking rule of nxrt (every
    method's steps, samples and patches, and every session run, go through it)."""
    size = max(1, int(size))
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


class SessionPool:
    """onnxruntime sessions keyed by (model digest, pass options), each built once.

    `get(digest, options, build)` returns the pooled session for those options, building it on
    first use; `build()` returns a `Built`. The batch size is decided then, once per session: the
    pool's explicit `batch_size` when given, else the estimate `build` made from its graph.

    Layer sessions grow: options carrying "layers" are served by any session of the same other
    options whose layers include them; otherwise one session with every layer asked for so far is
    built and the smaller ones are dropped (they hold memory), so a layer sweep builds one session.
    """

    def __init__(self, providers=None, threads: int | None = None, batch_size: int | None = None,
                 max_memory: int | None = None):
        self.providers = resolve_providers(providers)
        from .backend_openvino import MAXPOOL_GRADIENT, OPENVINO

        #: how the gradient graphs route MaxPool's gradient (`passes.augment(maxpool=...)`): the
        #: rule the pool's runtime runs faster (onnxruntime: its Indices output, 0.21 vs 0.25 s for
        #: ResNet50's gradient; OpenVINO says its own)
        self.maxpool_gradient = MAXPOOL_GRADIENT if self.providers == [OPENVINO] else "indices"
        self.threads = threads
        self.batch_size = batch_size
        #: the memory budget of the automatic batch sizes (None: half of what is available)
        self.max_memory = max_memory
        self._sessions: dict[tuple, PooledSession] = {}
        self._layers_seen: dict[tuple, list[str]] = {}
        self._stats = {"sessions_built": 0, "build_seconds": 0.0}

    def get(self, digest: str, options: dict, build: Callable[[dict], Built]) -> PooledSession:
        """The session for (digest, options); build(options) makes its graph when it is new (the
        options it is given may carry more layers than asked for, see the class docstring)."""
        layers = tuple(options.get("layers", ()))
        base = (digest, _frozen({k: v for k, v in options.items() if k != "layers"}))
        for (b, have), pooled in self._sessions.items():
            if b == base and set(layers) <= set(have):
                return pooled
        seen = self._layers_seen.setdefault(base, [])
        seen.extend(t for t in layers if t not in seen)
        want = tuple(seen) if layers else ()
        t0 = time.perf_counter()
        built = build({**options, "layers": list(want)} if layers else dict(options))
        session = make_session(built.graph, self.providers, self.threads, static_shapes=True)
        inputs = session.get_inputs()
        pooled = PooledSession(session, built.fixed_batch or self.batch_size or built.batch_size,
                               frozenset(i.name for i in inputs), frozenset(o.name for o in session.get_outputs()),
                               want, built.notes, built.fixed_batch,
                               frozenset(i.name for i in inputs if i.name not in NOT_BATCHED))
        for key in [k for k in self._sessions if k[0] == base and set(k[1]) <= set(want)]:
            del self._sessions[key]
        self._sessions[(base, want)] = pooled
        self._stats["sessions_built"] += 1
        self._stats["build_seconds"] += time.perf_counter() - t0
        return pooled

    def stats(self) -> dict:
        """{"sessions": held now, "sessions_built": in total, "build_seconds": graphs + sessions}."""
        return {"sessions": len(self._sessions), **self._stats}

    def clear(self) -> None:
        self._sessions.clear()


def _frozen(options: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
