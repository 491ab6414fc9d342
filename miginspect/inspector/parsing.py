"""The one place where construct grammars meet file bytes.

Every construct parse of file content goes through `parse_at`, which turns
construct's and struct's errors and short reads into `FormatError`s carrying
the byte offset and the caller's problem code: `code` when the bytes do not parse,
`cut_code` (default: `code`) when the data ends inside the item.
"""

from __future__ import annotations

import io
from typing import Any

from construct import Construct, ConstructError, StreamError

from ..errors import FormatError, TruncatedError

#: A grammar item read by `parse_at` never spans more than this (the largest
#: are a 64 KiB page payload and a RAMBlock list); bigger blobs (the JSON
#: trailer, bitmaps) are sliced directly.
DEFAULT_LIMIT = 1 << 20


def parse_at(
    grammar: Construct,
    buf: Any,
    offset: int,
    what: str,
    limit: int = DEFAULT_LIMIT,
    end: int | None = None,
    *,
    code: str | None = None,
    cut_code: str | None = None,
    **params: Any,
) -> tuple[Any, int]:
    """Parse `grammar` at `offset` of `buf`; return (object, bytes consumed)."""
    stop = len(buf) if end is None else min(end, len(buf))
    cut_code = cut_code or code
    if offset < 0 or offset > stop:
        raise TruncatedError(f"{what} starts past the end of the data", offset, what,
                             code=cut_code)
    chunk = bytes(buf[offset : min(stop, offset + limit)])
    stream = io.BytesIO(chunk)
    try:
        obj = grammar.parse_stream(stream, **params)
    except StreamError as e:
        if offset + limit >= stop:
            raise TruncatedError(
                f"the data ends inside {what} ({stop - offset} bytes left)", offset, what,
                code=cut_code) from e
        raise FormatError(f"{what} is larger than {limit} bytes", offset, what,
                          code=code) from e
    except (ConstructError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise FormatError(f"cannot parse {what}: {short_error(e)}", offset, what,
                          code=code) from e
    return obj, stream.tell()


def short_error(e: BaseException) -> str:
    """The last line of an exception's text (construct, zlib and lzma put the cause there)."""
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
