"""Localisation and complexity metrics against Quantus 0.6: the same maps, masks and parameters give
the same numbers (1e-6). Quantus takes only 2D images; its localisation and complexity metrics
flatten the map, so a 3D map is given to it as the 2D image [H, W*D] (the same voxels): that is the
oracle for the 3D versions, which also equal the 2D results on a volume of depth 1."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOCALISATION = {"pointing_game": "PointingGame", "relevance_mass": "RelevanceMassAccuracy",
                "relevance_rank": "RelevanceRankAccuracy", "auc": "AUC",
                "attribution_localisation": "AttributionLocalisation"}
COMPLEXITY = {"sparseness": "Sparseness", "complexity": "Complexity"}
#: parameter sets beyond the defaults (Quantus' names; weighted pointing game: Quantus 0.6 fails on it, see below)
VARIANTS = {"pointing_game": [{"abs": True}], "relevance_mass": [{"abs": True}],
            "relevance_rank": [{"abs": True}], "auc": [{"abs": True, "normalise": False}],
            "attribution_localisation": [{"positive_attributions": True, "abs": False}],
            "sparseness": [{"abs": False, "normalise": False}], "complexity": [{"normalise": False}]}


def conv_model(spatial: tuple[int, ...], channels: int = 3, classes: int = 2) -> onnx.ModelProto:
    """Conv -> Relu -> global average pool -> Gemm, on a 2D or 3D grid (channels first)."""
    rng = np.random.default_rng(0)
    k = len(spatial)
    w = numpy_helper.from_array(rng.standard_normal((4, channels) + (3,) * k).astype(np.float32), "W")
    fc = numpy_helper.from_array(rng.standard_normal((4, classes)).astype(np.float32), "F")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 2 * k, name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "F"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", channels, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def blobs(rng, n, spatial):
    """Masks: a random box per sample, the last one empty (NaN on both sides)."""
    masks = np.zeros((n, 1, *spatial), np.float32)
    for i in range(n - 1):
        lo = [int(rng.integers(0, s // 2)) for s in spatial]
        box = tuple(slice(lo_, lo_ + int(rng.integers(2, s // 2 + 1))) for lo_, s in zip(lo, spatial, strict=True))
        masks[(i, 0, *box)] = 1
    return masks


def quantus_scores(name, params, a, s, x):
    """Quantus on each sample alone (its normalisation runs over the batch it is given), the 3D maps
    as 2D images."""
    import quantus
    import torch

    cls = getattr(quantus, {**LOCALISATION, **COMPLEXITY}[name])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    out = []
    for i in range(a.shape[0]):
        ai, si, xi = (v[i:i + 1].astype(np.float64) for v in (a, s, x))
        if ai.ndim == 5:  # [1, C, H, W, D] -> [1, C, H, W*D]
            ai, si, xi = (v.reshape(*v.shape[:3], -1) for v in (ai, si, xi))
        metric = cls(disable_warnings=True, **params)
        out.append(float(metric(model=model, x_batch=xi, y_batch=np.zeros(1, int), a_batch=ai, s_batch=si,
                                device="cpu")[0]))
    return np.array(out)


@pytest.fixture(scope="module", params=[(12, 10), (8, 6, 5)], ids=["2d", "3d"])
def setting(request):
    import nxrt

    spatial = request.param
    rng = np.random.default_rng(len(spatial))
    ex = nxrt.Explainer(conv_model(spatial), task="classification", layout="channels_first")
    x = rng.standard_normal((4, 3, *spatial)).astype(np.float32)
    e = ex.explain(x, "vanilla", target=1)
    return ex, x, e, blobs(rng, 4, spatial)


@pytest.mark.parametrize("name", sorted(LOCALISATION))
def test_localisation_metrics_equal_quantus(setting, name):
    from nxrt.evaluation import evaluate

    ex, x, e, masks = setting
    one_channel = e.attribution.sum(axis=1, keepdims=True)  # what nxrt compares with the mask (documented)
    for params in [{}, *VARIANTS[name]]:
        got = evaluate(ex, x, e, metrics=[name], mask=masks, **{name: params})[name]
        want = quantus_scores(name, params, one_channel, masks, x)
        assert np.isnan(got[-1])  # the empty mask (Quantus 0.6's pointing game stores NaN in a bool array: True)
        assert np.isnan(want[-1]) or name == "pointing_game"
        np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-6, atol=1e-9, err_msg=f"{name} {params}")


@pytest.mark.parametrize("name", sorted(COMPLEXITY))
def test_complexity_metrics_equal_quantus_over_the_full_attribution(setting, name):
    from nxrt.evaluation import evaluate

    ex, x, e, _ = setting
    for params in [{}, *VARIANTS[name]]:
        got = evaluate(ex, x, e.attribution, target=1, metrics=[name], **{name: params})[name]
        want = quantus_scores(name, params, e.attribution, np.ones_like(e.attribution), x)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{name} {params}")


def test_a_volume_of_depth_one_scores_as_its_2d_image():
    import nxrt
    from nxrt.evaluation import evaluate

    rng = np.random.default_rng(5)
    x2 = rng.standard_normal((3, 3, 12, 10)).astype(np.float32)
    masks2 = blobs(rng, 3, (12, 10))
    ex2 = nxrt.Explainer(conv_model((12, 10)), task="classification", layout="channels_first")
    ex3 = nxrt.Explainer(conv_model((12, 10, 1)), task="classification", layout="channels_first")
    a2 = rng.standard_normal((3, 3, 12, 10)).astype(np.float32)
    names = sorted({**LOCALISATION, **COMPLEXITY}) + ["iou_otsu"]
    flat = evaluate(ex2, x2, a2, target=0, metrics=names, mask=masks2)
    deep = evaluate(ex3, x2[..., None], a2[..., None], target=0, metrics=names, mask=masks2[..., None])
    for name in names:
        np.testing.assert_array_equal(deep[name], flat[name], err_msg=name)


def test_iou_otsu_thresholds_as_scikit_image(setting):
    from skimage.filters import threshold_otsu

    from nxrt.evaluation import evaluate
    from nxrt.evaluation.stats import otsu_threshold

    ex, x, e, masks = setting
    got = evaluate(ex, x, e, metrics=["iou_otsu"], mask=masks)["iou_otsu"]
    for i in range(x.shape[0] - 1):
        m = np.abs(e.attribution[i].sum(axis=0)).astype(np.float64)
        m = m / m.max()
        assert otsu_threshold(m.ravel()) == pytest.approx(threshold_otsu(m.ravel()), rel=1e-12)
        region, s = m > threshold_otsu(m.ravel()), masks[i, 0] > 0
        assert got[i] == pytest.approx((region & s).sum() / (region | s).sum(), rel=1e-12)
    assert np.isnan(got[-1])


def test_weighted_pointing_game_is_one_minus_the_mask_share_on_a_hit(setting):
    """Quantus 0.6 cannot run weighted=True (it assigns a 2-D array into a boolean index, and would
    cast the weight to bool): checked against the definition."""
    from nxrt.evaluation import evaluate

    ex, x, e, masks = setting
    plain = evaluate(ex, x, e, metrics=["pointing_game"], mask=masks)["pointing_game"]
    weighted = evaluate(ex, x, e, metrics=["pointing_game"], mask=masks,
                        pointing_game={"weighted": True})["pointing_game"]
    share = masks[:, 0].reshape(len(masks), -1).mean(axis=1)
    np.testing.assert_allclose(weighted[:-1], np.where(plain[:-1] == 1, 1 - share[:-1], 0.0), rtol=1e-12)
