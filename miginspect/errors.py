"""The exception tree. Every error carries the byte offset where it was found and a
stable `code` naming the kind of problem (`inspector.problems.PROBLEMS` maps each
code to QEMU's message for it and a fix).

The code is given where the damage is found: `raise TruncatedError(msg, off, where,
code="truncated-ram")`. A raise site that names none gets its class's `default_code`
(only raise sites outside the engine still rely on it; tests/test_problems.py lists
them).
"""

from __future__ import annotations


class MigError(Exception):
    """Base of every error this package raises on bad input."""

    kind = "error"
    default_code = "damaged"

    def __init__(
        self, message: str, offset: int | None = None, where: str = "", *,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.where = where
        self.code: str = code or self.default_code

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
    default_code = "truncated"


class BadMagicError(FormatError):
    """Not a file of a kind this tool reads, or an unsupported version."""

    kind = "bad magic"
    default_code = "bad-magic"


class UnknownSectionError(FormatError):
    """A record type or section that cannot be read or skipped."""

    kind = "unknown section"
    default_code = "unknown-section-type"


class InconsistentError(FormatError):
    """Fields that contradict each other (offsets past the end, lengths that do not add up)."""

    kind = "inconsistent"
    default_code = "inconsistent"


class UnsupportedError(MigError):
    """Valid input that uses a feature this tool does not implement."""

    kind = "unsupported"
    default_code = "unsupported"


class UsageError(MigError):
    """A wrong command line or an output path that is refused."""

    kind = "usage error"
    default_code = "usage"
