"""Top-level framing of the migration stream (migration/savevm.c, savevm.h)."""

from construct import (
    Bytes,
    Const,
    Int8ub,
    Int16ub,
    Int32ub,
    Struct,
    this,
)

from .common import CountedString

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION_COMPAT = 0x00000002
QEMU_VM_FILE_VERSION = 0x00000003

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

#: The kind of a top-level record, as reports and JSON name it (`sections[].type`).
KIND_START = "START"
KIND_PART = "PART"
KIND_END = "END"
KIND_FULL = "FULL"
KIND_COMMAND = "COMMAND"
KIND_EOF = "EOF"
KIND_VMDESCRIPTION = "VMDESCRIPTION"

SECTION_TYPE_NAMES = {
    QEMU_VM_EOF: KIND_EOF,
    QEMU_VM_SECTION_START: KIND_START,
    QEMU_VM_SECTION_PART: KIND_PART,
    QEMU_VM_SECTION_END: KIND_END,
    QEMU_VM_SECTION_FULL: KIND_FULL,
    QEMU_VM_SUBSECTION: "SUBSECTION",
    QEMU_VM_VMDESCRIPTION: KIND_VMDESCRIPTION,
    QEMU_VM_CONFIGURATION: "CONFIGURATION",
    QEMU_VM_COMMAND: KIND_COMMAND,
    QEMU_VM_SECTION_FOOTER: "FOOTER",
}

#: Type bytes that may follow a section footer (the next record starts there).
NEXT_RECORD_TYPES = (QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART,
                     QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL, QEMU_VM_COMMAND)

# enum QemuVmCmd (migration/savevm.c)
MIG_CMD_INVALID = 0
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_ENABLE_COLO = 8
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10
MIG_CMD_SWITCHOVER_START = 11

MIG_CMD_NAMES = {
    MIG_CMD_INVALID: "INVALID",
    MIG_CMD_OPEN_RETURN_PATH: "OPEN_RETURN_PATH",
    MIG_CMD_PING: "PING",
    MIG_CMD_POSTCOPY_ADVISE: "POSTCOPY_ADVISE",
    MIG_CMD_POSTCOPY_LISTEN: "POSTCOPY_LISTEN",
    MIG_CMD_POSTCOPY_RUN: "POSTCOPY_RUN",
    MIG_CMD_POSTCOPY_RAM_DISCARD: "POSTCOPY_RAM_DISCARD",
    MIG_CMD_PACKAGED: "PACKAGED",
    MIG_CMD_ENABLE_COLO: "ENABLE_COLO",
    MIG_CMD_POSTCOPY_RESUME: "POSTCOPY_RESUME",
    MIG_CMD_RECV_BITMAP: "RECV_BITMAP",
    MIG_CMD_SWITCHOVER_START: "SWITCHOVER_START",
}

#: mig_cmd_args[].len: the payload length QEMU's loader demands of each command (None:
#: variable). ENABLE_COLO has no entry in QEMU's table, so it is held to 0 too.
MIG_CMD_LEN = {
    MIG_CMD_OPEN_RETURN_PATH: 0,
    MIG_CMD_PING: 4,
    MIG_CMD_POSTCOPY_ADVISE: None,
    MIG_CMD_POSTCOPY_LISTEN: 0,
    MIG_CMD_POSTCOPY_RUN: 0,
    MIG_CMD_POSTCOPY_RAM_DISCARD: None,
    MIG_CMD_PACKAGED: 4,
    MIG_CMD_ENABLE_COLO: 0,
    MIG_CMD_POSTCOPY_RESUME: 0,
    MIG_CMD_RECV_BITMAP: None,
    MIG_CMD_SWITCHOVER_START: 0,
}

#: qemu_savevm_state_header(): magic and version.
file_header = Struct(
    "magic" / Const(QEMU_VM_FILE_MAGIC, Int32ub),
    "version" / Int32ub,
)

#: After the type byte of QEMU_VM_SECTION_START / QEMU_VM_SECTION_FULL.
section_header_full = Struct(
    "section_id" / Int32ub,
    "idstr" / CountedString,
    "instance_id" / Int32ub,
    "version_id" / Int32ub,
)

#: After the type byte of QEMU_VM_SECTION_PART / QEMU_VM_SECTION_END.
section_header_part = Struct(
    "section_id" / Int32ub,
)

#: save_section_footer(): the footer byte and the id of the section it closes.
section_footer = Struct(
    "footer" / Const(QEMU_VM_SECTION_FOOTER, Int8ub),
    "section_id" / Int32ub,
)

#: After the type byte of QEMU_VM_COMMAND (qemu_savevm_command_send()).
command = Struct(
    "cmd" / Int16ub,
    "len" / Int16ub,
    "data" / Bytes(this.len),
)

#: MIG_CMD_PACKAGED payload: the length of the nested stream that follows.
command_packaged = Struct("length" / Int32ub)

#: After the type byte of QEMU_VM_VMDESCRIPTION: be32 length, then the JSON.
vmdescription = Struct(
    "length" / Int32ub,
    "json" / Bytes(this.length),
)
