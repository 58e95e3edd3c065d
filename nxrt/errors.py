"""Errors a user can act on.

Every error nxrt raises on purpose is one of these, and its message is one line that names
the file, tensor, op or option at fault and says how to fix it. The CLI prints that line and
exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NxrtError(Exception):
    """Base class of the errors a user can cause (bad model, bad input, bad option)."""


class ModelError(NxrtError):
    """The ONNX model cannot be loaded, differentiated or run as asked."""


class InputError(NxrtError):
    """An input (array, case file, target, option) does not fit the model or the method."""


class NxrtWarning(UserWarning):
    """A result that is computed but cannot be fully trusted, or a guess nxrt made for the user.
    The CLI prints each as one `nxrt: warning:` line; Explanation.warnings keeps them as values."""
