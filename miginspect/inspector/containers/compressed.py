"""Compressed data (gzip, bzip2, xz, lzop, zstd) around a QEMU stream, a libvirt save
image or a qcow2 image: decompressed once, in bounded steps, into an unnamed sparse
temporary file (`inflate`), which becomes the Source's buffer. Damaged or cut data does
not fail here: what decoded is kept and `inflation` says where it stopped, so the
stream can be walked up to the cut. What the decompressed data starts with is asked of
the other kinds (`registry.inner_kind`): a libvirt image or a qcow2 image inside is
opened as that kind, its `compression` set.

A mapped-ram file compressed as a whole works through the temporary file: its offsets
count from the start of the decompressed data, which is where QEMU's offsets counted
from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import FormatError, MigError, TruncatedError
from ..inflate import MEMBER_MAGICS, Progress, inflate_to_tempfile
from ..problems import Problem, problem
from ..source import Source, mmap_fd, mmap_input
from .base import (
    Container,
    ContainerBrief,
    Incoming,
    Input,
    OpenOptions,
    decompress_command,
    migration_incoming,
    shell_word,
)

if TYPE_CHECKING:
    from ..model import StreamWalk

__all__ = ["sniff_compression", "CompressedContainer", "inflate_into"]


def sniff_compression(head: bytes) -> str | None:
    """The compression the first bytes start with: the magic of a member the decoder
    reads (`inflate.MEMBER_MAGICS`; for zstd also a skippable frame, which pzstd writes
    before each frame)."""
    return next((kind for kind, magics in MEMBER_MAGICS.items()
                 if any(head.startswith(m) for m in magics)), None)


def inflation_explain(src: Source, err: MigError, prefix: list[str]) -> MigError:
    """`err` with the cut or damaged compressed data (and `prefix` phrases) before it."""
    inf = src.container.inflation
    if (inf is None or inf.complete) and not prefix:
        return err
    bits = list(prefix)
    if inf is not None and not inf.complete:
        bits.append(inf.describe())
    where = "decompressed offset" if src.decompressed else "offset"
    at = f" at {where} {err.offset}" if err.offset is not None else ""
    bits.append(f"the QEMU stream stops{at}: {err.message}")
    msg = "; ".join(bits)
    if inf is not None and not inf.complete:
        cls = TruncatedError if inf.truncated else FormatError
        return cls(msg, inf.error_offset, "container",
                   code="container-truncated" if inf.truncated else "container-damaged")
    return type(err)(msg, err.offset, err.where, code=err.code)


@dataclass
class CompressedContainer(Container):
    """A compressed QEMU stream (the whole file through a compressor)."""

    @property
    def offsets_in(self) -> str:
        return "decompressed stream"

    def explain(self, src: Source, err: MigError) -> MigError:
        return inflation_explain(src, err, [])

    def problems(self, src: Source, walk: StreamWalk) -> list[Problem]:
        return self.inflation_problems() + [problem(
            "compressed", None, "container", f"{self.compression}-compressed stream; offsets "
            "are in the decompressed data", command=decompress_command(self.compression or ""))]

    def how_to_load(self, src: Source, walk: StreamWalk) -> Incoming:
        pipe = f"{decompress_command(self.compression or '')} {shell_word(src.path)}"
        return migration_incoming(src, walk, pipe=pipe, seek_off=src.base)

    def brief(self) -> ContainerBrief:
        return ContainerBrief(self.kind, self.compression)


def inflate_into(src: Source, fileobj: Any, kind: str, start: int,
                 progress: Progress | None) -> None:
    """Decompress the input from `start` and make the result `src.buf` (base 0)."""
    tmp, size, st = inflate_to_tempfile(src.path, fileobj.fileno(), kind, start,
                                        src.file_size, progress)
    src._closers.append(tmp)
    mm = mmap_fd(tmp.fileno(), size)
    if size:
        src._closers.append(mm)
    src.buf, src.base, src.decompressed = mm, 0, True
    src.fd = tmp.fileno()
    src.container.inflation = st
    if size == 0 and st.error:
        cls = TruncatedError if st.truncated else FormatError
        raise cls(f"{kind} data at offset {start} {st.error}; nothing decompressed",
                  st.error_offset, "container",
                  code="container-truncated" if st.truncated else "container-damaged")


class CompressedKind:
    name = "compressed"

    def detect(self, head: bytes) -> bool:
        return sniff_compression(head) is not None

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
        from .registry import inner_kind

        comp = sniff_compression(inp.head)
        assert comp is not None
        src = mmap_input(inp)
        try:
            src.container = CompressedContainer("none", comp)
            inflate_into(src, inp.file, comp, 0, progress)
            inner = inner_kind(bytes(src.buf[:64]))
            if inner is not None:
                return inner.adopt(src, options, progress)
            options.refuse_for(f"a {comp}-compressed stream", inp.path)
            return src
        except BaseException:
            src.close()
            raise


KIND = CompressedKind()
