"""The exception tree. Every error carries the byte offset where it was found."""

from __future__ import annotations


class MigError(Exception):
    """Base of every error this package raises on bad input."""

    kind = "error"

    def __init__(self, message: str, offset: int | None = None, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.where = where

    def oneline(self) -> str:
        at = f" at offset 0x{self.offset:x} ({self.offset})" if self.offset is not None else ""
        where = f" [{self.where}]" if self.where else ""
        return f"{self.kind}{at}{where}: {self.message}"

    def __str__(self) -> str:
        return self.oneline()


class FormatError(MigError):
    """The bytes do not follow the format."""

    kind = "format error"


class TruncatedError(FormatError):
    """The file ends before a structure it started is complete."""

    kind = "truncated"


class BadMagicError(FormatError):
    """Not a file of a kind this tool reads, or an unsupported version."""

    kind = "bad magic"


class UnknownSectionError(FormatError):
    """A record type or section that cannot be read or skipped."""

    kind = "unknown section"


class InconsistentError(FormatError):
    """Fields that contradict each other (offsets past the end, lengths that do not add up)."""

    kind = "inconsistent"


class UnsupportedError(MigError):
    """Valid input that uses a feature this tool does not implement."""

    kind = "unsupported"


class UsageError(MigError):
    """A wrong command line or an output path that is refused."""

    kind = "usage error"
