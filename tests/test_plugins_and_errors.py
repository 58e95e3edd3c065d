"""The plugin contract (a third-party distribution found through entry points) and input errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

import nxrt
from tests.builders import install_plugin, tiny_classifier

PLUGIN_MODULE = '''
"""A throwaway third-party method: twice the vanilla gradient (and a parameter, declared the old way)."""
import numpy as np
import nxrt


class DoubleGrad(nxrt.Method):
    name = "double_grad"
    aliases = ("dg",)
    summary = "twice the gradient (test plugin)"
    defaults = {"factor": 2.0}

    def explain(self, ctx: nxrt.Context, x, target, factor):
        return np.float32(factor) * ctx.gradient(x, target)
'''

@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The plugin distribution built and installed into a private folder (the venv stays untouched)."""
    return install_plugin(tmp_path_factory.mktemp("plugin"), "nxrt_demo_plugin", PLUGIN_MODULE,
                          'double_grad = "nxrt_demo_plugin:DoubleGrad"')


def test_third_party_plugin_runs_through_explainer_and_cli(plugin_site, tmp_path):
    model_path = tmp_path / "m.onnx"
    onnx.save_model(tiny_classifier(), str(model_path))
    script = textwrap.dedent(f'''
        import warnings
        import numpy as np, nxrt
        with warnings.catch_warnings(record=True) as caught:  # the old `defaults` form: deprecated, still works
            warnings.simplefilter("always")
            assert "double_grad" in nxrt.methods(), nxrt.methods()
        assert any(w.category is DeprecationWarning and "defaults" in str(w.message) for w in caught), caught
        ex = nxrt.Explainer({str(model_path)!r})
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        a = ex.explain(x, "dg", target=1)
        b = ex.explain(x, "vanilla", target=1)
        c = ex.explain(x, "double_grad", target=1, factor=3.0)
        assert np.allclose(a, 2 * b, rtol=1e-6) and np.allclose(c, 3 * b, rtol=1e-6)
        print("plugin ok")
    ''')
    env = {"PYTHONPATH": str(plugin_site), "PATH": ""}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "plugin ok" in res.stdout, res.stderr
    cli = subprocess.run([sys.executable, "-m", "nxrt.cli", "methods"], capture_output=True, text=True, env=env)
    assert cli.returncode == 0 and "double_grad" in cli.stdout and "test plugin" in cli.stdout
    assert "double_grad" not in nxrt.methods()  # installed privately, not into this environment


def test_explainer_reads_task_and_layout(tiny_explainer):
    assert (tiny_explainer.task, tiny_explainer.layout) == ("classification", "channels_first")
    assert tiny_explainer.predict(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), "unknown method 'nope'; known methods: "),
    (dict(method="gradcam", layer="zzz"), "unknown layer 'zzz'; candidates: c"),
    (dict(method="vanilla", target=7), "target 7 is out of range: the model has 2 classes"),
    (dict(method="vanilla", target=-1), "target -1 is out of range"),
    (dict(method="vanilla", target=1.5), "target 1.5 is not an integer"),
    (dict(method="ig", rule="simpson"), "rule 'simpson' is not one of"),
    (dict(method="ig", steps=0), "steps must be an integer >= 1"),
    (dict(method="vanilla", bogus=1), "method 'vanilla' has no parameter 'bogus'"),
    (dict(method="sg", kind="median"), "kind 'median' is not one of"),
    (dict(method="gradcam", interpolation="cubic"), "interpolation 'cubic' is not one of"),
    (dict(method="vanilla", region="predicted"), "region applies to segmentation models only"),
])
def test_bad_options_are_input_errors(tiny_explainer, kwargs, message):
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(nxrt.InputError) as info:
        tiny_explainer.explain(x, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("x, message", [
    (np.zeros((1, 3, 8), np.float32), "has rank 4"),
    (np.zeros((1, 4, 8, 8), np.float32), "axis 1 must be 3"),
    (np.zeros((1, 3, 8, 9), np.float32), "axis 3 must be 8"),
    (np.zeros((1, 3, 8, 8), np.int32), "dtype int32"),
    (np.full((1, 3, 8, 8), np.nan, np.float32), "192 NaN/Inf"),
    ([[1.0]], "must be a numpy array"),
])
def test_bad_inputs_are_input_errors(tiny_explainer, x, message):
    with pytest.raises(nxrt.InputError, match=message):
        tiny_explainer.explain(x, "vanilla", target=0)


def test_float64_input_is_accepted(tiny_explainer):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    np.testing.assert_allclose(tiny_explainer.explain(x, "vanilla", target=0),
                               tiny_explainer.explain(x.astype(np.float32), "vanilla", target=0))


def test_load_and_methods():
    m = nxrt.load(tiny_classifier())
    assert m.input_name == "x" and m.conv_layers() == ["c"]
    assert {"vanilla", "guided_backprop", "integrated_gradients", "smoothgrad", "gradcam",
            "guided_gradcam"} <= set(nxrt.methods())
    with pytest.raises(nxrt.ModelError):
        nxrt.load("/nonexistent/model.onnx")
