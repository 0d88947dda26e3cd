"""Typed errors of the engine. Every message is written for the person who picked the file.

All errors derive from :class:`RoostError`, so a caller (the CLI, the app) can catch one type and
show ``str(err)`` as it is.
"""

from __future__ import annotations


class RoostError(Exception):
    """Base of every error the engine raises on purpose."""


class CheckpointError(RoostError):
    """The file cannot be used as an RWKV checkpoint."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(message)


class NotACheckpointError(CheckpointError):
    """The file is readable but is not an RWKV model (another format, another architecture)."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or damaged (an interrupted download, a disk error)."""


class UnsafeCheckpointError(CheckpointError):
    """The file carries pickled code. It was refused before any of that code could run."""


class UnsupportedModelError(CheckpointError):
    """An RWKV variant this version of Roost does not run."""


class IsATunedStateError(NotACheckpointError):
    """A state-tuning file (a persona: only the starting state of each layer) given as a model."""

    def __init__(self, message: str, *, path: str | None = None, n_layer: int = 0, n_embd: int = 0):
        self.n_layer, self.n_embd = n_layer, n_embd  # of the model it was made for; 0 where unknown
        super().__init__(message, path=path)


class TunedStateError(CheckpointError):
    """A state-tuning file (persona) that cannot be used."""


class NotATunedStateError(TunedStateError, NotACheckpointError):
    """The file holds something else than starting states: a model, other tensors, no tensors."""


class CorruptTunedStateError(TunedStateError, CorruptCheckpointError):
    """A state-tuning file that is damaged: unreadable, layers missing, odd shapes or values."""


class TunedStateMismatchError(TunedStateError):
    """A state-tuning file made for a model of another shape (or version) than the loaded one."""


class StrategyError(RoostError, ValueError):
    """A strategy string that cannot be parsed, or that this machine or model cannot run."""


class TokenizerError(RoostError):
    """The tokenizer for a model is missing or unreadable."""


class OutOfMemoryError(RoostError):
    """The model does not fit in the memory this machine has free."""
