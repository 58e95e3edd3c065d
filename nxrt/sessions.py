"""The sessions one explained model needs, built through the engine's pool.

For each sample shape and score region there are at most three kinds: the forward session (model
outputs + `nxrt_scores`: predictions, occlusion, target resolution), the input-gradient session
(plain or guided) and the layer session (activations and gradients of the layers Grad-CAM asks
for, differentiated down to those layers and no further). All start from the same prepared graph
(`passes.prepare`), so forward and gradient sessions compute the same model. Augmented graphs go
through the disk cache; the number of scores comes from shape inference on a weight-free skeleton,
so knowing it costs no session.
"""

from __future__ import annotations

from dataclasses import replace

from . import passes
from .cache import cached_entry
from .engine import Built, PooledSession, SessionPool, activation_bytes_per_sample, auto_batch_size
from .errors import ModelError
from .graph import GraphInfo, dims_of

#: activations one forward call may plan for before a larger batch stops paying (see `forward`)
FORWARD_CALL_BYTES = 1 << 30

class ModelSessions:
    """Sessions of one model (`nxrt.Model`) under one score definition (`passes.ScoreSpec`)."""

    def __init__(self, model, spec: passes.ScoreSpec, pool: SessionPool):
        self.model = model
        self.spec = spec
        self.pool = pool
        self._num_scores: dict[tuple, int] = {}
        self._batch_mode: dict[tuple, int | None] = {}
        self.graphs_built = 0  # augmented graphs built here (not served by the disk cache)
        self.disk_cache = True  # False: one-off models (randomised weights) are not stored

    def _spec(self, region_kind: str | None) -> passes.ScoreSpec:
        return replace(self.spec, region=region_kind)

    def _fixed(self, sample_shape: tuple, weights: bool = True):
        return passes.fix_input_shape(self.model.proto, self.model.input_name, sample_shape, weights=weights,
                                      batch=self.fixed_batch(sample_shape))

    def fixed_batch(self, sample_shape: tuple) -> int | None:
        """None when the model runs any batch: its batch axis stays symbolic through the whole graph
        (a dynamic export, or a static one nxrt could free: `passes.free_batch_reshapes`); else a
        static batch B that is then kept — the export's, or 1 when even a dynamic export computes
        shapes from the batch that shape inference cannot follow (SwinUNETR's window partition:
        batch x windows) — and the sessions run B samples at a time (a short chunk padded).
        Decided once per sample shape, on the weight-free skeleton, folded like the real graph:
        the batch is free when every float tensor keeps static dims beyond the batch axis."""
        key = tuple(sample_shape)
        if key not in self._batch_mode:
            exported = passes.exported_batch(self.model.proto, self.model.input_name)
            static = exported or 1
            unknown = {batch: self._unknown_dims(sample_shape, batch) for batch in (None, static)}
            # (tensors whose dims are unknown at a static batch too are not the batch's doing: an op
            # without shape inference; those never decide)
            self._batch_mode[key] = None if unknown[None] <= unknown[static] else static
        return self._batch_mode[key]

    def _unknown_dims(self, sample_shape: tuple, batch: int | None) -> set[str]:
        """Float tensors of the scored, folded skeleton whose dims beyond the batch axis shape
        inference cannot tell (or whose batch axis is neither the batch symbol nor static)."""
        fixed = passes.fix_input_shape(self.model.proto, self.model.input_name, sample_shape, weights=False,
                                       batch=batch)
        scored = passes.score_model(fixed, self._spec(None))
        info = GraphInfo.of(scored)
        scores = info.shape(passes.SCORES) or ()
        out = set() if batch is not None or (scores and scores[0] == "N") else {passes.SCORES}
        for node in scored.graph.node:
            for name in node.output:
                if not name or info.is_float(name) is False:
                    continue
                shape = info.shape(name)
                if shape is None or (shape and (not isinstance(shape[0], int) and shape[0] != "N"
                                                or any(not isinstance(d, int) for d in shape[1:]))):
                    out.add(name)
        return out

    def num_scores(self, sample_shape: tuple, region_kind: str | None) -> int:
        """K, the number of scores, from the score head's inferred shape (a forward session would
        hold a copy of every weight, which a pure gradient method never needs)."""
        key = (tuple(sample_shape), region_kind)
        if key not in self._num_scores:
            scored = passes.score_model(self._fixed(sample_shape, weights=False), self._spec(region_kind), fold=False)
            shape = next(dims_of(o) for o in scored.graph.output if o.name == passes.SCORES)
            if not shape or not isinstance(shape[1], int):
                raise ModelError(f"the number of scores is not static (score shape {shape})")
            self._num_scores[key] = int(shape[1])
        return self._num_scores[key]

    def forward(self, sample_shape: tuple, region_kind: str | None) -> PooledSession:
        """Model outputs plus `nxrt_scores`, no gradients."""
        spec = self._spec(region_kind)

        def build(options: dict) -> Built:
            model = passes.score_model(self._fixed(sample_shape), spec)
            # the estimate counts a forward's largest tensors only; onnxruntime's forward plan holds
            # more at once, so a third of it (the same guess the gradient graph refines for itself).
            # A batch larger than FORWARD_CALL_BYTES of activations is no faster, only slower: 42
            # forwards of a DynUNet at 4x128^3 took 61-65 s at batch 1 or 2, 72 s at batch 5 (the
            # memory estimate's), 62 s one at a time in plain onnxruntime (2 threads).
            fits = auto_batch_size(model, self.pool.max_memory) // 3
            quick = FORWARD_CALL_BYTES // activation_bytes_per_sample(model)
            return Built(model, max(1, min(fits, quick)), fixed_batch=options["batch"])

        return self.pool.get(self.model.digest, self._options("forward", sample_shape, spec), build)

    def gradient(self, sample_shape: tuple, region_kind: str | None, guided: bool = False) -> PooledSession:
        """Scores and d scores / d input (`nxrt_grad__<input>`), plain or guided."""
        spec = self._spec(region_kind)
        options = {**self._options("gradient", sample_shape, spec), "guided": guided, "wrt": [passes.INPUT_ALIAS]}
        return self.pool.get(self.model.digest, options, lambda o: self._augmented(sample_shape, spec, o))

    def layers(self, sample_shape: tuple, region_kind: str | None, tensors) -> PooledSession:
        """Scores and the activations and gradients of `tensors` (and of every layer asked for
        before: one session serves a whole layer sweep)."""
        spec = self._spec(region_kind)
        options = {**self._options("layers", sample_shape, spec), "guided": False, "wrt": [],
                   "layers": list(tensors)}
        return self.pool.get(self.model.digest, options, lambda o: self._augmented(sample_shape, spec, o))

    def _options(self, kind: str, sample_shape: tuple, spec: passes.ScoreSpec) -> dict:
        return {"kind": kind, "sample_shape": [int(d) for d in sample_shape], "score": list(spec.key()),
                "batch": self.fixed_batch(sample_shape), "maxpool": self.pool.maxpool_gradient}

    def _augmented(self, sample_shape: tuple, spec: passes.ScoreSpec, options: dict) -> Built:
        def build():
            self.graphs_built += 1
            return passes.augment(self._fixed(sample_shape), wrt=tuple(options["wrt"]),
                                  layers=tuple(options.get("layers", ())), guided=options["guided"], score=spec,
                                  maxpool=options["maxpool"])

        aug, entry = cached_entry(self.model.digest, options, build) if self.disk_cache else (build(), None)
        batch = auto_batch_size(aug, self.pool.max_memory)  # the gradient graph's own activation sizes
        blocked = next((p.value for p in aug.metadata_props if p.key == passes.ZERO_GRADIENT_KEY), None)
        notes = (f"the gradient is zero through {blocked} (piecewise constant): what the model computes there "
                 "is missing from the attribution",) if blocked else ()
        # onnxruntime reads a cached entry from its file: no serialised copy is held in this process
        return Built(entry if entry is not None else aug, batch, notes, options["batch"])
