"""A gradient pass is a forward pass too: the Explanation carries the model's output and scores at x
whenever the method evaluated the model there, and `nxrt explain` then runs no separate forward
pass. Checked against the forward-only session's own output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import nxrt
from tests.builders import MODEL_GRID, run_cli, tiny_classifier, write_case

SHARING = ["vanilla", "guided_backprop", "gradient_x_input", "gradcam", "guided_gradcam", "occlusion"]


@pytest.mark.parametrize("method", SHARING + ["integrated_gradients", "smoothgrad"])
def test_kept_forward_equals_the_forward_pass(seg_explainer, method):
    x = np.random.default_rng(0).normal(size=(1, 4, *MODEL_GRID)).astype(np.float32)
    params = {"occlusion": {"patch": 8, "stride": 8}}.get(method, {})
    e = seg_explainer.explain(x, method, **params)
    if method in ("integrated_gradients", "smoothgrad"):  # their passes run at other inputs only
        assert e.output is None and e.scores is None
        return
    want_output, want_scores = seg_explainer.predict_and_score(x)
    np.testing.assert_allclose(e.output, want_output, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.scores, want_scores, rtol=1e-5, atol=1e-7)


def test_keep_forward_is_deprecated_and_changes_nothing(seg_explainer):
    x = np.random.default_rng(0).normal(size=(1, 4, *MODEL_GRID)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="keep_forward"):
        old = seg_explainer.explain(x, "vanilla", keep_forward=True)
    new = seg_explainer.explain(x, "vanilla")
    np.testing.assert_array_equal(old.attribution, new.attribution)
    np.testing.assert_array_equal(old.output, new.output)


def test_kept_forward_of_a_classifier_batch():
    ex = nxrt.Explainer(tiny_classifier())
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    e = ex.explain(x, "vanilla")  # target None: each sample's class from its forward pass
    np.testing.assert_allclose(e.output, ex.predict(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e.scores, ex.scores(x), rtol=1e-5, atol=1e-7)
    assert [t[0] for t in e.targets] == list(np.argmax(e.scores, axis=1))


@pytest.mark.parametrize("first", ["vanilla", "integrated_gradients"])
def test_explain_command_shares_the_forward_pass(tmp_path, seg_onnx, first):
    model = seg_onnx
    write_case(tmp_path / "c", "c")
    others = [m for m in ("vanilla", "integrated_gradients") if m != first]
    res = run_cli("explain", model, tmp_path / "c", "-m", first, "-m", others[0], "--steps", "4",
                  "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    assert summary["forward_pass"] == ("shared with vanilla" if first == "vanilla" else "separate")
    assert list(summary["methods"]) == [first, *others]
    # the prediction and scores equal the forward-only session's
    ex = nxrt.Explainer(model)
    from nxrt.imaging.cases import load_case
    from nxrt.imaging.preprocess import prepare

    case = load_case(tmp_path / "c", channels=ex.card.channels)
    x, geometry = prepare(case.data, MODEL_GRID, ex.layout, ex.card.normalize, case.moments)
    output, scores = ex.predict_and_score(x)
    np.testing.assert_allclose(summary["scores"], scores[0], rtol=1e-5)
    labels = geometry.to_image(np.argmax(output[0], axis=0).astype(np.int16))
    written = np.asarray(nib.load(str(tmp_path / "out" / "c" / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, labels)


def test_an_inner_output_is_predicted_and_kept():
    """output= naming an intermediate tensor (the classifier's logits before its Softmax)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = tiny_classifier()
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    ex = nxrt.Explainer(model, output="logits")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None))
    want = ReferenceEvaluator(probe).run(["logits"], {model.graph.input[0].name: x})[0]
    np.testing.assert_allclose(ex.predict(x), want, rtol=1e-5, atol=1e-6)
    e = ex.explain(x, "vanilla", target=0)
    np.testing.assert_allclose(e.output, want, rtol=1e-5, atol=1e-6)
