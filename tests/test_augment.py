"""nxrt.augment as a public artifact: standard ONNX, checker-clean, and its errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import nxrt
from nxrt.passes import SEED, ScoreSpec
from tests.builders import tiny_classifier


def run(model, x, seed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x, SEED: seed}), strict=True))


def test_augmented_model_is_standard_onnx_and_runs():
    aug = nxrt.augment(tiny_classifier(), layers=["conv"])
    onnx.checker.check_model(aug, full_check=True)
    assert {n.domain for n in aug.graph.node} <= {""}
    assert all(o.version >= 17 for o in aug.opset_import if o.domain in ("", "ai.onnx"))
    assert aug.ir_version <= 10
    names = [o.name for o in aug.graph.output]
    assert names == ["prob", "nxrt_scores", "c", "nxrt_grad__x", "nxrt_grad__c"]
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = run(aug, x, np.eye(2, dtype=np.float32)[[0, 1, 1]])
    assert out["nxrt_grad__x"].shape == x.shape and out["nxrt_grad__c"].shape == (3, 4, 8, 8)


def test_old_opset_is_converted_and_logits_option():
    model = tiny_classifier(opset=13)
    aug = nxrt.augment(model, score=ScoreSpec(task="classification", logits=True))
    assert max(o.version for o in aug.opset_import if o.domain == "") >= 17
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = run(aug, x, np.array([[1.0, -1.0]], np.float32))
    # the scores are the logits (before Softmax): they are not a probability vector
    assert not np.isclose(out["nxrt_scores"].sum(), 1.0)
    np.testing.assert_allclose(np.exp(out["nxrt_scores"]) / np.exp(out["nxrt_scores"]).sum(), out["prob"], rtol=1e-5)


def test_target_bakes_in_the_seed():
    model = tiny_classifier()
    fixed = nxrt.augment(model, target=1)
    assert SEED not in [i.name for i in fixed.graph.input]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    g_fixed = sess.run(["nxrt_grad__x"], {"x": x})[0]
    g_seed = run(nxrt.augment(model), x, np.array([[0, 1], [0, 1]], np.float32))["nxrt_grad__x"]
    np.testing.assert_allclose(g_fixed, g_seed, rtol=1e-6, atol=1e-9)
    both = ort.InferenceSession(nxrt.augment(model, target=[0, 1]).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(["nxrt_grad__x"], {"x": x})[0]
    g0 = run(nxrt.augment(model), x, np.array([[1, 0], [1, 0]], np.float32))["nxrt_grad__x"]
    np.testing.assert_allclose(both, g0 + g_seed, rtol=1e-5, atol=1e-7)  # list targets are summed


def test_unsupported_ops_listed_before_running():
    model = tiny_classifier()
    g = model.graph  # insert two unsupported ops between Relu and the pool
    g.node[2].input[0] = "u2"
    g.node.insert(2, helper.make_node("LRN", ["u1"], ["u2"], size=3, name="lrn"))
    g.node.insert(2, helper.make_node("Det", ["r"], ["u1"], name="det_a"))
    with pytest.raises(nxrt.ModelError) as info:
        nxrt.augment(model)
    msg = str(info.value)
    assert "Det (det_a)" in msg and "LRN (lrn)" in msg and "\n" not in msg


def test_custom_domain_op_is_unsupported():
    model = tiny_classifier()
    model.graph.node[1].domain = "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(nxrt.ModelError, match="com.microsoft.Relu"):
        nxrt.augment(model)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all\n" * 10, b"\x08\x07\x12\x03abc" * 3])
def test_corrupt_file_is_a_model_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(nxrt.ModelError, match="bad.onnx"):
        nxrt.augment(path)


def test_missing_file_and_missing_external_data(tmp_path):
    with pytest.raises(nxrt.ModelError, match="no such file"):
        nxrt.augment(tmp_path / "nope.onnx")
    path = tmp_path / "ext.onnx"
    onnx.save_model(tiny_classifier(), str(path), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(nxrt.ModelError, match="ext.onnx.data is missing"):
        nxrt.augment(path)


def test_non_float_input_is_refused():
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["f"], to=1), helper.make_node("Relu", ["f"], ["y"])],
                              "int", [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(nxrt.ModelError, match="'x' is not a float tensor"):
        nxrt.augment(model)


def test_unknown_layer_lists_candidates():
    with pytest.raises(nxrt.InputError, match="Conv outputs include: c"):
        nxrt.augment(tiny_classifier(), layers=["nope"])


def test_target_out_of_range():
    with pytest.raises(nxrt.InputError, match="target 5 is out of range"):
        nxrt.augment(tiny_classifier(), target=5)


def test_external_data_roundtrip(tmp_path):
    """Weights in model.onnx.data (torch's dynamo exporter does this) load, augment and save."""
    src = tmp_path / "model.onnx"
    onnx.save_model(tiny_classifier(), str(src), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    aug = nxrt.augment(src)
    from nxrt.graph import save_model

    out = save_model(aug, tmp_path / "out" / "aug.onnx", external=True)
    assert (tmp_path / "out" / "aug.onnx.data").exists()
    onnx.checker.check_model(str(out), full_check=True)
    x = np.ones((1, 3, 8, 8), np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    g = sess.run(["nxrt_grad__x"], {"x": x, SEED: np.array([[1, 0]], np.float32)})[0]
    ref = run(nxrt.augment(tiny_classifier()), x, np.array([[1, 0]], np.float32))["nxrt_grad__x"]
    np.testing.assert_allclose(g, ref, rtol=1e-6)


def test_model_over_2gb_with_external_data(tmp_path):
    """A 2.1 GB weight in external data: loaded, augmented, checked, saved and run."""
    rows, cols = 1024, 2 ** 31 // 4 // 1024 + 8 * 1024  # [1024, cols] float32, just above 2 GiB
    used = np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Slice", ["h", "s", "e", "a"], ["y"])],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "s"), numpy_helper.from_array(np.array([4], np.int64), "e"),
         numpy_helper.from_array(np.array([1], np.int64), "a")])
    weight = graph.initializer.add()  # declared external, written to disk row by row (never 2 GB in a proto)
    weight.name, weight.data_type, weight.data_location = "W", TensorProto.FLOAT, TensorProto.EXTERNAL
    weight.dims.extend([rows, cols])
    for key, value in (("location", "big.onnx.data"), ("offset", "0"), ("length", str(rows * cols * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "big.onnx"))
    with open(tmp_path / "big.onnx.data", "wb") as f:
        row = np.zeros(cols, np.float32)
        for i in range(rows):
            row[:4] = used[i]
            f.write(row.tobytes())
    aug = nxrt.augment(tmp_path / "big.onnx", score=ScoreSpec(task="classification"))
    from nxrt.graph import save_model

    out = save_model(aug, tmp_path / "big.grad.onnx")
    del aug
    assert (tmp_path / "big.grad.onnx.data").stat().st_size > 2 ** 31
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, rows)).astype(np.float32)
    g = sess.run(["nxrt_grad__x"], {"x": x, SEED: np.array([[0, 0, 1, 0]], np.float32)})[0]
    assert float(np.abs(g[0] - used[:, 2]).max()) < 1e-6  # d y_2 / d x = column 2 of W


def test_cli_augment_writes_a_runnable_model(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(src))
    out = tmp_path / "m.grad.onnx"
    res = subprocess.run([sys.executable, "-m", "nxrt.cli", "augment", str(src), "-o", str(out), "--layer", "conv"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "nxrt_grad__c" in res.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "nxrt_grad__x" in [o.name for o in sess.get_outputs()]
    again = subprocess.run([sys.executable, "-m", "nxrt.cli", "augment", str(src), "-o", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("case", ["missing", "corrupt", "unsupported"])
def test_cli_errors_are_one_line_exit_2(tmp_path, case):
    src = tmp_path / "m.onnx"
    if case == "corrupt":
        src.write_bytes(b"garbage" * 100)
    elif case == "unsupported":
        model = tiny_classifier()
        model.graph.node[1].op_type = "Det"
        onnx.save_model(model, str(src))
    res = subprocess.run([sys.executable, "-m", "nxrt.cli", "augment", str(src), "-o", str(tmp_path / "o.onnx")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nxrt: error:"), res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o.onnx").exists()
    debug = subprocess.run([sys.executable, "-m", "nxrt.cli", "--debug", "augment", str(src), "-o",
                            str(tmp_path / "o.onnx")], capture_output=True, text=True)
    assert "Traceback" in debug.stderr
