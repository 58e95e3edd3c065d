"""The public Python API: `Explainer` (and `load`), and `Context`, all a method plugin sees.

An Explainer owns one model, its score definition and a cache of augmented models/sessions
(plain and guided; the layer set grows as methods ask for layers), so every method of one
Explainer reuses the same sessions. Methods run per sample; inside a method, IG steps, SmoothGrad
samples and occlusion patches are stacked along the batch axis in chunks of `batch_size`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from . import passes
from .cache import cached_entry
from .card import ModelCard
from .engine import auto_batch_size, make_session, resolve_providers
from .errors import InputError, ModelError
from .graph import GraphInfo, dims_of, load_model, weight_free
from .passes import REGION, SCORES, SEED, grad_name
from .postprocess import resize
from .registry import get_method

CONV_OPS = ("Conv", "ConvTranspose")
#: ops that fix the channel axis of their output at 1 (ONNX's NC... convention)
_CHANNEL_FIRST_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool",
                      "AveragePool", "GroupNormalization", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
_PASS_THROUGH_OPS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Clip", "Identity", "Dropout",
                     "Add", "Sub", "Mul", "Div", "Cast", "HardSwish", "HardSigmoid", "Gelu", "Softplus", "Pad",
                     "Concat", "Resize", "Erf", "Neg", "Abs"}


def load(model: str | os.PathLike | onnx.ModelProto) -> Model:
    """Load and validate an ONNX model; raises nxrt.ModelError with a clear message."""
    return Model(load_model(model), source=None if isinstance(model, onnx.ModelProto) else str(model))


class Model:
    """A loaded ONNX model with its card (what `nxrt.load` returns)."""

    def __init__(self, proto: onnx.ModelProto, source: str | None = None):
        self.proto = proto
        self.source = source
        self.card = ModelCard.from_model(proto)
        inputs = passes.model_inputs(proto)
        if not inputs:
            raise ModelError(f"{source or 'model'}: the graph has no inputs")
        self.input = inputs[0]
        self.info = GraphInfo.of(proto)

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def input_shape(self) -> tuple:
        return self.info.shape(self.input.name) or ()

    def conv_layers(self) -> list[str]:
        """Output tensors of every Conv/ConvTranspose node, in graph order (Grad-CAM candidates)."""
        return [n.output[0] for n in self.proto.graph.node if n.op_type in CONV_OPS]


class Explainer:
    """Explain one ONNX model with any registered method.

    task/layout: override the model card (None: card, else inferred from the graph; an error says
    which argument to give when neither works). providers: 'cpu', 'cuda', 'auto' or onnxruntime
    provider names. batch_size: samples per session call inside a method (None: derived from the
    model's activation sizes and the free memory). score: 'output' (as exported) or 'logits'.
    output: which graph output to explain (default the first). seed: RNG seed of noisy methods.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, task: str | None = None,
                 layout: str | None = None, providers: str | Sequence[str] | None = None,
                 batch_size: int | None = None, score: str = "output", output: str | None = None,
                 seed: int = 0, threads: int | None = None):
        self.model = model if isinstance(model, Model) else load(model)
        if score not in ("output", "logits"):
            raise InputError(f"score '{score}' is not one of output, logits")
        self.spec = passes.default_score_spec(self.model.proto, task=task, layout=layout, output=output,
                                              logits=score == "logits")
        self.providers = resolve_providers(providers)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self._auto_batch = batch_size is None
        self.seed = seed
        self.threads = threads
        self._sessions: dict[tuple, Any] = {}
        self._forward: dict[tuple, Any] = {}
        self._num_scores: dict[tuple, int] = {}
        self._layers: list[str] = []
        self.info: dict[str, Any] = {}
        self.last_forward: tuple[np.ndarray, np.ndarray] | None = None  # see explain(keep_forward=True)
        self.builds = 0  # augmented models built by this Explainer (the cache tests count these)
        self.build_seconds = 0.0  # time spent building graphs and onnxruntime sessions, in total

    # ------------------------------------------------------------------ properties

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def layout(self) -> str:
        return self.spec.layout

    # ------------------------------------------------------------------ public API

    @property
    def output_name(self) -> str:
        """The graph output being explained (the first unless `output=` was given)."""
        return self.spec.output or self.model.proto.graph.output[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's explained output (first graph output unless `output=` was given)."""
        x = self.check_input(x)
        sess = self.forward_session(x.shape[1:], None)
        name = self.output_name
        return np.concatenate([sess.run([name], {self.model.input_name: c})[0] for c in self._chunks(x)], axis=0)

    def predict_and_score(self, x: np.ndarray, region=None) -> tuple[np.ndarray, np.ndarray]:
        """(model output, [N, K] scores) from one forward pass."""
        x = self.check_input(x)
        ctx = self.context(x, region)
        sess = self.forward_session(x.shape[1:], ctx._region_kind)
        name = self.output_name
        outs, scores = [], []
        for c in self._chunks(x):
            o, sc = sess.run([name, SCORES], ctx._feeds(sess, c, None))
            outs.append(o)
            scores.append(sc)
        return np.concatenate(outs, axis=0), np.concatenate(scores, axis=0)

    def scores(self, x: np.ndarray, region=None) -> np.ndarray:
        """The [N, K] scores being explained (classification outputs or the pooled segmentation head)."""
        x = self.check_input(x)
        ctx = self.context(x, region)
        return ctx.forward(x)

    def explain(self, x: np.ndarray, method: str = "vanilla", target=None, region=None, keep_forward: bool = False,
                **params) -> np.ndarray:
        """Raw, signed attribution of `method` for `target`, shaped like x (CAM methods: channel axis 1).

        target: an int, a list of ints (their scores summed) or None (classification: the predicted
        class of each sample; segmentation: every foreground channel, i.e. all but channel 0).
        region (segmentation only): None (mean over all voxels), "predicted" (voxels whose argmax is
        the channel, mask held constant) or a mask array over the output's spatial grid.
        keep_forward: also keep the model's output and scores at x in `last_forward` when any pass
        of the call evaluated the model at exactly x (vanilla, guided backprop, gradient x input,
        the CAM methods and occlusion do, and so does a classifier's target resolution: a gradient
        pass is a forward pass too), so a caller that also wants the prediction needs no separate
        forward pass; else (IG or SmoothGrad on a segmenter, or an `output` that is not a graph
        output) `last_forward` is None.
        """
        self.last_forward = None
        impl = get_method(method)
        params = impl.params(params)
        x = self.check_input(x)
        ctx = self.context(x, region)
        t0, built = time.perf_counter(), self.build_seconds
        outs, targets, forwards = [], [], []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            # (set first: a classifier's target is resolved by a forward pass at xi, kept too)
            ctx._sample, ctx._keep_forward, ctx.forward_at_sample = xi, keep_forward, None
            ti = self.resolve_target(target, ctx, xi)
            targets.append(ti)
            outs.append(np.asarray(impl.explain(ctx, xi, ti, **params), dtype=np.float32))
            forwards.append(ctx.forward_at_sample)
        ctx._sample = None
        if keep_forward and all(f is not None for f in forwards):
            self.last_forward = tuple(np.concatenate(part, axis=0) for part in zip(*forwards, strict=True))
        self.info = {"method": impl.name, "params": params, "targets": targets,
                     "seconds": time.perf_counter() - t0, "build_seconds": self.build_seconds - built, **ctx.info}
        return np.concatenate(outs, axis=0)

    # ------------------------------------------------------------------ helpers for plugins

    def context(self, x: np.ndarray, region=None) -> Context:
        return Context(self, tuple(x.shape[1:]), region)

    def check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputError(f"x must be a numpy array, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"x has dtype {x.dtype}; give float32 values (the model input is float)")
        want = self.model.input_shape
        if want and x.ndim != len(want):
            raise InputError(f"x has shape {x.shape} but the model input '{self.model.input_name}' has rank "
                             f"{len(want)} ({_fmt_shape(want)}, batch axis first)")
        for axis, (have, need) in enumerate(zip(x.shape, want, strict=False)):
            if axis and isinstance(need, int) and need > 0 and have != need:
                raise InputError(f"x has shape {x.shape} but the model input '{self.model.input_name}' "
                                 f"expects {_fmt_shape(want)} (axis {axis} must be {need})")
        if not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise InputError(f"x contains {bad} NaN/Inf value(s); clean or mask the input first")
        return np.ascontiguousarray(x, dtype=np.float32)

    def resolve_target(self, target, ctx: Context, x: np.ndarray) -> list[int]:
        k = ctx.num_scores
        if target is None:
            if self.task == "segmentation":
                return list(range(1, k)) if k > 1 else [0]
            return [int(np.argmax(ctx.forward(x)[0]))]
        targets = [target] if np.isscalar(target) else list(target)
        if not targets:
            raise InputError("target is an empty list; give a class index, a list of indices, or None")
        out = []
        for t in targets:
            if isinstance(t, bool | float) or not isinstance(t, int | np.integer):
                raise InputError(f"target {t!r} is not an integer class/channel index")
            if not 0 <= int(t) < k:
                raise InputError(f"target {t} is out of range: the model has {k} "
                                 f"{'channels' if self.task == 'segmentation' else 'classes'} (0..{k - 1})")
            out.append(int(t))
        return out

    # ------------------------------------------------------------------ sessions

    def _chunks(self, x: np.ndarray, size: int | None = None):
        step = size or self.batch_size or 1
        for i in range(0, x.shape[0], step):
            yield x[i:i + step]

    def _fixed_model(self, sample_shape: tuple, weights: bool = True) -> onnx.ModelProto:
        """The model with its input's non-batch dims fixed to this sample shape (static shapes
        let every rule and onnxruntime's planner work); the batch axis stays dynamic.
        weights=False: the weight-free skeleton (graph.weight_free), for shape questions only."""
        if weights:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.model.proto)
        else:
            proto = weight_free(self.model.proto)
        vi = next(i for i in proto.graph.input if i.name == self.model.input_name)
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            return proto
        exported_for_one = dims[0].HasField("dim_value") and dims[0].dim_value == 1
        dims[0].Clear()
        dims[0].dim_param = "N"
        for d, n in zip(dims[1:], sample_shape, strict=True):
            d.Clear()
            d.dim_value = int(n)
        for out in proto.graph.output:  # declared output shapes are re-inferred from the fixed input
            out.type.tensor_type.ClearField("shape")
        if exported_for_one:  # a static batch of 1 may be baked into Reshapes too
            passes.free_batch_reshapes(proto, "N")
        return proto

    def num_scores(self, sample_shape: tuple, region_kind: str | None) -> int:
        """K, the number of scores, from the score head's inferred shape: no onnxruntime session
        (a forward session holds a copy of every weight, which a pure gradient method never needs)."""
        key = (sample_shape, region_kind)
        if key not in self._num_scores:
            spec = replace(self.spec, region=region_kind)
            scored = passes.score_model(self._fixed_model(sample_shape, weights=False), spec)
            shape = next(dims_of(o) for o in scored.graph.output if o.name == SCORES)
            if not shape or not isinstance(shape[1], int):
                raise ModelError(f"the number of scores is not static (score shape {shape})")
            self._num_scores[key] = int(shape[1])
            if self.batch_size is None:
                # a first guess, before any session exists (plugins size their chunks from it): a
                # gradient holds about three times a forward's activations; the gradient session
                # (which knows exactly) refines it unless it was set explicitly
                self.batch_size = max(1, auto_batch_size(scored) // 3)
        return self._num_scores[key]

    def forward_session(self, sample_shape: tuple, region_kind: str | None):
        """The cached forward-only session: the model's outputs plus `nxrt_scores`, no gradients."""
        key = (sample_shape, region_kind)
        if key not in self._forward:
            t0 = time.perf_counter()
            spec = replace(self.spec, region=region_kind)
            model = passes.score_model(self._fixed_model(sample_shape), spec)
            self._forward[key] = make_session(model, self.providers, self.threads, static_shapes=True)
            if self.batch_size is None:  # (predict() may come first: the same guess as num_scores')
                self.batch_size = max(1, auto_batch_size(model) // 3)
            self.build_seconds += time.perf_counter() - t0
        return self._forward[key]

    def session(self, sample_shape: tuple, guided: bool, region_kind: str | None, layers: Sequence[str] = ()):
        """The cached session computing scores and the input gradient (guided or not), or, when
        `layers` are given, the scores and those layers' activations and gradients only.

        A layer session differentiates down to its layers and no further (Grad-CAM at the last
        Conv of a DynUNet: 56 nodes, forward included, instead of 434, and 2.6x faster than also
        computing the input gradient). It carries every layer asked for so far, so a layer sweep
        builds one session.
        """
        spec = replace(self.spec, region=region_kind)
        if layers:
            for layer in layers:
                if layer not in self._layers:
                    self._layers.append(layer)
            kind, want, wrt = "layers", tuple(self._layers), ()
        else:
            kind, want, wrt = "grad", (), (passes.INPUT_ALIAS,)
        for key, (sess, have) in self._sessions.items():
            if key[:4] == (kind, sample_shape, guided, spec.key()) and set(want) <= set(have):
                return sess
        self.builds += 1
        t0 = time.perf_counter()
        fixed = self._fixed_model(sample_shape)
        options = {"layers": list(want), "guided": guided, "score": list(spec.key()), "wrt": list(wrt)}
        aug, entry = cached_entry(fixed, options,
                                  lambda: passes.augment(fixed, wrt=wrt, layers=want, guided=guided, score=spec))
        fixed = None  # (the lambda above holds it otherwise) frees the copy before the session is made
        if self._auto_batch:  # the gradient graph's own activation sizes refine the forward's guess
            self.batch_size = auto_batch_size(aug)
        if entry is not None:  # onnxruntime reads the cached file: no serialised copy held here
            del aug
        sess = make_session(entry if entry is not None else aug, self.providers, self.threads, static_shapes=True)
        # a session exposing more layers supersedes the older ones: drop them (they hold memory)
        for key in [k for k, v in self._sessions.items()
                    if k[:4] == (kind, sample_shape, guided, spec.key()) and set(v[1]) <= set(want)]:
            del self._sessions[key]
        self._sessions[(kind, sample_shape, guided, spec.key(), want)] = (sess, want)
        self.build_seconds += time.perf_counter() - t0
        return sess


class Context:
    """All a method plugin sees of the runtime.

    forward(xs) -> scores [n, K]; gradient(xs, target, guided=False) -> d score / d x;
    layer_gradient(xs, target, layer) -> (activations, gradients) of a layer; layers() -> Grad-CAM
    candidates; plus batch_size, rng, task, layout and helpers for the model's axes. Every call
    accepts any number of samples and runs them in chunks of `batch_size`.
    """

    def __init__(self, explainer: Explainer, sample_shape: tuple, region=None):
        self._ex = explainer
        self.sample_shape = sample_shape
        self.task = explainer.task
        self.layout = explainer.layout
        self.rng = np.random.default_rng(explainer.seed)
        self.info: dict[str, Any] = {}
        # the sample being explained, and (model output, scores) of a pass that evaluated exactly it
        self._sample, self._keep_forward = None, False
        self.forward_at_sample: tuple[np.ndarray, np.ndarray] | None = None
        self._region_feed = None
        self._region_kind = None
        if region is not None:
            if self.task != "segmentation":
                raise InputError("region applies to segmentation models only; drop it for a classifier")
            if isinstance(region, str):
                if region != "predicted":
                    raise InputError(f"region '{region}' is not 'predicted' or a mask array")
                self._region_kind = "predicted"
            else:
                self._region_kind = "mask"
                self._region_feed = self._region_array(region)
        self.num_scores = explainer.num_scores(sample_shape, self._region_kind)

    # -- geometry of the model input
    @property
    def batch_size(self) -> int:
        return self._ex.batch_size or 1

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "channels_first" else len(self.sample_shape)

    @property
    def spatial_shape(self) -> tuple:
        s = self.sample_shape
        return tuple(s[1:]) if self.layout == "channels_first" else tuple(s[:-1])

    def _region_array(self, mask) -> np.ndarray:
        mask = np.asarray(mask, dtype=np.float32)
        out_rank = len(self._ex.model.info.shape(self._ex.spec.output or self._ex.model.proto.graph.output[0].name)
                       or ()) or len(self.sample_shape) + 1
        spatial_rank = out_rank - 2
        if mask.ndim != spatial_rank:
            raise InputError(f"region mask has {mask.ndim} axes; give one value per output voxel "
                             f"({spatial_rank} spatial axes)")
        if not np.any(mask):
            raise InputError("region mask is empty (all zeros); give a mask with at least one voxel")
        return mask[None, None] if self.layout == "channels_first" else mask[None, ..., None]

    def _feeds(self, sess, xs: np.ndarray, seed: np.ndarray | None) -> dict:
        feeds = {self._ex.model.input_name: xs}
        names = {i.name for i in sess.get_inputs()}
        if SEED in names:
            feeds[SEED] = seed if seed is not None else np.zeros((xs.shape[0], self.num_scores), np.float32)
        if REGION in names:
            feeds[REGION] = self._region_feed
        return feeds

    def seed(self, n: int, target) -> np.ndarray:
        s = np.zeros((n, self.num_scores), np.float32)
        for t in [target] if np.isscalar(target) else target:
            s[:, int(t)] += 1.0
        return s

    # -- evaluations
    def forward(self, xs: np.ndarray) -> np.ndarray:
        """Scores [n, K] of a stack of inputs (forward passes only)."""
        sess = self._ex.forward_session(self.sample_shape, self._region_kind)
        return self._evaluate(sess, [SCORES], xs, None)[0]

    def gradient(self, xs: np.ndarray, target, guided: bool = False) -> np.ndarray:
        """d (sum of the target scores) / d x for each of a stack of inputs."""
        sess = self._ex.session(self.sample_shape, guided, self._region_kind)
        return self._evaluate(sess, [grad_name(self._ex.model.input_name)], xs, target)[0]

    def layer_gradient(self, xs: np.ndarray, target, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(activation, gradient) of `layer` (tensor or node name) for each of a stack of inputs."""
        tensor = passes.resolve_tensor(self._ex.model.proto, layer)
        sess = self._ex.session(self.sample_shape, False, self._region_kind, layers=[tensor])
        acts, grads = self._evaluate(sess, [tensor, grad_name(tensor)], xs, target)
        return acts, grads

    def layer_gradients(self, xs: np.ndarray, target, layers: Sequence[str]) -> dict[str, tuple]:
        """{layer: (activation, gradient)} for several layers from one session call per chunk."""
        tensors = [passes.resolve_tensor(self._ex.model.proto, layer) for layer in layers]
        sess = self._ex.session(self.sample_shape, False, self._region_kind, layers=tensors)
        joined = self._evaluate(sess, [n for t in tensors for n in (t, grad_name(t))], xs, target)
        return {layer: (joined[2 * i], joined[2 * i + 1]) for i, layer in enumerate(layers)}

    def _evaluate(self, sess, names: list[str], xs: np.ndarray, target) -> list[np.ndarray]:
        """`names` of a session for a stack of inputs, run in chunks and joined (target None: a
        forward session, no seed). When xs is the very sample being explained and the Explainer was
        asked to keep its forward pass, the model's output and scores of this pass are kept too
        (`forward_at_sample`)."""
        keep = self._keep_forward and xs is self._sample and self.forward_at_sample is None and \
            self._ex.output_name in {o.name for o in sess.get_outputs()}
        fetch = names + [self._ex.output_name, SCORES] if keep else names
        parts = [sess.run(fetch, self._feeds(sess, c, None if target is None else self.seed(c.shape[0], target)))
                 for c in self._ex._chunks(np.ascontiguousarray(xs, dtype=np.float32))]
        joined = [parts[0][i] if len(parts) == 1 else np.concatenate([p[i] for p in parts], axis=0)
                  for i in range(len(fetch))]
        if keep:
            self.forward_at_sample = (joined[-2], joined[-1])
        return joined[:len(names)]

    def layers(self) -> list[str]:
        """Grad-CAM candidates: every Conv/ConvTranspose output, in graph order."""
        return self._ex.model.conv_layers()

    def resolve_layer(self, layer: str | None) -> str:
        if layer is None:
            convs = self.layers()
            if not convs:
                raise InputError("the model has no Conv layer; give layer=<tensor or node name>")
            return convs[-1]
        try:
            return passes.resolve_tensor(self._ex.model.proto, layer)
        except InputError:
            raise InputError(f"unknown layer '{layer}'; candidates: {', '.join(self.layers()) or 'none'}") from None

    def layer_channel_axis(self, tensor: str) -> int:
        """Channel axis of an intermediate tensor: ONNX convolutions are NC..., even in a channels-last
        model (tf2onnx transposes around them); Transposes on the way are followed."""
        return _channel_axis(self._ex.model, tensor, set(), self.layout)

    def to_input_grid(self, cam: np.ndarray, tensor_axis: int, interpolation: str = "linear") -> np.ndarray:
        """A per-sample map [n, C, *layer_spatial] (channel axis `tensor_axis`) resampled to the input's
        spatial grid and returned in the input's layout with the channel axis kept."""
        cam = np.moveaxis(cam, tensor_axis, 1)
        up = resize(cam, self.spatial_shape, interpolation)
        return up if self.layout == "channels_first" else np.moveaxis(up, 1, -1)


def _channel_axis(model: Model, tensor: str, seen: set, layout: str) -> int:
    node = model.info.producer.get(tensor)
    rank = model.info.rank(tensor) or 4
    if node is None or tensor in seen:  # a graph input: the model's own layout
        return 1 if layout == "channels_first" else rank - 1
    seen.add(tensor)
    if node.op_type in _CHANNEL_FIRST_OPS:
        return 1
    if node.op_type == "Transpose":
        from .graph import attr

        perm = list(attr(node, "perm") or reversed(range(rank)))
        inner = _channel_axis(model, node.input[0], seen, layout) % rank
        return perm.index(inner)
    if node.op_type in _PASS_THROUGH_OPS and node.input:
        return _channel_axis(model, node.input[0], seen, layout)
    return 1


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"
