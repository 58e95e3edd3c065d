"""Methods on channels-last Keras models (tf2onnx) against GradientTape-based references.

Attributions come back in the model's own layout (NHWC / NDHWC); Grad-CAM layers are the ONNX
Conv outputs, which tf2onnx keeps in NCHW behind Transposes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import nxrt
from tests.keras_refs import score, tape_grad
from tests.oracles import rel_err

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import tensorflow as tf
import tf2onnx


def build(kind):
    keras.utils.set_random_seed(0)
    if kind == "cls2d":
        inp = keras.Input((16, 16, 3))
        h = keras.layers.Activation("relu")(keras.layers.Conv2D(8, 3, padding="same")(inp))
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Conv2D(12, 3, padding="same", name="conv_last")(h)
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(h))
        out = keras.layers.Dense(3)(h)
    else:
        inp = keras.Input((8, 8, 8, 2))
        h = keras.layers.Activation("relu")(keras.layers.Conv3D(6, 3, padding="same")(inp))
        h = keras.layers.MaxPooling3D(2)(h)
        h = keras.layers.Conv3D(8, 3, padding="same", name="conv_last")(h)
        h = keras.layers.UpSampling3D(2)(keras.layers.Activation("relu")(h))
        out = keras.layers.Conv3D(3, 1)(h)
    return keras.Model(inp, out)


@pytest.fixture(scope="module", params=["cls2d", "seg3d"])
def case(request, tmp_path_factory):
    kind = request.param
    model = build(kind)
    shape = (16, 16, 3) if kind == "cls2d" else (8, 8, 8, 2)
    path = tmp_path_factory.mktemp("k") / f"{kind}.onnx"
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    ex = nxrt.Explainer(path, batch_size=16)
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    task = "classification" if kind == "cls2d" else "segmentation"
    assert (ex.task, ex.layout) == (task, "channels_last")
    return model, ex, x, task


def test_vanilla_and_gradient_x_input(case):
    model, ex, x, task = case
    want = tape_grad(model, x, 1, task)
    got = ex.explain(x, "vanilla", target=1)
    assert got.shape == x.shape and rel_err(got, want) < 1e-4
    assert rel_err(ex.explain(x, "gradient_x_input", target=1), x * want) < 1e-4


def test_integrated_gradients(case):
    model, ex, x, task = case
    nodes, weights = np.polynomial.legendre.leggauss(16)
    alphas, weights = (nodes + 1) / 2, weights / 2
    want = x * sum(w * tape_grad(model, (a * x).astype(np.float32), 2, task)
                   for a, w in zip(alphas, weights, strict=True))
    got = ex.explain(x, "ig", target=2, steps=16)
    assert rel_err(got, want) < 1e-3


def test_gradcam(case):
    model, ex, x, task = case
    sub = keras.Model(model.input, [model.get_layer("conv_last").output, model.output])
    with tf.GradientTape() as tape:
        acts, y = sub(tf.constant(x))
        total = tf.reduce_sum(score(y, 0, task))
    grads = tape.gradient(total, acts).numpy()
    acts = acts.numpy()
    spatial = tuple(range(1, acts.ndim - 1))
    cam = np.maximum((grads.mean(axis=spatial, keepdims=True) * acts).sum(axis=-1, keepdims=True), 0)
    if task == "classification":
        want = tf.image.resize(cam, x.shape[1:3], method="bilinear").numpy()  # = align_corners False
    else:
        want = np.repeat(np.repeat(np.repeat(cam, 2, 1), 2, 2), 2, 3)  # nearest x2
    layer = next(n for n in ex.model.proto.graph.node if n.op_type == "Conv" and "conv_last" in n.name).output[0]
    got = ex.explain(x, "gradcam", target=0, layer=layer,
                     interpolation="linear" if task == "classification" else "nearest")
    assert got.shape == x.shape[:-1] + (1,)
    assert rel_err(got, want) < 1e-3
