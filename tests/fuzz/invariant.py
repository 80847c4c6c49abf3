"""The one exception a harness raises when an input breaks a promise (light: no app imports)."""

from __future__ import annotations


class InvariantBroken(AssertionError):
    """An input made the service break a promise; the message names the request and what broke.

    ``kind`` is the broken promise in a few stable words (no ids, no sizes): a long fuzzing run
    counts failures by it, so one defect hit a thousand times is one entry, not a thousand.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
