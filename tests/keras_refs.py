"""TensorFlow/Keras references shared by the Keras tests (tests may import frameworks; nxrt/ never does)."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def score(y, target: int, task: str):
    """nxrt's score: the output column (classification) or the spatial mean of a channel (segmentation)."""
    if task == "segmentation":
        return tf.reduce_mean(y[..., target], axis=list(range(1, y.shape.rank - 1)))
    return y[:, target]


def tape_grad(model, x: np.ndarray, target: int, task: str, dtype=None) -> np.ndarray:
    """d score / d x by GradientTape, in `dtype` (default: the model's input dtype), as float64."""
    xt = tf.constant(x, dtype=dtype or model.inputs[0].dtype)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(score(model(xt, training=False), target, task))
    return tape.gradient(total, xt).numpy().astype(np.float64)


def randomise_batchnorm(model, rng: np.random.Generator) -> None:
    """Non-trivial BatchNorm statistics, so that its inference form is really exercised."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.uniform(-0.2, 0.2, beta.shape),
                               rng.uniform(-0.2, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def float64_twin(build, model32):
    """The same architecture built in float64, with model32's weights."""
    keras.config.set_dtype_policy("float64")
    try:
        model64 = build()
    finally:
        keras.config.set_dtype_policy("float32")
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    assert all(w.dtype == "float64" for w in model64.weights)
    return model64
