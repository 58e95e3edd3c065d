"""The GPU path's pieces that can be checked on any machine: CUDA provider options and IO binding.

The IO-binding code is device-agnostic (onnxruntime binds CPU memory the same way), so it runs
here with device="cpu" against plain `InferenceSession.run` on the same session.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import nxrt
from nxrt.engine import Session, cuda_provider_options, session_options
from nxrt.passes import SEED, grad_name
from tests.builders import tiny_classifier


def test_cuda_options_tf32_off_and_exhaustive_search_for_static_shapes(monkeypatch):
    monkeypatch.delenv("NXRT_CUDA_TF32", raising=False)
    monkeypatch.delenv("NXRT_CUDNN_ALGO_SEARCH", raising=False)
    static = tiny_classifier()  # input [N, 3, 8, 8]: only the batch is dynamic
    opts = cuda_provider_options(static)
    assert opts["use_tf32"] == "0" and opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(static)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    assert cuda_provider_options(dynamic)["cudnn_conv_algo_search"] == "HEURISTIC"
    # the Explainer says so instead of having a model file parsed for it
    assert cuda_provider_options(None, static_shapes=True)["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cuda_provider_options(None)["cudnn_conv_algo_search"] == "HEURISTIC"
    monkeypatch.setenv("NXRT_CUDA_TF32", "1")
    monkeypatch.setenv("NXRT_CUDNN_ALGO_SEARCH", "DEFAULT")
    opts = cuda_provider_options(static)
    assert opts["use_tf32"] == "1" and opts["cudnn_conv_algo_search"] == "DEFAULT"


def test_io_binding_runs_equal_plain_runs_and_keep_seeds_resident():
    aug = nxrt.augment(tiny_classifier())
    raw = ort.InferenceSession(aug.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    bound = Session(raw, device="cpu")
    bound.RESIDENT_BYTES = 1024  # between the seed (32 B) and an input chunk (3 kB), as on a real volume
    rng = np.random.default_rng(0)
    seed = np.zeros((4, 2), np.float32)
    seed[:, 1] = 1.0
    name = grad_name("x")
    for _ in range(3):  # three chunks of an IG run: new inputs, the same seed
        x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
        want = raw.run([name, "nxrt_scores"], {"x": x, SEED: seed})
        got = bound.run([name, "nxrt_scores"], {"x": x, SEED: seed})
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
    assert bound.resident_feeds == 1  # the seed was copied to the device once; inputs never stay
    all_outputs = bound.run(None, {"x": x, SEED: seed})
    assert len(all_outputs) == len(raw.get_outputs())
