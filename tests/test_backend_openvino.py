"""The OpenVINO backend (`providers="openvino"`): the same augmented graph run by the OpenVINO
runtime. Gradients of small 3D nets against torch autograd in float64, among them a square
ConvTranspose whose weights the forward op and its gradient op share (OpenVINO 2026.4 reads such
shared weights wrongly: 34% off until nxrt gives each consumer its own copy); every method on the
demo grader against onnxruntime's CPU provider; provider errors in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.nets import export_torch, nxrt_grads, torch_input_grad
from tests.oracles import rel_err

NETS = {
    "maxpool_overlapping": lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.MaxPool3d(3, stride=2, padding=1),
                                                 nn.Conv3d(4, 3, 1)),
    "convtranspose": lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, stride=2),
                                           nn.ConvTranspose3d(4, 3, 2, stride=2)),
    "convtranspose_square": lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, stride=2),
                                                  nn.ConvTranspose3d(4, 4, 2, stride=2), nn.Conv3d(4, 3, 1)),
    "batchnorm_leakyrelu": lambda: nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(0.1),
                                                 nn.Conv3d(4, 3, 1)),
}


@pytest.mark.parametrize("name", list(NETS))
def test_gradients_of_small_nets_equal_torch_float64(name, tmp_path):
    torch.manual_seed(0)
    net = NETS[name]().eval()
    x = np.random.default_rng(0).standard_normal((1, 2, 16, 16, 16)).astype(np.float32)
    path = export_torch(net, torch.tensor(x), tmp_path / "m.onnx", dynamo=False)
    ref = torch_input_grad(net, x, 1, "segmentation", torch.float64)
    assert rel_err(nxrt_grads(path, x, 1, "segmentation", provider="openvino")["input_grad"], ref) < 1e-6


@pytest.fixture(scope="module")
def grader():
    from importlib import resources

    import nxrt

    model = str(resources.files("nxrt.demo") / "data" / "grader.onnx")
    cpu, ov = nxrt.Explainer(model, providers="cpu"), nxrt.Explainer(model, providers="openvino")
    x = np.random.default_rng(5).standard_normal((2, *cpu.model.input_shape[1:])).astype(np.float32)
    return cpu, ov, x


@pytest.mark.parametrize("method, params", [("vanilla", {}), ("guided_backprop", {}), ("gradcam", {}),
                                            ("guided_gradcam", {}), ("integrated_gradients", {"steps": 8}),
                                            ("smoothgrad", {"samples": 4}), ("guided_ig", {"steps": 8})])
def test_every_method_on_the_demo_grader_equals_onnxruntime(grader, method, params):
    cpu, ov, x = grader
    want = cpu.explain(x, method, target=1, **params)
    got = ov.explain(x, method, target=1, **params)
    assert ov.providers == ["OpenVINO"]
    if want.scores is not None:  # (methods whose passes evaluated the model at x itself)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
    assert rel_err(got.attribution, want.attribution) < 1e-4


def test_provider_errors_are_one_line(seg_onnx, tmp_path):
    import subprocess
    import sys

    from tests.builders import write_case

    write_case(tmp_path / "c", "c")
    blocked = ("import sys; sys.modules['openvino'] = None; from nxrt.cli import main; "
               "sys.argv = ['nxrt'] + sys.argv[1:]; main()")
    res = subprocess.run([sys.executable, "-c", blocked, "explain", str(seg_onnx), str(tmp_path / "c"),
                          "--provider", "openvino", "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'nxrt[openvino]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    import nxrt
    from nxrt.errors import InputError

    with pytest.raises(InputError, match="runs alone"):
        nxrt.Explainer(seg_onnx, providers=["openvino", "cpu"])


def test_auto_chooses_openvino_on_a_cpu_host_and_says_so(seg_onnx, tmp_path, monkeypatch):
    """--provider auto: no usable GPU here, OpenVINO installed (the dev extra) -> OpenVINO for a 3D model
    (onnxruntime for a 2D one), recorded in
    summary.json's provenance; NXRT_PROVIDER replaces auto's choice (the rest of the suite runs with
    NXRT_PROVIDER=cpu, conftest.py), and a wrong value is one line."""
    import json

    import nxrt
    from nxrt.engine import resolve_providers
    from tests.builders import run_cli, tiny_classifier, write_case

    monkeypatch.delenv("NXRT_PROVIDER", raising=False)
    assert resolve_providers("auto", spatial_rank=3) == ["OpenVINO"]
    # a 2D model stays on onnxruntime: OpenVINO measured slower there (ResNet50, BENCHMARKS.md)
    assert nxrt.Explainer(tiny_classifier()).providers == ["CPUExecutionProvider"]
    write_case(tmp_path / "c", "c")
    res = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "o" / "c" / "summary.json").read_text())
    assert summary["provenance"]["provider"] == "OpenVINO"
    monkeypatch.setenv("NXRT_PROVIDER", "cpu")
    assert resolve_providers("auto", spatial_rank=3) == ["CPUExecutionProvider"]
    assert resolve_providers("openvino") == ["OpenVINO"]  # (an explicit choice stands)
    monkeypatch.setenv("NXRT_PROVIDER", "tpu")
    res = run_cli("explain", seg_onnx, tmp_path / "c", "-m", "vanilla", "-o", tmp_path / "o2")
    assert res.returncode == 2 and res.stderr.strip() == \
        "nxrt: error: NXRT_PROVIDER=tpu: not a provider; set it to cpu, cuda, openvino or auto"


def test_the_metrics_equal_onnxruntime(grader):
    from nxrt.evaluation import evaluate

    cpu, ov, x = grader
    x = x[:1]
    mask = np.zeros(cpu.model.input_shape[2:], bool)
    mask[tuple(slice(n // 4, n // 2) for n in mask.shape)] = True
    metrics = ["relevance_mass", "deletion", "insertion", "region_perturbation", "faithfulness_correlation",
               "completeness", "max_sensitivity", "mprt"]
    params = {"deletion": {"steps": 5}, "insertion": {"steps": 5}, "region_perturbation": {"regions_evaluation": 5},
              "faithfulness_correlation": {"nr_runs": 10, "subset_size": 500}, "max_sensitivity": {"nr_samples": 4},
              "mprt": {"skip_layers": True}}
    want = evaluate(cpu, x, cpu.explain(x, "gradient_x_input", target=1), target=1, metrics=metrics, mask=mask,
                    **params)
    got = evaluate(ov, x, ov.explain(x, "gradient_x_input", target=1), target=1, metrics=metrics, mask=mask,
                   **params)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
