"""Segmenters whose channels are independent: one sigmoid (or logit) channel — brain extractors,
binary tumour masks — or a sigmoid per channel (overlapping BraTS regions). The prediction is each
channel thresholded, `region="predicted"` is that mask, and the figure outlines it; checked
against the model's own onnxruntime output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import nxrt
from nxrt.card import ModelCard
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import prepare
from tests.builders import CHANNELS, MODEL_GRID, run_cli, write_case


def segmenter(path, channels: int, sigmoid: bool, card_activation: str | None = None):
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((channels, 4, 3, 3, 3)).astype(np.float32) * 0.3, "W")
    bias = numpy_helper.from_array(np.full(channels, -0.2, np.float32), "B")
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logit" if sigmoid else "output"], pads=[1] * 6,
                              name="conv")]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["output"], name="sigmoid"))
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 4, *MODEL_GRID])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             ["N", channels, *MODEL_GRID])], [w, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(task="segmentation", channels=CHANNELS, normalize="zscore", activation=card_activation)
    onnx.save_model(card.write(model), str(path))
    return path


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases") / "c"
    write_case(folder, "c", with_seg=False)  # no true tumour: the figure outlines the prediction
    return folder


def model_output(path, case_dir):
    """The model's own output on the preprocessed case (plain onnxruntime, no nxrt session)."""
    case = load_case(case_dir, channels=CHANNELS)
    x, geometry = prepare(case.data, MODEL_GRID, "channels_first", "zscore", case.moments)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return x, geometry, out[0]


@pytest.mark.parametrize("sigmoid, threshold", [(True, 0.5), (False, 0.0)])
def test_one_channel_prediction_is_the_thresholded_output(tmp_path, case_dir, sigmoid, threshold):
    path = segmenter(tmp_path / "m.onnx", 1, sigmoid)
    x, geometry, out = model_output(path, case_dir)
    want = out[0] > threshold
    assert 0 < want.mean() < 1, "the test model predicts nothing or everything: it tests nothing"
    res = run_cli("explain", path, case_dir, "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "out" / "c"
    written = np.asarray(nib.load(str(folder / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, geometry.to_image(want.astype(np.int16)))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["prediction"]["rule"] == ("p > 0.5" if sigmoid else "logit > 0") + \
        f" per channel ({'sigmoid' if sigmoid else 'logits'})"
    assert summary["prediction"]["voxels_per_channel"] == {"0": int(np.count_nonzero(geometry.inside(want)))}
    entry = summary["methods"]["vanilla"]
    assert entry["target"] == [0]
    raw = np.asarray(nib.load(str(folder / "vanilla.nii.gz")).dataobj)
    magnitude = np.abs(raw).sum(axis=-1, dtype=np.float64)
    mask = written > 0
    assert entry["share_in_predicted_tumour"] == pytest.approx(magnitude[mask].sum() / magnitude.sum(), rel=1e-5)
    assert 0 < entry["share_in_predicted_tumour"] < 1


def test_one_channel_predicted_region_is_the_thresholded_mask(tmp_path, case_dir):
    path = segmenter(tmp_path / "m.onnx", 1, sigmoid=True)
    x, _, out = model_output(path, case_dir)
    ex = nxrt.Explainer(path)
    got = ex.explain(x, "vanilla", region="predicted").attribution
    want = ex.explain(x, "vanilla", region=(out[0] > 0.5).astype(np.float32)).attribution
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert not np.allclose(got, ex.explain(x, "vanilla").attribution)  # not the whole-volume mean


def test_multilabel_channels_are_thresholded_each_and_all_explained(tmp_path, case_dir):
    path = segmenter(tmp_path / "m.onnx", 3, sigmoid=True)
    x, geometry, out = model_output(path, case_dir)
    ex = nxrt.Explainer(path)
    assert ex.explain(x, "vanilla").targets == [[0, 1, 2]]  # no background channel among independent ones
    got = ex.explain(x, "vanilla", target=1, region="predicted").attribution
    want = ex.explain(x, "vanilla", target=1, region=(out[1] > 0.5).astype(np.float32)).attribution
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    res = run_cli("explain", path, case_dir, "-m", "gradcam", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    written = np.asarray(nib.load(str(tmp_path / "out" / "c" / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, geometry.to_image(np.moveaxis(out > 0.5, 0, -1).astype(np.uint8)))


def test_the_card_decides_over_the_graph_and_softmax_on_one_channel_is_refused(tmp_path, case_dir):
    logits_card = segmenter(tmp_path / "a.onnx", 1, sigmoid=False, card_activation="sigmoid")
    x, geometry, out = model_output(logits_card, case_dir)
    res = run_cli("explain", logits_card, case_dir, "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    written = np.asarray(nib.load(str(tmp_path / "out" / "c" / "prediction.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, geometry.to_image((out[0] > 0.5).astype(np.int16)))
    with pytest.raises(nxrt.ModelError, match="nxrt.activation=softmax but output 'output' has one channel"):
        nxrt.Explainer(segmenter(tmp_path / "b.onnx", 1, sigmoid=True, card_activation="softmax"))


def test_the_overview_outlines_the_thresholded_prediction_when_there_is_no_true_tumour(tmp_path, case_dir):
    from PIL import Image

    from nxrt.cohort import CaseJob, CaseRequest
    from nxrt.imaging import figures

    path = segmenter(tmp_path / "m.onnx", 1, sigmoid=True)
    _, geometry, out = model_output(path, case_dir)
    ex = nxrt.Explainer(path)
    case = load_case(case_dir, channels=CHANNELS)
    assert case.seg is None
    from nxrt.imaging.pipeline import explain_case

    result = explain_case(ex, case, ["vanilla"])
    np.testing.assert_array_equal(np.asarray(result.figure.predicted), geometry.to_image(out[0] > 0.5))
    assert result.figure.contour is None  # no true tumour to outline
    CaseJob(ex, tmp_path / "out", CaseRequest(["vanilla"])).explain(case)()
    # the written overview has the predicted tumour's outline: cyan pixels a figure without it lacks
    f = result.figure
    maps = {name: m.display for name, m in result.methods.items()}
    figures.overview(tmp_path / "bare.png", f.background, maps, f.center, title=f.title, contour=None,
                     spacing=case.spacing, views=f.views, affine=case.affine)

    def outline(png):
        return int((np.asarray(Image.open(png).convert("RGB")) == figures.PREDICTED_OUTLINE).all(axis=-1).sum())

    assert outline(tmp_path / "out" / "c" / "overview.png") > outline(tmp_path / "bare.png") + 20
