"""Keras networks through tf2onnx (channels-last inputs behind Transposes) vs TF GradientTape.

The reference is GradientTape on the same Keras architecture built in float64 with the same
weights; the bound is max(1e-4, 2 x the float32 GradientTape's own error against it). A float32
tape is no oracle for the 3D U-Net: moving its input by one ulp changes its own float32 gradient by
4.8e-4 (measured). TF has no float64 MaxPool3D kernel, so the float64 twin pools by pairwise maxima.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.keras_refs import float64_twin, randomise_batchnorm, tape_grad
from tests.nets import BACKENDS, nxrt_grads
from tests.oracles import rel_err

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import tensorflow as tf
import tf2onnx


def resnet50_paper_head(size=64, dtype=None):
    """ResNet50 + the NeuroXAI classifier head: AveragePooling2D, Flatten, Dense 256 relu, Dropout, Dense 2 softmax."""
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
    h = keras.layers.AveragePooling2D(pool_size=(size // 32, size // 32), dtype=dtype)(base.output)
    h = keras.layers.Flatten(dtype=dtype)(h)
    h = keras.layers.Dense(256, activation="relu", dtype=dtype)(h)
    h = keras.layers.Dropout(0.5, dtype=dtype)(h)
    out = keras.layers.Dense(2, activation="softmax", dtype=dtype)(h)
    return keras.Model(base.input, out)


def max_pool_2x(x):
    """MaxPooling3D(2) as pairwise maxima of strided slices (TF's MaxPool3D has no float64 kernel)."""
    x = keras.ops.maximum(x[:, 0::2], x[:, 1::2])
    x = keras.ops.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return keras.ops.maximum(x[:, :, :, 0::2], x[:, :, :, 1::2])


def unet3d(size=32, channels=4, classes=4, pool=None):
    """A small 3D U-Net in the spirit of DeepSeg: two levels, BatchNorm, transposed-conv upsampling."""
    pool = pool or (lambda: keras.layers.MaxPooling3D(2))
    def block(x, f):
        for _ in range(2):
            x = keras.layers.Conv3D(f, 3, padding="same")(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
        return x

    inp = keras.Input((size, size, size, channels))
    e1 = block(inp, 8)
    e2 = block(pool()(e1), 16)
    b = block(pool()(e2), 32)
    d2 = block(keras.layers.Concatenate()([keras.layers.Conv3DTranspose(16, 2, strides=2)(b), e2]), 16)
    d1 = block(keras.layers.Concatenate()([keras.layers.UpSampling3D(2)(d2), e1]), 8)
    out = keras.layers.Conv3D(classes, 1, activation="softmax")(d1)
    return keras.Model(inp, out)


def convert(model, path, shape):
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return str(path)


@pytest.mark.parametrize("name", ["resnet50_head", "unet3d"])
def test_keras_parity(name, tmp_path):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    if name == "resnet50_head":
        build, shape, task, target = resnet50_paper_head, (64, 64, 3), "classification", 1
    else:
        build, shape, task, target = unet3d, (32, 32, 32, 4), "segmentation", 2
    model = build()
    randomise_batchnorm(model, rng)
    twin = build if name == "resnet50_head" else lambda: unet3d(pool=lambda: keras.layers.Lambda(max_pool_2x))
    model64 = float64_twin(twin, model)
    path = convert(model, tmp_path / "model.onnx", shape)
    errs, errs32 = {b: [] for b in BACKENDS}, []
    for _ in range(3):  # median of three draws: see test_networks_torch.check_parity (ReLU kinks)
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        ref32 = tape_grad(model, x, target, task, tf.float32)
        ref64 = tape_grad(model64, x, target, task, tf.float64)
        errs32.append(rel_err(ref32, ref64))
        for backend in BACKENDS:
            got = nxrt_grads(path, x, target, task, layout="channels_last", provider=backend)["input_grad"]
            assert got.shape == x.shape
            errs[backend].append(rel_err(got, ref64))
    bound = max(1e-4, 2 * float(np.median(errs32)))
    print(f"{name}: nxrt {errs} tape32 {errs32} bound {bound:.2e}")
    for backend, e in errs.items():
        assert float(np.median(e)) <= bound, (backend, errs, errs32)


def test_channels_last_layout_is_inferred(tmp_path):
    from nxrt.graph import load_model
    from nxrt.passes import default_score_spec

    keras.utils.set_random_seed(1)
    path = convert(unet3d(16), tmp_path / "u.onnx", (16, 16, 16, 4))
    spec = default_score_spec(load_model(path))
    assert (spec.task, spec.layout) == ("segmentation", "channels_last")
