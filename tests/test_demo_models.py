"""The shipped demo model(s) on fresh held-out phantoms, framework-free (ONNX + nxrt only)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

import nxrt
from nxrt.demo.phantom import MODALITIES, make_phantom
from nxrt.imaging.preprocess import prepare

GRADER = resources.files("nxrt.demo") / "data" / "grader.onnx"
SEGMENTER = resources.files("nxrt.demo") / "data" / "segmenter.onnx"


@pytest.fixture(scope="module")
def grader():
    with resources.as_file(GRADER) as path:
        return nxrt.Explainer(path)


@pytest.fixture(scope="module")
def held_out():
    # seeds far from the training (1000+) and the script's held-out (5000+) ranges: a fresh set
    cases = [make_phantom(seed) for seed in range(9000, 9024)]
    shape = (96, 112, 96)
    xs = [prepare(c.stack(MODALITIES), shape, "channels_first", "zscore") for c in cases]
    return cases, np.concatenate([x for x, _ in xs]), [g for _, g in xs]


def test_grader_card(grader):
    assert grader.card.task == "classification" and grader.card.labels == ["LGG", "HGG"]
    assert grader.card.channels == list(MODALITIES) and grader.card.normalize == "zscore"


def test_grader_accuracy_on_fresh_phantoms(grader, held_out):
    cases, x, _ = held_out
    pred = grader.predict(x).argmax(axis=1)
    truth = np.array([int(c.grade == "HGG") for c in cases])
    accuracy = float((pred == truth).mean())
    print(f"grader accuracy on {len(cases)} fresh phantoms: {accuracy:.1%}")
    assert accuracy >= 0.90


def test_gradcam_points_at_the_tumour(grader, held_out):
    """On high-grade phantoms, Grad-CAM and SmoothGrad mass inside the true tumour is well above the
    tumour's share of the brain."""
    cases, x, geometries = held_out
    shares, base = {"gradcam": [], "smoothgrad": []}, []
    for case, xi, geom in zip(cases, x, geometries, strict=True):
        if case.grade != "HGG":
            continue
        tumour = geom.to_model(case.seg > 0)
        brain = geom.to_model(case.images["t1"] > 0)
        base.append(tumour.sum() / brain.sum())
        for method, params in (("gradcam", {}), ("smoothgrad", {"samples": 8, "seed": 0})):
            a = np.abs(grader.explain(xi[None], method, target=1, **params)[0]).sum(axis=0) * brain
            shares[method].append(float(a[tumour].sum() / a.sum()))
    base_share = float(np.mean(base))
    for method, values in shares.items():
        print(f"{method}: share in tumour {np.mean(values):.1%} vs tumour share of brain {base_share:.1%}")
        assert np.mean(values) > 3 * base_share


@pytest.fixture(scope="module")
def segmenter():
    with resources.as_file(SEGMENTER) as path:
        return nxrt.Explainer(path)


@pytest.fixture(scope="module")
def held_out_seg():
    """Fresh phantoms (seeds outside the segmenter's training 2000+ and held-out 6000+ ranges)."""
    cases = [make_phantom(seed) for seed in range(9100, 9112)]
    xs = [prepare(c.stack(MODALITIES), (96, 112, 96), "channels_last", "zscore") for c in cases]
    return cases, np.concatenate([x for x, _ in xs]), [g for _, g in xs]


def test_segmenter_card(segmenter):
    card = segmenter.card
    assert card.task == "segmentation" and card.layout == "channels_last" and card.spatial_shape == [96, 112, 96]
    assert card.labels == ["background", "necrosis", "edema", "enhancing"] and card.extra["label_values"] == "0,1,2,4"


def test_segmenter_whole_tumour_dice_on_fresh_phantoms(segmenter, held_out_seg):
    cases, x, geometries = held_out_seg
    dice = []
    for case, xi, geom in zip(cases, x, geometries, strict=True):
        pred = segmenter.predict(xi[None])[0].argmax(axis=-1) > 0
        truth = geom.to_model(case.seg) > 0
        dice.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    print(f"segmenter whole-tumour Dice on {len(cases)} fresh phantoms: mean {np.mean(dice):.3f}, "
          f"min {np.min(dice):.3f}")
    assert np.mean(dice) >= 0.80


def test_segmenter_explanations_point_at_the_tumour(segmenter, held_out_seg):
    """The pooled whole-tumour score's Grad-CAM and SmoothGrad put their mass in the true tumour."""
    cases, x, geometries = held_out_seg
    shares, base = {"gradcam": [], "smoothgrad": []}, []
    for case, xi, geom in list(zip(cases, x, geometries, strict=True))[:4]:
        tumour = geom.to_model(case.seg > 0)
        brain = geom.to_model(case.images["t1"] > 0)
        base.append(tumour.sum() / brain.sum())
        for method, params in (("gradcam", {}), ("smoothgrad", {"samples": 4, "noise": 0.05, "seed": 0})):
            a = np.abs(segmenter.explain(xi[None], method, **params)[0]).sum(axis=-1) * brain
            shares[method].append(float(a[tumour].sum() / a.sum()))
    base_share = float(np.mean(base))
    for method, values in shares.items():
        print(f"segmenter {method}: share in tumour {np.mean(values):.1%} vs tumour share of brain {base_share:.1%}")
        assert np.mean(values) > 3 * base_share
