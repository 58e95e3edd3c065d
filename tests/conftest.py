"""Test-wide settings and the fixtures several test modules share.

A private augmented-model cache, so tests never touch ~/.cache/nxrt. The builders behind the
fixtures (small models, BraTS-like cases, the CLI runner) are plain functions in builders.py.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("NXRT_CACHE", tempfile.mkdtemp(prefix="nxrt-test-cache-"))
# 'auto' would choose OpenVINO here (the dev extra installs it): the tests of everything but the
# backends run on onnxruntime's CPU provider; the OpenVINO backend has its own tests and the parity
# suite runs on both (tests/nets.py BACKENDS)
os.environ.setdefault("NXRT_PROVIDER", "cpu")

from tests.builders import seg_model, tiny_classifier  # noqa: E402  (after the cache is set)


@pytest.fixture(scope="session")
def seg_onnx(tmp_path_factory):
    """A tiny 3D segmenter on disk (Conv3d 4->3 + Relu, 16^3, with a model card)."""
    return seg_model(tmp_path_factory.mktemp("model") / "seg.onnx")


@pytest.fixture(scope="module")
def seg_explainer(seg_onnx):
    """An Explainer of the tiny segmenter (one per module: its sessions are reused there)."""
    import nxrt

    return nxrt.Explainer(seg_onnx)


@pytest.fixture(scope="module")
def tiny_explainer():
    """An Explainer of the tiny 2-class classifier (Conv 3->4, Relu, GAP, MatMul, Softmax; 8x8)."""
    import nxrt

    return nxrt.Explainer(tiny_classifier())
