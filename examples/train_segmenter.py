"""Train the demo tumour segmenter (a small 3D U-Net in the spirit of DeepSeg) in Keras on the CPU, and
export it through nxrt's Keras converter.

Input: the four modalities, z-scored inside the brain and centre-cropped/padded to 96x112x96 exactly
as `nxrt explain` prepares a case, in Keras' channels-last layout. Output: per-voxel softmax over the
BraTS 2021 compartments background, necrosis (1), oedema (2), enhancing (4); the card's
`nxrt.label_values` maps the channels back to BraTS label values in `prediction.nii.gz`.

Training runs on random 48^3 patches (most of them centred near the tumour, where the decisions
are), with cross-entropy plus a soft Dice loss on the whole tumour; the U-Net is fully convolutional,
so the exported model (fixed at the full 96x112x96 grid) uses the same weights.

    .venv/bin/python examples/train_segmenter.py      # writes nxrt/demo/data/segmenter.onnx
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from nxrt.demo.phantom import MODALITIES, make_phantom
from nxrt.imaging.preprocess import prepare

GRID = (96, 112, 96)
LABELS = ["background", "necrosis", "edema", "enhancing"]
LABEL_VALUES = (0, 1, 2, 4)  # BraTS 2021 label value of each output channel
OUT = Path(__file__).resolve().parents[1] / "nxrt" / "demo" / "data" / "segmenter.onnx"


def sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One case as the model sees it: x [*GRID, 4] (channels last) and class indices [*GRID]."""
    ph = make_phantom(seed)
    x, geom = prepare(ph.stack(MODALITIES), GRID, "channels_last", "zscore")
    lut = np.zeros(5, np.int8)
    for index, value in enumerate(LABEL_VALUES):
        lut[value] = index
    return x[0], lut[geom.to_model(ph.seg)]


def dataset(seeds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(sample(s) for s in seeds), strict=True)
    return np.stack(xs), np.stack(ys)


def patches(x, y, rng, batch: int, size: int):
    """A batch of size^3 crops; three in four are centred near a tumour voxel."""
    xs, ys = [], []
    for _ in range(batch):
        i = int(rng.integers(len(x)))
        if rng.random() < 0.75:
            fg = np.argwhere(y[i] > 0)
            centre = fg[rng.integers(len(fg))] + rng.integers(-12, 13, 3)
        else:
            centre = np.array([rng.integers(0, n) for n in GRID])
        lo = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, GRID, strict=True)]
        sl = tuple(slice(a, a + size) for a in lo)
        xs.append(x[i][sl])
        ys.append(y[i][sl])
    return np.stack(xs), np.stack(ys)


def build(shape):
    """A 3-level U-Net (8-16-32 filters, two 3x3x3 convs per level, max-pool down, upsample + skip)."""
    import keras

    L = keras.layers

    def block(h, filters):
        for _ in range(2):
            h = L.Conv3D(filters, 3, padding="same", activation="relu")(h)
        return h

    inp = keras.Input((*shape, len(MODALITIES)), name="input")
    e1 = block(inp, 8)
    e2 = block(L.MaxPooling3D(2)(e1), 16)
    b = block(L.MaxPooling3D(2)(e2), 32)
    d2 = block(L.Concatenate()([L.UpSampling3D(2)(b), e2]), 16)
    d1 = block(L.Concatenate()([L.UpSampling3D(2)(d2), e1]), 8)
    out = L.Conv3D(len(LABELS), 1, activation="softmax", name="labels")(d1)
    return keras.Model(inp, out, name="segmenter")


def loss_fn(y_true, y_pred):
    """Cross-entropy plus soft Dice of the whole tumour (all non-background channels)."""
    import keras
    from keras import ops

    onehot = ops.one_hot(ops.cast(y_true, "int32"), len(LABELS))
    ce = keras.losses.categorical_crossentropy(onehot, y_pred)
    t, p = 1.0 - onehot[..., 0], 1.0 - y_pred[..., 0]
    dice = (2.0 * ops.sum(t * p) + 1.0) / (ops.sum(t) + ops.sum(p) + 1.0)
    return ops.mean(ce) + (1.0 - dice)


def whole_tumour_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    x_train, y_train = dataset(range(2000, 2000 + args.train))
    x_test, y_test = dataset(range(6000, 6000 + args.test))  # held out: seeds never used for training
    print(f"data: {len(x_train)} train / {len(x_test)} test in {time.perf_counter() - t0:.0f} s", flush=True)
    net = build((None, None, None))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, args.steps, alpha=0.05)
    net.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss_fn)
    for step in range(1, args.steps + 1):
        xb, yb = patches(x_train, y_train, rng, args.batch, args.patch)
        loss = float(net.train_on_batch(xb, yb))
        if step % 50 == 0:
            print(f"step {step}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    full = build(GRID)
    full.set_weights(net.get_weights())
    pred = np.concatenate([full.predict(x_test[i:i + 2], verbose=0) for i in range(0, len(x_test), 2)]).argmax(-1)
    dice = [whole_tumour_dice(p, t) for p, t in zip(pred, y_test, strict=True)]
    print(f"held-out whole-tumour Dice: mean {np.mean(dice):.3f}, min {np.min(dice):.3f}", flush=True)

    from nxrt.converters import convert_keras

    from nxrt.card import ModelCard
    from nxrt.graph import load_model, save_model

    info = convert_keras(full, args.out, task="segmentation", channels=list(MODALITIES), labels=LABELS,
                         normalize="zscore", overwrite=True)
    model = load_model(args.out)
    card = ModelCard.from_model(model)
    card.set("label_values", ",".join(map(str, LABEL_VALUES)))
    card.set("activation", "softmax")  # said, not left for nxrt to infer (and announce) from the graph
    save_model(card.write(model), args.out)
    print(f"wrote {args.out}: held-out Dice {np.mean(dice):.3f}, export rel. error {info['rel_error']:.1e}, "
          f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
