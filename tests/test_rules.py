"""Every VJP rule against float64 finite differences of the same op (onnx reference evaluator).

Each case is one small graph around the op under test, covering its attributes; the gradient of
<output, random seed> computed by nxrt's emitted ONNX nodes on onnxruntime must match central
differences of the forward op to 1e-4 relative error.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from onnx import helper

from tests.oracles import fd_vjp, make_model, nxrt_vjp, ort_forward, reference_forward, rel_err

rng = np.random.default_rng(0)


def r(*shape, low=None):
    a = rng.standard_normal(shape).astype(np.float32)
    if low is not None:
        a = np.abs(a) + low
    return a


def n(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def i64(*v):
    return np.array(v, dtype=np.int64)


def case(name, nodes, inputs, wrt=None, inits=None, opset=17, output="y", eps=1e-6, tol=1e-4, forward=None):
    """forward: an independent float64 implementation where onnx's reference evaluator is missing or
    only float32-exact; "ort": onnxruntime's own forward, exact for linear ops at a unit step."""
    return pytest.param(nodes, inputs, wrt or list(inputs), inits or {}, opset, output, eps, tol, forward, id=name)


def np_maxpool1d_same3(feeds):
    x = np.pad(feeds["x"].astype(np.float64), [(0, 0), (0, 0), (1, 1)], constant_values=-np.inf)
    return np.max(np.stack([x[..., :-2], x[..., 1:-1], x[..., 2:]]), axis=0)


GN_SCALE, GN_BIAS = r(4), r(4)


def np_group_norm(feeds, groups=2, eps=1e-5):
    x = feeds["x"].astype(np.float64)
    xg = x.reshape(x.shape[0], groups, -1)
    xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)).reshape(x.shape)
    return xhat * GN_SCALE[None, :, None, None] + GN_BIAS[None, :, None, None]


CASES = [
    # ---- convolution
    case("conv1d_stride2_asym", [n("Conv", ["x", "W"], strides=[2], pads=[1, 0])], {"x": r(1, 2, 9)},
         inits={"W": r(3, 2, 3)}),
    case("conv2d_stride2_odd_asym", [n("Conv", ["x", "W"], strides=[2, 2], pads=[1, 0, 0, 1])], {"x": r(2, 2, 7, 7)},
         inits={"W": r(4, 2, 3, 3)}),
    case("conv2d_stride1_flipped", [n("Conv", ["x", "W", "B"], pads=[1, 1, 1, 1])], {"x": r(1, 3, 6, 5)},
         inits={"W": r(4, 3, 3, 3), "B": r(4)}),
    case("conv2d_group_dilation", [n("Conv", ["x", "W"], group=2, dilations=[2, 2], pads=[2, 1, 2, 1])],
         {"x": r(1, 4, 9, 9)}, inits={"W": r(6, 2, 3, 3)}),
    case("conv2d_depthwise", [n("Conv", ["x", "W"], group=3)], {"x": r(1, 3, 6, 6)}, inits={"W": r(3, 1, 3, 3)}),
    case("conv2d_same_upper_s2", [n("Conv", ["x", "W"], strides=[2, 2], auto_pad="SAME_UPPER")],
         {"x": r(1, 2, 8, 7)}, inits={"W": r(2, 2, 3, 3)}),
    case("conv2d_same_lower_even_k", [n("Conv", ["x", "W"], auto_pad="SAME_LOWER")], {"x": r(1, 2, 5, 6)},
         inits={"W": r(2, 2, 2, 2)}),
    case("conv2d_valid_stride3", [n("Conv", ["x", "W"], strides=[3, 2], auto_pad="VALID")], {"x": r(1, 2, 10, 9)},
         inits={"W": r(2, 2, 3, 2)}),
    case("conv2d_dynamic_weight", [n("Conv", ["x", "W"], pads=[1, 1, 1, 1])], {"x": r(1, 2, 5, 5), "W": r(3, 2, 3, 3)},
         wrt=["x"]),
    case("conv3d_stride2", [n("Conv", ["x", "W"], strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1])],
         {"x": r(1, 2, 5, 6, 5)}, inits={"W": r(2, 2, 3, 3, 3)}),
    case("conv3d_stride1", [n("Conv", ["x", "W"], pads=[1, 0, 1, 1, 1, 0])], {"x": r(1, 2, 4, 5, 4)},
         inits={"W": r(3, 2, 3, 3, 3)}),
    case("convtranspose2d_s2_outpad", [n("ConvTranspose", ["x", "W"], strides=[2, 2], pads=[1, 1, 1, 1],
                                         output_padding=[1, 1])], {"x": r(1, 3, 4, 4)}, inits={"W": r(3, 2, 3, 3)}),
    case("convtranspose3d_k2s2", [n("ConvTranspose", ["x", "W", "B"], strides=[2, 2, 2])], {"x": r(1, 2, 3, 3, 2)},
         inits={"W": r(2, 2, 2, 2, 2), "B": r(2)}),
    case("convtranspose2d_group_outshape", [n("ConvTranspose", ["x", "W"], strides=[2, 2], group=2,
                                              output_shape=[7, 8])], {"x": r(1, 4, 4, 4)},
         inits={"W": r(4, 1, 3, 3)}, forward="ort", eps=1.0),
    case("convtranspose1d_dilated", [n("ConvTranspose", ["x", "W"], dilations=[2], pads=[1, 2])],
         {"x": r(1, 2, 6)}, inits={"W": r(2, 3, 3)}),
    # ---- pooling
    case("maxpool2d_overlap", [n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": r(2, 2, 7, 7)}),
    case("maxpool2d_ceil", [n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
         {"x": r(1, 2, 8, 8)}),
    case("maxpool2d_dilated", [n("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], {"x": r(1, 1, 6, 6)}),
    case("maxpool3d", [n("MaxPool", ["x"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])], {"x": r(1, 2, 4, 4, 4)}),
    case("maxpool3d_floor_odd", [n("MaxPool", ["x"], kernel_shape=[2, 3, 2], strides=[2, 2, 1],
                                   pads=[0, 1, 0, 0, 0, 1])],
         {"x": r(1, 2, 5, 6, 3)}),  # the last row of the odd axis is in no window
    case("maxpool2d_kernel_below_stride", [n("MaxPool", ["x"], kernel_shape=[2, 1], strides=[3, 2])],
         {"x": r(1, 2, 8, 7)}),  # positions no window reaches
    case("maxpool1d_same", [n("MaxPool", ["x"], kernel_shape=[3], auto_pad="SAME_UPPER")], {"x": r(2, 2, 7)},
         forward=np_maxpool1d_same3),
    case("avgpool2d_excl_pad", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": r(1, 2, 7, 7)}),
    case("avgpool2d_incl_pad_ceil", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                       count_include_pad=1, ceil_mode=1)], {"x": r(1, 2, 8, 8)}),
    case("avgpool2d_ceil_nopad", [n("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
         {"x": r(1, 1, 5, 7)}),
    case("avgpool2d_floor_drop", [n("AveragePool", ["x"], kernel_shape=[2, 2], strides=[3, 3])], {"x": r(1, 1, 8, 7)}),
    case("avgpool3d", [n("AveragePool", ["x"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])], {"x": r(1, 2, 4, 4, 4)}),
    case("globalavgpool", [n("GlobalAveragePool", ["x"])], {"x": r(2, 3, 4, 5)}),
    case("globalmaxpool", [n("GlobalMaxPool", ["x"])], {"x": r(2, 3, 4, 5)}),
    # ---- normalisation
    case("batchnorm", [n("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], {"x": r(2, 3, 4, 4)},
         inits={"s": r(3), "b": r(3), "m": r(3), "v": r(3, low=0.5)}),
    case("instancenorm2d", [n("InstanceNormalization", ["x", "s", "b"])], {"x": r(2, 3, 5, 4)},
         inits={"s": r(3), "b": r(3)}),
    case("instancenorm3d", [n("InstanceNormalization", ["x", "s", "b"], epsilon=1e-3)], {"x": r(1, 2, 3, 4, 3)},
         inits={"s": r(2), "b": r(2)}),
    case("layernorm_last", [n("LayerNormalization", ["x", "s", "b"])], {"x": r(2, 3, 6)},
         inits={"s": r(6), "b": r(6)}),
    case("layernorm_axis1", [n("LayerNormalization", ["x", "s"], axis=1, epsilon=1e-3)], {"x": r(2, 3, 4)},
         inits={"s": r(3, 4)}),
    # the reference evaluator's GroupNormalization is only float32-exact: numpy float64 instead
    case("groupnorm_opset21", [n("GroupNormalization", ["x", "s", "b"], num_groups=2)], {"x": r(2, 4, 3, 3)},
         inits={"s": GN_SCALE, "b": GN_BIAS}, opset=21, forward=np_group_norm),
    # ---- activations
    case("relu", [n("Relu", ["x"])], {"x": r(2, 3, 4)}),
    case("leakyrelu", [n("LeakyRelu", ["x"], alpha=0.1)], {"x": r(2, 3, 4)}),
    case("leakyrelu_negative_alpha", [n("LeakyRelu", ["x"], alpha=-0.3)], {"x": r(2, 3, 4)}),
    case("prelu", [n("PRelu", ["x", "slope"])], {"x": r(2, 3, 4, 2), "slope": r(3, 1, 1)}),
    case("elu", [n("Elu", ["x"], alpha=0.7)], {"x": r(2, 3, 4)}),
    case("selu", [n("Selu", ["x"])], {"x": r(2, 3, 4)}),
    case("sigmoid", [n("Sigmoid", ["x"])], {"x": r(2, 5)}),
    case("tanh", [n("Tanh", ["x"])], {"x": r(2, 5)}),
    case("softmax_axis1", [n("Softmax", ["x"], axis=1)], {"x": r(2, 4, 3)}),
    case("logsoftmax", [n("LogSoftmax", ["x"])], {"x": r(2, 5)}),
    case("hardsigmoid", [n("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], {"x": r(3, 7) * 3}),
    case("hardswish", [n("HardSwish", ["x"])], {"x": r(3, 7) * 3}, opset=17),
    case("erf", [n("Erf", ["x"])], {"x": r(2, 5)}, forward=lambda f: scipy.special.erf(f["x"].astype(np.float64))),
    case("gelu_exact", [n("Gelu", ["x"])], {"x": r(2, 5)}, opset=20,
         forward=lambda f: 0.5 * f["x"] * (1 + scipy.special.erf(f["x"].astype(np.float64) / np.sqrt(2)))),
    case("gelu_tanh", [n("Gelu", ["x"], approximate="tanh")], {"x": r(2, 5)}, opset=20),
    case("clip_inputs", [n("Clip", ["x", "lo", "hi"])], {"x": r(3, 6)}, wrt=["x"],
         inits={"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    case("clip_min_only", [n("Clip", ["x", "lo"])], {"x": r(3, 6)}, wrt=["x"], inits={"lo": np.array(0.1, np.float32)}),
    case("softplus", [n("Softplus", ["x"])], {"x": r(2, 5)}),
    # ---- linear algebra
    case("gemm_plain", [n("Gemm", ["a", "b", "c"], alpha=0.5, beta=2.0)], {"a": r(3, 4), "b": r(4, 5), "c": r(5)}),
    case("gemm_transA", [n("Gemm", ["a", "b", "c"], transA=1)], {"a": r(4, 3), "b": r(4, 5), "c": r(3, 1)}),
    case("gemm_transB", [n("Gemm", ["a", "b"], transB=1, alpha=1.5)], {"a": r(3, 4), "b": r(5, 4)}),
    case("gemm_transAB", [n("Gemm", ["a", "b", "c"], transA=1, transB=1)], {"a": r(4, 3), "b": r(5, 4), "c": r(3, 5)}),
    case("matmul_2d", [n("MatMul", ["a", "b"])], {"a": r(3, 4), "b": r(4, 5)}),
    case("matmul_batch_broadcast", [n("MatMul", ["a", "b"])], {"a": r(2, 3, 4), "b": r(4, 5)}),
    case("matmul_batch_left", [n("MatMul", ["a", "b"])], {"a": r(3, 4), "b": r(2, 1, 4, 5)}),
    case("matmul_vec_right", [n("MatMul", ["a", "b"])], {"a": r(2, 3, 4), "b": r(4)}),
    case("matmul_vec_left", [n("MatMul", ["a", "b"])], {"a": r(4), "b": r(2, 4, 5)}),
    # ---- elementwise arithmetic with broadcasting
    case("add_bcast", [n("Add", ["a", "b"])], {"a": r(2, 3, 4), "b": r(3, 1)}),
    case("sub_bcast", [n("Sub", ["a", "b"])], {"a": r(3, 1), "b": r(2, 3, 4)}),
    case("mul_bcast", [n("Mul", ["a", "b"])], {"a": r(2, 1, 4), "b": r(3, 1)}),
    case("div_bcast", [n("Div", ["a", "b"])], {"a": r(2, 3, 4), "b": r(1, 4, low=0.5)}),
    case("div_scalar", [n("Div", ["a", "b"])], {"a": r(2, 3), "b": np.array(1.7, np.float32)}),
    case("sum_variadic", [n("Sum", ["a", "b", "c"])], {"a": r(2, 3), "b": r(3), "c": r(2, 1)}),
    case("pow_const3", [n("Pow", ["x", "p"])], {"x": r(2, 5)}, inits={"p": np.array(3.0, np.float32)}),
    case("pow_const2", [n("Pow", ["x", "p"])], {"x": r(2, 5)}, inits={"p": np.array(2.0, np.float32)}),
    case("pow_frac", [n("Pow", ["x", "p"])], {"x": r(2, 5, low=0.3)}, inits={"p": np.array(1.5, np.float32)}),
    case("pow_both", [n("Pow", ["x", "p"])], {"x": r(2, 5, low=0.3), "p": r(5)}),
    case("sqrt", [n("Sqrt", ["x"])], {"x": r(2, 5, low=0.3)}),
    case("exp", [n("Exp", ["x"])], {"x": r(2, 5)}),
    case("log", [n("Log", ["x"])], {"x": r(2, 5, low=0.3)}),
    case("neg", [n("Neg", ["x"])], {"x": r(2, 5)}),
    case("abs", [n("Abs", ["x"])], {"x": r(2, 5)}),
    case("reciprocal", [n("Reciprocal", ["x"])], {"x": r(2, 5, low=0.5)}),
    # ---- reductions
    case("reducemean_attr_opset17", [n("ReduceMean", ["x"], axes=[1, 3], keepdims=0)], {"x": r(2, 3, 2, 4)}),
    case("reducemean_input_opset18", [n("ReduceMean", ["x", "ax"], keepdims=1)], {"x": r(2, 3, 4)},
         inits={"ax": i64(-1)}, opset=18),
    case("reducemean_all", [n("ReduceMean", ["x"], keepdims=0)], {"x": r(2, 3, 4)}),
    case("reducesum_input", [n("ReduceSum", ["x", "ax"], keepdims=0)], {"x": r(2, 3, 4)}, inits={"ax": i64(0, 2)}),
    case("reducemax_attr", [n("ReduceMax", ["x"], axes=[2], keepdims=0)], {"x": r(2, 3, 4)}),
    case("reducemax_input_opset18", [n("ReduceMax", ["x", "ax"])], {"x": r(2, 3, 4)}, inits={"ax": i64(1)},
         opset=18),
    # ---- shape and layout
    case("concat", [n("Concat", ["a", "b", "c"], axis=1)], {"a": r(2, 2, 3), "b": r(2, 1, 3)},
         inits={"c": r(2, 3, 3)}),
    case("split_input_opset17", [n("Split", ["x", "sp"], ["o1", "o2"], axis=1), n("Mul", ["o2", "k"], ["m"]),
                                 n("Concat", ["m", "o1"], axis=1)], {"x": r(2, 5, 2)},
         inits={"sp": i64(2, 3), "k": np.array(3.0, np.float32)}),
    case("split_num_outputs_opset18", [n("Split", ["x"], ["o1", "o2", "o3"], axis=0, num_outputs=3),
                                       n("Add", ["o3", "o1"])], {"x": r(6, 2)}, opset=18),
    case("slice_neg_step", [n("Slice", ["x", "st", "en", "ax", "sp"])], {"x": r(4, 6, 5)},
         inits={"st": i64(1, -1), "en": i64(3, 0), "ax": i64(0, 2), "sp": i64(1, -1)}),
    case("slice_clamped", [n("Slice", ["x", "st", "en"])], {"x": r(4, 6)}, inits={"st": i64(-3, 1),
                                                                                   "en": i64(100, -1)}),
    # patch merging (SwinUNETR): x[:, 0::2, 1::2, ...]; uneven ends and steps of 3 and -2 too
    case("slice_step2_patch_merging", [n("Slice", ["x", "st", "en", "ax", "sp"])], {"x": r(1, 6, 7, 3)},
         inits={"st": i64(0, 1), "en": i64(100, 100), "ax": i64(1, 2), "sp": i64(2, 2)}),
    case("slice_step3_offset", [n("Slice", ["x", "st", "en", "ax", "sp"])], {"x": r(2, 11, 4)},
         inits={"st": i64(1), "en": i64(9), "ax": i64(1), "sp": i64(3)}),
    case("slice_step_minus2_two_axes", [n("Slice", ["x", "st", "en", "ax", "sp"])], {"x": r(2, 7, 6)},
         inits={"st": i64(-1, 5), "en": i64(-100, 0), "ax": i64(1, 2), "sp": i64(-2, -3)}),
    # ---- GatherND / ScatterND with constant indices (repeats add up; batch_dims)
    case("gathernd_repeats", [n("GatherND", ["x", "idx"])], {"x": r(3, 4, 2)},
         inits={"idx": np.array([[0, 1], [2, 3], [0, 1], [1, -1]], np.int64)}),
    case("gathernd_batch_dims", [n("GatherND", ["x", "idx"], batch_dims=1)], {"x": r(2, 4, 3)},
         inits={"idx": np.array([[[1], [3]], [[0], [0]]], np.int64)}),
    case("scatternd_overwrite", [n("ScatterND", ["x", "idx", "u"])], {"x": r(4, 3), "u": r(2, 3)},
         inits={"idx": np.array([[1], [3]], np.int64)}),
    case("scatternd_add_repeats", [n("ScatterND", ["x", "idx", "u"], reduction="add")], {"x": r(4, 3), "u": r(3, 3)},
         inits={"idx": np.array([[1], [3], [1]], np.int64)}, opset=18),
    # ---- einsum: attention products, a summed-out index, ellipsis, implicit output, three operands
    case("einsum_attention_scores", [n("Einsum", ["q", "k"], equation="blxd,blyd->blxy")],
         {"q": r(1, 2, 3, 4), "k": r(1, 2, 5, 4)}),
    case("einsum_attention_values", [n("Einsum", ["a", "v"], equation="bhxy,bhyd->bhxd")],
         {"a": r(1, 2, 3, 5), "v": r(1, 2, 5, 4)}),
    case("einsum_lone_index", [n("Einsum", ["a", "b"], equation="ij,jk->i")], {"a": r(3, 4), "b": r(4, 5)}),
    case("einsum_ellipsis", [n("Einsum", ["a", "b"], equation="...ij,...jk->...ik")],
         {"a": r(2, 3, 3, 4), "b": r(2, 3, 4, 2)}),
    case("einsum_implicit_output", [n("Einsum", ["a", "b"], equation="ij,jk")], {"a": r(3, 4), "b": r(4, 5)}),
    case("einsum_three_operands_transpose", [n("Einsum", ["a", "b", "c"], equation="ab,bc,dc->da")],
         {"a": r(2, 3), "b": r(3, 4), "c": r(5, 4)}),
    case("einsum_dot", [n("Einsum", ["a", "b"], equation="i,i->")], {"a": r(6), "b": r(6)}),
    case("pad_constant", [n("Pad", ["x", "p"])], {"x": r(1, 2, 3, 4)}, inits={"p": i64(0, 0, 1, 2, 0, 0, 2, 0)}),
    case("pad_negative", [n("Pad", ["x", "p"])], {"x": r(1, 2, 5, 4)}, inits={"p": i64(0, 0, -1, 2, 0, 0, 1, -2)},
         forward="ort", eps=1.0),
    case("pad_axes_opset18", [n("Pad", ["x", "p", "", "ax"])], {"x": r(2, 3, 4)},
         inits={"p": i64(1, 2, 0, 1), "ax": i64(1, -1)}, opset=18),
    case("reshape", [n("Reshape", ["x", "s"])], {"x": r(2, 3, 4)}, inits={"s": i64(0, -1)}),
    case("flatten", [n("Flatten", ["x"], axis=2)], {"x": r(2, 3, 2, 2)}),
    case("transpose", [n("Transpose", ["x"], perm=[2, 0, 1])], {"x": r(2, 3, 4)}),
    case("transpose_default", [n("Transpose", ["x"])], {"x": r(2, 3, 4)}),
    case("squeeze_unsqueeze", [n("Squeeze", ["x", "a1"], ["s"]), n("Unsqueeze", ["s", "a2"])], {"x": r(2, 1, 4)},
         inits={"a1": i64(1), "a2": i64(0, 3)}),
    case("expand", [n("Expand", ["x", "s"])], {"x": r(3, 1)}, inits={"s": i64(2, 3, 4)}),
    case("tile", [n("Tile", ["x", "rep"])], {"x": r(2, 3)}, inits={"rep": i64(2, 3)}),
    case("gather_axis1_repeats", [n("Gather", ["x", "idx"], axis=1)], {"x": r(2, 5, 3)},
         inits={"idx": i64(4, 0, -1, 2)}),
    case("gather_2d_indices_axis0", [n("Gather", ["x", "idx"])], {"x": r(4, 3)},
         inits={"idx": np.array([[0, 3], [3, 1]], np.int64)}),
    case("gather_scalar", [n("Gather", ["x", "idx"], axis=1)], {"x": r(2, 5)}, inits={"idx": np.array(3, np.int64)}),
    case("identity_dropout", [n("Identity", ["x"], ["i"]), n("Dropout", ["i"])], {"x": r(2, 3)}),
    case("cast_roundtrip", [n("Cast", ["x"], ["d"], to=11), n("Mul", ["d", "d"], ["m"]), n("Cast", ["m"], to=1)],
         {"x": r(2, 3)}),
    case("where_const_cond", [n("Where", ["c", "a", "b"])], {"a": r(2, 3), "b": r(3)},
         inits={"c": np.array([[True, False, True], [False, False, True]])}),
    case("fan_out_sum", [n("Mul", ["x", "x"], ["sq"]), n("Sigmoid", ["x"], ["sg"]), n("Add", ["sq", "sg"])],
         {"x": r(2, 3)}),
]

RESIZE_MODES = [
    ("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "align_corners", "round_prefer_ceil"), ("nearest", "tf_half_pixel_for_nn", "ceil"),
    ("linear", "half_pixel", None), ("linear", "pytorch_half_pixel", None), ("linear", "align_corners", None),
    ("linear", "asymmetric", None), ("linear", "half_pixel_symmetric", None),
    ("cubic", "half_pixel", None), ("cubic", "align_corners", None), ("cubic", "asymmetric", None),
]
for mode, coord, nearest in RESIZE_MODES:
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.75
    # Resize is linear in x: onnxruntime's own forward at a unit step is an exact oracle, and the
    # one that matters (the gradient must match the runtime the model runs on); the reference
    # evaluator lacks tf_half_pixel_for_nn
    oracle = dict(forward="ort", eps=1.0)
    CASES.append(case(f"resize_{mode}_{coord}_up", [n("Resize", ["x", "", "sc"], **attrs)], {"x": r(1, 2, 3, 4)},
                      inits={"sc": np.array([1, 1, 2.0, 1.5], np.float32)}, opset=19, **oracle))
    CASES.append(case(f"resize_{mode}_{coord}_sizes_down", [n("Resize", ["x", "", "", "sz"], **attrs)],
                      {"x": r(1, 1, 7, 6)}, inits={"sz": i64(1, 1, 4, 5)}, opset=19, **oracle))
CASES += [
    case("resize_linear_3d", [n("Resize", ["x", "", "sc"], mode="linear")], {"x": r(1, 2, 2, 3, 2)},
         inits={"sc": np.array([1, 1, 2, 2, 2], np.float32)}),
    case("resize_cubic_exclude_outside", [n("Resize", ["x", "", "sc"], mode="cubic", exclude_outside=1)],
         {"x": r(1, 1, 4, 4)}, inits={"sc": np.array([1, 1, 1.5, 2], np.float32)}),
    case("resize_axes_opset18", [n("Resize", ["x", "", "sc"], mode="linear", axes=[2, 3])], {"x": r(1, 1, 3, 3)},
         inits={"sc": np.array([2, 2], np.float32)}, opset=18),
    case("resize_crop_and_resize", [n("Resize", ["x", "roi", "", "sz"], mode="linear",
                                      coordinate_transformation_mode="tf_crop_and_resize")], {"x": r(1, 1, 5, 5)},
         inits={"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 0.8], np.float32), "sz": i64(1, 1, 4, 6)}),
]


#: MaxPool's second rule (equality with the window's maximum, what OpenVINO sessions use)
MAXPOOL_CASES = [pytest.param(*c.values, id=f"{c.id}_by_equality") for c in CASES if c.id.startswith("maxpool")]


@pytest.mark.parametrize("nodes, inputs, wrt, inits, opset, output, eps, tol, forward", CASES + MAXPOOL_CASES)
def test_rule_matches_finite_differences(request, nodes, inputs, wrt, inits, opset, output, eps, tol, forward):
    model = make_model(nodes, inputs, output, inits, opset=opset)
    if forward == "ort":
        forward = ort_forward(model)
    y = (forward or reference_forward(model))({k: v.copy() for k, v in inputs.items()})
    seed = rng.standard_normal(y.shape).astype(np.float32)
    maxpool = "equality" if request.node.callspec.id.endswith("_by_equality") else "indices"
    got = nxrt_vjp(model, inputs, wrt, seed, maxpool=maxpool)
    want = fd_vjp(model, inputs, wrt, seed, eps=eps, forward=forward)
    for name in wrt:
        assert got[name].shape == inputs[name].shape
        assert rel_err(got[name], want[name]) < tol, (name, rel_err(got[name], want[name]))
