"""The one error type of the bag modules, and the wording of library errors inside it."""

from __future__ import annotations

__all__ = ["BagError", "describe_exc"]


class BagError(RuntimeError):
    """A bag cannot be read or written; the message says which file and why (print it as is).

    ``messages_read`` is how many messages the failing iteration had yielded (0 at open time),
    so a caller can report a partial result.
    """

    def __init__(self, message: str, *, messages_read: int = 0) -> None:
        super().__init__(message)
        self.messages_read = messages_read


def describe_exc(exc: BaseException) -> str:
    """A library exception as one short line for a ``BagError`` message."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."
