"""Reverse-mode traversal: from a seeded score tensor back to the requested tensors.

`add_gradients` walks the nodes that lie on a differentiable path between the requested
tensors and the score, in reverse topological order, asks the rule table for each node's
vector-Jacobian product, and sums gradients that fan out. Everything op-specific lives in
`rules.py`; this file only knows graphs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import onnx

from ..errors import ModelError
from ..graph import Builder, GraphInfo
from ..ops import GUIDABLE_OPS, PIECEWISE_CONSTANT_OPS, SHAPE_ONLY_OPS, node_label
from .rules import GUIDED_RULES, RULES, ZERO_GRAD_OPS, Rule

#: every node the traversal emits is named with this prefix (the memory estimate in engine.py
#: finds the forward tensors the backward pass keeps by it)
NODE_PREFIX = "nxrt_grad"


class DiffContext(Builder):
    """What a rule sees: the builder, the graph's shapes/constants, and which tensors need gradients."""

    def __init__(self, model: onnx.ModelProto, info: GraphInfo, active: set[str]):
        super().__init__(model, prefix=NODE_PREFIX)
        self.info = info
        self.active = active

    def needs(self, name: str) -> bool:
        return bool(name) and name in self.active


def _differentiable_nodes(graph: onnx.GraphProto, info: GraphInfo, score: str,
                          wrt: Sequence[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on a path wrt -> score that carries a float gradient, and the tensors on it."""
    downstream = set(wrt)
    for node in graph.node:
        if node.op_type in ZERO_GRAD_OPS:
            continue
        if any(i in downstream for i in node.input if i):
            downstream.update(o for o in node.output if o and info.is_float(o) is not False)
    upstream = {score}
    for node in reversed(graph.node):
        if node.op_type in ZERO_GRAD_OPS:
            continue
        if any(o in upstream for o in node.output):
            upstream.update(i for i in node.input if i)
    active = downstream & upstream
    nodes = [n for n in graph.node if n.op_type not in ZERO_GRAD_OPS
             and any(o in active for o in n.output) and any(i in active for i in n.input)]
    return nodes, active


def zero_gradient_nodes(graph: onnx.GraphProto, score: str, wrt: Sequence[str],
                        skip_prefix: str = "nxrt_head") -> list[onnx.NodeProto]:
    """Piecewise-constant nodes (Round, Floor, comparisons, ...) that take values computed from
    `wrt` and pass them on to the score: the gradient along such a path is zero almost everywhere,
    so the attribution silently misses whatever the model computes through them. A Where's
    condition and shape-only inputs carry no value on and are not counted; nodes named with
    `skip_prefix` (the score head's own argmax for region="predicted", held constant on purpose)
    neither."""
    reached = set(wrt)
    for node in graph.node:
        if any(i in reached for i in node.input if i):
            reached.update(o for o in node.output if o)
    feeds_score = {score}
    for node in reversed(graph.node):
        if not any(o in feeds_score for o in node.output) or node.op_type in SHAPE_ONLY_OPS:
            continue
        inputs = node.input[1:] if node.op_type == "Where" else node.input
        feeds_score.update(i for i in inputs if i)
    return [n for n in graph.node if n.op_type in PIECEWISE_CONSTANT_OPS and not n.name.startswith(skip_prefix)
            and any(i in reached for i in n.input) and any(o in feeds_score for o in n.output)]


def check_supported(nodes: Iterable[onnx.NodeProto], table: dict[str, Rule]) -> None:
    """Raise one ModelError listing every op type without a rule, with its node names."""
    missing: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in table:
            missing[f"{node.domain + '.' if node.domain else ''}{node.op_type}"].append(node.name or "?")
    if missing:
        parts = [f"{op} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for op, names in sorted(missing.items())]
        raise ModelError("cannot differentiate the model: unsupported op type(s) on the gradient path: "
                         + "; ".join(parts) + ". Re-export without them or open an issue with the model")


def _listed(nodes: Sequence[onnx.NodeProto], most: int = 4) -> str:
    more = f" and {len(nodes) - most} more" if len(nodes) > most else ""
    return ", ".join(node_label(n) for n in nodes[:most]) + more


def rule_table(guided: bool, guided_ops: Sequence[str] = ("Relu",), maxpool: str = "indices") -> dict[str, Rule]:
    from .rules import MAXPOOL_RULES

    if maxpool not in MAXPOOL_RULES:
        raise ValueError(f"maxpool={maxpool!r}: choose from {', '.join(MAXPOOL_RULES)}")
    table = {**RULES, "MaxPool": MAXPOOL_RULES[maxpool]}
    if guided:
        from .rules import guided_rule_for

        for op in guided_ops:
            if op not in GUIDABLE_OPS:
                raise ModelError(f"guided_ops: '{op}' cannot be guided; choose from {', '.join(GUIDABLE_OPS)}")
            table[op] = GUIDED_RULES.get(op) or guided_rule_for(op)
    return table


def add_gradients(model: onnx.ModelProto, score: str, seed: str, wrt: Sequence[str],
                  guided: bool = False, guided_ops: Sequence[str] = ("Relu",),
                  info: GraphInfo | None = None, maxpool: str = "indices") -> dict[str, str]:
    """Append to `model` (in place) the nodes computing d<score, seed>/d t for every t in `wrt`.

    `model` must be shape-inferred (see `nxrt.graph.infer_shapes`); `seed` names a tensor
    shaped like `score`. Returns {t: name of its gradient tensor}. Raises ModelError listing
    all unsupported ops before anything is emitted.
    """
    graph = model.graph
    info = info or GraphInfo(model)
    table = rule_table(guided, guided_ops, maxpool)
    nodes, active = _differentiable_nodes(graph, info, score, wrt)
    check_supported(nodes, table)
    blocked = zero_gradient_nodes(graph, score, wrt)
    cut_off = [t for t in wrt if t not in active]
    if blocked and cut_off:
        raise ModelError(f"no gradient reaches '{cut_off[0]}': every path from it to the score passes through "
                         f"piecewise-constant ops ({_listed(blocked)}), whose gradient is zero almost everywhere; "
                         "explain the model without them (e.g. before quantisation) or use occlusion (no gradient)")
    ctx = DiffContext(model, info, active)
    contributions: dict[str, list[str]] = defaultdict(list)
    contributions[score].append(seed)

    def total(name: str) -> str | None:
        parts = contributions.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            ctx.scope = f"{NODE_PREFIX}/{name}"
            contributions[name] = [ctx.op("Sum", *parts)]
        return contributions[name][0]

    for node in reversed(nodes):
        gy = [total(o) if o in active else None for o in node.output]
        if all(g is None for g in gy):
            continue
        ctx.scope = f"{NODE_PREFIX}/{node.name or node.op_type}"
        gx = table[node.op_type](ctx, node, gy)
        for name, g in zip(node.input, gx, strict=False):
            if g is not None and ctx.needs(name):
                contributions[name].append(g)
    grads = {}
    ctx.scope = NODE_PREFIX
    for t in wrt:
        g = total(t)
        grads[t] = g if g is not None else ctx.zeros_like(t, info.elem_type(t) or onnx.TensorProto.FLOAT)
    ctx.flush()
    return grads
