"""A gradient pass is a forward pass too: `explain(..., keep_forward=True)` hands back the model's
output and scores at x whenever the method evaluated the model there, and `nxrt explain` then runs
no separate forward pass. Checked against the forward-only session's own output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import nxrt
from tests.test_augment import tiny_classifier
from tests.test_imaging_cli import MODEL_GRID, run_cli, seg_model, write_case

SHARING = ["vanilla", "guided_backprop", "gradient_x_input", "gradcam", "guided_gradcam", "occlusion"]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return nxrt.Explainer(seg_model(tmp_path_factory.mktemp("m") / "seg.onnx"))


@pytest.mark.parametrize("method", SHARING + ["integrated_gradients", "smoothgrad"])
def test_kept_forward_equals_the_forward_pass(segmenter, method):
    x = np.random.default_rng(0).normal(size=(1, 4, *MODEL_GRID)).astype(np.float32)
    params = {"occlusion": {"patch": 8, "stride": 8}}.get(method, {})
    segmenter.explain(x, method, keep_forward=True, **params)
    if method in ("integrated_gradients", "smoothgrad"):  # their passes run at other inputs only
        assert segmenter.last_forward is None
        return
    output, scores = segmenter.last_forward
    want_output, want_scores = segmenter.predict_and_score(x)
    np.testing.assert_allclose(output, want_output, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-7)
    segmenter.explain(x, method, **params)
    assert segmenter.last_forward is None  # only when asked


def test_kept_forward_of_a_classifier_batch():
    ex = nxrt.Explainer(tiny_classifier())
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    ex.explain(x, "vanilla", keep_forward=True)  # target None: each sample's class from its forward pass
    output, scores = ex.last_forward
    np.testing.assert_allclose(output, ex.predict(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores, ex.scores(x), rtol=1e-5, atol=1e-7)
    assert [t[0] for t in ex.info["targets"]] == list(np.argmax(scores, axis=1))


@pytest.mark.parametrize("first", ["vanilla", "integrated_gradients"])
def test_explain_command_shares_the_forward_pass(tmp_path, first):
    model = seg_model(tmp_path / "seg.onnx")
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
    ex.explain(x, "vanilla", target=0, keep_forward=True)
    np.testing.assert_allclose(ex.last_forward[0], want, rtol=1e-5, atol=1e-6)
