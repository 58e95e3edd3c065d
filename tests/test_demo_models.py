"""The shipped demo model(s) on fresh held-out phantoms, framework-free (ONNX + nxrt only)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

import nxrt
from nxrt.demo.phantom import MODALITIES, make_phantom
from nxrt.imaging.preprocess import prepare

DATA = resources.files("nxrt.demo") / "data"


def shipped_explainer(name: str) -> nxrt.Explainer:
    with resources.as_file(DATA / f"{name}.onnx") as path:
        return nxrt.Explainer(path)


def fresh_phantoms(seeds, layout: str):
    """Phantoms the training never saw, preprocessed as `nxrt explain` does: (cases, x, geometries)."""
    cases = [make_phantom(seed) for seed in seeds]
    xs = [prepare(c.stack(MODALITIES), (96, 112, 96), layout, "zscore") for c in cases]
    return cases, np.concatenate([x for x, _ in xs]), [g for _, g in xs]


def tumour_shares(explainer, held_out, methods, channel_axis, target=None, limit=None):
    """Mean share of each method's |attribution| (inside the brain) that lies in the true tumour on
    the high-grade cases, and the tumour's mean share of the brain."""
    shares, base = {m: [] for m in methods}, []
    hgg = [item for item in zip(*held_out, strict=True) if item[0].grade == "HGG"][:limit]
    for case, xi, geom in hgg:
        tumour = geom.to_model(case.seg > 0)
        brain = geom.to_model(case.images["t1"] > 0)
        base.append(tumour.sum() / brain.sum())
        for method, params in methods.items():
            a = np.abs(explainer.explain(xi[None], method, target=target, **params)[0]).sum(axis=channel_axis) * brain
            shares[method].append(float(a[tumour].sum() / a.sum()))
    return {m: float(np.mean(v)) for m, v in shares.items()}, float(np.mean(base))


@pytest.fixture(scope="module")
def grader():
    return shipped_explainer("grader")


@pytest.fixture(scope="module")
def held_out():
    # seeds far from the training (1000+) and the script's held-out (5000+) ranges: a fresh set
    return fresh_phantoms(range(9000, 9024), "channels_first")


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
    shares, base_share = tumour_shares(grader, held_out, {"gradcam": {}, "smoothgrad": {"samples": 8, "seed": 0}},
                                       channel_axis=0, target=1)
    for method, share in shares.items():
        print(f"{method}: share in tumour {share:.1%} vs tumour share of brain {base_share:.1%}")
        assert share > 3 * base_share


@pytest.fixture(scope="module")
def segmenter():
    return shipped_explainer("segmenter")


@pytest.fixture(scope="module")
def held_out_seg():
    """Fresh phantoms (seeds outside the segmenter's training 2000+ and held-out 6000+ ranges)."""
    return fresh_phantoms(range(9100, 9112), "channels_last")


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
    shares, base_share = tumour_shares(segmenter, held_out_seg,
                                       {"gradcam": {}, "smoothgrad": {"samples": 4, "noise": 0.05, "seed": 0}},
                                       channel_axis=-1, limit=4)
    for method, share in shares.items():
        print(f"segmenter {method}: share in tumour {share:.1%} vs tumour share of brain {base_share:.1%}")
        assert share > 3 * base_share
