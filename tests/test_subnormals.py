"""Subnormal floats are flushed to zero inside a run, on the calling thread too, and only there
(x86-64 Linux, the machine kind CI and the project run on)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from nxrt.engine import flush_subnormals, make_session

TINY = np.float32(1e-39)  # subnormal: below float32's smallest normal 1.18e-38


def _mul_model():
    node = helper.make_node("Mul", ["x", "k"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [helper.make_tensor("k", TensorProto.FLOAT, [], [1e-30])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_flush_is_scoped_to_the_block():
    assert np.multiply(TINY, np.float32(1)) == TINY  # numpy keeps subnormals normally
    with flush_subnormals():
        assert np.multiply(TINY, np.float32(1)) == 0  # DAZ: a subnormal operand reads as 0
    assert np.multiply(TINY, np.float32(1)) == TINY  # and the thread's mode is restored


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_creating_and_running_a_session_leaves_this_thread_alone(provider):
    """onnxruntime's set_denormal_as_zero and OpenVINO's CPU_DENORMALS_OPTIMIZATION turn FTZ/DAZ on
    for good in the thread that creates (or runs) a session; nxrt undoes it."""
    session = make_session(_mul_model(), provider)
    assert np.multiply(TINY, np.float32(1)) == TINY
    session.run(["y"], {"x": np.ones(4, np.float32)})
    assert np.multiply(TINY, np.float32(1)) == TINY


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_session_run_flushes_on_the_calling_thread(provider):
    x = np.full(4, 1e-10, np.float32)  # x * 1e-30 = 1e-40: subnormal
    reference = x.astype(np.float64) * 1e-30
    assert 0 < reference[0] < np.finfo(np.float32).tiny
    y = make_session(_mul_model(), provider).run(["y"], {"x": x})[0]
    np.testing.assert_array_equal(y, 0)
    assert np.multiply(TINY, np.float32(1)) == TINY
