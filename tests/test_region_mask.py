"""`nxrt explain --region mask.nii.gz`: a mask drawn on the case (its image grid) is mapped through
the same crop/pad as the image before it weights the segmentation score."""

from __future__ import annotations

import nibabel as nib
import numpy as np

import nxrt
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import prepare, to_image_channels_last
from tests.builders import CHANNELS, IMAGE_GRID, MODEL_GRID, oblique_affine, run_cli, write_case


def _mask(tmp_path, name, shape=IMAGE_GRID, box=(slice(8, 12), slice(5, 9), slice(6, 10)), affine=None):
    mask = np.zeros(shape, np.uint8)
    mask[box] = 1
    nib.save(nib.Nifti1Image(mask, oblique_affine() if affine is None else affine), str(tmp_path / name))
    return tmp_path / name, mask


def test_region_mask_on_the_case_grid_equals_the_api_on_the_model_grid(tmp_path, seg_onnx):
    model = seg_onnx
    write_case(tmp_path / "c", "c")
    path, mask = _mask(tmp_path, "roi.nii.gz")
    res = run_cli("explain", model, tmp_path / "c", "-m", "vanilla", "--region", path, "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got = np.asarray(nib.load(str(tmp_path / "out" / "c" / "vanilla.nii.gz")).dataobj)
    ex = nxrt.Explainer(model)
    case = load_case(tmp_path / "c", channels=CHANNELS)
    x, geometry = prepare(case.data, MODEL_GRID, "channels_first", "zscore")
    region = geometry.to_model(mask > 0)  # the mask cropped/padded like the image, by hand
    want = to_image_channels_last(ex.explain(x, "vanilla", region=region)[0], "channels_first", geometry)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    whole = to_image_channels_last(ex.explain(x, "vanilla")[0], "channels_first", geometry)
    assert not np.allclose(want, whole)  # the region did change the score explained


def test_region_mask_errors_are_one_line(tmp_path, seg_onnx):
    model = seg_onnx
    write_case(tmp_path / "c", "c")
    cases = {
        "shape": (_mask(tmp_path, "a.nii.gz", shape=(20, 14, 16), box=(slice(8, 12),) * 3)[0], "differs from case"),
        "outside": (_mask(tmp_path, "b.nii.gz", box=(slice(0, 2), slice(0, 14), slice(0, 17)))[0],
                    "no voxel of it lies in the part"),
        "affine": (_mask(tmp_path, "d.nii.gz", affine=np.eye(4))[0], "affine differs"),
    }
    (tmp_path / "e.nii.gz").write_bytes(b"not a nifti")
    cases["corrupt"] = (tmp_path / "e.nii.gz", "cannot read it as NIfTI")
    for key, (path, words) in cases.items():
        res = run_cli("explain", model, tmp_path / "c", "-m", "vanilla", "--region", path, "-o", tmp_path / "out")
        assert res.returncode == 2 and words in res.stderr, (key, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, (key, res.stderr)
        assert not (tmp_path / "out" / "c").exists()
