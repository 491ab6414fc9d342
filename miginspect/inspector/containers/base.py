"""The one small interface every container kind implements (style.md practice 15).

A *container kind* is a module of this package with one `ContainerKind` object:

* `detect(head)`: True when the first bytes of an input are this kind's;
* `open(inp, options, progress)`: the `Source` (the QEMU stream's bytes) with a
  `Container` of this kind attached.

The attached `Container` answers everything the analyses used to ask by hand:

* `describe(src, extent)`: a typed `ContainerInfo` (`info --json` `container`; its
  `facts()` are the lines a renderer shows, its `damage()` the verdict when the
  container itself is broken);
* `explain(src, err)`: a walk's error with what the container adds (file or image
  offsets, a cut compressed layer, an unfinished save);
* `problems(src, walk)`: what `check` reports about the container;
* `how_to_load(src, walk)`: how QEMU (or libvirt) is told to restore it;
* `output(src, to)`: what goes in front of a converted stream so that the output is
  of the same kind (a libvirt header), and `verify_output` to check it;
* `locate(offset)`: where a stream offset is in the input, when that is not the
  same number (a qcow2 image offset).

Nothing outside this package knows which kinds exist: `registry.KINDS` lists them,
in detection order. A new kind is a grammar in `formats/`, a module here, and one line
in `registry.KINDS`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import IO, TYPE_CHECKING, Any, Protocol

from ...errors import MigError, UsageError
from ...render.fmt import hexoff, num  # pure formatting (no rich): one unit system
from ..inflate import Inflation, Progress
from ..problems import Problem, problem
from ..report import Stop

if TYPE_CHECKING:
    from ..model import StreamWalk
    from ..source import Source
    from .libvirt import Domain, LibvirtHeader

#: A fact's tone, for renderers (they pick the colour): plain, good, bad, warn.
PLAIN, GOOD, BAD, WARN = "", "good", "bad", "warn"

Part = tuple[str, str]  # (text, tone)


@dataclass
class OpenOptions:
    """What the user chose about the container: which internal snapshot of a disk image
    (`any_snapshot`: without `snapshot`, the first that holds VM state rather than a
    refusal when several do; `audit` reads them all, one after the other)."""

    snapshot: str | None = None
    any_snapshot: bool = False

    def refuse_for(self, what: str, path: str) -> None:
        """A usage error when an option does not apply to this kind of input."""
        if self.snapshot is not None:
            raise UsageError(f"--snapshot {self.snapshot!r}: {path} is {what}, not a disk image "
                             "with internal snapshots", code="usage")


@dataclass
class Input:
    """An input opened read-only: its file object, size, and first bytes."""

    path: str
    file: IO[bytes]
    size: int
    allocated: int
    head: bytes

    @property
    def fd(self) -> int:
        return self.file.fileno()


class ContainerKind(Protocol):
    """One container kind (a module-level object of each module of this package)."""

    name: str

    def detect(self, head: bytes) -> bool: ...

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source: ...


# -- the typed description ------------------------------------------------------------------
@dataclass
class Fact:
    """One line a renderer shows about the container: a label and text parts with tones."""

    label: str
    parts: list[Part]


@dataclass
class StreamExtent:
    """How much of the QEMU stream the input holds, and whether it is whole."""

    complete: bool  # the walk reached the EOF record without a fatal problem
    bytes: int  # QEMU stream bytes present
    stopped_at: int | None
    stopped: Stop | None  # the walk's stop, in the container's terms
    ram_pages: int
    ram_pages_sent: int
    decompressed: Inflation | None = None


@dataclass
class ContainerInfo:
    """What wraps the QEMU stream (`info --json` `container`). The keys every kind has
    come first; a kind's own typed fields follow; `stream` is last."""

    kind: str = "none"
    magic: str | None = None
    complete: bool | None = None
    version: int | None = None
    format: str | None = None
    was_running: bool | None = None
    payload_offset: int | None = None
    domain: Domain | None = None
    compression: str | None = None
    stream: StreamExtent | None = None

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stream"}
        d["stream"] = self.stream
        return d

    # -- for renderers (plain strings; the renderer escapes and colours them) -------------
    def wraps(self, what: str) -> str:
        """`what` ('legacy stream') with where it is: '... (zstd-compressed)'."""
        return f"{what} ({self.compression}-compressed)" if self.compression else what

    def facts(self) -> list[Fact]:
        """The summary lines of `info` about the container and the stream's extent."""
        return _extent_facts(self, show_stream=False)

    def damage(self) -> list[Part] | None:
        """The verdict when the container itself is damaged or unfinished (else None)."""
        s = self.stream
        z = s.decompressed if s is not None else None
        if z is not None and not z.complete:
            return [(f"the {z.compression} data is damaged", BAD),
                    (f" at file offset {hexoff(z.error_offset)}; the QEMU stream is "
                     f"{stream_state(s)}", PLAIN)]
        return None


def stream_state(s: StreamExtent | None) -> str:
    if s is None:
        return "-"
    if s.complete:
        return f"whole ({num(s.bytes)} B)"
    text = f"cut: {num(s.bytes)} B present, readable up to {hexoff(s.stopped_at)}"
    if s.ram_pages:
        text += f", {num(s.ram_pages_sent)} of {num(s.ram_pages)} RAM pages sent"
    return text


def _extent_facts(c: ContainerInfo, show_stream: bool) -> list[Fact]:
    """Lines about the compressed layer and (for a container that can hold a partial
    stream, or a cut one) the stream's extent."""
    out: list[Fact] = []
    s = c.stream
    z = s.decompressed if s is not None else None
    if z is not None and not z.complete:
        out.append(Fact(f"{z.compression} data", [
            (f"{z.error} at file offset {hexoff(z.error_offset)}", BAD),
            (f"; {num(z.inflated)} B decompressed", PLAIN)]))
    elif z is not None and z.trailing:
        out.append(Fact(f"{z.compression} data", [
            (f"{num(z.trailing)} B after the end of the compressed data, ignored", WARN)]))
    if s is not None and (show_stream or not s.complete):
        out.append(Fact("QEMU stream", [(stream_state(s), PLAIN if s.complete else BAD)]))
    return out


# -- how to load ----------------------------------------------------------------------------
@dataclass
class Incoming:
    """What the destination QEMU must be told before it can read this state."""

    capabilities: list[str]
    uri: str | None  # the migrate-incoming URI (None: not restored by migrate-incoming)
    commands: list[str]  # command line + QMP (or HMP / libvirt), in order
    method: str = "migrate-incoming"  # or "loadvm" (a disk image's internal snapshot)
    #: what the destination needs beyond capabilities, in words (check's verdict line)
    needs: list[str] = field(default_factory=list)


def shell_word(s: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./+:=,-]+", s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def decompress_command(kind: str) -> str:
    return {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -dc",
            "lzop": "lzop -dc"}.get(kind, f"{kind} -dc")


def migration_incoming(src: Source, walk: StreamWalk, pipe: str | None = None,
                       seek_off: int = 0, path: str | None = None) -> Incoming:
    """`-incoming defer`, the capabilities the stream needs and `migrate-incoming`: from
    the file itself (`file:PATH,offset=N`), or through `pipe`, a shell pipeline that
    yields the data holding the stream at `seek_off`."""
    caps = [c for c in walk.capabilities if c in ("mapped-ram", "x-ignore-shared")]
    path = src.path if path is None else path
    cmds: list[str] = []
    needs: list[str] = []
    if pipe is None:
        uri = f"file:{path}" + (f",offset=0x{seek_off:x}" if seek_off else "")
    elif "mapped-ram" in caps:
        # mapped-ram reads pages at file offsets: QEMU refuses a pipe ("Migration requires
        # seekable transport (e.g. file)"), so decompress into a file first
        out = "/path/to/decompressed.mig"
        cmds.append(f"{pipe} > {out}   (mapped-ram needs a seekable file, not a pipe)")
        uri = f"file:{out}" + (f",offset=0x{seek_off:x}" if seek_off else "")
        needs.append("decompressing into a seekable file first")
    else:
        tail = f" | tail -c +{seek_off + 1}" if seek_off else ""
        uri = f"exec:{pipe}{tail}"
        words = uri.split(" ", 2)
        needs.append(f"its stream fed through a pipe ({words[0]}"
                     f"{' ' + words[1] if len(words) > 1 else ''})")
    cmds.append("qemu-system-<arch> <the same devices and -machine as the source> "
                "-incoming defer")
    if caps:
        cap_json = ", ".join(f'{{"capability": "{x}", "state": true}}' for x in caps)
        cmds.append('{"execute": "migrate-set-capabilities", "arguments": '
                    f'{{"capabilities": [{cap_json}]}}}}')
    cmds.append(f'{{"execute": "migrate-incoming", "arguments": {{"uri": {json.dumps(uri)}}}}}')
    if "mapped-ram" in caps:
        cmds.append("optional, faster: also set the `multifd` capability and "
                    '{"execute": "migrate-set-parameters", "arguments": {"multifd-channels": 4}} '
                    "before migrate-incoming")
    return Incoming(caps, uri, cmds, needs=needs)


# -- the output of a conversion -----------------------------------------------------------
@dataclass
class ContainerBrief:
    """The container of convert's input or output, in a few fields (kind-specific ones
    are left out of the JSON when a kind has none)."""

    kind: str
    compression: str | None = None
    libvirt_format: str | None = None
    data_len: int | None = None
    was_running: bool | None = None
    byte_order: str | None = None
    snapshot: str | None = None  # "ID NAME" of a disk image's internal snapshot

    def wraps(self, fmt: str) -> str:
        """'legacy inside a libvirt save image (raw)', 'mapped-ram (zstd-compressed)'."""
        if self.kind == "libvirt":
            return f"{fmt} inside a libvirt save image ({self.libvirt_format})"
        if self.snapshot is not None:
            what = f"{fmt} in internal snapshot {self.snapshot} of a {self.kind} image"
            return what + (f" ({self.compression}-compressed)" if self.compression else "")
        if self.compression:
            return f"{fmt} ({self.compression}-compressed)"
        return fmt

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "compression": self.compression}
        for f in fields(self)[2:]:
            v = getattr(self, f.name)
            if v is not None:
                d[f.name] = v
        return d


class OutputPrefix(Protocol):
    """What a container writes in front of a converted QEMU stream."""

    def __len__(self) -> int: ...

    def write_to(self, out: Any) -> None: ...


# -- the container attached to a Source --------------------------------------------------
@dataclass
class Container:
    """What wraps the QEMU stream of a Source: nothing (a plain stream). Kinds subclass
    it; `kind`, `compression`, `libvirt` and `inflation` are there for every kind (None
    where they do not apply) so that readers of the facts need not know the kinds."""

    kind: str = "none"
    compression: str | None = None  # compressor of the QEMU stream, if any
    libvirt: LibvirtHeader | None = None
    #: how the compressed data decompressed (None when nothing was compressed)
    inflation: Inflation | None = None

    # -- facts ---------------------------------------------------------------------------
    @property
    def offsets_in(self) -> str:
        """What the offsets of the stream's reports count in."""
        return "file"

    @property
    def incomplete(self) -> bool:
        """The container says the save was never finished (info still reports it)."""
        return False

    @property
    def damaged(self) -> bool:
        """The container's own data is damaged (its stream is readable up to there)."""
        return self.inflation is not None and bool(self.inflation.error)

    def describe(self, src: Source, extent: StreamExtent | None) -> ContainerInfo:
        return ContainerInfo(kind=self.kind, compression=self.compression, stream=extent)

    def brief(self) -> ContainerBrief:
        return ContainerBrief(self.kind, self.compression)

    def locate(self, offset: int) -> str | None:
        """Where stream offset `offset` is in the input, when that is another number."""
        return None

    def stored_size(self, src: Source) -> tuple[int, int]:
        """(apparent, allocated) bytes the stored state takes: the input file's, unless
        the input holds more than the state (a disk image)."""
        return src.file_size, src.allocated_size

    # -- errors and checks ---------------------------------------------------------------
    def explain(self, src: Source, err: MigError) -> MigError:
        """`err` (where a walk of the stream stopped) with what the container adds."""
        return err

    def problems(self, src: Source, walk: StreamWalk) -> list[Problem]:
        """What `check` reports about the container itself."""
        return self.inflation_problems()

    def inflation_problems(self) -> list[Problem]:
        inf = self.inflation
        if inf is not None and not inf.complete:
            return [problem("container-truncated" if inf.truncated else "container-damaged",
                            inf.error_offset, "container",
                            f"{inf.describe()}; offsets of the QEMU stream below are in the "
                            "decompressed data")]
        if inf is not None and inf.trailing:
            return [problem("container-trailing", inf.end, "container",
                            f"{inf.trailing} bytes after the end of the {inf.compression} "
                            "data")]
        return []

    def how_to_load(self, src: Source, walk: StreamWalk) -> Incoming:
        return migration_incoming(src, walk, seek_off=src.base)

    # -- conversion output ----------------------------------------------------------------
    def output(self, src: Source, to: str) -> OutputPrefix | None:
        """What goes in front of a converted stream to keep the input's kind (None: the
        output is a plain migration file)."""
        return None

    def output_brief(self, to: str) -> ContainerBrief:
        return ContainerBrief("none")

    def verify_output(self, other: Container, to: str) -> list[str]:
        """Problems of a converted output's container (`other`) against this one."""
        if other.kind != self.output_brief(to).kind:
            return [f"the output is a {other.kind} container, expected "
                    f"{self.output_brief(to).kind}"]
        return []
