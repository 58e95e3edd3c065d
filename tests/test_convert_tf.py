"""`nxrt convert tf`: a TF1 frozen graph whose `training` switch defaults to True (dropout on) is
converted in inference mode, said so, verified against TensorFlow, and explained deterministically
with the gradient TensorFlow itself computes (tf.gradients on the same graph, training=False)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import nxrt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def frozen_graph(path, two_inputs: bool = False):
    """image [N,16,16,2] -> Conv -> Relu -> dropout when `training` (default True) -> mean -> logits [N,3]."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 16, 16, 2], name="image")
        if two_inputs:
            tf1.placeholder(tf.float32, [None, 4], name="extra")
        training = tf1.placeholder_with_default(True, [], name="training")
        w = tf.constant(rng.standard_normal((3, 3, 2, 4)).astype(np.float32), name="w")
        fc = tf.constant(rng.standard_normal((4, 3)).astype(np.float32), name="fc")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))
        y = tf.cond(training, lambda: tf.nn.dropout(y, rate=0.5), lambda: tf.identity(y))
        tf.matmul(tf.reduce_mean(y, axis=[1, 2]), fc, name="logits")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path, graph


def tf_gradient(graph, x, target):
    import tensorflow as tf

    with graph.as_default():
        grad = tf.gradients(graph.get_tensor_by_name("logits:0")[:, target], graph.get_tensor_by_name("image:0"))[0]
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(grad, {"image:0": x, "training:0": False})


def convert(*args):
    return subprocess.run([sys.executable, "-m", "nxrt.cli", "convert", "tf", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_frozen_graph_converts_in_inference_mode_and_explains_like_tensorflow(tmp_path):
    from tests.oracles import rel_err

    src, graph = frozen_graph(tmp_path / "model.pb")
    out = tmp_path / "model.onnx"
    res = convert(src, "-o", out, "--task", "classification", "--channels", "t1,t2")
    assert res.returncode == 0, res.stderr
    assert "set training = False (its inference value)" in res.stderr
    assert "verified against TensorFlow" in res.stdout
    model = onnx.load(str(out))
    assert not {n.op_type for n in model.graph.node} & {"RandomUniform", "RandomUniformLike", "If"}
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 2)).astype(np.float32)
    ex = nxrt.Explainer(out)
    assert (ex.task, ex.layout) == ("classification", "channels_last")
    a, b = ex.explain(x, "vanilla", target=2).attribution, ex.explain(x, "vanilla", target=2).attribution
    np.testing.assert_array_equal(a, b)  # deterministic: dropout is off
    assert rel_err(a, tf_gradient(graph, x, 2)) < 1e-5


def test_a_flag_can_be_set_explicitly_and_a_random_result_is_refused(tmp_path):
    src, _ = frozen_graph(tmp_path / "model.pb")
    res = convert(src, "-o", tmp_path / "on.onnx", "--task", "classification", "--channels", "t1,t2",
                  "--flag", "training=true")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "still draws random numbers" in lines[-1] and "--flag" in lines[-1], res.stderr
    assert not (tmp_path / "on.onnx").exists()


@pytest.mark.parametrize("args, words", [
    (["--flag", "nope=1"], "--flag nope: no placeholder-with-default of that name"),
    (["--input-node", "nope"], "--input-node nope: no placeholder of that name"),
    (["--output-node", "nope"], "no node 'nope'"),
])
def test_bad_graph_options_are_one_line(tmp_path, args, words):
    src, _ = frozen_graph(tmp_path / "model.pb")
    res = convert(src, "-o", tmp_path / "m.onnx", "--task", "classification", "--channels", "t1,t2", *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and words in lines[0], res.stderr


def test_two_float_inputs_need_the_input_named(tmp_path):
    src, _ = frozen_graph(tmp_path / "model.pb", two_inputs=True)
    res = convert(src, "-o", tmp_path / "m.onnx", "--task", "classification", "--channels", "t1,t2")
    assert res.returncode == 2 and "2 float placeholders (image, extra)" in res.stderr, res.stderr
    named = convert(src, "-o", tmp_path / "m.onnx", "--task", "classification", "--channels", "t1,t2",
                    "--input-node", "image")
    assert named.returncode == 0, named.stderr
