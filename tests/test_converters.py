"""nxrt.converters (Keras via tf2onnx, PyTorch via torch.onnx) and `nxrt convert`, against independent oracles.

Outputs: onnxruntime on the written file vs the framework model (float32), relative L2 <= 1e-5.
Gradients: nxrt's vanilla gradient of the written file vs autograd of the framework model in
float64 (GradientTape on a float64 twin with the same weights; torch autograd on a float64 copy),
relative L2 <= 1e-4. The converters' own verification numbers are only checked for consistency.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import nxrt
from nxrt.errors import InputError, ModelError
from tests.keras_refs import float64_twin, randomise_batchnorm, tape_grad
from tests.nets import small_cnn2d, torch_input_grad
from tests.oracles import rel_err

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
OUT_TOL, GRAD_TOL = 1e-5, 1e-4
# keras 3.15 + numpy 2 inside model.save(); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def ort_outputs(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nxrt.cli", "convert", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nxrt: error:"), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- Keras


def keras_modules():
    import keras
    import tensorflow as tf
    import tf2onnx  # noqa: F401 (needed by the converter)
    return tf, keras


def keras_resnet2d():
    """A small ResNet-style classifier: stem, one residual block (Add), BatchNorm, GAP, Dense softmax."""
    _, keras = keras_modules()
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    h = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    r = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(h)))
    r = L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(r))
    h = L.Activation("relu")(L.Add()([h, r]))
    h = L.Conv2D(16, 3, strides=2, padding="same")(h)
    h = L.GlobalAveragePooling2D()(L.Activation("relu")(L.BatchNormalization()(h)))
    return keras.Model(inp, L.Dense(2, activation="softmax")(h))


def keras_unet3d():
    """A small channels-last 3D U-Net (16^3 x 4): strided-conv down, transposed-conv up, skip Concatenate."""
    _, keras = keras_modules()
    L = keras.layers

    def block(x, f, strides=1):
        x = L.Conv3D(f, 3, strides=strides, padding="same")(x)
        return L.Activation("relu")(L.BatchNormalization()(x))

    inp = keras.Input((16, 16, 16, 4))
    e1 = block(inp, 8)
    e2 = block(block(e1, 16, strides=2), 16)
    d1 = L.Concatenate()([L.Conv3DTranspose(8, 2, strides=2)(e2), e1])
    out = L.Conv3D(4, 1, activation="softmax")(block(d1, 8))
    return keras.Model(inp, out)


KERAS_NETS = {  # name: (builder, sample shape, task, target, channels)
    "resnet2d": (keras_resnet2d, (32, 32, 3), "classification", 1, "r,g,b"),
    "unet3d": (keras_unet3d, (16, 16, 16, 4), "segmentation", 2, "flair,t1,t1ce,t2"),
}


@pytest.mark.parametrize("source", ["memory", "file"])
@pytest.mark.parametrize("name", list(KERAS_NETS))
def test_keras_conversion_parity(name, source, tmp_path):
    from nxrt.converters import convert_keras

    _, keras = keras_modules()
    build, shape, task, target, channels = KERAS_NETS[name]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build()
    randomise_batchnorm(model, rng)
    src = model
    if source == "file":
        src = tmp_path / "model.keras"
        model.save(src)
    out = tmp_path / "model.onnx"
    result = convert_keras(src, out, task=task, channels=channels, normalize="zscore")
    assert result["path"] == str(out) and out.exists()

    x = rng.standard_normal((2, *shape)).astype(np.float32)
    got = ort_outputs(out, x)[0]
    ref = model(x, training=False).numpy()
    out_err = rel_err(got, ref)
    assert out_err <= OUT_TOL
    assert result["rel_error"] <= OUT_TOL and result["max_abs_error"] <= 1e-5

    grad = nxrt.Explainer(out).explain(x, "vanilla", target=target)
    assert grad.shape == x.shape
    ref64 = tape_grad(float64_twin(build, model), x.astype(np.float64), target, task)
    grad_err = rel_err(grad, ref64)
    print(f"keras {name} ({source}): verify max abs {result['max_abs_error']:.2e} rel {result['rel_error']:.2e}; "
          f"outputs rel {out_err:.2e}; vanilla gradient rel {grad_err:.2e}")
    assert grad_err <= GRAD_TOL

    card = nxrt.load(out).card
    assert (card.task, card.layout, card.channels, card.normalize) == (task, "channels_last", channels.split(","),
                                                                       "zscore")
    assert card.spatial_shape == list(shape[:-1])
    assert list(result["inputs"].values())[0][1:] == list(shape)
    m = nxrt.load(out).proto
    assert m.ir_version <= 10


def lambda_model_file(path):
    _, keras = keras_modules()
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.Lambda(lambda z: z * 2.0)(h)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.save(path)
    return model


def test_keras_lambda_refused_without_unsafe_cli(tmp_path):
    model = lambda_model_file(tmp_path / "lam.keras")
    out = tmp_path / "lam.onnx"
    res = run_cli("keras", tmp_path / "lam.keras", "-o", out, "--task", "classification", "--channels", "a,b")
    assert_one_line_error(res, "--unsafe", "Lambda")
    assert not out.exists()

    res = run_cli("keras", tmp_path / "lam.keras", "-o", out, "--task", "classification", "--channels", "a,b",
                  "--labels", "x,y,z", "--unsafe")
    assert res.returncode == 0, res.stderr
    assert "verified against Keras" in res.stdout
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 2)).astype(np.float32)
    assert rel_err(ort_outputs(out, x)[0], model(x).numpy()) <= OUT_TOL
    assert nxrt.load(out).card.labels == ["x", "y", "z"]


def test_keras_saved_model_folder(tmp_path):
    from nxrt.converters import convert_keras

    _, keras = keras_modules()
    keras.utils.set_random_seed(4)
    model = keras_resnet2d()
    model.export(str(tmp_path / "sm"), verbose=False)
    result = convert_keras(tmp_path / "sm", tmp_path / "sm.onnx", task="classification", channels="r,g,b")
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
    assert rel_err(ort_outputs(tmp_path / "sm.onnx", x)[0], model(x).numpy()) <= OUT_TOL
    assert result["card"].layout == "channels_last"


def test_keras_option_errors(tmp_path, monkeypatch):
    from nxrt.converters import convert_keras

    keras_modules()
    model = keras_resnet2d()
    with pytest.raises(InputError, match="--channels names 2 channel"):
        convert_keras(model, tmp_path / "a.onnx", task="classification", channels="a,b")
    with pytest.raises(InputError, match="--labels names 3"):
        convert_keras(model, tmp_path / "a.onnx", task="classification", channels="r,g,b", labels="x,y,z")
    with pytest.raises(InputError, match="--spatial-shape"):
        convert_keras(model, tmp_path / "a.onnx", task="classification", channels="r,g,b", spatial_shape=[30, 30])
    with pytest.raises(InputError, match="not a .keras file"):
        (tmp_path / "m.h5").write_bytes(b"x")
        convert_keras(tmp_path / "m.h5", tmp_path / "a.onnx", task="classification", channels="r,g,b")
    (tmp_path / "exists.onnx").write_bytes(b"keep")
    with pytest.raises(InputError, match="--overwrite"):
        convert_keras(model, tmp_path / "exists.onnx", task="classification", channels="r,g,b")
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep"
    assert not (tmp_path / "a.onnx").exists()
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(InputError, match=r"pip install 'nxrt\[keras\]'"):
        convert_keras(model, tmp_path / "a.onnx", task="classification", channels="r,g,b")


# --------------------------------------------------------------------------- torch


def torch_cnn3d():
    """A small 3D segmentation CNN (4 modalities -> 3 channels, softmax): strided conv down, transposed up."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
        nn.ConvTranspose3d(16, 8, 2, stride=2), nn.ReLU(),
        nn.Conv3d(8, 3, 1), nn.Softmax(dim=1))


TORCH_NETS = {  # name: (builder, sample shape, task, target, channels)
    "cnn2d": (small_cnn2d, (3, 32, 32), "classification", 1, "r,g,b"),
    "cnn3d": (torch_cnn3d, (4, 16, 16, 16), "segmentation", 1, "flair,t1,t1ce,t2"),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("name", list(TORCH_NETS))
def test_torch_conversion_parity(name, dynamo, tmp_path):
    import torch
    from nxrt.converters import convert_torch

    build, shape, task, target, channels = TORCH_NETS[name]
    torch.manual_seed(0)
    module = build()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    module.train()  # the converter exports in eval mode and gives the module back as it was
    out = tmp_path / "model.onnx"
    result = convert_torch(module, out, task=task, channels=channels, example_shape=shape, dynamo=dynamo,
                           labels=None if task == "classification" else "background,tumour,edema")
    assert module.training
    module.eval()
    assert result["exporter"] == ("dynamo" if dynamo else "legacy (TorchScript)")
    assert result["opset"] == (18 if dynamo else 17)

    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)  # batch 3: dynamic axis
    got = ort_outputs(out, x)[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    out_err = rel_err(got, ref)
    assert out_err <= OUT_TOL
    assert result["rel_error"] <= OUT_TOL

    grad = nxrt.Explainer(out).explain(x, "vanilla", target=target)
    ref64 = torch_input_grad(module, x, target, task, torch.float64)
    grad_err = rel_err(grad, ref64)
    print(f"torch {name} ({'dynamo' if dynamo else 'legacy'}): verify max abs {result['max_abs_error']:.2e} "
          f"rel {result['rel_error']:.2e}; outputs rel {out_err:.2e}; vanilla gradient rel {grad_err:.2e}")
    assert grad_err <= GRAD_TOL

    card = nxrt.load(out).card
    assert (card.task, card.layout, card.channels) == (task, "channels_first", channels.split(","))
    assert card.spatial_shape == list(shape[1:])
    if task == "segmentation":
        assert card.labels == ["background", "tumour", "edema"]
    assert nxrt.load(out).proto.ir_version <= 10


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
    """A small 2D CNN saved as .pt2 (torch.export), scripted and traced TorchScript, and a pickle."""
    import warnings

    import torch

    d = tmp_path_factory.mktemp("torch_files")
    torch.manual_seed(2)
    module = small_cnn2d().eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, d / "model.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(d / "scripted.ts"))
        torch.jit.trace(module, x).save(str(d / "traced.pt"))
    torch.save(module, d / "pickled.pt")
    torch.save(module.state_dict(), d / "weights.pth")
    return d, module


@pytest.mark.parametrize("file", ["model.pt2", "scripted.ts", "traced.pt"])
def test_torch_cli_from_safe_files(file, torch_files, tmp_path):
    import torch
    d, module = torch_files
    out = tmp_path / "m.onnx"
    args = ["torch", d / file, "-o", out, "--task", "classification", "--channels", "r,g,b", "--labels", "a,b,c",
            "--normalize", "zscore"]
    if file != "model.pt2":  # a torch.export program records its input shape; TorchScript does not
        args += ["--input-shape", "3,32,32"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "verified against torch" in res.stdout and "relative error" in res.stdout
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert rel_err(ort_outputs(out, x)[0], ref) <= OUT_TOL
    card = nxrt.load(out).card
    assert (card.task, card.layout, card.labels, card.normalize, card.spatial_shape) == \
        ("classification", "channels_first", ["a", "b", "c"], "zscore", [32, 32])


def test_torch_cli_refuses_pickles(torch_files, tmp_path):
    d, _ = torch_files
    out = tmp_path / "m.onnx"
    res = run_cli("torch", d / "pickled.pt", "-o", out, "--task", "classification", "--channels", "r,g,b",
                  "--input-shape", "3,32,32")
    assert_one_line_error(res, "arbitrary code", ".pt2", "TorchScript")
    assert not out.exists()
    from nxrt.converters import detect_format

    for name in ("weights.pth", "pickled.pt"):
        with pytest.raises(InputError, match="arbitrary code"):
            detect_format(d / name)
    assert detect_format(d / "model.pt2") == "pt2"
    assert detect_format(d / "traced.pt") == "torchscript"  # by contents, not by extension


def test_torch_option_errors(torch_files, tmp_path, monkeypatch):
    from nxrt.converters import convert_torch

    d, module = torch_files
    out = tmp_path / "m.onnx"
    res = run_cli("torch", d / "model.pt2", "-o", out, "--task", "classification", "--channels", "r,g,b", "--unsafe")
    assert_one_line_error(res, "--unsafe")
    with pytest.raises(InputError, match="input shape is unknown"):
        convert_torch(d / "scripted.ts", out, task="classification", channels="r,g,b")
    with pytest.raises(InputError, match="--legacy"):
        convert_torch(d / "model.pt2", out, task="classification", channels="r,g,b", dynamo=False)
    with pytest.raises(InputError, match="--channels names 4"):
        convert_torch(module, out, task="classification", channels="a,b,c,d", example_shape=(3, 32, 32))
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match=r"pip install 'nxrt\[torch\]'"):
        convert_torch(d / "model.pt2", out, task="classification", channels="r,g,b")


# --------------------------------------------------------------------------- verification refusal


def test_verify_refuses_a_mismatch(torch_files, tmp_path, monkeypatch):
    import nxrt.converters.common as common
    import torch
    from nxrt.converters import convert_torch

    d, module = torch_files
    out = tmp_path / "m.onnx"
    convert_torch(module, out, task="classification", channels="r,g,b", example_shape=(3, 32, 32))
    proto = nxrt.load(out).proto
    x = common.random_input((2, 3, 32, 32))

    def right(v):
        with torch.no_grad():
            return [module(torch.from_numpy(v)).numpy()]

    ok = common.verify(proto, right, x, framework="PyTorch")
    assert ok["rel_error"] <= OUT_TOL

    def wrong(v):  # a framework function 1e-3 off
        return [r * (1 + 1e-3) for r in right(v)]

    with pytest.raises(ModelError, match=r"disagrees with the PyTorch.*relative error (9\.9\d|1\.0\d)e-0[34] > 1e-04"):
        common.verify(proto, wrong, x, framework="PyTorch")
    with pytest.raises(ModelError, match="output"):
        common.verify(proto, lambda v: [right(v)[0][:, :2]], x, framework="PyTorch")

    # through a whole conversion: nothing written, an existing file left as it was even with overwrite
    real_run = common.run_onnx
    monkeypatch.setattr(common, "run_onnx", lambda m, v: [o + 1e-2 for o in real_run(m, v)])
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(ModelError, match="nothing was written"):
        convert_torch(module, fresh, task="classification", channels="r,g,b", example_shape=(3, 32, 32))
    assert not fresh.exists()
    before = out.read_bytes()
    with pytest.raises(ModelError, match="nothing was written"):
        convert_torch(module, out, task="classification", channels="r,g,b", example_shape=(3, 32, 32),
                      overwrite=True)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_cli_imports_no_framework():
    res = subprocess.run([sys.executable, "-c", "import sys, nxrt.cli, nxrt.converters; "
                          "print(sorted(k for k in ('torch', 'tensorflow', 'keras', 'tf2onnx') if k in sys.modules))"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
