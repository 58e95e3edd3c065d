"""Graph passes: the score head, exposed layers and gradient outputs -> the augmented model.

`augment()` is the public entry: it returns a standard-ONNX model with an extra input
`nxrt_seed` ([N, K], the upstream gradient of the K scores), the output `nxrt_scores`
([N, K]), the requested layer activations, and `nxrt_grad__<tensor>` for every tensor asked
for. Running it with a one-hot seed gives the gradient of one class score; any ONNX runtime can.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .autodiff import add_gradients
from .autodiff.grad import zero_gradient_nodes
from .card import ModelCard
from .errors import InputError, ModelError
from .graph import (
    Builder,
    GraphInfo,
    convert_opset,
    finish_model,
    fold_constants,
    infer_shapes_inplace,
    load_model,
    weight_free,
)
from .layout import Layout
from .ops import CONV_OPS, PROBABILITY_OPS, check_deterministic, node_label
from .region import FEED as REGION
from .region import MASK, PREDICTED

SEED = "nxrt_seed"
SCORES = "nxrt_scores"
GRAD_PREFIX = "nxrt_grad__"
INPUT_ALIAS = "input"
#: metadata of an augmented model: the piecewise-constant nodes its gradient passes through as zero
ZERO_GRADIENT_KEY = "nxrt.zero_gradient_nodes"


def grad_name(tensor: str) -> str:
    return GRAD_PREFIX + tensor


@dataclass(frozen=True)
class ScoreSpec:
    """What is being explained: which output, how it becomes K scores per sample.

    task: "classification" (scores = the output as exported, [N, K]) or "segmentation"
    (scores = a pooling head over the spatial axes, [N, C]). logits: explain the input of a
    final Softmax/Sigmoid. region: None (global mean), "predicted" (mean over the voxels whose
    argmax is the channel, mask held constant) or "mask" (mean over a mask fed as `nxrt_region`).
    """

    task: str = "classification"
    layout: Layout = Layout.CHANNELS_FIRST
    output: str | None = None
    logits: bool = False
    region: str | None = None
    activation: str | None = None  # segmentation: softmax / sigmoid / logits (card.ACTIVATIONS)

    def __post_init__(self):
        object.__setattr__(self, "layout", Layout.of(self.layout))

    def key(self) -> tuple:
        return (self.task, self.layout.value, self.output, self.logits, self.region, self.activation)

    @property
    def multilabel(self) -> bool:
        """Segmentation channels are independent (sigmoid or logits): each is thresholded alone."""
        return self.activation in ("sigmoid", "logits")

    def threshold(self, on_logits: bool = False) -> float:
        """A multi-label channel's foreground threshold: 0.5 on probabilities, 0 on logits."""
        return 0.5 if self.activation == "sigmoid" and not on_logits else 0.0


def resolve_tensor(model: onnx.ModelProto, name: str) -> str:
    """A tensor name from a tensor or node name; raises InputError listing candidates."""
    g = model.graph
    tensors = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    if name in tensors:
        return name
    for node in g.node:
        if node.name == name:
            return node.output[0]
    convs = [n.output[0] for n in g.node if n.op_type in CONV_OPS]
    hint = ", ".join(convs[-8:]) if convs else "none"
    raise InputError(f"layer '{name}' is neither a tensor nor a node of the model; Conv outputs "
                     f"include: {hint} (see `nxrt inspect`)")


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _resolve_wrt(model: onnx.ModelProto, wrt: Sequence[str]) -> list[str]:
    names = []
    for w in wrt:
        if w == INPUT_ALIAS and INPUT_ALIAS not in {i.name for i in model.graph.input}:
            names.extend(i.name for i in model_inputs(model))
        else:
            names.append(resolve_tensor(model, w))
    info = GraphInfo(model)
    for n in names:
        t = info.elem_type(n) if n else None
        if t is not None and t not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise ModelError(f"input '{n}' is not a float tensor ({TensorProto.DataType.Name(t)}); "
                             "nxrt can only differentiate with respect to float inputs")
    return list(dict.fromkeys(names))


def _score_head(model: onnx.ModelProto, spec: ScoreSpec) -> str:
    """Append the nodes turning the chosen output into the [N, K] scores; returns their name."""
    g = model.graph
    out = spec.output or g.output[0].name
    if out not in {o.name for o in g.output} | {o for n in g.node for o in n.output}:
        raise InputError(f"output '{out}' is not in the model; outputs: {', '.join(o.name for o in g.output)}")
    b = Builder(model, prefix="nxrt_head")
    info = GraphInfo.of(model)  # the head only adds nodes after `out`: one inference serves
    if spec.logits:
        producer = next((n for n in g.node if out in n.output), None)
        if producer is None or producer.op_type not in PROBABILITY_OPS:
            raise InputError(f"score='logits': output '{out}' is not produced by {'/'.join(PROBABILITY_OPS)}, so "
                             "it already is the logits; drop the option")
        out = producer.input[0]
    if spec.task == "classification":
        rank = info.rank(out)
        if rank is not None and rank != 2:
            scores = b.op("Flatten", out, axis=1)
        else:
            scores = out
    else:
        rank = info.rank(out)
        if rank is None or rank < 3:
            raise InputError(f"task=segmentation needs an output with spatial axes; '{out}' has rank {rank}. "
                             "Use task=classification")
        ch = spec.layout.channel_axis(rank)
        spatial = list(spec.layout.spatial_axes(rank))
        if spec.region is None:
            scores = b.reduce("ReduceMean", out, spatial, keepdims=False)
        else:
            if spec.region == PREDICTED and spec.multilabel:
                # each channel over its own foreground (p > 0.5, or logit > 0): a comparison, so it
                # carries no gradient (mask held constant)
                above = b.op("Greater", out, b.const(spec.threshold(on_logits=spec.logits)))
                region = b.op("Cast", above, to=TensorProto.FLOAT)
            elif spec.region == PREDICTED:
                # one-hot of the argmax: an integer path, so it carries no gradient (mask held constant)
                arg = b.op("ArgMax", out, axis=ch, keepdims=1)
                depth = info.shape(out)[ch]
                shape = [1] * rank
                shape[ch] = depth
                classes = b.const(np.arange(depth).reshape(shape), np.int64, "classes")
                region = b.op("Cast", b.op("Equal", arg, classes), to=TensorProto.FLOAT)
            elif spec.region == MASK:
                region = REGION
                # batch and channel axes of size 1 (the mask broadcasts over both), the output's spatial dims
                dims = [d if isinstance(d, int) else None for d in (info.shape(out) or [None] * rank)]
                dims[0] = dims[ch] = 1
                g.input.append(helper.make_tensor_value_info(REGION, TensorProto.FLOAT, dims))
            else:
                raise InputError(f"region '{spec.region}' is not one of None, 'predicted', a mask array")
            inside = b.reduce("ReduceSum", b.op("Mul", out, region), spatial, keepdims=False)
            # a one-channel mask broadcasts over all channels, and so does its voxel count
            count = b.reduce("ReduceSum", region, spatial, keepdims=False)
            scores = b.op("Div", inside, b.op("Max", count, b.const(1e-12)))
    b.flush()
    return scores


def _name_output(model: onnx.ModelProto, tensor: str, name: str) -> None:
    model.graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"{name}_out"))


def _expose_explained(model: onnx.ModelProto, spec: ScoreSpec) -> list[str]:
    """The explained tensor as a graph output when it is an intermediate one (`output=` naming an
    inner tensor): predictions and kept forward passes fetch it. Returns what was added."""
    tensor = spec.output or model.graph.output[0].name
    if tensor in {o.name for o in model.graph.output}:
        return []
    model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.UNDEFINED, None))
    return [tensor]


def augment(model: str | os.PathLike | onnx.ModelProto, wrt: Sequence[str] = (INPUT_ALIAS,),
            layers: Sequence[str] = (), guided: bool = False, target=None, *,
            score: ScoreSpec | None = None, guided_ops: Sequence[str] = ("Relu",),
            check: bool = True, maxpool: str = "indices") -> onnx.ModelProto:
    """Return a copy of `model` that also computes gradients of its scores, in standard ONNX.

    wrt: tensors to differentiate with respect to ("input" = every float graph input).
    layers: intermediate tensors (or node names) to expose together with their gradients
    (what Grad-CAM needs). guided: guided backpropagation through Relu (and `guided_ops`).
    target: None keeps the seed an input `nxrt_seed` [N, K]; an int or list of ints bakes a
    (summed) one-hot seed in, so the model computes the gradient of that class score alone.
    score: the ScoreSpec (task, layout, output, logits, region); None = from the model card,
    classification when the card is silent and the output has rank 2, else segmentation.
    maxpool: how MaxPool's gradient finds each window's maximum: "indices" (the MaxPool's own
    Indices output; fastest on onnxruntime) or "equality" (the first position equal to the window's
    maximum; for OpenVINO, which runs MaxPool-with-indices in a slow reference kernel). Both
    give torch's gradient, ties included.
    The result passes onnx.checker (full check) and runs on onnxruntime's CPU provider.
    """
    work = prepare(model)
    if score is None:
        score = default_score_spec(work)
    wrt_names = _resolve_wrt(work, wrt)
    layer_names = [resolve_tensor(work, layer) for layer in layers]
    scores = _score_head(work, score)
    exposed = _expose_explained(work, score)
    info = GraphInfo(infer_shapes_inplace(work))
    score_shape = info.shape(scores)
    if score_shape is None or len(score_shape) != 2:
        raise ModelError(f"the score tensor '{scores}' must be [N, K]; its shape is {score_shape}")
    k = score_shape[1]
    b = Builder(work, prefix="nxrt_seed")
    if target is None:
        seed = SEED
        work.graph.input.append(helper.make_tensor_value_info(SEED, TensorProto.FLOAT,
                                                              [score_shape[0], score_shape[1]]))
    else:
        targets = [target] if np.isscalar(target) else list(target)
        if not isinstance(k, int):
            raise ModelError("target given but the number of scores is not static")
        for t in targets:
            if not 0 <= int(t) < k:
                raise InputError(f"target {t} is out of range: the model has {k} scores (0..{k - 1})")
        onehot = np.zeros([1, k], np.float32)
        for t in targets:
            onehot[0, int(t)] += 1.0
        seed = b.op("Expand", b.const(onehot, hint="onehot"), b.op("Shape", scores))
    b.flush()
    wanted = wrt_names + [n for n in layer_names if n not in wrt_names]
    blocked = zero_gradient_nodes(work.graph, scores, wanted)  # (before the gradient nodes exist)
    grads = add_gradients(work, scores, seed, wanted, guided=guided, guided_ops=guided_ops, info=info,
                          maxpool=maxpool)
    if blocked:  # the sessions report it with every explanation (Explanation.warnings)
        entry = work.metadata_props.add()
        entry.key, entry.value = ZERO_GRADIENT_KEY, "; ".join(node_label(n) for n in blocked)
    outputs = [(scores, SCORES)]
    outputs += [(n, n) for n in layer_names if n not in {o.name for o in work.graph.output}]
    outputs += [(grads[t], grad_name(t)) for t in dict.fromkeys(wrt_names + layer_names)]
    for tensor, name in outputs:
        if tensor != name:
            _name_output(work, tensor, name)
        work.graph.output.append(helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None))
    work = _finalise(work, exposed + [name for _, name in outputs])
    if check:
        check_model(work)
    return work


def prepare(model: str | os.PathLike | onnx.ModelProto, fold: bool = True) -> onnx.ModelProto:
    """The preparation every augmented or scored model starts from, so that forward and gradient
    sessions run the same graph: a private copy, brought to opset >= 17, stale value_info dropped,
    and (fold=True) the exporters' run-time shape arithmetic folded into constants."""
    work = onnx.ModelProto()
    work.CopyFrom(load_model(model))
    check_deterministic(work)
    work = convert_opset(work)
    del work.graph.value_info[:]
    return fold_constants(work) if fold else work


def score_model(model: str | os.PathLike | onnx.ModelProto, score: ScoreSpec, fold: bool = True) -> onnx.ModelProto:
    """The model plus its score head and the `nxrt_scores` output, without any gradient: what
    forward-only work (predictions, occlusion, IG completeness checks) runs on. fold=False skips
    constant folding (for shape questions on a weight-free skeleton, where it has nothing to do)."""
    work = prepare(model, fold=fold)
    scores = _score_head(work, score)
    exposed = _expose_explained(work, score)
    if scores != SCORES:
        _name_output(work, scores, SCORES)
    work.graph.output.append(helper.make_tensor_value_info(SCORES, TensorProto.UNDEFINED, None))
    return _finalise(work, exposed + [SCORES])


def exported_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    """The static batch size the model's input was exported with (None: a dynamic batch axis)."""
    vi = next(i for i in model.graph.input if i.name == input_name)
    dims = vi.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def fix_input_shape(model: onnx.ModelProto, input_name: str, sample_shape: Sequence[int],
                    weights: bool = True, batch: int | None = None) -> onnx.ModelProto:
    """A copy of the model with its input's non-batch dims fixed to one sample's shape (static
    shapes let every rule and onnxruntime's planner work). The batch axis becomes symbolic "N";
    a model exported for a static batch B also gets the Reshapes that baked B in freed
    (`free_batch_reshapes`). batch=B keeps a static batch instead (for exports whose batch is baked
    in elsewhere too; the engine then runs B samples at a time, padding). weights=False: the
    weight-free skeleton (graph.weight_free), for shape questions only."""
    if weights:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = weight_free(model)
    vi = next(i for i in proto.graph.input if i.name == input_name)
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return proto
    exported = exported_batch(proto, input_name)
    dims[0].Clear()
    if batch is not None:
        dims[0].dim_value = int(batch)
    else:
        dims[0].dim_param = "N"
    for d, n in zip(dims[1:], sample_shape, strict=True):
        d.Clear()
        d.dim_value = int(n)
    for out in proto.graph.output:  # declared output shapes are re-inferred from the fixed input
        out.type.tensor_type.ClearField("shape")
    if exported is not None and batch is None:  # the static batch may be baked into Reshapes too
        free_batch_reshapes(proto, "N", exported)
    return proto


def free_batch_reshapes(model: onnx.ModelProto, batch: str, exported: int = 1) -> int:
    """Let a model exported for a static batch run any batch: Reshapes whose constant target shape
    starts with the exported batch while their input's first axis is the (now symbolic) batch axis
    get 0 there instead ("copy this dimension"). Exporters bake `x.view(x.size(0), -1)` in as
    Reshape(x, [B, -1]) when the batch axis is static (MONAI's and torchvision's ResNets do, and
    torch's dynamo exporter for any fixed batch); at another batch that would fold the batch into
    the features and the next Gemm fails. In place; returns how many were changed."""
    info = GraphInfo.of(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        target = info.const(node.input[1])
        data_shape = info.shape(node.input[0])
        if target is None or target.ndim != 1 or not target.size or int(target[0]) != exported or \
                not data_shape or data_shape[0] != batch:
            continue
        fixed = np.array(target, dtype=np.int64)
        fixed[0] = 0
        name = f"{node.input[1]}_nxrt_any_batch_{changed}"
        model.graph.initializer.append(onnx.numpy_helper.from_array(fixed, name))
        node.input[1] = name
        changed += 1
    return changed


def _finalise(model: onnx.ModelProto, new_outputs: list[str]) -> onnx.ModelProto:
    """Give the new outputs their inferred types and shapes; drop intermediate value_info."""
    inferred = GraphInfo.of(model)
    keep = [o for o in model.graph.output if o.name not in new_outputs]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    for name in new_outputs:
        elem = inferred.elem_type(name) or TensorProto.FLOAT
        shape = inferred.shape(name)
        model.graph.output.append(helper.make_tensor_value_info(name, elem, list(shape) if shape else None))
    del model.graph.value_info[:]
    return finish_model(model)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full check (shape inference included), on the model's weight-free
    skeleton: the same graph, types and shapes, without serialising every weight once more
    (a ResNet50's augmented model is 200 MB) — and so at any model size."""
    try:
        onnx.checker.check_model(weight_free(model), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the augmented model failed onnx.checker: {str(exc).splitlines()[0]}") from exc


def default_score_spec(model: onnx.ModelProto, task: str | None = None, layout: str | None = None,
                       **kw) -> ScoreSpec:
    """ScoreSpec from explicit arguments, else the model card, else inferred from the graph."""
    card = ModelCard.from_model(model)
    task = task or card.task
    layout = layout or card.layout
    info = None
    if task is None or layout is None:
        info = GraphInfo.of(model)
    out = kw.get("output") or model.graph.output[0].name
    if task is None:
        rank = info.rank(out)
        task = "classification" if rank is not None and rank <= 2 else "segmentation" if rank else None
        if task is None:
            raise ModelError(f"cannot tell the task from output '{out}' (unknown rank); pass "
                             "task='classification' or 'segmentation' (CLI: --task)")
    layout = Layout.of(layout) if layout is not None else infer_layout(model, info)
    if task == "segmentation" and "activation" not in kw:
        kw["activation"] = card.activation or infer_activation(model, out, layout, info)
    return ScoreSpec(task=task, layout=layout, **kw)


def evident_activation(model: onnx.ModelProto, output: str) -> bool:
    """Whether the output's producer (Sigmoid, Softmax, LogSoftmax) says what its channels are."""
    producer = next((n for n in model.graph.node if output in n.output), None)
    return producer is not None and producer.op_type in ("Sigmoid", "Softmax", "LogSoftmax")


def infer_activation(model: onnx.ModelProto, output: str, layout: Layout, info: GraphInfo | None = None) -> str:
    """What a segmenter's output channels are, from the graph: a final Sigmoid means independent
    per-channel probabilities ("sigmoid"), a Softmax exclusive classes ("softmax"); with neither, one
    output channel can only be a logit ("logits") and several are taken as exclusive classes
    ("softmax", argmax). The card's nxrt.activation overrides this."""
    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is not None and producer.op_type == "Sigmoid":
        return "sigmoid"
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
        return "softmax"
    shape = (info or GraphInfo.of(model)).shape(output)
    if shape and len(shape) >= 3 and layout.channels(shape) == 1:
        return "logits"
    return "softmax"


def infer_layout(model: onnx.ModelProto, info: GraphInfo | None = None) -> Layout:
    """channels_first or channels_last, from how the first input is used and its shape.

    tf2onnx puts NHWC/NDHWC inputs behind a Transpose to NCHW: that Transpose is the tell.
    Otherwise the channel axis is the short one (axis 1 vs the last axis).
    """
    info = info or GraphInfo.of(model)
    inputs = model_inputs(model)
    if not inputs:
        raise ModelError("the model has no inputs")
    x = inputs[0].name
    rank = info.rank(x) or 0
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] == x:
            perm = list(onnx.helper.get_attribute_value(node.attribute[0])) if node.attribute else []
            if perm == [0, rank - 1] + list(range(1, rank - 1)):
                return Layout.CHANNELS_LAST
    shape = info.shape(x)
    if shape and rank >= 3:
        first, last = shape[1], shape[-1]
        if isinstance(first, int) and isinstance(last, int):
            return Layout.CHANNELS_FIRST if first <= last else Layout.CHANNELS_LAST
        if isinstance(first, int):
            return Layout.CHANNELS_FIRST
        if isinstance(last, int):
            return Layout.CHANNELS_LAST
    return Layout.CHANNELS_FIRST


# --------------------------------------------------------------------------- randomised weights (MPRT)

#: ops whose weight initializers (weight, then bias) make a "layer" of the model for MPRT
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weighted_layers(model: onnx.ModelProto) -> list[tuple[str, list[str]]]:
    """[(node name, its weight initializers)] of every Conv / ConvTranspose / Gemm / MatMul whose
    weights are initializers, from the output back (reverse graph order): the layers MPRT
    randomises one after another. A node without a name is named `<op>_<index>`."""
    inits = {t.name for t in model.graph.initializer}
    layers = []
    for k, node in enumerate(model.graph.node):
        if node.op_type in WEIGHTED_OPS:
            weights = [name for name in node.input[1:] if name in inits]
            if weights:
                layers.append((node.name or f"{node.op_type}_{k}", weights))
    return layers[::-1]


def randomised(model: onnx.ModelProto, initializers: Sequence[str], seed: int) -> onnx.ModelProto:
    """A copy of `model` whose `initializers` hold random values: each drawn from a normal with
    its own tensor's mean and standard deviation (so activations keep their scale; Adebayo et al.
    2018 re-initialise from a truncated normal), a bias with a constant value stays constant.
    Deterministic for a seed: each tensor's draws come from (seed, its position in the list)."""
    from onnx import numpy_helper

    chosen = {name: k for k, name in enumerate(initializers)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name not in chosen:
            continue
        w = numpy_helper.to_array(tensor)
        rng = np.random.default_rng([seed, chosen[tensor.name]])
        std = float(w.std()) if w.size > 1 else 0.0
        new = rng.normal(float(w.mean()), std, size=w.shape) if std > 0 else np.full(w.shape, float(w.mean()))
        tensor.CopyFrom(numpy_helper.from_array(new.astype(w.dtype), tensor.name))
    return out
