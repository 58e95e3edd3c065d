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


#: what to do about an OS error while writing, by errno name
_WRITE_HINTS = {"ENOSPC": "free some space or write to another -o", "EDQUOT": "free some space or write to another -o",
                "EACCES": "check the folder's permissions or write to another -o",
                "EPERM": "check the folder's permissions or write to another -o",
                "EROFS": "the file system is read-only: write to another -o",
                "ENOENT": "check that the folder exists", "ENOTDIR": "a part of the path is a file, not a folder"}


def describe_os_error(exc: OSError, doing: str = "", path=None) -> str:
    """One line for an OS error: the cause as the OS says it, the path, and what to do."""
    import errno

    cause = (exc.strerror or str(exc)).rstrip(".")
    cause = cause[:1].lower() + cause[1:]
    where = path if path is not None else exc.filename
    hint = _WRITE_HINTS.get(errno.errorcode.get(exc.errno or 0, ""), "check the path and its permissions")
    return f"{cause}{f' {doing}' if doing else ''}{f' {where}' if where else ''}; {hint}"


class OutputError(NxrtError):
    """A result file could not be written (disk full, no permission, ...). `path` is the file
    the user will look for (not the temporary name it was being written under)."""

    def __init__(self, path, exc: OSError):
        from pathlib import Path

        self.path, self.os_error = Path(path), exc
        super().__init__(describe_os_error(exc, "writing", self.path))

    @property
    def disk_full(self) -> bool:
        import errno

        return self.os_error.errno in (errno.ENOSPC, errno.EDQUOT)

    def moved(self, stage, final) -> OutputError:
        """The same error for the file's final place (a case is written in a staging folder)."""
        from pathlib import Path

        try:
            return OutputError(Path(final) / self.path.relative_to(stage), self.os_error)
        except ValueError:
            return self
