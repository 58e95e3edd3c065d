"""The model card: nxrt's metadata stored in the ONNX file's metadata_props (`nxrt.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import onnx

from .errors import InputError, ModelError

TASKS = ("classification", "segmentation")
LAYOUTS = ("channels_first", "channels_last")
NORMALIZE = ("zscore", "minmax", "none")
#: what a segmenter's output channels are: softmax (exclusive classes, probabilities or logits:
#: prediction = argmax), sigmoid (independent per-channel probabilities: p > 0.5), logits
#: (independent per-channel logits: > 0)
ACTIVATIONS = ("softmax", "sigmoid", "logits")
#: how a case of another size meets the model's grid: a centre crop/pad, or resampling
GRIDS = ("crop", "resample")
PREFIX = "nxrt."


@dataclass
class ModelCard:
    """What nxrt needs to know about a model beyond its graph. Every field may be missing (None)."""

    task: str | None = None
    layout: str | None = None
    channels: list[str] | None = None
    labels: list[str] | None = None
    normalize: str | None = None
    spatial_shape: list[int] | None = None
    activation: str | None = None
    grid: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> ModelCard:
        props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
        card = cls()
        for key, value in props.items():
            card.set(key, value)
        return card

    def set(self, key: str, value: str) -> None:
        """Set one field from its string form, validating it (raises ModelError naming the key)."""
        key = key[len(PREFIX):] if key.startswith(PREFIX) else key
        value = value.strip()
        if key == "task":
            self.task = _choice(key, value, TASKS)
        elif key == "layout":
            self.layout = _choice(key, value, LAYOUTS)
        elif key == "normalize":
            self.normalize = _choice(key, value, NORMALIZE)
        elif key == "activation":
            self.activation = _choice(key, value, ACTIVATIONS)
        elif key == "grid":
            self.grid = _choice(key, value, GRIDS)
        elif key in ("channels", "labels"):
            items = [v.strip() for v in value.split(",") if v.strip()]
            setattr(self, key, items or None)
        elif key == "spatial_shape":
            try:
                dims = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
            except ValueError:
                raise ModelError(f"nxrt.spatial_shape: '{value}' is not a list of integers like 192,224,160") from None
            if not dims or min(dims) <= 0:
                raise ModelError(f"nxrt.spatial_shape: '{value}' must be positive integers like 192,224,160")
            self.spatial_shape = dims
        else:
            self.extra[key] = value

    def target_indices(self, values) -> list[int]:
        """Output classes / channels given by index or by the card's label name (`-t HGG` = `-t 1`
        when labels=LGG,HGG; names match case-insensitively). An unknown name is one InputError
        line listing the names there are."""
        labels = self.labels or []
        by_name = {name.lower(): k for k, name in enumerate(labels)}
        found = []
        for value in values:
            text = str(value).strip()
            if text.lstrip("-").isdigit():
                found.append(int(text))
            elif text.lower() in by_name:
                found.append(by_name[text.lower()])
            elif labels:
                names = ", ".join(f"{name} ({k})" for k, name in enumerate(labels))
                raise InputError(f"target '{text}': the model card has no label of that name; its labels: {names}")
            else:
                raise InputError(f"target '{text}': the model card names no labels; give an index (-t 0, -t 1, ...) "
                                 "or name them with `nxrt card MODEL --set labels=NAME,NAME,...`")
        return found

    def to_props(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            out[PREFIX + f.name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        out.update({PREFIX + k: v for k, v in self.extra.items()})
        return out

    def write(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Store this card in the model's metadata_props (other metadata is kept)."""
        keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
        for key, value in self.to_props().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


def check_card(card: ModelCard, task: str, layout, input_shape: tuple, output_shape: tuple | None,
               output: str = "the output", where: str = "the model card") -> None:
    """The card (and the task/layout in force) against the model's own shapes; one ModelError
    line per mismatch found first, naming the key and how to fix it. Dims that are not static
    are not checked. input_shape/output_shape: batch axis first."""
    from .layout import Layout

    layout = Layout.of(layout)
    out_rank = len(output_shape) if output_shape else None
    fix = "fix it with `nxrt card MODEL --set ...` or the matching flag"
    if task == "classification" and out_rank and out_rank > 2:
        spatial = layout.spatial_shape(output_shape)
        if not all(d == 1 for d in spatial):
            raise ModelError(f"task=classification, but {output} has shape {_dims(output_shape)}, with spatial axes: "
                             "it is a segmentation output; use task=segmentation (--task segmentation, or nxrt card "
                             "MODEL --set task=segmentation)")
    if task == "segmentation" and out_rank is not None and out_rank < 3:
        raise ModelError(f"task=segmentation, but {output} has shape {_dims(output_shape)}, without spatial axes: "
                         "use task=classification")
    if output_shape and out_rank and card.labels:
        n = output_shape[1] if task == "classification" and out_rank == 2 else layout.channels(output_shape)
        if isinstance(n, int) and n != len(card.labels):
            raise ModelError(f"{where}: nxrt.labels names {len(card.labels)} ({','.join(card.labels)}) but {output} "
                             f"has {n} {'classes' if task == 'classification' else 'channels'}; {fix}")
    if task == "segmentation" and card.activation == "softmax" and out_rank and layout.channels(output_shape) == 1:
        raise ModelError(f"{where}: nxrt.activation=softmax but {output} has one channel, whose argmax is always 0 "
                         "(nothing would ever be predicted); set activation=sigmoid or logits")
    if input_shape and len(input_shape) >= 3:
        c = layout.channels(input_shape)
        if card.channels and isinstance(c, int) and c != len(card.channels):
            raise ModelError(f"{where}: nxrt.channels names {len(card.channels)} ({','.join(card.channels)}) but the "
                             f"model input has {c} channel(s) in {layout} layout; {fix}")
        spatial = layout.spatial_shape(input_shape)
        if card.spatial_shape and all(isinstance(d, int) and d > 0 for d in spatial) and \
                list(spatial) != list(card.spatial_shape):
            raise ModelError(f"{where}: nxrt.spatial_shape {','.join(map(str, card.spatial_shape))} differs from the "
                             f"model input's static spatial shape {','.join(map(str, spatial))}; {fix}")


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def _choice(key: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ModelError(f"nxrt.{key}: '{value}' is not one of {', '.join(allowed)}")
    return value
