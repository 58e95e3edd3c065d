"""The Layout value and the op facts beside the rules (nxrt/layout.py, nxrt/ops.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nxrt.autodiff.rules import RULES
from nxrt.graph import GraphInfo
from nxrt.layout import Layout
from nxrt.ops import AXIS_EFFECT, channel_axis, coverage
from tests.builders import tiny_classifier


def test_layout_axes_and_conversions_match_numpy():
    a = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6)
    first, last = Layout.CHANNELS_FIRST, Layout.CHANNELS_LAST
    assert first == "channels_first" and str(last) == "channels_last" and Layout.of("channels_last") is last
    assert (first.channel_axis(5), last.channel_axis(5), first.channel_axis(4, batch=False)) == (1, 4, 0)
    assert first.spatial_shape(a.shape) == (4, 5, 6) and last.spatial_shape(a.shape) == (3, 4, 5)
    assert last.spatial_shape(a.shape[1:], batch=False) == (3, 4, 5) and first.spatial_shape((3, 4, 5), False) == (4, 5)
    assert first.shape(3, (4, 5)) == (1, 3, 4, 5) and last.shape(3, (4, 5), batch=None) == (4, 5, 3)
    np.testing.assert_array_equal(last.to_channels_first(a), np.moveaxis(a, -1, 1))
    np.testing.assert_array_equal(last.from_channels_first(last.to_channels_first(a)), a)
    np.testing.assert_array_equal(first.to_channels_last(a[0], batch=False), np.moveaxis(a[0], 0, -1))
    assert first.to_channels_first(a) is a
    with pytest.raises(Exception, match="layout 'nchw' is not one of channels_first, channels_last"):
        Layout.of("nchw")


def test_every_op_with_a_rule_says_how_it_moves_the_channel_axis():
    """A rule added without its axis effect would make Grad-CAM guess a layer's channel axis."""
    assert sorted(set(RULES) - set(AXIS_EFFECT)) == []


def test_channel_axis_follows_transposes_in_a_channels_last_graph():
    """tf2onnx's shape: NHWC input -> Transpose to NCHW -> Conv -> Relu -> Transpose back -> Sigmoid."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["back"], perm=[0, 2, 3, 1]),
             helper.make_node("Sigmoid", ["back"], ["y"]),
             helper.make_node("Where", ["cond", "y", "y"], ["w"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)], [w])
    info = GraphInfo.of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    last = Layout.CHANNELS_LAST
    assert [channel_axis(info, t, last) for t in ("x", "t", "c", "r", "back", "y", "w")] == [3, 1, 1, 1, 3, 3, 3]


def test_coverage_counts_differentiable_and_missing_ops():
    model = tiny_classifier()
    model.graph.node.append(helper.make_node("Det", ["prob"], ["e"]))
    onnx.checker.check_model(model)
    cover = coverage(model)
    assert cover.differentiable == {"Conv": 1, "Flatten": 1, "GlobalAveragePool": 1, "MatMul": 1, "Relu": 1,
                                    "Softmax": 1}
    assert cover.without_rule == {"Det": 1}
