"""Problem codes: the one table from a code to its severity, QEMU's message and a fix.

Damage is named where it is found: every `MigError` and every walker `Notice` carries a
stable `code`. `check` turns them into `Problem`s through `PROBLEMS` (never by reading
message text), and its own checks and the `--target` comparison name their findings
with codes of the same table. README's `check` section lists the codes.

`qemu` holds key phrases of what QEMU's loader prints for the damage (as seen loading
damaged real captures into QEMU 10); a finder that knows which of them applies (the
record bits decide which lookup fails first) may narrow them. A `fix` may hold
`{fields}` that the finder fills with values from the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import MigError

SEVERITY_ERROR = "error"  # QEMU refuses the file
SEVERITY_WARNING = "warning"  # QEMU loads it, but something is off
SEVERITY_INFO = "info"

VERDICT_LOADABLE = "loadable"
VERDICT_REFUSED = "will not load"
VERDICT_UNKNOWN = "could not tell"
#: QEMU loads it, but the guest uses CPU features the target model lacks (--target-qemu)
VERDICT_GUEST_MAY_NOT_RUN = "loads, guest may not run"

#: The generic last line QEMU prints after the specific message.
QEMU_EIO = "load of migration failed: Input/output error"


@dataclass
class Problem:
    severity: str  # SEVERITY_*
    offset: int | None
    where: str
    cause: str
    fix: str
    code: str = ""  # a key of PROBLEMS
    qemu: list[str] = field(default_factory=list)  # what QEMU prints for it (key phrases)


@dataclass(frozen=True)
class Kind:
    """One problem code."""

    code: str
    severity: str
    meaning: str  # one line for the documentation
    qemu: tuple[str, ...]
    fix: str
    #: an error of this kind makes the verdict "could not tell" (this tool cannot judge)
    undecided: bool = False
    #: the damage is the data ending early: the cause also says where the data ends
    cut: bool = False
    #: a file with this problem loads on this QEMU version or newer / older (e.g. "10.0")
    min_qemu: str | None = None
    max_qemu: str | None = None


_E, _W, _I = SEVERITY_ERROR, SEVERITY_WARNING, SEVERITY_INFO
_RECUT = "re-copy or re-save it"

_KINDS = [
    # -- the stream header and configuration --------------------------------------------
    Kind("truncated-header", _E, "the file is shorter than the 8-byte stream header",
         ("Not a migration stream", "Unsupported migration stream version"),
         "the file is empty or cut off in the first 8 bytes: use an intact copy of the "
         "capture", cut=True),
    Kind("bad-magic", _E, "the file does not start with QEVM",
         ("Not a migration stream",),
         "this is not a QEMU migration stream (wrong file, or a container this tool did not "
         "recognise)"),
    Kind("version-2", _E, "stream version 2", ("SaveVM v2 format is obsolete",),
         "version 2 streams need a QEMU older than 1.x: re-save the VM with a current QEMU"),
    Kind("bad-version", _E, "stream version other than 3",
         ("Unsupported migration stream version",),
         "the stream version is not 3: the header is damaged or the file is not a migration "
         "stream"),
    Kind("configuration", _E, "the configuration record is damaged or cut short",
         ("Failed to load configuration",),
         "the configuration record at the start is damaged or cut short: use an intact copy"),
    Kind("config-subsection", _E, "a configuration subsection this QEMU does not know",
         ("Failed to load configuration",),
         "the configuration record carries a subsection this QEMU does not know: load it with "
         "the QEMU version that wrote it"),
    Kind("no-configuration", _E, "no configuration record after the header",
         ("Configuration section missing",),
         "a current machine type expects it: load with the old machine type that wrote the "
         "file, or add `-global migration.send-configuration=off`"),
    # -- framing: sections, footers, commands, EOF --------------------------------------
    Kind("no-eof", _E, "the stream ends without a QEMU_VM_EOF record", (QEMU_EIO,),
         "the file was cut short after the last complete section: the save did not finish or "
         "the copy is incomplete; re-save or re-copy it", cut=True),
    Kind("truncated", _E, "the data ends inside a record (a command, a blob)", (QEMU_EIO,),
         "the file is cut short: " + _RECUT, cut=True),
    Kind("unknown-section-type", _E, "a byte that is no section type where a section starts",
         ("Unknown savevm section type",),
         "the stream is damaged here (or written by a QEMU with a newer format): use an intact "
         "copy"),
    Kind("truncated-section-header", _E, "the data ends inside a section header",
         ("Unable to read ID string", QEMU_EIO),
         "the file is cut short inside a section header: " + _RECUT, cut=True),
    Kind("section-header", _E, "a section header with an empty idstr",
         ("Unable to read ID string",), "a section header is damaged: use an intact copy"),
    Kind("unknown-section", _E,
         "a section whose idstr/instance id names no device of the machine that saved it",
         ("Unknown savevm section or instance",),
         "the section header's idstr or instance id is damaged (QEMU looks the device up by "
         "both): use an intact copy"),
    Kind("section-version", _E,
         "a device section whose version is not the one its vmdescription records",
         ("unsupported version", "is too old for local minimum version_id",
          "error while loading state for instance"),
         "the section header's version (or the idstr length before it) is damaged: use an "
         "intact copy"),
    Kind("instance-alias", _E,
         "a device section with instance id 0xffffffff (QEMU's 'any'; refused for devices "
         "with a legacy alias)", ("Unknown savevm section or instance",),
         "the section header's instance id is damaged: use an intact copy; QEMU loads it only "
         "if the device has no legacy instance alias", undecided=True),
    Kind("unknown-section-id", _E, "a PART/END for a section id no START opened",
         ("Unknown savevm section", "incoming version_id 0 is too old"),
         "a PART/END refers to a section that was never started: the stream is damaged or "
         "sections were lost"),
    Kind("truncated-device", _E, "the data ends inside a device's state",
         ("error while loading state", QEMU_EIO, "Mismatched section id in footer",
          "Read section footer failed"),
         "the file is cut short inside a device's state: " + _RECUT, cut=True),
    Kind("truncated-footer", _E, "the data ends where a section footer should be",
         ("Read section footer failed", "Mismatched section id in footer", QEMU_EIO),
         "the file is cut short at a section footer: " + _RECUT, cut=True),
    Kind("footer-mismatch", _E, "a section footer carries another section's id",
         ("Mismatched section id in footer",),
         "the section before the footer has the wrong length or its footer is damaged (or a "
         "device's state format differs from what was expected): use an intact copy"),
    Kind("footer-missing", _E, "no section footer where the section's state ends",
         ("Missing section footer", "error while loading state for instance", "Failed to load"),
         "the section before this point is longer or shorter than QEMU expects (bytes "
         "inserted or lost inside it, or a stream without footers): use an intact copy or "
         "the machine type that wrote it"),
    Kind("cannot-size", _E, "a device section this tool cannot find the end of", (),
         "this tool sizes a device section by the vmdescription trailer or by its footer "
         "(searched in a bounded window); only loading the file into QEMU can tell",
         undecided=True),
    Kind("unknown-command", _E, "a migration command QEMU does not know",
         ("MIG_CMD", "unknown"),
         "a migration command this QEMU does not know: the stream is damaged here or needs a "
         "newer QEMU"),
    Kind("command-length", _E, "a migration command with the wrong payload length",
         ("received with bad length",),
         "the command's length field is damaged: use an intact copy"),
    Kind("section-limit", _E, "more top-level records than this tool keeps", (),
         "a hostile or damaged stream? MIGINSPECT_MAX_SECTIONS raises the limit",
         undecided=True),
    # -- the RAM section -------------------------------------------------------------------
    Kind("ram-version", _E, "a ram section version other than 4", ("unsupported version",),
         "the RAM section version is not 4: the header is damaged"),
    Kind("ram-section-kind", _E, "the ram section arrives as FULL", (),
         "the ram section's type byte is damaged: use an intact copy"),
    Kind("second-ram-start", _E, "a second ram START section", (),
         "the stream is damaged (a section type or id): use an intact copy"),
    Kind("ram-start", _E, "the ram START section does not begin with MEM_SIZE",
         ("Unknown combination of migration flags",),
         "the ram START section does not begin with the RAMBlock list: damaged data"),
    Kind("ramblock-list", _E, "the RAMBlock list does not add up",
         ("Unknown ramblock", "Size mismatch", "Length mismatch", "Size too large"),
         "the RAMBlock list in the ram START section is damaged (total, names or lengths do "
         "not add up)"),
    Kind("truncated-ram", _E, "the data ends inside the RAM section (inside any record)",
         ("Getting RAM address failed", QEMU_EIO),
         "the file is cut short inside the RAM data: the save did not finish or the copy is "
         "incomplete; " + _RECUT, cut=True),
    Kind("unknown-ram-flags", _E, "a RAM record word with flags QEMU does not know",
         ("Unknown combination of migration flags", "Can't find block", "Illegal RAM offset"),
         "a RAM record header carries flags QEMU does not know: a damaged record header"),
    Kind("unknown-block-in-record", _E, "a page record names a RAMBlock not in the list",
         ("Can't find block", "Unknown ramblock"),
         "a page record names a RAMBlock that is not in the list: the record, a CONTINUE "
         "flag or the list entry is damaged (QEMU stops at the list entry with 'Unknown "
         "ramblock' when it was the entry)"),
    Kind("continue-without-block", _E, "CONTINUE set before any record named a RAMBlock",
         ("Ack, bad migration stream", "Can't find block"),
         "the first page record has CONTINUE set: a flipped flag bit"),
    Kind("page-offset-beyond", _E, "a page record past its RAMBlock's used length",
         ("Illegal RAM offset",),
         "a page record points past its RAMBlock: a damaged record header or a CONTINUE flag "
         "that attributes the page to the wrong block"),
    Kind("missing-eos", _E, "a RAM section without its EOS record",
         ("Unknown combination of migration flags", "Can't find block", "Illegal RAM offset"),
         "the RAM section lacks its end-of-section record (bytes lost before the footer): "
         "use an intact copy"),
    Kind("zero-fill", _E, "a ZERO record with a non-zero fill byte",
         ("Found a zero page with value",),
         "a ZERO record with a non-zero fill byte: damaged data"),
    Kind("xbzrle", _E, "a damaged XBZRLE record", ("Failed to load XBZRLE page",),
         "an XBZRLE record is damaged: use an intact copy"),
    Kind("compress-page-damaged", _E, "a COMPRESS_PAGE record longer than a page can be",
         ("compress",), "a COMPRESS_PAGE record is damaged: use an intact copy"),
    Kind("mem-size-misplaced", _E, "a MEM_SIZE record outside the ram START section", (),
         "a RAM record header is damaged: use an intact copy"),
    Kind("rdma-hook", _E, "an RDMA hook record in a file",
         ("Unknown combination of migration flags",),
         "an RDMA hook record cannot appear in a file: damaged data"),
    Kind("page-record-in-mapped-ram", _E, "a page record inside a mapped-ram stream",
         ("Unknown combination of migration flags",),
         "a page record inside a mapped-ram stream: damaged data"),
    # -- mapped-ram ------------------------------------------------------------------------
    Kind("mapped-ram-version", _E, "a mapped-ram header version other than 1",
         ("Migration mapped-ram capability version not supported",),
         "the mapped-ram header version is not 1: damaged header or a newer QEMU wrote it"),
    Kind("mapped-ram", _E, "a mapped-ram header that contradicts the stream", (),
         "the mapped-ram header is damaged"),
    Kind("mapped-ram-bitmap-past-end", _E, "a mapped-ram bitmap past the end of the file",
         ("Error reading dirty bitmap",),
         "a mapped-ram bitmap offset points past the end of the file: the header is damaged "
         "or the file was cut short"),
    Kind("mapped-ram-alignment", _E, "a mapped-ram pages region not page aligned",
         ("region has bad alignment",), "the mapped-ram pages offset is damaged"),
    Kind("mapped-ram-truncated", _E, "the file ends inside a mapped-ram pages region",
         ('Unknown ramblock ""', "failed to read page", QEMU_EIO, "Error reading"),
         "the file ends inside a mapped-ram pages region: the copy lost its tail (a sparse file "
         "copied without its holes, or a cut-short save); re-copy it with `cp --sparse=always` "
         "or re-save", cut=True),
    Kind("mapped-ram-overlap", _E, "mapped-ram regions that overlap each other or the stream",
         (), "the mapped-ram offsets are damaged: QEMU would load the overlapping bytes as "
         "pages or bitmap"),
    Kind("mapped-ram-odd-placement", _W, "a mapped-ram bitmap not right after its header", (),
         "QEMU reads it where the header says; check the header is intact"),
    Kind("mapped-ram-unaligned", _I, "a mapped-ram pages region not 1 MiB aligned", (), ""),
    Kind("bitmap-past-used-length", _W, "mapped-ram bitmap bits set past the last page", (),
         "QEMU ignores them; the bitmap is damaged or was written by a big-endian host"),
    Kind("bitmap-empty", _I, "a mapped-ram bitmap with no bit set", (), ""),
    Kind("bitmap-other-host", _W,
         "mapped-ram bitmaps written by a host of another byte order or word size", (),
         "QEMU reads the bitmap as its own host's unsigned longs and loads the wrong pages "
         "without an error: restore on a host like the one that saved it, or rewrite the "
         "file with `miginspect convert FILE OUT --to legacy` (pages read the right way)"),
    Kind("ignore-shared-empty", _W,
         "x-ignore-shared blocks with no page in the file (skipped: shared memory)", (),
         "their contents live in the shared memory backend: load with the same backends"),
    # -- the device state --------------------------------------------------------------------
    Kind("sized-by-footer", _I, "a section the vmdescription does not describe", (), ""),
    Kind("postcopy-packaged", _W, "a postcopy PACKAGED blob (not decoded)", (),
         "this tool does not read what is inside; QEMU loads it as a nested stream"),
    Kind("early-eof", _W, "QEMU_VM_EOF before the RAM section ended or devices were sent",
         (), "QEMU stops reading at the EOF and runs the guest with what came before it: "
         "RAM sent later and the state of those devices are lost; use an intact copy"),
    Kind("section-not-ended", _W, "a live section started but never ended", (),
         "the save may not have completed (postcopy or an interrupted migration); QEMU loads "
         "what is there"),
    Kind("ram-not-ended", _W, "no END section for ram", (), "the RAM state may be incomplete"),
    # -- the vmdescription trailer and what follows EOF ------------------------------------
    Kind("no-trailer", _W, "no vmdescription trailer after EOF",
         ("Expected vmdescription section, but got",),
         "QEMU still loads it; re-copy the file if it should have a trailer"),
    Kind("bytes-after-eof", _W, "bytes after EOF that are not a vmdescription trailer",
         ("Expected vmdescription section, but got",),
         "QEMU reads one byte after EOF, says so and loads the rest; these bytes may be a "
         "sign of a concatenated or overwritten file"),
    Kind("zero-padding", _I, "zero bytes after the end of the stream (a state volume's "
         "padding)", (), "none needed: QEMU stops reading at the end of the stream"),
    Kind("trailing-bytes", _W, "bytes after the vmdescription trailer", (),
         "QEMU never reads these bytes; they may be a sign of a concatenated or overwritten "
         "file"),
    Kind("trailer-damaged", _W, "the vmdescription trailer is cut or does not parse", (),
         "none needed to load (QEMU skips the trailer); tools that need the device layout "
         "(analyze-migration.py) will fail"),
    Kind("trailer-page-size", _W, "the vmdescription page size disagrees with the stream", (),
         ""),
    Kind("trailer-misplaced", _W, "a vmdescription trailer not right after EOF", (),
         "QEMU never reads it"),
    Kind("trailer-mismatch", _W, "the vmdescription and the device sections disagree", (),
         "QEMU does not read the trailer; device decoding that relies on it may be wrong"),
    Kind("page-size-assumed", _I, "no page size recorded: 4096 assumed", (),
         "pass --page-size if the target does not use 4 KiB pages"),
    # -- what the destination must be -------------------------------------------------------
    Kind("needs-qemu-10", _I, "a SWITCHOVER_START command: needs QEMU >= 10.0",
         ("MIG_CMD 0xb unknown",),
         "load it with QEMU >= 10.0 (older ones stop with 'MIG_CMD 0xb unknown')",
         min_qemu="10.0"),
    Kind("needs-mapped-ram", _I, "mapped-ram: needs the capability on the destination",
         ("Capability mapped-ram is off, but received capability is on",),
         "see 'to load it' below", min_qemu="9.0"),
    Kind("multifd-flush", _I, "MULTIFD_FLUSH records", (), ""),
    Kind("compress-page", _W, "COMPRESS_PAGE records (the old `compress` capability)", (),
         "QEMU 9.1 and later cannot load compressed pages: restore with QEMU <= 9.0",
         max_qemu="9.0"),
    # -- the container ---------------------------------------------------------------------
    Kind("container-truncated", _E, "compressed data cut short", (QEMU_EIO,),
         "the compressed data is cut short or damaged: re-copy it (QEMU would get a stream "
         "that stops there)"),
    Kind("container-damaged", _E, "compressed data that does not decompress", (QEMU_EIO,),
         "the compressed data is cut short or damaged: re-copy it (QEMU would get a stream "
         "that stops there)"),
    Kind("container-trailing", _W, "bytes after the end of the compressed data", (),
         "decompressors ignore them or fail, depending on the tool"),
    Kind("inflate-limit", _E, "decompressed data larger than this tool's limit", (),
         "raise MIGINSPECT_MAX_INFLATE if the data is really that large", undecided=True),
    Kind("compressed", _I, "a compressed stream", (),
         "QEMU cannot read it from `file:`; feed it through `exec:{command} FILE`"),
    Kind("libvirt-header", _E, "a libvirt save header that does not parse",
         ("failed to read", "image version is not supported"),
         "the libvirt header is damaged or the file is cut short inside it"),
    Kind("libvirt-partial", _E, "a libvirt save libvirt never finished (LibvirtQemudPart)",
         ("save image is incomplete",),
         "the save was interrupted; the image cannot be restored (libvirt refuses it); save "
         "the domain again"),
    Kind("libvirt-no-xml", _E, "a libvirt header with no domain XML",
         ("failed to read domain XML",),
         "libvirt needs the XML to restore; the header area is damaged"),
    Kind("libvirt-data-len", _E, "the libvirt header's data_len runs past the file",
         ("invalid header data length", "failed to read domain XML"),
         "the libvirt header's data_len runs past the end of the file: the image is cut short "
         "or its header is damaged"),
    Kind("libvirt-version", _E, "a libvirt image version libvirt does not know",
         ("image version is not supported",),
         "a libvirt image version this libvirt does not know (or a damaged header)"),
    Kind("libvirt-format", _E, "an unknown libvirt image format number",
         ("unsupported save image format",), "unknown image format number in the libvirt "
         "header"),
    Kind("libvirt-format-mismatch", _E, "the libvirt format and the stream's layout disagree",
         ("Capability mapped-ram is on, but received capability is off",
          "Capability mapped-ram is off, but received capability is on"),
         "libvirt sets mapped-ram for the restore from the header's format field, which is "
         "wrong: QEMU will refuse the stream"),
    # -- --target: the destination -----------------------------------------------------------
    Kind("target-machine", _E, "another machine type on the target",
         ("Machine type received is",),
         "start the target QEMU with `-machine {machine}` (versioned machine types stay "
         "available in newer QEMU)"),
    Kind("target-page-size", _E, "another target page size on the target",
         ("TARGET_PAGE_BITS",), "load it on a target built for the same page size"),
    Kind("target-block-page-size", _E, "a RAMBlock backed by other host pages on the target",
         ("Mismatched RAM page size",),
         "back the block with the same page size (hugepages) as on the source"),
    Kind("target-unknown-block", _E, "a RAMBlock the target does not have",
         ("Unknown ramblock",),
         "give the target the same devices (ROM/NIC/VGA models, romfile=, memory backends) as "
         "the source"),
    Kind("target-size", _E, "a RAMBlock of another size on the target",
         ("Size mismatch", "Length mismatch"),
         "make the target's {what} match the source ({length} bytes)"),
    Kind("target-size-too-large", _E, "a resizeable RAMBlock larger than the target's maximum",
         ("Size too large", "Size mismatch", "Length mismatch"),
         "the source had a larger ACPI table / resizeable block: use the source's machine type "
         "and devices"),
    Kind("target-resize", _I, "a resizeable RAMBlock QEMU resizes on load", (), ""),
    Kind("target-host-page-size", _I, "other host pages on the target (fine without postcopy)",
         (), ""),
    Kind("target-extra-block", _I, "target RAMBlocks not in the file (they stay zero)", (), ""),
    Kind("target-unknown-section", _E, "a device section the target does not have",
         ("Unknown savevm section or instance", "Unknown section or instance"),
         "Make sure that your current VM setup matches your saved VM setup, including any "
         "hotplugged devices (same -device list, same order)"),
    Kind("target-section-version", _E, "a device section newer than the target's",
         ("unsupported version",),
         "the target QEMU is older than the source: load with a QEMU at least as new as the "
         "one that saved"),
    # -- target prediction (--target-qemu, -dump-vmstate, domain XML) -------------------------
    Kind("target-start", _E, "the target QEMU does not start with its command line",
         (), "fix the target's command line (QEMU's own first error line is the cause)"),
    Kind("target-capability", _E, "a capability the file needs that the target lacks",
         ("Received unknown capability", "Capability"),
         "load with a QEMU that has the capability, and set it before migrate-incoming"),
    Kind("target-layout", _E, "a device state whose fields the target lays out otherwise",
         ("Missing section footer", "Mismatched section id in footer"),
         "give the target the source's configuration of this device"),
    Kind("target-unknown-subsection", _E, "a subsection the target does not know",
         ("error while loading state",), "load with a QEMU at least as new as the source"),
    Kind("target-subsection-version", _E, "a subsection newer than the target's",
         ("error while loading state",), "load with a QEMU at least as new as the source"),
    Kind("target-cpu-features", _W, "CPU features the saved guest uses that the target "
         "model lacks (loads, then the guest may hang)", (),
         "start the target with the source's -cpu model"),
    Kind("target-architecture", _E, "the target emulates another architecture", (),
         "load it with the QEMU binary of the file's architecture"),
    Kind("target-machine-family", _E, "the target runs another machine family",
         ("Machine type received is",), "start the target with the file's -machine"),
    Kind("target-machine-version", _E, "the target runs another version of the machine type",
         ("Machine type received is", "unsupported machine type"),
         "start the target with the file's versioned machine type"),
    Kind("target-ram-size", _E, "the target has another RAM size (-m)",
         ("Size mismatch", "Length mismatch"), "start the target with the source's -m"),
    Kind("target-device-missing", _E, "a device of the file is missing on the target",
         ("Unknown savevm section or instance", "Unknown ramblock"),
         "add the device to the target (same -device options, same PCI address)"),
    Kind("target-device-replaced", _E, "a device of the file is another model on the target",
         ("Unknown ramblock", "Unknown savevm section or instance"),
         "give the target the source's device model at that PCI address"),
    Kind("target-device-order", _E, "the target has the same devices at other PCI addresses",
         ("Unknown ramblock", "Unknown savevm section or instance"),
         "give the target's devices the source's PCI addresses (addr=)"),
    Kind("target-vcpu-count", _E, "the target has another vCPU count (-smp)",
         ("Missing section footer",), "start the target with the source's -smp"),
    Kind("target-qemu-older", _E, "the target QEMU is older than the one that saved",
         ("unsupported version",), "load with a QEMU at least as new as the source"),
    Kind("target-device-layout", _E, "a device state laid out otherwise on the target",
         ("Missing section footer", "error while loading state"),
         "give the target the source's configuration of this device"),
    Kind("target-firmware", _E, "a machine-built block (firmware, ACPI tables) differs",
         ("Size mismatch", "Unknown ramblock"),
         "use the source's machine type, firmware and devices"),
    # -- container and command kinds -----------------------------------------------------------
    Kind("not-libvirt", _E, "the input is not a libvirt save image", (),
         "`xml` reads libvirt save images only"),
    Kind("libvirt-no-cookie", _E, "the libvirt image has no save cookie", (), ""),
    Kind("convert-unsupported", _E, "a stream this tool cannot convert", (),
         "the cause says what is missing; the file may still load as it is", undecided=True),
    Kind("convert-verify", _E, "the converted file does not read back as the input", (),
         "the output was not kept as valid: report it with both files"),
    Kind("cpu-state", _E, "the cpu device state does not decode as expected", (),
         "the vmdescription does not match the cpu section: use an intact copy"),
    Kind("cpu-state-unavailable", _E, "the file holds no CPU state this tool decodes", (),
         "registers need a cpu section of an x86 or aarch64 guest and the vmdescription",
         undecided=True),
    Kind("vmdesc-mismatch", _E, "a device section does not decode with its vmdescription", (),
         "the trailer or the section is damaged: use an intact copy"),
    Kind("page-size-differs", _E, "two files with different target page sizes", (),
         "compare files of one guest architecture"),
    Kind("physical-layout-unknown", _E, "the guest-physical layout cannot be told from the "
         "file", (), "name the block with --ram-block NAME and place it with --base ADDR",
         undecided=True),
    # -- qcow2 images ------------------------------------------------------------------------
    Kind("qcow2-bad-magic", _E, "not a qcow2 image", (), "give a qcow2 image"),
    Kind("qcow2-bad-header", _E, "the qcow2 header is damaged", ("qcow2 header too short",),
         "the image header is damaged: use an intact copy"),
    Kind("qcow2-unsupported-feature", _E, "a qcow2 feature this tool does not read",
         ("Unsupported qcow2 feature",), "only QEMU can read it", undecided=True),
    Kind("qcow2-encrypted", _E, "an encrypted qcow2 image", (),
         "decrypt a copy with qemu-img convert first", undecided=True),
    Kind("qcow2-external-data-file", _E, "a qcow2 image with an external data file", (),
         "the guest data lives in another file: this tool reads self-contained images",
         undecided=True),
    Kind("qcow2-bad-snapshot-table", _E, "the snapshot table cannot be read",
         ("Snapshot table too large", "Too much extra metadata"),
         "the image's snapshot table is damaged: use an intact copy"),
    Kind("qcow2-bad-l1", _E, "a snapshot's L1 table cannot be read",
         ("L1 table is too small", "Active L1 table too large"),
         "the image's tables are damaged: use an intact copy"),
    Kind("qcow2-bad-l2", _E, "an L2 table or entry is damaged", (),
         "the image's tables are damaged: use an intact copy (qemu-img check tells more)"),
    Kind("qcow2-past-eof", _E, "a table or cluster lies past the end of the image", (),
         "the image is cut short: re-copy it", cut=True),
    Kind("qcow2-bad-state", _E, "the snapshot's VM state is not all in the image", (),
         "the snapshot's state is incomplete: loadvm would fail; use another snapshot"),
    Kind("qcow2-state-not-stored", _W, "VM state bytes in zero or unallocated clusters of "
         "the image (read as zeros)", (),
         "QEMU writes every byte of a state: the image was damaged or rewritten; compare with "
         "a backup copy"),
    # -- audit (a file a whole run could not judge, and what it does not list) ------------------
    Kind("not-a-state", _I, "a file whose content is not a saved VM state (audit counts it, "
         "does not list it)", (), ""),
    Kind("unreadable", _E, "a file or folder that cannot be opened or read (verdict: could not "
         "tell)", (), "the cause says why (permissions, I/O error): fix it and audit the file "
         "again", undecided=True),
    Kind("timeout", _E, "no answer for the file within the audit's time limit (verdict: could "
         "not tell)", (), "audit the file alone, or with a longer --timeout", undecided=True),
    Kind("worker-lost", _E, "the process or worker reading the file ended without an answer "
         "(verdict: could not tell)", (),
         "audit the file again (the worker was killed, or ran out of memory)", undecided=True),
    Kind("internal-error", _E, "this tool failed on the file (verdict: could not tell)", (),
         "run `miginspect check FILE --traceback` on it and report the stack", undecided=True),
    # -- catch-alls (raise sites outside the engine that name no code) -----------------------
    Kind("damaged", _E, "damage of no more specific kind", (),
         "the stream is damaged here: use an intact copy"),
    Kind("inconsistent", _E, "fields that contradict each other", (),
         "the file is damaged here: use an intact copy"),
    Kind("unsupported", _E, "a feature this tool does not read", (),
         "this tool cannot read this part of the file (the cause says why); only loading it "
         "into QEMU can tell", undecided=True),
    Kind("usage", _E, "a wrong command line or a refused output path", (),
         "see the command's --help"),
]

#: code -> Kind: the one table.
PROBLEMS: dict[str, Kind] = {k.code: k for k in _KINDS}
assert len(PROBLEMS) == len(_KINDS), "a problem code is listed twice"


def problem(code: str, offset: int | None, where: str, cause: str, *,
            qemu: Iterable[str] | None = None, **fix_fields: Any) -> Problem:
    """A problem of kind `code` (a KeyError for a code missing from the table: a test
    proves every code in use is there). `qemu` narrows the table's phrases; `fix_fields`
    fill the `{fields}` of its fix."""
    k = PROBLEMS[code]
    fix = k.fix.format(**fix_fields) if fix_fields else k.fix
    return Problem(k.severity, offset, where, cause, fix, code,
                   list(k.qemu if qemu is None else qemu))


def from_error(err: MigError) -> Problem:
    """A fatal error of the walk or the container (severity "error" whatever the
    table's severity: it stopped the walk)."""
    p = problem(err.code, err.offset, err.where, err.message)
    p.severity = SEVERITY_ERROR
    return p


def is_cut(p: Problem) -> bool:
    """The problem is the data ending early."""
    return PROBLEMS[p.code].cut


def verdict_of(probs: Iterable[Problem]) -> str:
    """Loadable unless an error was found; "could not tell" when every error is of a
    kind this tool cannot judge."""
    errors = [p for p in probs if p.severity == SEVERITY_ERROR]
    if any(not PROBLEMS[p.code].undecided for p in errors):
        return VERDICT_REFUSED
    if errors:
        return VERDICT_UNKNOWN
    return VERDICT_LOADABLE


__all__ = ["Problem", "Kind", "PROBLEMS", "problem", "from_error", "is_cut", "verdict_of",
           "SEVERITY_ERROR", "SEVERITY_WARNING", "SEVERITY_INFO", "VERDICT_LOADABLE",
           "VERDICT_REFUSED", "VERDICT_UNKNOWN", "VERDICT_GUEST_MAY_NOT_RUN", "QEMU_EIO"]
