"""The BraTS-like phantom generator: compartments, contrasts, reproducibility."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from nxrt.demo.phantom import MODALITIES, make_phantom, write_brats_case
from nxrt.imaging.cases import load_case


@pytest.fixture(scope="module")
def hgg():
    return make_phantom(1, "HGG")


@pytest.fixture(scope="module")
def lgg():
    return make_phantom(2, "LGG")


def test_labels_match_the_intended_compartments(hgg, lgg):
    assert set(np.unique(hgg.seg)) == {0, 1, 2, 4}
    assert set(np.unique(lgg.seg)) == {0, 1, 2}
    brain = hgg.images["t1"] > 0
    assert np.all(brain[hgg.seg > 0])  # the tumour lies inside the head
    # nesting: necrosis is surrounded by enhancing rim, which is surrounded by oedema
    c = hgg.center
    assert hgg.seg[c] == 1
    ring = [hgg.seg[c[0] + d, c[1], c[2]] for d in range(0, 20)]
    first = {lab: ring.index(lab) for lab in (1, 4, 2)}
    assert first[1] < first[4] < first[2]
    # LGG: little oedema compared with its core; HGG: oedema dominates
    assert (lgg.seg == 2).sum() < (lgg.seg == 1).sum() * 1.5
    assert (hgg.seg == 2).sum() > (hgg.seg == 1).sum()


def test_modalities_show_the_intended_contrasts(hgg, lgg):
    im, seg = hgg.images, hgg.seg
    rim, edema, necrosis = seg == 4, seg == 2, seg == 1
    assert im["t1ce"][rim].mean() > 1.5 * im["t1"][rim].mean()  # enhancement
    assert im["flair"][edema].mean() > im["flair"][(seg == 0) & (im["flair"] > 0)].mean() * 1.5
    assert im["t2"][necrosis].mean() > im["t1"][necrosis].mean() * 2
    wm_like = (im["t1"] > 900) & (seg == 0)
    csf_like = (im["t2"] > 900) & (seg == 0)
    assert im["t1"][wm_like].mean() > im["t1"][csf_like].mean() * 2  # T1: WM bright, CSF dark
    assert im["t2"][csf_like].mean() > im["t2"][wm_like].mean() * 1.5  # T2: CSF bright
    # LGG does not enhance
    core = lgg.seg == 1
    assert abs(lgg.images["t1ce"][core].mean() - lgg.images["t1"][core].mean()) < 0.1 * lgg.images["t1"][core].mean()


def test_same_seed_same_case_different_seed_different_case():
    a, b, c = make_phantom(7), make_phantom(7), make_phantom(8)
    for m in a.images:
        np.testing.assert_array_equal(a.images[m], b.images[m])
    np.testing.assert_array_equal(a.seg, b.seg)
    assert not np.array_equal(a.seg, c.seg)


@pytest.mark.parametrize("convention", [2021, 2023])
def test_written_case_reads_back_as_brats(tmp_path, hgg, convention):
    folder = write_brats_case(make_phantom(1, "HGG", convention=convention), tmp_path, "BraTS-PH-001",
                              convention=convention)
    case = load_case(folder)
    assert case.data.shape == hgg.seg.shape + (4,)
    assert set(np.unique(case.seg)) == ({0, 1, 2, 4} if convention == 2021 else {0, 1, 2, 3})
    np.testing.assert_allclose(nib.load(case.sources[0]).affine, hgg.affine)


def test_shipped_demo_case_is_the_seeded_phantom():
    """nxrt/demo/data/case holds exactly what write_demo_case regenerates from the seed."""
    from importlib import resources

    from nxrt.demo.run import CASE, DEMO_SEED

    ph = make_phantom(DEMO_SEED, "HGG")
    folder = resources.files("nxrt.demo") / "data" / "case"
    for name, expected in [*((m, np.round(ph.images[m])) for m in MODALITIES), ("seg", ph.seg)]:
        with resources.as_file(folder / f"{CASE}_{name}.nii.gz") as path:
            img = nib.load(str(path))
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)
            np.testing.assert_allclose(img.affine, ph.affine)
