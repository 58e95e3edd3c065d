"""`--resample`: a case of another size resampled into the model's grid instead of centre-cropped,
and every map resampled back. Checked in world millimetres: a linear function of world position
survives both directions exactly (linear interpolation is exact for it) away from the borders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import nxrt
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import Resampled, prepare
from tests.builders import CHANNELS, IMAGE_GRID, MODEL_GRID, oblique_affine, run_cli, write_case

SLOPE = np.array([0.3, -0.2, 0.1])


def world(affine, shape):
    """World coordinates (mm) of every voxel centre of a grid: [*shape, 3]."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def interior(shape, margin=2):
    return tuple(slice(margin, n - margin) for n in shape)


@pytest.mark.parametrize("image, model", [(IMAGE_GRID, MODEL_GRID), ((40, 31, 24), (16, 16, 16))])
def test_resampling_both_ways_keeps_world_positions(image, model):
    affine = oblique_affine()
    geometry = Resampled(image, model)
    model_affine = geometry.model_affine(affine)
    ramp = (world(affine, image) @ SLOPE).astype(np.float32)
    down = geometry.to_model(ramp)
    want = world(model_affine, model) @ SLOPE
    np.testing.assert_allclose(down[interior(model)], want[interior(model)], atol=1e-4)
    up = geometry.to_image((world(model_affine, model) @ SLOPE).astype(np.float32))
    np.testing.assert_allclose(up[interior(image, 3)], ramp[interior(image, 3)].astype(np.float64), atol=1e-4)
    # labels go by nearest neighbour and keep their values
    labels = np.zeros(image, np.int16)
    labels[image[0] // 2:, :, :] = 4
    assert set(np.unique(geometry.to_model(labels))) == {0, 4}


def test_explain_resample_writes_maps_on_the_case_grid(tmp_path, seg_onnx):
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "vanilla", "--resample", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "centre crop" not in res.stderr  # nothing is cut away
    folder = tmp_path / "out" / "c"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["grid"] == "resample" and summary["cropped_away"] == 0
    raw = np.asarray(nib.load(str(folder / "vanilla.nii.gz")).dataobj)
    assert raw.shape == IMAGE_GRID + (4,)
    # the raw map is the Python API's attribution on the resampled input, resampled back
    ex = nxrt.Explainer(seg_onnx)
    case = load_case(tmp_path / "c", channels=CHANNELS)
    x, geometry = prepare(case.data, MODEL_GRID, ex.layout, ex.card.normalize, case.moments, resample=True)
    assert isinstance(geometry, Resampled)
    want = geometry.to_image(np.moveaxis(ex.explain(x, "vanilla").attribution[0], 0, -1))
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-9)
    # the centroid (computed on the model grid, mapped through the resampling) is where the
    # written image-grid map's own centroid is, to within one image voxel
    magnitude = np.abs(raw).sum(axis=-1, dtype=np.float64)
    com = np.array([(magnitude.sum(axis=tuple(a for a in range(3) if a != k)) * np.arange(n)).sum()
                    for k, n in enumerate(IMAGE_GRID)]) / magnitude.sum()
    voxel_mm = np.linalg.norm(oblique_affine()[:3, :3], axis=0).max()
    got = np.array(summary["methods"]["vanilla"]["centroid_mm"])
    assert np.linalg.norm(got - (oblique_affine() @ np.append(com, 1.0))[:3]) < voxel_mm
    # the prediction is counted on the grid it is written on
    pred = np.asarray(nib.load(str(folder / "prediction.nii.gz")).dataobj)
    labels, counts = np.unique(pred, return_counts=True)
    assert summary["prediction"]["voxels_per_label"] == {str(v): int(n) for v, n in zip(labels, counts, strict=True)}


def test_the_card_can_ask_for_resampling_and_a_2d_slice_cannot(tmp_path, seg_onnx):
    import onnx

    from nxrt.card import ModelCard

    model = onnx.load(str(seg_onnx))
    card = ModelCard.from_model(model)
    card.grid = "resample"
    path = tmp_path / "resampling.onnx"
    onnx.save_model(card.write(model), str(path))
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "c" / "summary.json").read_text())["grid"] == "resample"
    # a 2D model explains one slice of a 3D case, which is cropped: --resample is refused
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 4, 3, 3), np.float32) * 0.1, "W")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["output"], pads=[1] * 4)], "seg2d",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 16, 16])], [w])
    flat = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flat.ir_version = 8
    path2d = tmp_path / "seg2d.onnx"
    onnx.save_model(ModelCard(task="segmentation", channels=CHANNELS, activation="softmax").write(flat), str(path2d))
    res = run_cli("explain", path2d, tmp_path / "c", "-m", "vanilla", "--resample", "-o", tmp_path / "out2")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "drop --resample" in lines[0], res.stderr
