"""Where the channel axis of a model's input lies: the `Layout` value.

ONNX convolutions are NC... (channels first); Keras models exported by tf2onnx take N...C
(channels last) and transpose inside the graph. Every place that needs "which axis holds the
channels" or "which axes are spatial" asks a Layout instead of comparing strings.

A Layout is a `str` enum, so `Layout.CHANNELS_FIRST == "channels_first"` and it writes into the
model card, JSON and CLI choices as its plain name.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from .errors import InputError


class Layout(str, Enum):
    CHANNELS_FIRST = "channels_first"
    CHANNELS_LAST = "channels_last"

    def __str__(self) -> str:  # the plain name in messages and files, as on every Python version
        return self.value

    @classmethod
    def of(cls, value: str | Layout) -> Layout:
        """The Layout named `value` ('channels_first' / 'channels_last' or a Layout)."""
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"layout '{value}' is not one of {', '.join(cls.names())}") from None

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]

    @property
    def first(self) -> bool:
        return self is Layout.CHANNELS_FIRST

    def channel_axis(self, rank: int, batch: bool = True) -> int:
        """The channel axis of an array of `rank` axes (batch=False: one sample, no batch axis)."""
        if self.first:
            return 1 if batch else 0
        return rank - 1

    def spatial_axes(self, rank: int, batch: bool = True) -> tuple[int, ...]:
        lead = 1 if batch else 0
        channel = self.channel_axis(rank, batch)
        return tuple(a for a in range(lead, rank) if a != channel)

    def spatial_shape(self, shape, batch: bool = True) -> tuple:
        """The spatial dims of a shape (batch=False: the shape of one sample)."""
        return tuple(shape[a] for a in self.spatial_axes(len(shape), batch))

    def shape(self, channels: int, spatial, batch: int | None = 1) -> tuple:
        """The array shape of `channels` x `spatial` in this layout (batch None: no batch axis)."""
        inner = (channels, *spatial) if self.first else (*spatial, channels)
        return inner if batch is None else (batch, *inner)

    def channels(self, shape, batch: bool = True):
        """The channel count of a shape."""
        return shape[self.channel_axis(len(shape), batch)]

    def to_channels_first(self, a: np.ndarray, batch: bool = True) -> np.ndarray:
        """A view of `a` with its channel axis where channels-first puts it."""
        return a if self.first else np.moveaxis(a, -1, 1 if batch else 0)

    def from_channels_first(self, a: np.ndarray, batch: bool = True) -> np.ndarray:
        """The inverse of to_channels_first: a channels-first array in this layout."""
        return a if self.first else np.moveaxis(a, 1 if batch else 0, -1)

    def to_channels_last(self, a: np.ndarray, batch: bool = True) -> np.ndarray:
        """A view of `a` with its channel axis last (how NIfTI stores one volume per channel)."""
        return np.moveaxis(a, 1 if batch else 0, -1) if self.first else a
