"""The one exception family of vlm_lens.

Every error a user can cause (a bad argument, an unreadable image, an unsupported checkpoint) is raised as
:class:`VlmLensError` or a subclass, with a message that names the argument, what was expected, what was
given, and what to do. Bugs inside vlm_lens surface as ordinary Python exceptions.

Example:
    >>> import vlm_lens as vl
    >>> try:
    ...     raise vl.VlmLensError("topk=0: expected an integer >= 1. Pass topk=1 or more.")
    ... except vl.VlmLensError as err:
    ...     print(err)
    topk=0: expected an integer >= 1. Pass topk=1 or more.
"""

from __future__ import annotations

__all__ = ["VlmLensError", "UnsupportedModelError", "CheckpointError", "ImageError", "DamagedFileError",
           "RunMismatchError"]


class VlmLensError(ValueError):
    """A problem with what was passed to vlm_lens; the message says what to change."""


class UnsupportedModelError(VlmLensError):
    """The checkpoint or module belongs to no family vlm_lens knows, or uses a feature its adapter refuses."""


class CheckpointError(VlmLensError):
    """A checkpoint's files cannot be read, or its weights do not match its config (missing, unexpected or
    mis-shaped tensors): loading it would give layers or an output head with random weights."""


class ImageError(VlmLensError):
    """An image could not be read or converted to RGB."""


class DamagedFileError(VlmLensError):
    """A file vlm_lens wrote (a saved trace, a run's ``run.json``, checkpoint state or result tables) cannot be read
    back, or holds values that contradict each other (``path``: the file)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class RunMismatchError(VlmLensError):
    """A run folder holds a run of another model or other arguments (``folder``; ``differences``: stored -> now)."""

    def __init__(self, message: str, folder: str, differences: list[str]) -> None:
        super().__init__(message)
        self.folder, self.differences = folder, differences
