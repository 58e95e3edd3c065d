"""Faithfulness metrics: region perturbation and pixel flipping (deletion with one-voxel patches)
against Quantus 0.6 on a 2D torch model exported to ONNX (1e-4); 3D deletion / insertion / region
perturbation against direct numpy computations with the model run by onnxruntime on each perturbed
input; faithfulness correlation on a linear model, where it is exactly 1."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.nets import export_torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def torch_classifier(channels: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3), nn.Softmax(dim=1)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, nxrt Explainer of its ONNX export, x, target) for 3- and 1-channel inputs."""
    import torch

    import nxrt

    out = {}
    for channels in (3, 1):
        model = torch_classifier(channels)
        x = np.random.default_rng(channels).standard_normal((3, channels, 20, 18)).astype(np.float32)
        path = export_torch(model, torch.from_numpy(x[:1]), tmp_path_factory.mktemp("m") / "m.onnx", dynamo=False,
                            dynamic_batch=True)
        out[channels] = (model, nxrt.Explainer(path, task="classification", layout="channels_first"), x)
    return out


def quantus_run(cls, model, x, a, y, **params):
    import quantus

    metric = getattr(quantus, cls)(disable_warnings=True, **params)
    return np.asarray(metric(model=model, x_batch=x.copy(), y_batch=y, a_batch=a.astype(np.float32).copy(),
                             device="cpu", softmax=True), dtype=np.float64)  # (the model ends with its Softmax)


@pytest.mark.parametrize("params", [{}, {"patch_size": 4, "order": "lerf", "regions_evaluation": 12},
                                    {"patch_size": 6, "perturb_baseline": "white", "regions_evaluation": 9}])
def test_region_perturbation_curves_equal_quantus(exported, params):
    """(Not "mean": Quantus 0.6 takes the mean of the whole, already perturbed and padded array again
    at every step; nxrt's is each channel's mean of the unperturbed sample.)"""
    from nxrt.evaluation import evaluate

    model, ex, x = exported[3]
    y = np.array([0, 1, 2])
    a = np.random.default_rng(7).standard_normal((3, 1, 20, 18)).astype(np.float32)
    rows = [evaluate(ex, x[i:i + 1], a[i:i + 1], target=int(y[i]), metrics=["region_perturbation"],
                     region_perturbation=params) for i in range(3)]
    want = quantus_run("RegionPerturbation", model, x, a, y, **params)  # drops y(x) - y(x_k), k = 1..R
    for i, row in enumerate(rows):
        curve = row["region_perturbation_curve"]
        np.testing.assert_allclose(curve[0] - curve[1:], want[i], atol=1e-4)
        assert row["region_perturbation"] == pytest.approx(want[i].mean(), abs=1e-4)


def test_deletion_with_one_voxel_patches_is_quantus_pixel_flipping(exported):
    from nxrt.evaluation import evaluate

    model, ex, x = exported[1]  # one channel: a feature is a voxel
    a = np.random.default_rng(3).standard_normal((3, 1, 20, 18)).astype(np.float32)
    y = np.array([2, 0, 1])
    step = 18  # 360 voxels, 20 steps
    want = quantus_run("PixelFlipping", model, x, a, y, features_in_step=step)
    for i in range(3):
        got = evaluate(ex, x[i:i + 1], a[i:i + 1], target=int(y[i]), metrics=["deletion"],
                       deletion={"patch_size": 1, "steps": 360 // step, "perturb_baseline": "black"})
        full = float(ex.scores(x[i:i + 1])[0, y[i]])
        np.testing.assert_allclose(got["deletion_curve"][1:] * full, want[i], atol=1e-4)
        assert got["deletion_curve"][0] == 1.0


def _patch_order(m, p):
    """Patches of p^3 on the evenly padded grid, as (slices, relevance), most relevant first."""
    import itertools

    boxes = []
    for axis_starts in itertools.product(*[range(-((p - n % p) // 2 if n % p else 0), n, p) for n in m.shape]):
        box = tuple(slice(max(0, s), min(n, max(0, s + p))) for s, n in zip(axis_starts, m.shape, strict=True))
        if all(b.stop > b.start for b in box):
            boxes.append((box, m[box].sum()))
    boxes.sort(key=lambda b: -b[1])
    return boxes


def test_3d_deletion_insertion_and_region_perturbation_equal_direct_numpy(seg_explainer):
    import onnxruntime as ort
    from nxrt.plugins.metrics_faithfulness import gaussian_blur

    from nxrt.evaluation import evaluate
    from tests.builders import MODEL_GRID

    ex = seg_explainer
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 4, *MODEL_GRID)).astype(np.float32)
    a = ex.explain(x, "vanilla").attribution
    got = evaluate(ex, x, a, metrics=["deletion", "insertion", "region_perturbation"],
                   deletion={"steps": 5, "patch_size": 5}, insertion={"steps": 4, "patch_size": 6, "blur_sigma": 1.5},
                   region_perturbation={"patch_size": 4, "regions_evaluation": 7})

    sess = ort.InferenceSession(ex.model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    target = [1, 2]  # a segmenter's default: every foreground channel, mean over the grid, summed

    def score(v):
        out = sess.run(None, {ex.model.input_name: v.astype(np.float32)})[0]
        return float(out[0, target].mean(axis=(1, 2, 3)).sum())

    m = a[0].sum(axis=0)  # the map summed over its channels (signed: abs=False; normalising changes no order)
    total = m.size
    for name, p, steps, base in (("deletion", 5, 5, np.zeros_like(x)),
                                 ("insertion", 6, 4, gaussian_blur(x, 1.5, (2, 3, 4)))):
        boxes = _patch_order(m, p)
        full = score(x)
        curve, fractions = [], []
        for k in range(steps + 1):
            upto = int(np.ceil(k * len(boxes) / steps))
            v = (base if name == "insertion" else x).copy()
            src = x if name == "insertion" else base
            removed = 0
            for box, _ in boxes[:upto]:
                v[(0, slice(None), *box)] = src[(0, slice(None), *box)]
                removed += int(np.prod([b.stop - b.start for b in box]))
            curve.append(score(v) / full)
            fractions.append(removed / total)
        np.testing.assert_allclose(got[f"{name}_curve"], curve, rtol=1e-5, atol=1e-6, err_msg=name)
        assert got[name] == pytest.approx(np.trapezoid(curve, fractions), rel=1e-5)

    boxes = _patch_order(m, 4)
    v, scores = x.copy(), [score(x)]
    for box, _ in boxes[:7]:
        v[(0, slice(None), *box)] = x.min()
        scores.append(score(v))
    np.testing.assert_allclose(got["region_perturbation_curve"], scores, rtol=1e-5, atol=1e-6)


def test_faithfulness_correlation_is_one_for_gradient_x_input_of_a_linear_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import nxrt
    from nxrt.evaluation import evaluate

    w = np.random.default_rng(2).standard_normal((2 * 6 * 5, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])], "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    ex = nxrt.Explainer(model, task="classification", layout="channels_first")
    x = np.random.default_rng(4).standard_normal((2, 2, 6, 5)).astype(np.float32)
    e = ex.explain(x, "gradient_x_input", target=1)
    got = evaluate(ex, x, e, metrics=["faithfulness_correlation"],
                   faithfulness_correlation={"subset_size": 12, "nr_runs": 30, "perturb_baseline": "zero"})
    np.testing.assert_allclose(got["faithfulness_correlation"], 1.0, atol=1e-5)


def test_a_logit_classifier_is_scored_by_its_probability_unless_softmax_is_off():
    import onnxruntime as ort

    import nxrt
    from nxrt.evaluation import evaluate
    from tests.test_metrics_quantus import conv_model

    model = conv_model((10, 8))  # ends with a MatMul: logits
    ex = nxrt.Explainer(model, task="classification", layout="channels_first")
    x = np.random.default_rng(9).standard_normal((1, 3, 10, 8)).astype(np.float32)
    a = np.random.default_rng(10).standard_normal((1, 1, 10, 8)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": x})[0][0].astype(np.float64)
    for softmax, want in ((True, np.exp(logits[1]) / np.exp(logits).sum()), (False, logits[1])):
        got = evaluate(ex, x, a, target=1, metrics=["region_perturbation"],
                       region_perturbation={"softmax": softmax, "patch_size": 5, "regions_evaluation": 2})
        assert got["region_perturbation_curve"][0] == pytest.approx(want, rel=1e-5)


def test_the_blur_baseline_is_scipys_gaussian_filter():
    from nxrt.plugins.metrics_faithfulness import gaussian_blur
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(12).standard_normal((1, 4, 20, 18, 16)).astype(np.float32)
    for sigma in (0.8, 1.5, 3.0):
        want = gaussian_filter(x.astype(np.float64), sigma=(0, 0, sigma, sigma, sigma), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(gaussian_blur(x, sigma, (2, 3, 4)), want, atol=1e-6)


def test_faithfulness_correlation_equals_direct_runs_for_each_map_baseline_and_target():
    """Every method evaluated on a sample shares the scores of the random subsets (they do not depend
    on the map): each value still equals a direct computation -- two maps, then another baseline,
    then another target, then another sample."""
    import onnxruntime as ort

    import nxrt
    from nxrt.evaluation import evaluate
    from tests.test_metrics_quantus import conv_model

    model = conv_model((10, 8))
    ex = nxrt.Explainer(model, task="classification", layout="channels_first")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(21)
    xs = rng.standard_normal((2, 1, 3, 10, 8)).astype(np.float32)
    maps = rng.standard_normal((2, 1, 3, 10, 8)).astype(np.float32)
    params = {"nr_runs": 12, "subset_size": 20}

    def direct(x, a, target, baseline):
        draw = np.random.default_rng(0)
        subsets = [draw.choice(a.size, 20, replace=False) for _ in range(12)]
        base = {"black": np.full(x.size, x.min()), "zero": np.zeros(x.size)}[baseline]
        m = (a / np.abs(a).max()).ravel()
        drops = []
        for s in subsets:
            v = x.ravel().copy()
            v[s] = base[s]
            before, after = (sess.run(None, {"x": v})[0][0, target] for v in (x, v.reshape(x.shape)))
            drops.append(before - after)
        return np.corrcoef([m[s].sum() for s in subsets], drops)[0, 1]

    for x, a, target, baseline in ((xs[0], maps[0], 1, "black"), (xs[0], maps[1], 1, "black"),
                                   (xs[0], maps[1], 1, "zero"), (xs[0], maps[1], 0, "zero"),
                                   (xs[1], maps[1], 0, "zero")):
        got = evaluate(ex, x, a, target=target, metrics=["faithfulness_correlation"],
                       faithfulness_correlation={**params, "perturb_baseline": baseline})
        assert got["faithfulness_correlation"] == pytest.approx(direct(x, a, target, baseline), abs=1e-5)
