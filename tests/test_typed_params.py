"""Typed method parameters: declared by each method (built-in or third-party), validated in one
place, listed by `nxrt methods`, and set from the CLI with `-p METHOD.PARAM=VALUE`."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import nxrt
from nxrt.imaging.cases import load_case
from nxrt.imaging.preprocess import prepare, to_image_channels_last
from nxrt.params import Param, ParamError
from tests.builders import CHANNELS, MODEL_GRID, install_plugin, run_cli, write_case

TYPED_PLUGIN = '''
"""A throwaway third-party method with a typed parameter."""
import numpy as np
import nxrt


class Scaled(nxrt.Method):
    name = "mine"
    aliases = ("mn",)
    summary = "scale times the gradient (typed test plugin)"
    parameters = (nxrt.Param("scale", float, 1.0, "the factor", minimum=0),)

    def explain(self, ctx, x, target, scale):
        return np.float32(scale) * ctx.gradient(x, target)
'''

@pytest.fixture(scope="module")
def typed_plugin(tmp_path_factory):
    """The plugin built and installed into a private folder; returns the environment that sees it."""
    site = install_plugin(tmp_path_factory.mktemp("typed"), "nxrt_typed_plugin", TYPED_PLUGIN,
                          'mine = "nxrt_typed_plugin:Scaled"')
    return {"PYTHONPATH": site, "PATH": ""}


def nxrt_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "nxrt.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases") / "c"
    write_case(folder, "c")
    return folder


def raw_map(out, method):
    return np.asarray(nib.load(str(out / "c" / f"{method}.nii.gz")).dataobj)


def test_plugin_parameter_is_listed_and_reaches_the_method_from_the_cli(typed_plugin, seg_onnx, case_dir, tmp_path):
    listed = nxrt_cli(typed_plugin, "methods")
    assert listed.returncode == 0, listed.stderr
    assert "-p mine.scale=1.0  (float >= 0; the factor)" in listed.stdout
    assert "-p integrated_gradients.steps=50" in listed.stdout  # the built-ins list theirs the same way
    out = tmp_path / "out"
    res = nxrt_cli(typed_plugin, "explain", seg_onnx, case_dir, "-m", "vanilla", "-m", "mn", "-p", "mn.scale=2",
                   "-o", out)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(raw_map(out, "mine"), 2 * raw_map(out, "vanilla"), rtol=1e-6, atol=1e-12)
    summary = json.loads((out / "c" / "summary.json").read_text())
    assert summary["methods"]["mine"]["params"] == {"scale": 2.0}


@pytest.mark.parametrize("args, message", [
    (["-m", "mine", "-p", "mine.scale=abc"], "-p mine.scale=abc: 'abc' is not a number; expected float >= 0"),
    (["-m", "mine", "-p", "mine.scale=-1"], "mine: scale must be a number >= 0, got -1.0"),
    (["-m", "mine", "-p", "mine.nope=1"], "method 'mine' has no parameter 'nope'; its parameters: scale"),
    (["-m", "ig", "-p", "ig.steps=0"], "integrated_gradients: steps must be an integer >= 1, got 0"),
    (["-m", "ig", "-p", "ig.steps=2.5"], "'2.5' is not an integer"),
    (["-m", "sg", "-p", "sg.kind=median"], "smoothgrad: kind 'median' is not one of mean, squared, vargrad"),
    (["-m", "vanilla", "-p", "ig.steps=8"], "method 'integrated_gradients' is not among the chosen methods"),
    (["-m", "ig", "-p", "steps=8"], "-p 'steps=8' must be METHOD.PARAM=VALUE"),
    (["-m", "vanilla", "--steps", "8"], "--steps applies to none of the chosen methods (vanilla)"),
    (["-m", "ig", "-p", "ig.baseline=nowhere.npy"], "-p integrated_gradients.baseline=nowhere.npy: no such file"),
])
def test_bad_parameter_values_are_one_line_exit_2(typed_plugin, seg_onnx, case_dir, tmp_path, args, message):
    out = tmp_path / "out"
    res = nxrt_cli(typed_plugin, "explain", seg_onnx, case_dir, *args, "-o", out)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr
    assert not out.exists() or not any(out.rglob("*.nii.gz"))  # refused before any work


def test_builtin_parameters_from_the_cli_equal_the_python_api(seg_onnx, case_dir, tmp_path):
    """-p ig.baseline, sg.kind, sg.seed and occlusion.patch reach the methods: the written maps equal
    the Python API's with the same parameters on the same preprocessed input."""
    baseline = np.full((1, 4, *MODEL_GRID), 0.25, np.float32)
    np.save(tmp_path / "baseline.npy", baseline)
    out = tmp_path / "out"
    res = run_cli("explain", seg_onnx, case_dir, "-m", "ig", "-p", f"ig.baseline={tmp_path / 'baseline.npy'}",
                  "-p", "ig.steps=4", "-m", "sg", "-p", "sg.kind=vargrad", "-p", "sg.seed=3", "-p", "sg.samples=3",
                  "-m", "occlusion", "-p", "occlusion.patch=16", "-m", "integrated_gradients", "-o", out)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "c" / "summary.json").read_text())["methods"]
    assert summary["integrated_gradients"]["params"]["steps"] == 4
    assert summary["smoothgrad"]["params"] == {"samples": 3, "noise": 0.15, "kind": "vargrad", "base": "vanilla",
                                                    "seed": 3, "base_params": None}
    assert summary["occlusion"]["params"]["patch"] == 16
    ex = nxrt.Explainer(seg_onnx)
    case = load_case(case_dir, channels=CHANNELS)
    x, geometry = prepare(case.data, MODEL_GRID, ex.layout, ex.card.normalize, case.moments)
    for method, params in (("integrated_gradients", {"baseline": baseline, "steps": 4}),
                           ("smoothgrad", {"kind": "vargrad", "seed": 3, "samples": 3}),
                           ("occlusion", {"patch": 16})):
        want = to_image_channels_last(ex.explain(x, method, **params).attribution[0], ex.layout, geometry)
        np.testing.assert_allclose(raw_map(out, method), want, rtol=1e-5, atol=1e-9, err_msg=method)
    # the parameters changed the result (so the comparison above tests that they arrived)
    other = ex.explain(x, "integrated_gradients", steps=4).attribution
    assert not np.allclose(other, ex.explain(x, "integrated_gradients", steps=4, baseline=baseline).attribution)


@pytest.mark.parametrize("param, text, value", [
    (Param("n", int, 3, minimum=1), "7", 7),
    (Param("f", float, 0.5, minimum=0, maximum=1), "0.25", 0.25),
    (Param("b", bool, False), "yes", True),
    (Param("k", str, "a", choices=("a", "b")), "b", "b"),
    (Param("p", "ints", None, minimum=1), "16", 16),
    (Param("p", "ints", None, minimum=1), "16,8,4", [16, 8, 4]),
    (Param("l", "strs", None), "conv1,conv2", ["conv1", "conv2"]),
    (Param("l", str, None), "none", None),
    (Param("m", "mapping", None), '{"steps": 8}', {"steps": 8}),
    (Param("a", "array", 0.0), "-1.5", -1.5),
])
def test_cli_text_is_converted_by_the_parameter_kind(param, text, value):
    assert param.parse(text) == value


@pytest.mark.parametrize("param, value, message", [
    (Param("n", int, 3, minimum=1), 0, "n must be an integer >= 1, got 0"),
    (Param("n", int, 3, minimum=1), True, "n must be an integer >= 1, got True"),
    (Param("n", int, 3), None, "n must be given (not None)"),
    (Param("f", float, 0.5, minimum=0, maximum=1), 1.5, "f must lie in [0, 1], got 1.5"),
    (Param("f", float, 0.5), float("nan"), "f must be a number, got nan"),
    (Param("p", "ints", None, minimum=1), [4, 0], "p must be an integer or a list of integers >= 1"),
    (Param("a", "array", 0.0), np.array([1.0, np.inf]), "a must be finite"),
    (Param("m", "mapping", None), [1], "m must be a mapping"),
])
def test_python_values_are_checked_in_one_place(param, value, message):
    with pytest.raises(ParamError) as info:
        param.check(value, "meth")
    assert str(info.value) == f"meth: {message}" or str(info.value).startswith(f"meth: {message}")
    assert "\n" not in str(info.value)


def test_old_defaults_dict_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="defaults"):
        class Old(nxrt.Method):
            name = "old"
            defaults = {"scale": 1.0, "layer": None}

            def explain(self, ctx, x, target, scale, layer):
                return scale * ctx.gradient(x, target)
    assert [(p.name, p.kind) for p in Old.parameters] == [("scale", "float"), ("layer", "any")]
    assert Old().resolve_params({"scale": 2}) == {"scale": 2.0, "layer": None}
    with pytest.raises(ParamError, match="scale must be a number"):
        Old().resolve_params({"scale": "x"})


def test_the_readme_plugin_example_runs_as_written(tiny_explainer):
    """The README's plugin class, exactly as printed there, checked against its definition
    (scale * g * |g| of the vanilla gradient g) through the same parameter checks the CLI uses."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```python\n# my_methods.py\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    method = namespace["SignedSquare"]()
    assert [(p.name, p.kind, p.default) for p in method.parameters] == [("scale", "float", 1.0)]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ctx = tiny_explainer.context(x)
    got = method.explain(ctx, x, [1], **method.resolve_params({"scale": 2}))
    g = tiny_explainer.explain(x, "vanilla", target=1).attribution
    np.testing.assert_allclose(got, 2 * g * np.abs(g), rtol=1e-6, atol=1e-12)
    with pytest.raises(ParamError, match="scale must be a number >= 0"):
        method.resolve_params({"scale": -1})
