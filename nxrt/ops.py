"""Op facts that are not gradients, in one place beside the rule table (`autodiff/rules.py`).

- CONV_OPS: whose outputs are Grad-CAM's candidate layers;
- PROBABILITY_OPS: final activations that `score="logits"` looks through;
- GUIDABLE_OPS: activations guided backprop may guide (`guided_ops`);
- how each differentiable op moves the channel axis (`AXIS_EFFECT`), which Grad-CAM follows to
  find a layer's channel axis in a channels-last model; every op with a VJP rule must be listed
  (tests/test_ops.py checks it), so a new rule cannot silently break Grad-CAM's channel axis;
- RANDOM_OPS and `random_nodes`: what makes a model non-deterministic (refused before anything
  runs: two explanations of one input would differ);
- PIECEWISE_CONSTANT_OPS: ops whose output is constant almost everywhere in their inputs, so a
  gradient path through them carries zero (reported by the autodiff, never a silent zero map);
- `coverage`: which of a model's ops nxrt can differentiate (what `nxrt inspect` reports).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from .errors import ModelError
from .graph import GraphInfo, attr
from .layout import Layout

CONV_OPS = ("Conv", "ConvTranspose")
RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
PIECEWISE_CONSTANT_OPS = ("Round", "Floor", "Ceil", "Sign", "Equal", "Greater", "Less", "GreaterOrEqual",
                          "LessOrEqual", "ArgMax", "ArgMin", "Mod", "IsNaN", "IsInf", "NonZero", "Not", "And", "Or",
                          "Xor", "BitShift")
#: ops whose inputs only give a shape or a size: nothing of their values flows on
SHAPE_ONLY_OPS = ("Shape", "Size", "ConstantOfShape", "EyeLike", "Range")
PROBABILITY_OPS = ("Softmax", "Sigmoid", "LogSoftmax")
GUIDABLE_OPS = ("Relu", "LeakyRelu", "PRelu", "Elu")

#: the output's channel axis is 1 whatever the input's layout (ONNX's NC... convention)
CHANNELS_AT_ONE = "channels at 1"
#: the output keeps the axes of one input (the one `AXES_FROM` names, else the first)
KEEPS_AXES = "keeps axes"
#: the output's axes are a permutation of the input's (`perm`)
PERMUTES = "permutes"
#: the output's axes are not those of any input (reshapes, reductions, products): the channel
#: axis cannot be followed through it, and is taken to be 1
NEW_AXES = "new axes"

AXIS_EFFECT: dict[str, str] = {
    **dict.fromkeys(("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
                     "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"), CHANNELS_AT_ONE),
    **dict.fromkeys(("Abs", "Add", "Cast", "Clip", "Concat", "Div", "Dropout", "Elu", "Erf", "Exp", "Expand",
                     "Gelu", "HardSigmoid", "HardSwish", "Identity", "LayerNormalization", "LeakyRelu", "Log",
                     "LogSoftmax", "Mul", "Neg", "PRelu", "Pad", "Pow", "Reciprocal", "Relu", "Resize", "ScatterND",
                     "Selu", "Sigmoid", "Slice", "Softmax", "Softplus", "Softsign", "Split", "Sqrt", "Sub", "Sum",
                     "Tanh", "Tile", "Upsample", "Where"), KEEPS_AXES),
    "Transpose": PERMUTES,
    **dict.fromkeys(("Einsum", "Flatten", "Gather", "GatherND", "Gemm", "MatMul", "ReduceMax", "ReduceMean",
                     "ReduceMin", "ReduceSum", "Reshape", "Squeeze", "Unsqueeze"), NEW_AXES),
}
#: the input whose axes a KEEPS_AXES op's output has, where it is not the first (Where's first
#: input is its boolean condition)
AXES_FROM = {"Where": 1}


def channel_axis(info: GraphInfo, tensor: str, layout: Layout) -> int:
    """The channel axis of an intermediate tensor. ONNX convolutions are NC..., even inside a
    channels-last model (tf2onnx transposes around them): walk up through the ops that keep or
    permute axes to the nearest op that fixes the channel axis (or the graph input, which has
    the model's layout), then follow the permutations back down."""
    perms: list[list[int]] = []
    seen = set()
    axis = None
    while axis is None:
        node = info.producer.get(tensor)
        rank = info.rank(tensor) or 4
        if node is None or tensor in seen:  # a graph input: the model's own layout
            axis = layout.channel_axis(rank)
            break
        seen.add(tensor)
        effect = AXIS_EFFECT.get(node.op_type, NEW_AXES)
        if effect == PERMUTES:
            perms.append(list(attr(node, "perm") or reversed(range(rank))))
            tensor = node.input[0]
        elif effect == KEEPS_AXES and node.input:
            tensor = node.input[AXES_FROM.get(node.op_type, 0)]
        else:
            axis = 1
    for perm in reversed(perms):  # from the input side down to `tensor`
        axis = perm.index(axis % len(perm))
    return axis


def node_label(node: onnx.NodeProto) -> str:
    return f"{op_key(node)} '{node.name or node.output[0]}'"


def random_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes that draw random numbers: the random ops, and Dropout in training mode (its
    `training_mode` input present and not a constant False)."""
    found = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in RANDOM_OPS]
    info = None
    for node in model.graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            info = info or GraphInfo(model)
            flag = info.const(node.input[2])
            if flag is None or bool(flag.any()):
                found.append(node)
    return found


def check_deterministic(model: onnx.ModelProto, source: str | None = None) -> None:
    """Refuse a model that draws random numbers (exported in training mode): one ModelError
    naming the nodes and the fix."""
    found = random_nodes(model)
    if found:
        names = ", ".join(node_label(n) for n in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ModelError(f"{source or 'the model'} draws random numbers ({names}), so two explanations of one input "
                         "would differ: it was exported in training mode; re-export it in inference mode "
                         "(torch: model.eval(); Keras/TF: training=False; a TF1 graph: nxrt convert tf sets its "
                         "training flags to inference)")


@dataclass(frozen=True)
class Coverage:
    """Op types of a model (with their counts) that nxrt can and cannot differentiate, and the
    random ones (refused whatever their place)."""

    differentiable: dict[str, int]
    without_rule: dict[str, int]
    random: dict[str, int]


def op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def coverage(model: onnx.ModelProto) -> Coverage:
    from .autodiff.rules import RULES, ZERO_GRAD_OPS

    ops = Counter(op_key(n) for n in model.graph.node)
    random = dict(Counter(op_key(n) for n in random_nodes(model)))
    ok = {o: ops[o] for o in sorted(ops) if (o in RULES or o in ZERO_GRAD_OPS) and o not in random}
    bad = {o: ops[o] for o in sorted(ops) if o not in ok and o not in random}
    return Coverage(ok, bad, dict(sorted(random.items())))


def conv_outputs(model: onnx.ModelProto) -> list[str]:
    """Output tensors of every Conv/ConvTranspose node, in graph order (Grad-CAM candidates)."""
    return [n.output[0] for n in model.graph.node if n.op_type in CONV_OPS]


def default_layer(info: GraphInfo, model: onnx.ModelProto, layout: Layout, outputs: int | None) -> str | None:
    """Grad-CAM's default layer: the deepest Conv/ConvTranspose output with more channels than the
    model output has (`outputs`: classes, or a segmenter's output channels) — never a segmenter's
    final 1x1 logits Conv, whose "feature maps" are the prediction itself; the last Conv when none
    has more (or the counts are unknown); None without any Conv."""
    convs = conv_outputs(model)
    for tensor in reversed(convs if isinstance(outputs, int) else []):
        shape = info.shape(tensor)
        if shape:
            channels = shape[channel_axis(info, tensor, layout) % len(shape)]
            if isinstance(channels, int) and channels > outputs:
                return tensor
    return convs[-1] if convs else None
