"""`nxrt card`, `nxrt inspect`, `nxrt layers`, and explaining a model that has no card."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from nxrt.card import ModelCard
from tests.builders import MODEL_GRID, seg_model, tiny_classifier, write_case


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nxrt.cli", *map(str, args)], capture_output=True, text=True)


def test_card_set_validates_and_keeps_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(path), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    res = run_cli("card", path, "--set", "task=classification", "--set", "labels=HGG,LGG",
                  "--set", "spatial_shape=8x8")
    assert res.returncode == 0, res.stderr
    assert "nxrt.labels = HGG,LGG" in res.stdout and "nxrt.spatial_shape = 8,8" in res.stdout
    assert (tmp_path / "m.onnx.data").exists()
    model = onnx.load(str(path))  # loads the weights from m.onnx.data
    card = ModelCard.from_model(model)
    assert card.task == "classification" and card.labels == ["HGG", "LGG"] and card.spatial_shape == [8, 8]
    assert np.asarray(onnx.numpy_helper.to_array(model.graph.initializer[0])).shape == (4, 3, 3, 3)
    bad = run_cli("card", path, "--set", "task=regression")
    assert bad.returncode == 2 and "nxrt.task: 'regression' is not one of classification, segmentation" in bad.stderr
    assert ModelCard.from_model(onnx.load(str(path))).task == "classification"  # unchanged


def test_inspect_reports_io_card_ops_and_layers(tmp_path):
    path = tmp_path / "m.onnx"
    model = tiny_classifier()
    model.graph.node[1].op_type = "Det"  # an op without a rule
    onnx.save_model(model, str(path))
    res = run_cli("inspect", path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "input   x ['N', 3, 8, 8]" in out and "output  prob ['N', 2]" in out
    assert "Conv x1" in out and "ops without a rule: Det x1" in out
    assert "Grad-CAM layers (1; default c): c" in out


def test_layers_figure(tmp_path):
    model = seg_model(tmp_path / "seg.onnx")
    write_case(tmp_path / "case", "case")
    out = tmp_path / "layers.png"
    res = run_cli("layers", model, tmp_path / "case", "-o", out)
    assert res.returncode == 0, res.stderr
    import matplotlib.image as mpimg

    img = mpimg.imread(str(out))
    assert img.shape[0] > 150 and img.shape[1] > 150 and img[..., :3].std() > 0.05


def test_explain_without_a_card(tmp_path):
    """A plain ONNX model: task and layout inferred; otherwise the error names the flag."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 4, 1, 1, 1), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, *MODEL_GRID])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, *MODEL_GRID])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "plain.onnx"
    onnx.save_model(model, str(path))
    write_case(tmp_path / "case", "case")
    res = run_cli("explain", path, tmp_path / "case", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "case" / "prediction.nii.gz").exists()  # inferred: segmentation


@pytest.mark.parametrize("shape", [["a", "b"]])
def test_unknown_output_rank_asks_for_task(tmp_path, shape):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Reshape", ["input", "s"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "odd.onnx"
    onnx.save_model(model, str(path))
    res = run_cli("augment", path, "-o", tmp_path / "o.onnx")
    assert res.returncode == 2 and "--task" in res.stderr


@pytest.mark.parametrize("setting, words", [
    ("labels=a,b,c", "nxrt.labels names 3 (a,b,c) but output 'prob' has 2 classes"),
    ("channels=t1,t2", "nxrt.channels names 2 (t1,t2) but the model input has 3 channel(s)"),
    ("spatial_shape=9,9", "nxrt.spatial_shape 9,9 differs from the model input's static spatial shape 8,8"),
    ("task=segmentation", "task=segmentation, but output 'prob' has shape [?, 2], without spatial axes"),
])
def test_card_edits_that_do_not_fit_the_model_are_refused(tmp_path, setting, words):
    path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(path))
    before = path.read_bytes()
    res = run_cli("card", path, "--set", setting)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and words in lines[0], res.stderr
    assert path.read_bytes() == before  # nothing written


def test_a_card_or_flag_that_contradicts_the_model_is_one_line(tmp_path):
    import nxrt

    model = tiny_classifier()
    ModelCard(labels=["a", "b", "c"]).write(model)
    with pytest.raises(nxrt.ModelError, match="nxrt.labels names 3"):
        nxrt.Explainer(model)
    seg = seg_model(tmp_path / "seg.onnx")
    with pytest.raises(nxrt.ModelError, match=r"task=classification, but output 'output' has shape \[\?, 3, 16, 16, "
                                              r"16\], with spatial axes: it is a segmentation output"):
        nxrt.Explainer(seg, task="classification")
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", seg, tmp_path / "c", "--task", "classification", "-o", tmp_path / "out")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "it is a segmentation output" in lines[0], res.stderr
    assert not (tmp_path / "out" / "c").exists()


def test_what_the_card_leaves_open_is_said_once_and_recorded(tmp_path):
    """No card at all: one `nxrt: note:` line says what was inferred and assumed and how to fix it,
    summary.json records it, and the assumption is what ran (no normalisation: the raw map equals
    the Python API's on the case as stored, cropped)."""
    import json

    import nibabel as nib

    import nxrt
    from nxrt.imaging.cases import load_case
    from nxrt.imaging.preprocess import prepare, to_image_channels_last

    path = seg_model(tmp_path / "seg.onnx")
    bare = onnx.load(str(path))
    del bare.metadata_props[:]
    onnx.save_model(bare, str(path))
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("nxrt: note:")]
    assert len(notes) == 1, res.stderr
    for said in ("task=segmentation", "layout=channels_first", "activation=softmax", "normalize=none",
                 f"nxrt card {path} --set task=segmentation --set layout=channels_first"):
        assert said in notes[0], notes[0]
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    assert summary["assumed"] == {"task": "segmentation", "layout": "channels_first", "activation": "softmax",
                                  "normalize": "none"}
    case = load_case(tmp_path / "c")
    x, geometry = prepare(case.data, MODEL_GRID, "channels_first", "none")
    want = to_image_channels_last(nxrt.Explainer(path).explain(x, "vanilla").attribution[0], "channels_first",
                                  geometry)
    got = np.asarray(nib.load(str(tmp_path / "out" / "c" / "vanilla.nii.gz")).dataobj)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # a card that says everything: nothing to say
    ModelCard(task="segmentation", layout="channels_first", normalize="zscore", activation="softmax").write(bare)
    onnx.save_model(bare, str(path))
    quiet = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out2")
    assert quiet.returncode == 0 and "nxrt: note" not in quiet.stderr, quiet.stderr


def test_a_crop_that_cuts_the_scan_warns_with_the_share_lost(tmp_path):
    import json

    from tests.builders import IMAGE_GRID

    path = seg_model(tmp_path / "seg.onnx")
    data = write_case(tmp_path / "c", "c")
    res = run_cli("explain", path, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    # by hand: the centre crop of each axis (image 20x14x17 -> 16^3: x and z cropped, y padded)
    keep = tuple(slice(max(0, -((m - i) // 2)), max(0, -((m - i) // 2)) + min(i, m))
                 for i, m in zip(IMAGE_GRID, MODEL_GRID, strict=True))
    lost = 1 - np.count_nonzero(data[keep][..., 0]) / np.count_nonzero(data[..., 0])
    summary = json.loads((tmp_path / "out" / "c" / "summary.json").read_text())
    assert summary["cropped_away"] == pytest.approx(lost, abs=1e-6) and lost > 0.1
    (line,) = [ln for ln in res.stderr.splitlines() if "centre crop" in ln]
    assert f"leaves out {lost:.1%} of its nonzero voxels" in line
