"""Test networks, exporters and framework references shared by the network-level tests.

torch and tensorflow are imported lazily here: tests/ may use them, nxrt/ never does.
"""

from __future__ import annotations

import numpy as np

import nxrt
from nxrt.engine import make_session
from nxrt.passes import SEED, ScoreSpec, grad_name


def monai_nets():
    from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet

    return {
        "unet": lambda: UNet(3, 4, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
        "dynunet": lambda: DynUNet(3, 4, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
                                   upsample_kernel_size=[2, 2, 2], filters=[8, 16, 32, 64], norm_name="instance"),
        "segresnet": lambda: SegResNet(3, init_filters=8, in_channels=4, out_channels=3, blocks_down=(1, 2, 2),
                                       blocks_up=(1, 1)),
        "basicunet": lambda: BasicUNet(3, 4, 3, features=(8, 8, 16, 32, 64, 8)),
    }


def transformer_nets():
    """MONAI's vision-transformer segmenters, small: UNETR (attention through Einsum) at 32^3 and
    SwinUNETR (shifted windows, patch merging by strided slices) at 64^3 (its five 2x levels)."""
    from monai.networks.nets import UNETR, SwinUNETR

    return {
        "unetr": (lambda: UNETR(in_channels=4, out_channels=3, img_size=(32, 32, 32), feature_size=8, hidden_size=48,
                                mlp_dim=96, num_heads=4, proj_type="conv"), 32),
        "swinunetr": (lambda: SwinUNETR(in_channels=4, out_channels=3, feature_size=12, depths=(1, 1, 1, 1),
                                        num_heads=(1, 1, 1, 1)), 64),
    }


def nnunet_nets():
    """nnU-Net's own architectures (dynamic_network_architectures), 3D, small, instance norm."""
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    common = dict(input_channels=4, n_stages=4, features_per_stage=(8, 16, 32, 64), conv_op=nn.Conv3d,
                  kernel_sizes=3, strides=(1, 2, 2, 2), num_classes=3, conv_bias=True, norm_op=nn.InstanceNorm3d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=False)
    return {
        "plainconvunet": lambda: PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common),
        "residualencoderunet": lambda: ResidualEncoderUNet(n_blocks_per_stage=(1, 2, 2, 2),
                                                           n_conv_per_stage_decoder=1, **common),
    }


def resnet2d():
    from monai.networks.nets import ResNet

    return ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=2, n_input_channels=3, num_classes=2)


def small_cnn2d():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def export_torch(module, x, path, dynamo: bool, dynamic_batch: bool = False) -> str:
    import torch

    module = module.eval()
    kwargs = dict(input_names=["input"], output_names=["output"])
    if dynamo:
        kwargs["opset_version"] = 18
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=64)},)
    else:
        kwargs["opset_version"] = 17
        if dynamic_batch:
            kwargs["dynamic_axes"] = {"input": {0: "N"}, "output": {0: "N"}}
    torch.onnx.export(module, (x,), str(path), dynamo=dynamo, **kwargs)
    return str(path)


def torch_score(y, target: int, task: str):
    if task == "segmentation":
        return y[:, target].mean(dim=tuple(range(1, y.dim() - 1)))
    return y[:, target]


def torch_input_grad(module, x: np.ndarray, target: int, task: str, dtype) -> np.ndarray:
    """d score_target / d x with torch autograd, in the given dtype (float32 or float64)."""
    import copy

    import torch

    net = copy.deepcopy(module).to(dtype).eval()
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    torch_score(net(xt), target, task).sum().backward()
    return xt.grad.detach().numpy().astype(np.float64)


#: the backends every parity test runs nxrt's graph on, with the same criterion
BACKENDS = ("cpu", "openvino")


def nxrt_grads(path_or_model, x: np.ndarray, target: int, task: str, layout: str = "channels_first",
               layers=(), guided: bool = False, wrt=("input",), provider: str = "cpu") -> dict[str, np.ndarray]:
    """Run nxrt's augmented graph with a one-hot seed on `provider` (onnxruntime's CPU provider,
    or OpenVINO); returns {output name: array}."""
    aug = nxrt.augment(path_or_model, wrt=wrt, layers=layers, guided=guided,
                       score=ScoreSpec(task=task, layout=layout))
    sess = make_session(aug, provider)
    names = [o.name for o in sess.get_outputs()]
    seed_shape = [x.shape[0], sess.get_outputs()[names.index("nxrt_scores")].shape[1]]
    seed = np.zeros(seed_shape, np.float32)
    seed[:, target] = 1.0
    in_name = [i.name for i in sess.get_inputs() if i.name != SEED][0]
    out = sess.run(None, {in_name: x.astype(np.float32), SEED: seed})
    result = dict(zip(names, out, strict=True))
    result["input_grad"] = result[grad_name(in_name)]
    return result
