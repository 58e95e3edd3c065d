"""Train the demo glioma grader (HGG vs LGG) on phantoms, in PyTorch on the CPU, and export it.

The network sees the four modalities at the phantoms' native 2 mm grid, centre-cropped/padded to
96x112x96 and z-scored inside the brain exactly as `nxrt explain` preprocesses a case (the model
card says so), so the shipped ONNX model explains real-looking cases end to end. High grade differs
from low grade by an enhancing rim (T1ce) with necrosis and more oedema; a small 3D CNN learns it.

    .venv/bin/python examples/train_grader.py            # ~6 min on 2 cores; writes nxrt/demo/data/grader.onnx

Measured (30 epochs, 3 min on 2 cores): held-out accuracy 97.5% on 40 phantoms the training never
saw; tests/test_demo_models.py checks the shipped ONNX model on 24 more fresh phantoms (100%) and
that Grad-CAM / SmoothGrad put 50% / 37% of their mass inside the tumour, which is 1.8% of the brain.
A first attempt with BatchNorm and an average-pool head swung between 75% and 95% and localised
poorly (2.5% in the tumour): the evidence is local, so the head max-pools.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nxrt.demo.phantom import MODALITIES, make_phantom
from nxrt.imaging.preprocess import prepare

GRID = (96, 112, 96)
LABELS = ["LGG", "HGG"]
OUT = Path(__file__).resolve().parents[1] / "nxrt" / "demo" / "data" / "grader.onnx"


def sample(seed: int) -> tuple[np.ndarray, int]:
    """One preprocessed case [4, *GRID] and its label (1 = HGG), exactly as nxrt explain prepares it."""
    ph = make_phantom(seed)
    x, _ = prepare(ph.stack(MODALITIES), GRID, "channels_first", "zscore")
    return x[0], int(ph.grade == "HGG")


def dataset(seeds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(sample(s) for s in seeds), strict=True)
    return np.stack(xs), np.array(ys)


def build():
    import torch.nn as nn

    def block(cin, cout, stride):
        return [nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]

    # no BatchNorm (8-sample batches made its statistics swing the held-out accuracy 75-95%), and a
    # global max-pool head: the evidence (an enhancing rim) is local, an average would dilute it
    return nn.Sequential(*block(4, 8, 2), *block(8, 16, 2), *block(16, 32, 2), *block(32, 32, 1),
                         nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(32, 2))


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=96)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    x_train, y_train = dataset(range(1000, 1000 + args.train))
    x_test, y_test = dataset(range(5000, 5000 + args.test))  # held out: seeds never used for training
    print(f"data: {len(x_train)} train / {len(x_test)} test in {time.perf_counter() - t0:.0f} s", flush=True)
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    # cosine decay: the noisy BatchNorm statistics of 8-sample batches settle as the steps shrink
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    xt, yt = torch.tensor(x_train), torch.tensor(y_train)
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), 8):
            idx = order[i:i + 8]
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(torch.tensor(x_test)).argmax(1).numpy() == y_test).mean())
        print(f"epoch {epoch + 1}: loss {total / len(xt):.4f}, held-out accuracy {acc:.1%} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    from nxrt.converters import convert_torch

    info = convert_torch(net.eval(), args.out, example_shape=(4, *GRID), task="classification",
                         channels=list(MODALITIES), labels=LABELS, normalize="zscore", overwrite=True)
    print(f"wrote {args.out}: held-out accuracy {acc:.1%}, export rel. error {info['rel_error']:.1e}, "
          f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
