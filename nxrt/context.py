"""`Context`: all a method plugin sees of the runtime, for one sample shape and score region.

Evaluations: forward(xs) -> scores [n, K]; gradient(xs, target, guided=False) -> d score / d x;
layer_gradient(xs, target, layer) -> (activations, gradients); layer_gradients(...) for several
layers at once. Each takes any number of samples and runs them in chunks of its session's batch
size. `batched(count, make, evaluate)` is the one helper for methods that generate many inputs
(IG path points, SmoothGrad copies, occlusion windows): it builds and evaluates them a chunk at a
time, so memory holds one chunk. Geometry: layout, channel_axis, spatial_shape, to_input_grid,
layer_channel_axis. Plus rng, task, num_scores.

A Context is made by the Explainer for the sample being explained; when a pass evaluates the
model at exactly that sample, its output and scores are kept (`forward_at_sample`), and the
Explanation carries them: a gradient pass is a forward pass too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import passes
from .engine import PooledSession, batches
from .errors import InputError
from .ops import channel_axis, conv_outputs, default_layer
from .passes import SCORES, SEED, grad_name
from .postprocess import resize
from .region import FEED, Region


class Context:
    def __init__(self, sessions, sample_shape: tuple, region: Region, rng: np.random.Generator,
                 sample: np.ndarray | None = None, progress: Callable[[int, int, str], None] | None = None):
        self._sessions = sessions
        self._model = sessions.model
        self.sample_shape = tuple(sample_shape)
        self.task = sessions.spec.task
        self.layout = sessions.spec.layout
        self.multilabel = sessions.spec.multilabel  # segmentation channels independent (sigmoid / logits)
        self.output_name = sessions.spec.output or self._model.proto.graph.output[0].name
        self.region = region
        self.rng = rng
        self.num_scores = sessions.num_scores(self.sample_shape, region.kind)
        self._sample = sample
        self._region_feed = region.feed(self.layout)
        self._progress = progress
        self.forward_at_sample: tuple[np.ndarray, np.ndarray] | None = None
        #: what the sessions this context ran say about every result of them (Explanation.warnings)
        self.notes: list[str] = []

    # -- geometry of the model input
    @property
    def channel_axis(self) -> int:
        return self.layout.channel_axis(len(self.sample_shape) + 1)

    @property
    def spatial_shape(self) -> tuple:
        return self.layout.spatial_shape(self.sample_shape, batch=False)

    # -- batch sizes (decided once per session, by the engine's pool)
    @property
    def batch_size(self) -> int:
        """Samples per call of the input-gradient session (what IG and SmoothGrad stack)."""
        return self._gradient_session(False).batch_size

    @property
    def forward_batch_size(self) -> int:
        """Samples per call of the forward session (what occlusion stacks)."""
        return self._forward_session().batch_size

    def batched(self, count: int, make: Callable[[slice], np.ndarray], evaluate: Callable[[np.ndarray], Any],
                size: int | None = None, unit: str | None = None) -> Iterator[tuple[slice, Any]]:
        """Evaluate `count` generated inputs a chunk at a time: for each chunk (a slice of
        range(count), at most `size` long, default `batch_size`) yields (chunk, evaluate(make(chunk))).
        unit: what the inputs are ("path points", "patches", ...), to report progress in."""
        for chunk in batches(count, size or self.batch_size):
            result = evaluate(make(chunk))
            if unit:
                self.report(chunk.stop, count, unit)
            yield chunk, result

    def report(self, done: int, total: int, unit: str) -> None:
        """Progress inside a long method (`done` of `total` `unit`), for whoever watches the call."""
        if self._progress:
            self._progress(done, total, unit)

    # -- evaluations
    def forward(self, xs: np.ndarray) -> np.ndarray:
        """Scores [n, K] of a stack of inputs (forward passes only)."""
        return self._run(self._forward_session(), [SCORES], xs, None)[0]

    def gradient(self, xs: np.ndarray, target, guided: bool = False) -> np.ndarray:
        """d (sum of the target scores) / d x for each of a stack of inputs."""
        return self._run(self._gradient_session(guided), [grad_name(self._model.input_name)], xs, target)[0]

    def layer_gradient(self, xs: np.ndarray, target, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(activation, gradient) of `layer` (tensor or node name) for each of a stack of inputs."""
        tensor = passes.resolve_tensor(self._model.proto, layer)
        acts, grads = self._run(self._layer_session([tensor]), [tensor, grad_name(tensor)], xs, target)
        return acts, grads

    def layer_gradients(self, xs: np.ndarray, target, layers: Sequence[str]) -> dict[str, tuple]:
        """{layer: (activation, gradient)} for several layers from one session call per chunk."""
        tensors = [passes.resolve_tensor(self._model.proto, layer) for layer in layers]
        joined = self._run(self._layer_session(tensors), [n for t in tensors for n in (t, grad_name(t))], xs, target)
        return {layer: (joined[2 * i], joined[2 * i + 1]) for i, layer in enumerate(layers)}

    def seed(self, n: int, target) -> np.ndarray:
        """The `nxrt_seed` rows selecting (and summing) the target scores."""
        s = np.zeros((n, self.num_scores), np.float32)
        for t in [target] if np.isscalar(target) else target:
            s[:, int(t)] += 1.0
        return s

    # -- layers
    def layers(self) -> list[str]:
        """Grad-CAM candidates: every Conv/ConvTranspose output, in graph order."""
        return conv_outputs(self._model.proto)

    def default_layer(self) -> str:
        """Grad-CAM's default layer (ops.default_layer): the deepest Conv with more channels than
        the model output, so never a segmenter's final logits Conv."""
        layer = default_layer(self._model.info, self._model.proto, self.layout, self.num_scores)
        if layer is None:
            raise InputError("the model has no Conv layer; give layer=<tensor or node name>")
        return layer

    def resolve_layer(self, layer: str | None) -> str:
        if layer is None:
            return self.default_layer()
        try:
            return passes.resolve_tensor(self._model.proto, layer)
        except InputError:
            raise InputError(f"unknown layer '{layer}'; candidates: {', '.join(self.layers()) or 'none'}") from None

    def layer_channel_axis(self, tensor: str) -> int:
        """Channel axis of an intermediate tensor (ops.channel_axis)."""
        return channel_axis(self._model.info, tensor, self.layout)

    def to_input_grid(self, cam: np.ndarray, tensor_axis: int, interpolation: str = "linear") -> np.ndarray:
        """A per-sample map [n, C, *layer_spatial] (channel axis `tensor_axis`) resampled to the input's
        spatial grid and returned in the input's layout with the channel axis kept."""
        cam = np.moveaxis(cam, tensor_axis, 1)
        return self.layout.from_channels_first(resize(cam, self.spatial_shape, interpolation))

    # -- internals
    def _forward_session(self) -> PooledSession:
        return self._sessions.forward(self.sample_shape, self.region.kind)

    def _gradient_session(self, guided: bool) -> PooledSession:
        return self._sessions.gradient(self.sample_shape, self.region.kind, guided)

    def _layer_session(self, tensors: Sequence[str]) -> PooledSession:
        return self._sessions.layers(self.sample_shape, self.region.kind, tensors)

    def _run(self, pooled: PooledSession, names: list[str], xs: np.ndarray, target) -> list[np.ndarray]:
        """`names` of a session for a stack of inputs, run in chunks of its batch size and joined
        (target None: no seed). When xs is the sample being explained, the model's output and
        scores of this pass are kept too (`forward_at_sample`), if the session computes them."""
        self.notes.extend(n for n in pooled.notes if n not in self.notes)
        keep = xs is self._sample and self.forward_at_sample is None and self.output_name in pooled.outputs
        fetch = names + [self.output_name, SCORES] if keep else names
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        feeds = {FEED: self._region_feed} if self._region_feed is not None else {}
        parts = []
        for chunk in batches(xs.shape[0], pooled.batch_size):
            part = xs[chunk]
            seed = self.seed(part.shape[0], target) if target is not None else \
                np.zeros((part.shape[0], self.num_scores), np.float32)
            parts.append(pooled.run(fetch, {self._model.input_name: part, SEED: seed, **feeds}))
        joined = [parts[0][i] if len(parts) == 1 else np.concatenate([p[i] for p in parts], axis=0)
                  for i in range(len(fetch))]
        if keep:
            self.forward_at_sample = (joined[-2], joined[-1])
        return joined[:len(names)]
