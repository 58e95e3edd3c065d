"""Vector-Jacobian product rules, one per ONNX op type, emitting standard ONNX nodes.

Each rule is `rule(ctx, node, gy) -> gx`: `gy` holds the gradient tensor name of each node
output (None where no gradient reaches it) and the rule returns one entry per node input
(None for inputs that carry no gradient or that `ctx.needs()` says nobody asked for).
`ctx` is a `nxrt.graph.Builder` (`op`, `const`, `reduce`, ...) with `ctx.info` (a
`GraphInfo` for shapes and constants) and `ctx.needs(name)`.

Recipes and why they were chosen are in DESIGN.md §4; the notable speed choices:
masks are applied as `g * Cast(mask)` (Where is ~10x slower in onnxruntime), stride-1 Conv
gradients are Convs with flipped weights, MaxPool uses its own Indices output (or, for OpenVINO,
equality with each window's maximum: `MAXPOOL_RULES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelError
from ..graph import attr, attr_str

Rule = Callable[..., list]
RULES: dict[str, Rule] = {}
#: Rules that replace the standard ones in guided mode (key: op type).
GUIDED_RULES: dict[str, Rule] = {}
#: Ops whose outputs carry no gradient at all (piecewise constant or integer-valued).
ZERO_GRAD_OPS = {
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    "Not", "And", "Or", "Xor", "NonZero", "Round", "Floor", "Ceil", "Sign", "ConstantOfShape",
    "Range", "OneHot", "IsNaN", "IsInf", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Constant", "EyeLike", "BitShift", "Mod",
}
FLOAT = TensorProto.FLOAT


def vjp(*op_types: str, table: dict[str, Rule] = RULES):
    """Register a rule for one or more op types."""

    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            table[op_type] = fn
        return fn

    return register


def unsupported(node: onnx.NodeProto, why: str) -> ModelError:
    return ModelError(f"cannot differentiate {node.op_type} node '{node.name}': {why}")


# --------------------------------------------------------------------------- shared helpers


def mask(ctx, cond: str) -> str:
    """A float 0/1 tensor from a bool condition (cheaper than Where on onnxruntime)."""
    return ctx.op("Cast", cond, to=FLOAT)


def unbroadcast(ctx, g: str, x: str, out: str) -> str:
    """Sum g (shaped like the broadcast result `out`) back down to the shape of `x`."""
    xs, os_ = ctx.info.shape(x), ctx.info.shape(out)
    if xs is None or os_ is None:
        raise ModelError(f"cannot differentiate the broadcast of '{x}' to '{out}': unknown shape; "
                         "export the model with static shapes")
    lead = len(os_) - len(xs)
    axes = [lead + i for i, (dx, do) in enumerate(zip(xs, os_[lead:], strict=True)) if dx == 1 and do != 1]
    if axes:
        g = ctx.reduce("ReduceSum", g, axes, keepdims=True)
    if lead:
        g = ctx.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
    return g


def norm_axes(axes, rank: int) -> list[int]:
    return sorted(a % rank for a in axes)


def reduce_axes(ctx, node: onnx.NodeProto) -> list[int] | None:
    """The axes of a Reduce* node under either opset convention (None: all axes)."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = ctx.info.const(node.input[1])
        if value is None:
            raise unsupported(node, "its axes input is not a constant")
        axes = value.tolist()
    rank = ctx.info.rank(node.input[0])
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank)) if rank is not None else None
    return norm_axes(axes, rank)


def spatial_pads(node: onnx.NodeProto, in_shape, kernel, strides, dilations) -> tuple[list, list]:
    """Explicit (begin, end) pads for Conv/pooling, resolving auto_pad like onnxruntime does."""
    n = len(kernel)
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    pads = attr(node, "pads") or [0] * (2 * n)
    if auto_pad in ("NOTSET", "VALID"):
        if auto_pad == "VALID":
            pads = [0] * (2 * n)
        return list(pads[:n]), list(pads[n:])
    begin, end = [], []
    for i in range(n):
        out = -(-in_shape[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_shape[i])
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def spatial_shape_of(ctx, node, name: str) -> list[int]:
    shape = ctx.info.shape(name)
    if shape is None or any(not isinstance(d, int) for d in shape[2:]):
        raise unsupported(node, f"the spatial shape of '{name}' is not static ({shape}); give the "
                                "input a fixed size (nxrt fixes it from the case when explaining)")
    return list(shape[2:])


def slice_spatial(ctx, g: str, begin: list[int], length: list[int]) -> str:
    axes = list(range(2, 2 + len(begin)))
    return ctx.op("Slice", g, ctx.ints(begin), ctx.ints([b + n for b, n in zip(begin, length, strict=True)]),
                  ctx.ints(axes))


# --------------------------------------------------------------------------- elementwise arithmetic


@vjp("Add")
def _add(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    return [unbroadcast(ctx, g, a, y) if ctx.needs(a) else None,
            unbroadcast(ctx, g, b, y) if ctx.needs(b) else None]


@vjp("Sub")
def _sub(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    return [unbroadcast(ctx, g, a, y) if ctx.needs(a) else None,
            unbroadcast(ctx, ctx.op("Neg", g), b, y) if ctx.needs(b) else None]


@vjp("Mul")
def _mul(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    return [unbroadcast(ctx, ctx.op("Mul", g, b), a, y) if ctx.needs(a) else None,
            unbroadcast(ctx, ctx.op("Mul", g, a), b, y) if ctx.needs(b) else None]


@vjp("Div")
def _div(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    ga = unbroadcast(ctx, ctx.op("Div", g, b), a, y) if ctx.needs(a) else None
    gb = None
    if ctx.needs(b):
        gb = unbroadcast(ctx, ctx.op("Neg", ctx.op("Div", ctx.op("Mul", g, y), b)), b, y)
    return [ga, gb]


@vjp("Sum")
def _sum(ctx, node, gy):
    return [unbroadcast(ctx, gy[0], x, node.output[0]) if ctx.needs(x) else None for x in node.input]


@vjp("Pow")
def _pow(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    ga = gb = None
    if ctx.needs(a):
        p = ctx.info.const(b)
        if p is not None and p.size == 1 and float(p) == 2.0:
            local = ctx.op("Mul", a, ctx.const(2.0))
        elif p is not None and p.size == 1:
            local = ctx.op("Mul", ctx.op("Pow", a, ctx.const(float(p) - 1.0)), ctx.const(float(p)))
        else:
            local = ctx.op("Mul", ctx.op("Pow", a, ctx.op("Sub", b, ctx.const(1.0))), b)
        ga = unbroadcast(ctx, ctx.op("Mul", g, local), a, y)
    if ctx.needs(b):
        gb = unbroadcast(ctx, ctx.op("Mul", ctx.op("Mul", g, y), ctx.op("Log", a)), b, y)
    return [ga, gb]


@vjp("Neg")
def _neg(ctx, node, gy):
    return [ctx.op("Neg", gy[0])]


@vjp("Sqrt")
def _sqrt(ctx, node, gy):
    return [ctx.op("Div", ctx.op("Mul", gy[0], ctx.const(0.5)), node.output[0])]


@vjp("Exp")
def _exp(ctx, node, gy):
    return [ctx.op("Mul", gy[0], node.output[0])]


@vjp("Log")
def _log(ctx, node, gy):
    return [ctx.op("Div", gy[0], node.input[0])]


@vjp("Reciprocal")
def _reciprocal(ctx, node, gy):
    y = node.output[0]
    return [ctx.op("Neg", ctx.op("Mul", gy[0], ctx.op("Mul", y, y)))]


@vjp("Abs")
def _abs(ctx, node, gy):
    return [ctx.op("Mul", gy[0], ctx.op("Sign", node.input[0]))]


@vjp("Identity", "Dropout")
def _identity(ctx, node, gy):
    return [gy[0]] + [None] * (len(node.input) - 1)


@vjp("Cast")
def _cast(ctx, node, gy):
    to = ctx.info.elem_type(node.input[0]) or FLOAT
    return [ctx.op("Cast", gy[0], to=to)]


@vjp("Where")
def _where(ctx, node, gy):
    g, (cond, a, b), y = gy[0], node.input, node.output[0]
    m = mask(ctx, cond)
    ga = unbroadcast(ctx, ctx.op("Mul", g, m), a, y) if ctx.needs(a) else None
    gb = None
    if ctx.needs(b):
        gb = unbroadcast(ctx, ctx.op("Mul", g, ctx.op("Sub", ctx.const(1.0), m)), b, y)
    return [None, ga, gb]


# --------------------------------------------------------------------------- activations


#: 2^100: y * STEP is >= 1 for every y >= 2^-100 (~7.9e-31) and <= low for y <= 0
STEP = float(2.0 ** 100)


def step(ctx, y: str, low: float = 0.0) -> str:
    """Clip(y * 2^100, low, 1): `low` where y <= 0, 1 where y >= 7.9e-31 (between only for positive y
    below that, far under any activation). Two vectorised float passes: measured 2.2x faster in
    onnxruntime than Greater + Cast + Mul + Add for the LeakyRelu slope (38 ms vs 85 ms, 4x32x64^3)."""
    return ctx.op("Clip", ctx.op("Mul", y, ctx.const(STEP)), ctx.const(low), ctx.const(1.0))


@vjp("Relu")
def _relu(ctx, node, gy):
    # the mask is taken from the output so onnxruntime can still fuse Conv+Relu in the forward
    return [ctx.op("Mul", gy[0], step(ctx, node.output[0]))]


@vjp("Relu", table=GUIDED_RULES)
def _guided_relu(ctx, node, gy):
    # guided backprop (Springenberg et al.): pass only positive gradients through positive units
    return [ctx.op("Mul", ctx.op("Relu", gy[0]), step(ctx, node.output[0]))]


def _positive_mask(ctx, node) -> str:
    return mask(ctx, ctx.op("Greater", node.input[0], ctx.const(0.0)))


@vjp("LeakyRelu")
def _leaky_relu(ctx, node, gy):
    alpha = attr(node, "alpha", 0.01)
    if 0.0 <= alpha <= 1.0:  # slope 1 where y > 0, alpha elsewhere (y > 0 exactly where x > 0)
        return [ctx.op("Mul", gy[0], step(ctx, node.output[0], alpha))]
    # other slopes: m*(1-alpha)+alpha from the input's sign (no Where: see module doc)
    source = node.input[0]
    m = mask(ctx, ctx.op("Greater", source, ctx.const(0.0)))
    slope = ctx.op("Add", ctx.op("Mul", m, ctx.const(1.0 - alpha)), ctx.const(alpha))
    return [ctx.op("Mul", gy[0], slope)]


@vjp("PRelu")
def _prelu(ctx, node, gy):
    g, (x, slope), y = gy[0], node.input, node.output[0]
    m = _positive_mask(ctx, node)
    off = ctx.op("Sub", ctx.const(1.0), m)
    gx = ctx.op("Mul", g, ctx.op("Add", m, ctx.op("Mul", off, slope))) if ctx.needs(x) else None
    gs = unbroadcast(ctx, ctx.op("Mul", ctx.op("Mul", g, x), off), slope, y) if ctx.needs(slope) else None
    return [gx, gs]


@vjp("Elu")
def _elu(ctx, node, gy):
    alpha = attr(node, "alpha", 1.0)
    m = _positive_mask(ctx, node)
    neg = ctx.op("Mul", ctx.op("Sub", ctx.const(1.0), m), ctx.op("Add", node.output[0], ctx.const(alpha)))
    return [ctx.op("Mul", gy[0], ctx.op("Add", m, neg))]


@vjp("Selu")
def _selu(ctx, node, gy):
    alpha = attr(node, "alpha", 1.67326319217681884765625)
    gamma = attr(node, "gamma", 1.05070102214813232421875)
    m = _positive_mask(ctx, node)
    pos = ctx.op("Mul", m, ctx.const(gamma))
    neg = ctx.op("Mul", ctx.op("Sub", ctx.const(1.0), m), ctx.op("Add", node.output[0], ctx.const(gamma * alpha)))
    return [ctx.op("Mul", gy[0], ctx.op("Add", pos, neg))]


@vjp("Sigmoid")
def _sigmoid(ctx, node, gy):
    y = node.output[0]
    return [ctx.op("Mul", gy[0], ctx.op("Mul", y, ctx.op("Sub", ctx.const(1.0), y)))]


@vjp("Tanh")
def _tanh(ctx, node, gy):
    y = node.output[0]
    return [ctx.op("Mul", gy[0], ctx.op("Sub", ctx.const(1.0), ctx.op("Mul", y, y)))]


@vjp("Softplus")
def _softplus(ctx, node, gy):
    return [ctx.op("Mul", gy[0], ctx.op("Sigmoid", node.input[0]))]


@vjp("Softsign")
def _softsign(ctx, node, gy):
    d = ctx.op("Add", ctx.const(1.0), ctx.op("Abs", node.input[0]))
    return [ctx.op("Div", gy[0], ctx.op("Mul", d, d))]


def _softmax_axis(ctx, node) -> int:
    if ctx.info.opset < 13:
        raise unsupported(node, "Softmax before opset 13 flattens its input; convert the model to opset >= 13")
    return attr(node, "axis", -1)


@vjp("Softmax")
def _softmax(ctx, node, gy):
    g, y = gy[0], node.output[0]
    axis = _softmax_axis(ctx, node)
    inner = ctx.reduce("ReduceSum", ctx.op("Mul", g, y), [axis], keepdims=True)
    return [ctx.op("Mul", y, ctx.op("Sub", g, inner))]


@vjp("LogSoftmax")
def _log_softmax(ctx, node, gy):
    g, y = gy[0], node.output[0]
    axis = _softmax_axis(ctx, node)
    total = ctx.reduce("ReduceSum", g, [axis], keepdims=True)
    return [ctx.op("Sub", g, ctx.op("Mul", ctx.op("Exp", y), total))]


@vjp("HardSigmoid")
def _hard_sigmoid(ctx, node, gy):
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    t = ctx.op("Add", ctx.op("Mul", node.input[0], ctx.const(alpha)), ctx.const(beta))
    inside = ctx.op("And", ctx.op("Greater", t, ctx.const(0.0)), ctx.op("Less", t, ctx.const(1.0)))
    return [ctx.op("Mul", gy[0], ctx.op("Mul", mask(ctx, inside), ctx.const(alpha)))]


@vjp("HardSwish")
def _hard_swish(ctx, node, gy):
    x = node.input[0]
    # d/dx x*clip(x/6+1/2, 0, 1) = 0 below -3, 1 above 3, x/3 + 1/2 between
    mid = ctx.op("Add", ctx.op("Mul", x, ctx.const(1.0 / 3.0)), ctx.const(0.5))
    inside = mask(ctx, ctx.op("And", ctx.op("Greater", x, ctx.const(-3.0)), ctx.op("Less", x, ctx.const(3.0))))
    above = mask(ctx, ctx.op("GreaterOrEqual", x, ctx.const(3.0)))
    return [ctx.op("Mul", gy[0], ctx.op("Add", ctx.op("Mul", inside, mid), above))]


@vjp("Erf")
def _erf(ctx, node, gy):
    x = node.input[0]
    dens = ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x)))
    return [ctx.op("Mul", gy[0], ctx.op("Mul", dens, ctx.const(2.0 / math.sqrt(math.pi))))]


@vjp("Gelu")
def _gelu(ctx, node, gy):
    x = node.input[0]
    if attr_str(node, "approximate", "none") == "tanh":
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = ctx.op("Mul", x, x)
        u = ctx.op("Mul", ctx.op("Mul", x, ctx.op("Add", ctx.const(1.0), ctx.op("Mul", x2, ctx.const(k)))),
                   ctx.const(c))
        t = ctx.op("Tanh", u)
        du = ctx.op("Mul", ctx.op("Add", ctx.const(1.0), ctx.op("Mul", x2, ctx.const(3 * k))), ctx.const(c))
        sech2 = ctx.op("Sub", ctx.const(1.0), ctx.op("Mul", t, t))
        local = ctx.op("Add", ctx.op("Mul", ctx.op("Add", ctx.const(1.0), t), ctx.const(0.5)),
                       ctx.op("Mul", ctx.op("Mul", ctx.op("Mul", x, sech2), du), ctx.const(0.5)))
    else:
        cdf = ctx.op("Mul", ctx.op("Add", ctx.const(1.0), ctx.op("Erf", ctx.op("Mul", x, ctx.const(
            1.0 / math.sqrt(2.0))))), ctx.const(0.5))
        pdf = ctx.op("Mul", ctx.op("Exp", ctx.op("Mul", ctx.op("Mul", x, x), ctx.const(-0.5))),
                     ctx.const(1.0 / math.sqrt(2.0 * math.pi)))
        local = ctx.op("Add", cdf, ctx.op("Mul", x, pdf))
    return [ctx.op("Mul", gy[0], local)]


@vjp("Clip")
def _clip(ctx, node, gy):
    x = node.input[0]
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if ctx.info.opset < 11:
        lo, hi = ctx.const(attr(node, "min", -3.4e38)), ctx.const(attr(node, "max", 3.4e38))
    keep = None
    for bound, cmp in ((lo, "GreaterOrEqual"), (hi, "LessOrEqual")):
        if bound:
            inside = ctx.op(cmp, x, bound)
            keep = inside if keep is None else ctx.op("And", keep, inside)
    g = gy[0] if keep is None else ctx.op("Mul", gy[0], mask(ctx, keep))
    return [g] + [None] * (len(node.input) - 1)


# --------------------------------------------------------------------------- linear algebra


def _swap_last(ctx, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return ctx.op("Transpose", x, perm=perm)


@vjp("MatMul")
def _matmul(ctx, node, gy):
    g, (a, b), y = gy[0], node.input, node.output[0]
    ra, rb = ctx.info.rank(a), ctx.info.rank(b)
    if ra is None or rb is None:
        raise unsupported(node, "operand ranks are unknown")
    ga = gb = None
    if ra >= 2 and rb >= 2:
        if ctx.needs(a):
            ga = unbroadcast(ctx, ctx.op("MatMul", g, _swap_last(ctx, b, rb)), a, y)
        if ctx.needs(b):
            gb = unbroadcast(ctx, ctx.op("MatMul", _swap_last(ctx, a, ra), g), b, y)
    elif rb == 1:  # y[..., m] = sum_k a[..., m, k] b[k]
        if ctx.needs(a):
            ga = ctx.op("Mul", ctx.unsqueeze(g, [-1]), b)
        if ctx.needs(b):
            # g as a row times a flattened to [rows, k]; no Transpose before the MatMul: onnxruntime
            # 1.31 fuses Transpose+MatMul with a 1-D operand into a wrong FusedMatMul
            k = ctx.info.shape(b)[0]
            row = ctx.op("MatMul", ctx.op("Reshape", g, ctx.ints([1, -1])), ctx.op("Reshape", a, ctx.ints([-1, k])))
            gb = ctx.op("Reshape", row, ctx.ints([k]))
    else:  # ra == 1: y[..., n] = sum_k a[k] b[..., k, n]
        if ctx.needs(a):
            per_batch = ctx.squeeze(ctx.op("MatMul", b, ctx.unsqueeze(g, [-1])), [-1])
            ga = ctx.reduce("ReduceSum", per_batch, list(range(rb - 2)), keepdims=False) if rb > 2 else per_batch
        if ctx.needs(b):
            # [k, 1] * [..., 1, n] is already b's shape: a has no batch axes to broadcast
            gb = ctx.op("Mul", ctx.unsqueeze(a, [-1]), ctx.unsqueeze(g, [-2]))
    return [ga, gb]


def _einsum_terms(ctx, node) -> tuple[list[str], str]:
    """The equation's input terms and output term with every '...' spelled out in letters (its dims
    must then be equal across operands: broadcasting through an ellipsis is not differentiated) and
    an implicit output made explicit (numpy's rule: the ellipsis, then the letters used once, sorted)."""
    eq = attr_str(node, "equation").replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    ranks = [ctx.info.rank(t) for t in node.input]
    if any(r is None for r in ranks):
        raise unsupported(node, "operand ranks are unknown")
    letters = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
    widths = [r - (len(t) - 3) for t, r in zip(terms, ranks, strict=True) if "..." in t]
    wide = max(widths, default=0)
    dots = "".join(letters[:wide])
    spelled, sizes = [], {}
    for term, name in zip(terms, node.input, strict=True):
        width = ctx.info.rank(name) - (len(term) - 3) if "..." in term else 0
        term = term.replace("...", dots[wide - width:])
        shape = ctx.info.shape(name) or []
        for c, d in zip(term, shape, strict=False):
            if c in dots and c in sizes and sizes[c] != d:
                raise unsupported(node, "operands broadcast through '...'")
            sizes.setdefault(c, d)
        if len(set(term)) != len(term):
            raise unsupported(node, f"a repeated index in '{term}' (a diagonal)")
        spelled.append(term)
    if arrow:
        out = rhs.replace("...", dots)
    else:
        once = sorted(c for c in set("".join(spelled)) if "".join(spelled).count(c) == 1 and c not in dots)
        out = dots + "".join(once)
    return spelled, out


@vjp("Einsum")
def _einsum(ctx, node, gy):
    """d/d operand k of einsum(terms -> out): einsum(out, the other terms -> term k); indices that
    only operand k has (summed inside it) come back by broadcasting."""
    terms, out = _einsum_terms(ctx, node)
    grads = [None] * len(node.input)
    for k, (term, name) in enumerate(zip(terms, node.input, strict=True)):
        if not ctx.needs(name):
            continue
        others = [t for j, t in enumerate(terms) if j != k]
        known = set(out).union(*others)
        kept = "".join(c for c in term if c in known)
        g = ctx.op("Einsum", gy[0], *[n for j, n in enumerate(node.input) if j != k],
                   equation=",".join([out, *others]) + "->" + kept)
        lone = [i for i, c in enumerate(term) if c not in known]
        if lone:
            g = ctx.op("Expand", ctx.unsqueeze(g, lone), ctx.shape(name))
        grads[k] = g
    return grads


@vjp("Gemm")
def _gemm(ctx, node, gy):
    g = gy[0]
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    ta, tb = attr(node, "transA", 0), attr(node, "transB", 0)
    out = [None] * len(node.input)
    if ctx.needs(a):
        out[0] = (ctx.op("Gemm", b, g, alpha=alpha, transA=tb, transB=1) if ta
                  else ctx.op("Gemm", g, b, alpha=alpha, transA=0, transB=0 if tb else 1))
    if ctx.needs(b):
        out[1] = (ctx.op("Gemm", g, a, alpha=alpha, transA=1, transB=ta) if tb
                  else ctx.op("Gemm", a, g, alpha=alpha, transA=0 if ta else 1, transB=0))
    if c and ctx.needs(c):
        gc = g if beta == 1.0 else ctx.op("Mul", g, ctx.const(beta))
        out[2] = unbroadcast(ctx, gc, c, node.output[0])
    return out


# --------------------------------------------------------------------------- convolution


def _conv_geometry(node, w_shape):
    kernel = attr(node, "kernel_shape") or list(w_shape[2:])
    n = len(kernel)
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    return kernel, strides, dilations


def _flipped_weight(w: np.ndarray, group: int) -> np.ndarray:
    """Weights of the stride-1 Conv that computes the data gradient of a Conv with weights w."""
    co, ci_g = w.shape[:2]
    spatial = w.shape[2:]
    w = w.reshape(group, co // group, ci_g, *spatial).swapaxes(1, 2).reshape(ci_g * group, co // group, *spatial)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


@vjp("Conv")
def _conv(ctx, node, gy):
    g = gy[0]
    x, w = node.input[0], node.input[1]
    out = [None] * len(node.input)
    if any(ctx.needs(t) for t in node.input[1:] if t):
        raise unsupported(node, "gradients with respect to weights or bias are not supported")
    if not ctx.needs(x):
        return out
    w_shape = ctx.info.shape(w)
    in_shape = spatial_shape_of(ctx, node, x)
    kernel, strides, dilations = _conv_geometry(node, w_shape)
    group = attr(node, "group", 1)
    pb, pe = spatial_pads(node, in_shape, kernel, strides, dilations)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    w_value = ctx.info.const(w)
    if all(s == 1 for s in strides) and w_value is not None:
        # stride 1: the adjoint is a Conv with flipped, channel-swapped weights (as fast as the forward)
        new_b = [e - 1 - p for e, p in zip(eff, pb, strict=True)]
        new_e = [e - 1 - p for e, p in zip(eff, pe, strict=True)]
        if min(new_b + new_e) >= 0:
            wf = ctx.const(_flipped_weight(w_value, group), dtype=w_value.dtype, hint="flipped_weight")
            out[0] = ctx.op("Conv", g, wf, dilations=dilations, group=group, pads=new_b + new_e,
                            kernel_shape=list(kernel))
            return out
    op = [(n + b + e - k) % s for n, b, e, k, s in zip(in_shape, pb, pe, eff, strides, strict=True)]
    attrs = dict(strides=strides, dilations=dilations, group=group, output_padding=op, kernel_shape=list(kernel))
    if pb == pe:
        out[0] = ctx.op("ConvTranspose", g, w, pads=pb + pe, **attrs)
    else:  # asymmetric pads: zero-pad ConvTranspose then crop (portable to the CUDA provider)
        full = ctx.op("ConvTranspose", g, w, pads=[0] * (2 * len(kernel)), **attrs)
        out[0] = slice_spatial(ctx, full, pb, in_shape)
    return out


@vjp("ConvTranspose")
def _conv_transpose(ctx, node, gy):
    g = gy[0]
    x, w = node.input[0], node.input[1]
    out = [None] * len(node.input)
    if any(ctx.needs(t) for t in node.input[1:] if t):
        raise unsupported(node, "gradients with respect to weights or bias are not supported")
    if not ctx.needs(x):
        return out
    in_shape = spatial_shape_of(ctx, node, x)
    y_shape = spatial_shape_of(ctx, node, node.output[0])
    kernel, strides, dilations = _conv_geometry(node, ctx.info.shape(w))
    group = attr(node, "group", 1)
    n = len(kernel)
    out_pad = attr(node, "output_padding") or [0] * n
    pads = attr(node, "pads")
    if pads is None or attr_str(node, "auto_pad", "NOTSET") != "NOTSET" or attr(node, "output_shape"):
        # resolve the padding that produced the inferred output size (what onnxruntime did)
        upper = attr_str(node, "auto_pad", "NOTSET") == "SAME_UPPER"  # NOTSET splits like SAME_LOWER
        pb, pe = [], []
        for i in range(n):
            total = strides[i] * (in_shape[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 - y_shape[i]
            small, large = total // 2, total - total // 2
            pb.append(small if upper else large)
            pe.append(large if upper else small)
        if min(pb + pe) < 0:
            raise unsupported(node, "output_shape larger than the natural output size")
    else:
        pb, pe = list(pads[:n]), list(pads[n:])
    out[0] = ctx.op("Conv", g, w, strides=strides, dilations=dilations, group=group, pads=pb + pe,
                    kernel_shape=list(kernel))
    return out


# --------------------------------------------------------------------------- pooling


@vjp("MaxPool")
def _max_pool(ctx, node, gy):
    if attr(node, "storage_order", 0):
        raise unsupported(node, "storage_order=1 (column-major indices)")
    return [_max_pool_by_indices(ctx, node, gy[0])]


def _max_pool_by_equality(ctx, node, gy):
    """MaxPool's gradient without its Indices output: each window's gradient goes to the first
    position (row-major) equal to the window's maximum. OpenVINO runs MaxPool-with-indices in a
    slow reference kernel (0.34 s of ResNet50's 0.50 s gradient); onnxruntime is faster with indices."""
    if attr(node, "storage_order", 0):
        raise unsupported(node, "storage_order=1 (column-major indices)")
    x, y = node.input[0], node.output[0]
    in_shape, out_shape = ctx.info.shape(x), ctx.info.shape(y)
    if in_shape is None or out_shape is None or any(not isinstance(d, int) for d in [*in_shape[2:], *out_shape[2:]]):
        return [_max_pool_by_indices(ctx, node, gy[0])]
    kernel = attr(node, "kernel_shape")
    n = len(kernel)
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    in_shape, out_shape = list(in_shape[2:]), list(out_shape[2:])
    pb, _ = spatial_pads(node, in_shape, kernel, strides, dilations)
    natural = [(m - 1) * s + (k - 1) * d + 1 for m, s, k, d in zip(out_shape, strides, kernel, dilations, strict=True)]
    # -inf never wins a window; the end is padded (or not) to exactly what the windows read
    end = [max(0, L - b - i) for L, b, i in zip(natural, pb, in_shape, strict=True)]
    padded = ctx.op("Pad", x, ctx.ints([0, 0, *pb, 0, 0, *end]), ctx.const(np.float32(-np.inf)))
    axes = list(range(2, 2 + n))
    offsets = list(np.ndindex(*kernel))
    taken, routed = None, {}
    for offset in offsets:  # row-major over the window: ties go to the first maximum, like torch and onnxruntime
        begin = [o * d for o, d in zip(offset, dilations, strict=True)]
        seen = ctx.op("Slice", padded, ctx.ints(begin), ctx.ints([b + (m - 1) * s + 1 for b, m, s in
                                                                   zip(begin, out_shape, strides, strict=True)]),
                      ctx.ints(axes), ctx.ints(strides))
        hit = ctx.op("Equal", seen, y)
        first = hit if taken is None else ctx.op("And", hit, ctx.op("Not", taken))
        taken = hit if taken is None else ctx.op("Or", taken, hit)
        routed[tuple(begin)] = ctx.op("Mul", gy[0], mask(ctx, first))
    return [_place_windows(ctx, routed, strides, pb, in_shape, out_shape)]



def _place_windows(ctx, routed: dict, strides, pb, in_shape, out_shape) -> str:
    """The input's gradient from per-offset window gradients: routed[(p_1, ..)] (shaped like the
    pooled output) lands on padded position o * stride + p. Done with shifts and adds per residue
    of p modulo the stride, then one interleave, no convolution: OpenVINO's grouped ConvTranspose
    for ResNet50's stem took 16 ms of a 0.20 s gradient."""
    n = len(strides)
    shifts = {p: [b // s for b, s in zip(p, strides, strict=True)] for p in routed}
    size = [m + max(q[i] for q in shifts.values()) for i, m in enumerate(out_shape)]
    classes: dict[tuple, str] = {}
    for p, g in routed.items():  # a zero-padded shift by p // stride, summed per residue p % stride
        q = shifts[p]
        after = [M - m - k for M, m, k in zip(size, out_shape, q, strict=True)]
        placed = ctx.op("Pad", g, ctx.ints([0, 0, *q, 0, 0, *after]))
        residue = tuple(b % s for b, s in zip(p, strides, strict=True))
        classes[residue] = ctx.op("Add", classes[residue], placed) if residue in classes else placed
    some = next(iter(classes.values()))
    # (N, C, M_1, 1, M_2, 1, ...) per residue, concatenated along the unit axes, is the interleave
    spread = [0, 0, *[v for M in size for v in (M, 1)]]
    cells = {r: ctx.op("Reshape", t, ctx.ints(spread)) for r, t in classes.items()}
    zero = None
    for axis in reversed(range(n)):  # merge the residues of the last spatial axis first
        merged = {}
        for r in {r[:axis] for r in np.ndindex(*strides)}:
            parts = []
            for k in range(strides[axis]):
                key = (*r, k)
                if key not in cells:  # a residue no window offset reaches (kernel smaller than the stride)
                    if zero is None:
                        zero = ctx.op("Mul", ctx.op("Reshape", some, ctx.ints(spread)), ctx.const(np.float32(0.0)))
                    cells[key] = _zero_cell(ctx, zero, strides, axis + 1)
                parts.append(cells[key])
            merged[r] = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=3 + 2 * axis)
        cells = merged
    full = ctx.op("Reshape", cells[()], ctx.ints([0, 0, *[M * s for M, s in zip(size, strides, strict=True)]]))
    short = [max(0, b + i - M * s) for b, i, M, s in zip(pb, in_shape, size, strides, strict=True)]
    if any(short):  # the windows stop before the input's end (floor mode): those inputs get zero
        full = ctx.op("Pad", full, ctx.ints([0, 0] + [0] * n + [0, 0] + short))
    return slice_spatial(ctx, full, pb, in_shape)


def _zero_cell(ctx, zero: str, strides, merged_from: int) -> str:
    """Zeros shaped like a cell whose axes from `merged_from` on are already interleaved."""
    out = zero
    for axis in range(merged_from, len(strides)):
        if strides[axis] > 1:
            out = ctx.op("Concat", *[out] * strides[axis], axis=3 + 2 * axis)
    return out


#: how MaxPool's gradient finds each window's maximum (`nxrt.augment(maxpool=...)`)
MAXPOOL_RULES: dict[str, Rule] = {"indices": _max_pool, "equality": _max_pool_by_equality}


def _max_pool_by_indices(ctx, node, g: str) -> str:
    """MaxPool's gradient through its own Indices output (when the shapes are not static)."""
    x = node.input[0]
    if len(node.output) < 2 or not node.output[1]:
        # ask the forward MaxPool for the argmax of every window (exact for overlapping windows)
        while len(node.output) < 2:
            node.output.append("")
        node.output[1] = ctx.fresh("maxpool_indices")
    indices = node.output[1]
    flat = ctx.op("ConstantOfShape", ctx.op("Reshape", ctx.op("Size", x), ctx.ints([1])),
                  value=helper.make_tensor("zero", FLOAT, [1], [0.0]))
    scattered = ctx.op("ScatterElements", flat, ctx.op("Reshape", indices, ctx.ints([-1])),
                       ctx.op("Reshape", g, ctx.ints([-1])), axis=0, reduction="add")
    return ctx.reshape_like(scattered, x)


def _pool_divisor(in_shape, kernel, strides, dilations, pb, pe, out_shape, include_pad) -> np.ndarray:
    """1/divisor of every AveragePool output position, as onnxruntime counts it."""
    factors = []
    for n, k, s, d, b, e, m in zip(in_shape, kernel, strides, dilations, pb, pe, out_shape, strict=True):
        lo, hi = (-b, n + e) if include_pad else (0, n)
        counts = []
        for o in range(m):
            pos = o * s - b + np.arange(k) * d
            counts.append(max(1, int(np.sum((pos >= lo) & (pos < hi)))))
        factors.append(1.0 / np.asarray(counts, dtype=np.float64))
    r = factors[0]
    for f in factors[1:]:
        r = np.multiply.outer(r, f)
    return r.astype(np.float32)[None, None]


@vjp("AveragePool")
def _average_pool(ctx, node, gy):
    x, y = node.input[0], node.output[0]
    in_shape = spatial_shape_of(ctx, node, x)
    out_shape = spatial_shape_of(ctx, node, y)
    channels = ctx.info.shape(x)[1]
    if not isinstance(channels, int):
        raise unsupported(node, "unknown channel count")
    kernel = attr(node, "kernel_shape")
    n = len(kernel)
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    pb, pe = spatial_pads(node, in_shape, kernel, strides, dilations)
    r = _pool_divisor(in_shape, kernel, strides, dilations, pb, pe, out_shape,
                      attr(node, "count_include_pad", 0))
    scaled = ctx.op("Mul", gy[0], ctx.const(r, hint="pool_divisor"))
    ones = ctx.const(np.ones([channels, 1, *kernel], np.float32), hint="pool_ones")
    # zero-pad ConvTranspose covers the padded input (and windows past its end under ceil_mode)
    full = ctx.op("ConvTranspose", scaled, ones, strides=strides, dilations=dilations, group=channels,
                  kernel_shape=list(kernel), pads=[0] * (2 * n))
    natural = [(m - 1) * s + (k - 1) * d + 1 for m, s, k, d in zip(out_shape, strides, kernel, dilations, strict=True)]
    short = [max(0, b + i - L) for b, i, L in zip(pb, in_shape, natural, strict=True)]
    if any(short):  # windows stop before the input's end (floor mode): those inputs get zero
        full = ctx.op("Pad", full, ctx.ints([0, 0] + [0] * n + [0, 0] + short))
    return [slice_spatial(ctx, full, pb, in_shape)]


@vjp("GlobalAveragePool")
def _global_average_pool(ctx, node, gy):
    x = node.input[0]
    size = ctx.info.shape(x)
    spatial = size[2:] if size is not None else None
    if spatial is not None and all(isinstance(d, int) for d in spatial):
        scaled = ctx.op("Mul", gy[0], ctx.const(1.0 / float(np.prod(spatial))))
    else:
        n = ctx.op("Cast", ctx.op("Div", ctx.op("Size", x), ctx.op("Size", node.output[0])), to=FLOAT)
        scaled = ctx.op("Div", gy[0], n)
    return [ctx.op("Expand", scaled, ctx.shape(x))]


def _max_reduce_grad(ctx, x: str, y_keep: str, g_keep: str, axes) -> str:
    """Gradient of a max over `axes`, split evenly between tied maxima (like torch.amax)."""
    hit = mask(ctx, ctx.op("Equal", x, y_keep))
    count = ctx.reduce("ReduceSum", hit, axes, keepdims=True)
    return ctx.op("Mul", hit, ctx.op("Div", g_keep, count))


@vjp("GlobalMaxPool")
def _global_max_pool(ctx, node, gy):
    x = node.input[0]
    axes = list(range(2, ctx.info.rank(x)))
    return [_max_reduce_grad(ctx, x, node.output[0], gy[0], axes)]


# --------------------------------------------------------------------------- reductions


def _keep_reduced(ctx, node, t: str, axes) -> str:
    """Put back the reduced axes of a keepdims=0 reduction so t broadcasts against the input."""
    if attr(node, "keepdims", 1) or not axes:
        return t
    return ctx.unsqueeze(t, axes)


@vjp("ReduceSum", "ReduceMean")
def _reduce_sum_mean(ctx, node, gy):
    x = node.input[0]
    axes = reduce_axes(ctx, node)
    g = _keep_reduced(ctx, node, gy[0], axes)
    if node.op_type == "ReduceMean" and axes:
        shape = ctx.info.shape(x)
        dims = [shape[a] for a in axes] if shape else [None]
        if all(isinstance(d, int) for d in dims):
            g = ctx.op("Mul", g, ctx.const(1.0 / float(np.prod(dims))))
        else:
            n = ctx.op("Cast", ctx.op("Div", ctx.op("Size", x), ctx.op("Size", node.output[0])), to=FLOAT)
            g = ctx.op("Div", g, n)
    return [ctx.op("Expand", g, ctx.shape(x))] + [None] * (len(node.input) - 1)


@vjp("ReduceMax", "ReduceMin")
def _reduce_max(ctx, node, gy):
    x = node.input[0]
    axes = reduce_axes(ctx, node)
    y = _keep_reduced(ctx, node, node.output[0], axes)
    g = _keep_reduced(ctx, node, gy[0], axes)
    return [_max_reduce_grad(ctx, x, y, g, axes)] + [None] * (len(node.input) - 1)


# --------------------------------------------------------------------------- normalisation


def _broadcast_channel(value: np.ndarray, rank: int) -> np.ndarray:
    return value.reshape([1, -1] + [1] * (rank - 2))


@vjp("BatchNormalization")
def _batch_norm(ctx, node, gy):
    x, scale, _bias, _mean, var = node.input[:5]
    if attr(node, "training_mode", 0):
        raise unsupported(node, "training_mode=1 (batch statistics); export the model in eval mode")
    if any(ctx.needs(t) for t in node.input[1:]):
        raise unsupported(node, "gradients with respect to normalisation parameters are not supported")
    rank = ctx.info.rank(x)
    eps = attr(node, "epsilon", 1e-5)
    s_value, v_value = ctx.info.const(scale), ctx.info.const(var)
    if s_value is not None and v_value is not None:
        factor = ctx.const(_broadcast_channel(s_value / np.sqrt(v_value.astype(np.float64) + eps), rank)
                           .astype(np.float32), hint="bn_factor")
    else:
        factor = ctx.op("Div", scale, ctx.op("Sqrt", ctx.op("Add", var, ctx.const(eps))))
        factor = ctx.op("Reshape", factor, ctx.ints([1, -1] + [1] * (rank - 2)))
    return [ctx.op("Mul", gy[0], factor)] + [None] * (len(node.input) - 1)


def mean_over(ctx, x: str, axes, sizes) -> str:
    """The mean of x over `axes` (keepdims), one axis at a time, alternating ReduceSum and
    ReduceMean, the summed axes' sizes (`sizes`, one per axis, static) divided out at the end.

    Why: a runtime reduces a whole volume in one running float32 sum. The normalisation gradients
    subtract such means from values of their own size, so their error passes straight into the
    gradient: on an InstanceNorm + LeakyReLU block at 16^3 the input gradient was 3.8e-6 from float64
    on onnxruntime and 2.5e-5 on OpenVINO (whose mean of the upstream gradient was 3e-5 off); one
    axis at a time, 5.1e-7 and 2.0e-6. The kinds alternate because OpenVINO merges consecutive
    reductions of one kind back into a single one."""
    order = sorted(range(len(axes)), key=lambda i: -axes[i])  # innermost (contiguous) axis first
    if len(axes) < 2 or any(not isinstance(sizes[i], int) for i in order):
        return ctx.reduce("ReduceMean", x, axes, keepdims=True)
    out, divisor = x, 1
    for step, i in enumerate(order):
        kind = "ReduceSum" if step % 2 == 0 else "ReduceMean"
        out = ctx.reduce(kind, out, [axes[i]], keepdims=True)
        divisor *= sizes[i] if kind == "ReduceSum" else 1
    return out if divisor == 1 else ctx.op("Mul", out, ctx.const(np.float32(1.0 / divisor)))


def _normalised_backward(ctx, g: str, xhat: str, invstd: str, axes, sizes) -> str:
    """dx = invstd * (g - mean(g) - xhat * mean(g * xhat)), means over the normalised axes."""
    m1 = mean_over(ctx, g, axes, sizes)
    m2 = mean_over(ctx, ctx.op("Mul", g, xhat), axes, sizes)
    inner = ctx.op("Sub", ctx.op("Sub", g, m1), ctx.op("Mul", xhat, m2))
    return ctx.op("Mul", inner, invstd)


def standardise(ctx, x: str, axes, sizes, eps: float) -> tuple[str, str]:
    """(x - mean) / sqrt(var + eps) over `axes` with the staged means of `mean_over`, and 1/sqrt(var + eps)."""
    mean = mean_over(ctx, x, axes, sizes)
    centred = ctx.op("Sub", x, mean)
    var = mean_over(ctx, ctx.op("Mul", centred, centred), axes, sizes)
    invstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.const(eps))))
    return ctx.op("Mul", centred, invstd), invstd


def _no_param_grads(ctx, node):
    if any(ctx.needs(t) for t in node.input[1:] if t):
        raise unsupported(node, "gradients with respect to normalisation parameters are not supported")


@vjp("InstanceNormalization")
def _instance_norm(ctx, node, gy):
    _no_param_grads(ctx, node)
    x, scale = node.input[0], node.input[1]
    g = gy[0]
    rank = ctx.info.rank(x)
    axes = list(range(2, rank))
    # dx = k (g - mean g - xc invstd^2 mean(g xc)), k = scale * invstd per (n, c): written as
    # g*k + xc*A + B with A, B per (n, c), it takes 11 passes over the volume instead of 13
    sizes = list((ctx.info.shape(x) or [None] * rank)[2:])
    mean = mean_over(ctx, x, axes, sizes)
    xc = ctx.op("Sub", x, mean)
    var = mean_over(ctx, ctx.op("Mul", xc, xc), axes, sizes)
    invstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.const(attr(node, "epsilon", 1e-5)))))
    k = ctx.op("Mul", invstd, ctx.op("Reshape", scale, ctx.ints([1, -1] + [1] * (rank - 2))))
    mean_g = mean_over(ctx, g, axes, sizes)
    mean_gxc = mean_over(ctx, ctx.op("Mul", g, xc), axes, sizes)
    a = ctx.op("Neg", ctx.op("Mul", ctx.op("Mul", k, ctx.op("Mul", invstd, invstd)), mean_gxc))
    b = ctx.op("Neg", ctx.op("Mul", k, mean_g))
    dx = ctx.op("Add", ctx.op("Add", ctx.op("Mul", g, k), ctx.op("Mul", xc, a)), b)
    return [dx, None, None]


@vjp("LayerNormalization")
def _layer_norm(ctx, node, gy):
    _no_param_grads(ctx, node)
    x, scale = node.input[0], node.input[1]
    rank = ctx.info.rank(x)
    axis = attr(node, "axis", -1) % rank
    axes = list(range(axis, rank))
    sizes = list((ctx.info.shape(x) or [None] * rank)[axis:])
    xhat, invstd = standardise(ctx, x, axes, sizes, attr(node, "epsilon", 1e-5))
    gs = ctx.op("Mul", gy[0], scale)
    return [_normalised_backward(ctx, gs, xhat, invstd, axes, sizes)] + [None] * (len(node.input) - 1)


@vjp("GroupNormalization")
def _group_norm(ctx, node, gy):
    _no_param_grads(ctx, node)
    x, scale = node.input[0], node.input[1]
    shape = ctx.info.shape(x)
    rank = len(shape)
    groups = attr(node, "num_groups")
    channels = shape[1]
    s_value = ctx.info.const(scale)
    if s_value is None or not isinstance(channels, int):
        raise unsupported(node, "needs a constant scale and a known channel count")
    per_channel = s_value if s_value.size == channels else np.repeat(s_value, channels // groups)
    gs = ctx.op("Mul", gy[0], ctx.const(_broadcast_channel(per_channel.astype(np.float32), rank)))
    spatial = list(shape[2:])
    if all(isinstance(d, int) for d in spatial):  # [N, G, C/G, *spatial]: every axis reduced on its own
        grouped, axes, sizes = ctx.ints([0, groups, channels // groups, *spatial]), list(range(2, rank + 1)), \
            [channels // groups, *spatial]
    else:
        grouped, axes, sizes = ctx.ints([0, groups, -1]), [2], [None]
    xhat, invstd = standardise(ctx, ctx.op("Reshape", x, grouped), axes, sizes, attr(node, "epsilon", 1e-5))
    dx = _normalised_backward(ctx, ctx.op("Reshape", gs, grouped), xhat, invstd, axes, sizes)
    return [ctx.reshape_like(dx, x), None, None]


# --------------------------------------------------------------------------- shape and layout


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx, node, gy):
    return [ctx.reshape_like(gy[0], node.input[0])] + [None] * (len(node.input) - 1)


@vjp("Transpose")
def _transpose(ctx, node, gy):
    perm = attr(node, "perm") or list(reversed(range(ctx.info.rank(node.input[0]))))
    return [ctx.op("Transpose", gy[0], perm=list(np.argsort(perm)))]


@vjp("Expand")
def _expand(ctx, node, gy):
    return [unbroadcast(ctx, gy[0], node.input[0], node.output[0]), None]


@vjp("Tile")
def _tile(ctx, node, gy):
    x = node.input[0]
    repeats = ctx.info.const(node.input[1])
    shape = ctx.info.shape(x)
    if repeats is None or shape is None:
        raise unsupported(node, "needs constant repeats and a known input rank")
    # view g as [r0, d0, r1, d1, ...] (axes repeated once keep a single dim) and sum the r axes
    target, summed = [], []
    for r, d in zip(repeats.tolist(), shape, strict=True):
        if r != 1:
            if not isinstance(d, int):
                raise unsupported(node, "a repeated axis has no static size")
            summed.append(len(target))
            target.append(r)
        target.append(d if isinstance(d, int) else -1)
    if target.count(-1) > 1:
        raise unsupported(node, "more than one axis without a static size")
    g = ctx.op("Reshape", gy[0], ctx.ints(target))
    if summed:
        g = ctx.reduce("ReduceSum", g, summed, keepdims=False)
    return [ctx.reshape_like(g, x), None]


@vjp("Concat")
def _concat(ctx, node, gy):
    rank = ctx.info.rank(node.output[0])
    axis = attr(node, "axis") % rank
    out, offset = [], 0
    for x in node.input:
        size = (ctx.info.shape(x) or [None] * rank)[axis]
        if not isinstance(size, int):
            raise unsupported(node, f"the size of '{x}' along the concat axis is not static")
        out.append(ctx.op("Slice", gy[0], ctx.ints([offset]), ctx.ints([offset + size]), ctx.ints([axis]))
                   if ctx.needs(x) else None)
        offset += size
    return out


@vjp("Split")
def _split(ctx, node, gy):
    rank = ctx.info.rank(node.input[0])
    axis = attr(node, "axis", 0) % rank
    parts = [g if g is not None else ctx.zeros_like(y) for g, y in zip(gy, node.output, strict=True)]
    return [ctx.op("Concat", *parts, axis=axis)] + [None] * (len(node.input) - 1)


@vjp("Slice")
def _slice(ctx, node, gy):
    x = node.input[0]
    shape = ctx.info.shape(x)
    consts = [ctx.info.const(t) if i < len(node.input) and node.input[i] else None
              for i, t in enumerate(node.input[:5] + [""] * (5 - len(node.input))) if i >= 1]
    starts, ends, axes, steps = consts
    if ctx.info.opset < 10:
        starts, ends, axes = (np.array(attr(node, k)) if attr(node, k) is not None else None
                              for k in ("starts", "ends", "axes"))
    if starts is None or ends is None or shape is None:
        raise unsupported(node, "needs constant starts/ends and a known input rank")
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes.tolist()]
    steps = [1] * len(axes) if steps is None else steps.tolist()
    g = gy[0]
    before, after = [0] * rank, [0] * rank
    reverse, strided = [], []
    for a, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps, strict=True):
        if not isinstance(shape[a], int):
            raise unsupported(node, f"axis {a} of '{x}' has no static size")
        taken = range(*slice(s, e, st).indices(shape[a]))
        if st < 0:
            reverse.append(a)  # undone first: the gradient then runs in increasing index order
        if abs(st) != 1 and len(taken) > 1:
            strided.append((a, abs(st), len(taken)))
        lo = min(taken) if len(taken) else 0
        before[a], after[a] = lo, shape[a] - lo - (len(taken) - 1) * abs(st) - 1 if len(taken) else shape[a]
    if reverse:
        big = np.iinfo(np.int64).max
        g = ctx.op("Slice", g, ctx.ints([-1] * len(reverse)), ctx.ints([-big] * len(reverse)),
                   ctx.ints(reverse), ctx.ints([-1] * len(reverse)))
    # A step k > 1 takes every k-th element: interleave k - 1 zeros after each gradient entry (a new
    # axis padded, then merged), so entry i lands at offset i * k; the Pad below adds the offset
    # of the first one and the elements past the last one.
    sizes = list(ctx.info.shape(node.output[0]) or [])
    for a, k, count in strided:
        if len(sizes) != rank or any(not isinstance(d, int) for d in sizes[a + 1:]) or a == 0:
            raise unsupported(node, f"a step of {k} along axis {a} needs the static sizes of the axes after it")
        spread = ctx.op("Pad", ctx.unsqueeze(g, [a + 1]), ctx.ints([0] * (rank + 1) + [0] * (a + 1) + [k - 1]
                                                                  + [0] * (rank - a - 1)))
        sizes[a] = count * k
        merged = ctx.op("Reshape", spread, ctx.ints([0] * a + [count * k] + sizes[a + 1:]))
        g = ctx.op("Slice", merged, ctx.ints([0]), ctx.ints([(count - 1) * k + 1]), ctx.ints([a]))
        sizes[a] = (count - 1) * k + 1
    return [ctx.op("Pad", g, ctx.ints(before + after))] + [None] * (len(node.input) - 1)


@vjp("Pad")
def _pad(ctx, node, gy):
    x = node.input[0]
    mode = attr_str(node, "mode", "constant")
    pads = attr(node, "pads") if ctx.info.opset < 11 else ctx.info.const(node.input[1])
    if pads is None:
        raise unsupported(node, "its pads are not constant")
    pads = list(np.asarray(pads).tolist())
    if not any(pads):  # exporters emit zero pads (any mode) where sizes already agree
        return [gy[0]] + [None] * (len(node.input) - 1)
    if mode != "constant":
        raise unsupported(node, f"mode '{mode}' with non-zero pads (only constant padding is differentiable)")
    rank = ctx.info.rank(x)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [a % rank for a in ctx.info.const(node.input[3]).tolist()]
    k = len(axes)
    begin, end = pads[:k], pads[k:]
    g = gy[0]
    if min(begin + end) < 0:  # the forward cropped: put zeros back where it cropped
        full_b, full_e = [0] * rank, [0] * rank
        for a, b, e in zip(axes, begin, end, strict=True):
            full_b[a], full_e[a] = max(0, -b), max(0, -e)
        g = ctx.op("Pad", g, ctx.ints(full_b + full_e))
    shape = ctx.info.shape(x)
    starts, ends, sl_axes = [], [], []
    for a, b, e in zip(axes, begin, end, strict=True):
        if b > 0 or e > 0:
            if not isinstance(shape[a], int):
                raise unsupported(node, f"axis {a} of '{x}' has no static size")
            starts.append(max(b, 0))
            ends.append(max(b, 0) + shape[a])
            sl_axes.append(a)
    if sl_axes:
        g = ctx.op("Slice", g, ctx.ints(starts), ctx.ints(ends), ctx.ints(sl_axes))
    return [g] + [None] * (len(node.input) - 1)


@vjp("Gather")
def _gather(ctx, node, gy):
    data, indices = node.input
    idx = ctx.info.const(indices)
    shape = ctx.info.shape(data)
    if idx is None or shape is None:
        raise unsupported(node, "needs constant indices and a known data rank")
    rank = len(shape)
    axis = attr(node, "axis", 0) % rank
    if not isinstance(shape[axis], int):
        raise unsupported(node, f"axis {axis} of '{data}' has no static size")
    idx = np.where(idx < 0, idx + shape[axis], idx).astype(np.int64)
    ni = idx.ndim
    g = gy[0]
    # bring the gathered axis to the front, scatter-add into it, and move it back
    g_perm = list(range(axis, axis + ni)) + list(range(axis)) + list(range(axis + ni, rank - 1 + ni))
    if g_perm != list(range(len(g_perm))):
        g = ctx.op("Transpose", g, perm=g_perm)
    d_perm = [axis] + [a for a in range(rank) if a != axis]
    zeros = ctx.zeros_like(ctx.op("Transpose", data, perm=d_perm) if axis else data)
    scattered = ctx.op("ScatterND", zeros, ctx.const(idx[..., None], np.int64, "gather_indices"), g,
                       reduction="add")
    if axis:
        scattered = ctx.op("Transpose", scattered, perm=list(np.argsort(d_perm)))
    return [scattered, None]


def _full_nd_indices(ctx, node, indices: np.ndarray, batch_dims: int, data_shape) -> np.ndarray:
    """GatherND/ScatterND indices with their `batch_dims` leading coordinates written out, so the
    gradient's ScatterND/GatherND can run with batch_dims=0 (shapes must be static there)."""
    if not batch_dims:
        return indices
    lead = indices.shape[:batch_dims]
    if any(not isinstance(d, int) for d in data_shape[:batch_dims]) or tuple(data_shape[:batch_dims]) != lead:
        raise unsupported(node, "batch_dims over axes without static sizes")
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in lead], indexing="ij"), axis=-1)
    grid = grid.reshape(lead + (1,) * (indices.ndim - 1 - batch_dims) + (batch_dims,))
    grid = np.broadcast_to(grid, indices.shape[:-1] + (batch_dims,))
    return np.concatenate([grid, indices], axis=-1).astype(np.int64)


def _nd_indices(ctx, node, data: str, indices: str) -> np.ndarray:
    idx, shape = ctx.info.const(indices), ctx.info.shape(data)
    if idx is None or shape is None:
        raise unsupported(node, "needs constant indices and a known data shape")
    batch_dims = attr(node, "batch_dims", 0)
    dims = np.array([d if isinstance(d, int) else -1 for d in shape[batch_dims:batch_dims + idx.shape[-1]]])
    if np.any(idx < 0) and np.any(dims < 0):
        raise unsupported(node, "negative indices into axes without static sizes")
    idx = np.where(idx < 0, idx + dims, idx).astype(np.int64)
    return _full_nd_indices(ctx, node, idx, batch_dims, shape)


@vjp("GatherND")
def _gather_nd(ctx, node, gy):
    data, indices = node.input
    full = _nd_indices(ctx, node, data, indices)
    # every gathered element's gradient added back where it came from (repeated indices add up)
    scattered = ctx.op("ScatterND", ctx.zeros_like(data), ctx.const(full, np.int64, "gather_nd_indices"), gy[0],
                       reduction="add")
    return [scattered, None]


@vjp("ScatterND")
def _scatter_nd(ctx, node, gy):
    data, indices, updates = node.input
    reduction = attr_str(node, "reduction", "none")
    if reduction not in ("none", "add"):
        raise unsupported(node, f"reduction '{reduction}'")
    full = _nd_indices(ctx, node, data, indices)
    if reduction == "none" and len(np.unique(full.reshape(-1, full.shape[-1]), axis=0)) < full.size // full.shape[-1]:
        raise unsupported(node, "repeated indices without a reduction (which write wins is unspecified)")
    where = ctx.const(full, np.int64, "scatter_nd_indices")
    g = gy[0]
    g_data = g_updates = None
    if ctx.needs(data):
        # overwritten elements carry no gradient back to `data`; added-to ones pass it through
        g_data = g if reduction == "add" else ctx.op("ScatterND", g, where, ctx.zeros_like(updates))
    if ctx.needs(updates):
        g_updates = ctx.op("GatherND", g, where)
    return [g_data, None, g_updates]


# --------------------------------------------------------------------------- resampling


def _resize_matrix(node: onnx.NodeProto, opset: int, n_in: int, n_out: int, rank: int, axis: int,
                   scale: float | None, roi: np.ndarray | None) -> np.ndarray:
    """M[k, j] = output j of this Resize along `axis` for a unit impulse at input k.

    Built by running the very same Resize (same attributes) in onnxruntime on an identity, so
    every mode, coordinate transformation and rounding rule is the runtime's own.
    """
    import onnxruntime as ort

    in_shape = [1] * rank
    in_shape[0], in_shape[axis] = n_in, n_in
    eye = np.zeros(in_shape, np.float32)
    for k in range(n_in):
        idx = [0] * rank
        idx[0], idx[axis] = k, k
        eye[tuple(idx)] = 1.0
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in ("axes",)}
    inits = []
    roi_name = ""
    if roi is not None and roi.size:
        full_roi = np.array([0.0] * rank + [1.0] * rank, np.float32)
        full_roi[axis], full_roi[rank + axis] = roi[0], roi[1]
        inits.append(helper.make_tensor("roi", FLOAT, [2 * rank], full_roi))
        roi_name = "roi"
    if scale is not None:
        scales = [1.0] * rank
        scales[axis] = scale
        inits.append(helper.make_tensor("scales", FLOAT, [rank], scales))
        inputs = ["x", roi_name, "scales"]
    else:
        sizes = list(in_shape)
        sizes[axis] = n_out
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [rank], sizes))
        inputs = ["x", roi_name, "", "sizes"]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attrs)], "resize_matrix",
        [helper.make_tensor_value_info("x", FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": eye})[0]
    return np.moveaxis(y, axis, 1).reshape(n_in, -1)


@vjp("Resize", "Upsample")
def _resize(ctx, node, gy):
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.info.static_shape(x), ctx.info.static_shape(y)
    if xs is None or ys is None:
        xs_, ys_ = ctx.info.shape(x), ctx.info.shape(y)
        if xs_ is None or ys_ is None or any(not isinstance(d, int) for d in xs_[1:] + ys_[1:]):
            raise unsupported(node, "needs static input and output shapes (except the batch axis)")
        xs, ys = (1,) + tuple(xs_[1:]), (1,) + tuple(ys_[1:])
    rank = len(xs)
    if attr_str(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise unsupported(node, "keep_aspect_ratio_policy other than 'stretch'")
    if node.op_type == "Upsample" or ctx.info.opset < 11:
        raise unsupported(node, "Upsample / Resize before opset 11; convert the model to opset >= 17")
    node_axes = attr(node, "axes")
    scales = ctx.info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    roi = ctx.info.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if scales is not None and scales.size == 0:
        scales = None
    full_scales = None
    if scales is not None:
        full_scales = [1.0] * rank
        for a, s in zip(node_axes or range(rank), scales.tolist(), strict=True):
            full_scales[a % rank] = s
    g = gy[0]
    changed = [a for a in range(rank) if xs[a] != ys[a] or (full_scales and full_scales[a] != 1.0)]
    if 0 in changed:
        raise unsupported(node, "resizing along the batch axis")
    post = 1
    # contract one axis at a time, last to first: g viewed as [pre, m_a, post] -> [pre, n_a, post]
    for a in reversed(range(1, rank)):
        if a in changed:
            axis_roi = None
            if roi is not None and roi.size == 2 * rank:
                axis_roi = np.array([roi[a], roi[rank + a]])
            m = _resize_matrix(node, ctx.info.opset, xs[a], ys[a], rank, a,
                               full_scales[a] if full_scales else None, axis_roi)
            g = ctx.op("Reshape", g, ctx.ints([-1, ys[a], post]))
            g = ctx.op("MatMul", ctx.const(m, hint="resize_adjoint"), g)
        post *= xs[a]
    return [ctx.reshape_like(g, x)] + [None] * (len(node.input) - 1)


def guided_rule_for(op_type: str) -> Rule:
    """Guided variant of an activation's rule: its ordinary VJP, then negative gradients cut off.

    For Relu this is exactly the GUIDED_RULES entry (Relu(g) * (x > 0)); it lets `guided_ops`
    extend guided backprop to LeakyRelu / PRelu / Elu networks.
    """
    standard = RULES[op_type]

    def guided(ctx, node, gy):
        gx = standard(ctx, node, gy)
        return [ctx.op("Relu", gx[0])] + list(gx[1:])

    return guided
