"""The QEMU_VM_CONFIGURATION record (vmstate_configuration in migration/savevm.c).

Body after the 0x07 byte: be32 len + machine type name, then optional
subsections, each introduced by QEMU_VM_SUBSECTION (0x05), a counted name and
a be32 version.
"""

from construct import (
    Bytes,
    Int8ub,
    Int32ub,
    PascalString,
    PrefixedArray,
    Struct,
    this,
)

from .common import CountedString

SUBSECTION_TARGET_PAGE_BITS = "configuration/target-page-bits"
SUBSECTION_CAPABILITIES = "configuration/capabilities"
SUBSECTION_UUID = "configuration/uuid"

#: The capabilities QEMU validates between source and destination and so
#: writes into the configuration record (only those enabled are listed).
VALIDATED_CAPABILITIES = ("x-ignore-shared", "mapped-ram")

configuration_head = Struct(
    "name" / PascalString(Int32ub, "latin-1"),
)

subsection_header = Struct(
    "marker" / Int8ub,  # QEMU_VM_SUBSECTION
    "name" / CountedString,
    "version_id" / Int32ub,
)

target_page_bits = Struct("target_page_bits" / Int32ub)

capabilities = Struct(
    "caps" / PrefixedArray(Int32ub, CountedString),
)

uuid = Struct("uuid" / Bytes(16))

SUBSECTION_BODIES = {
    SUBSECTION_TARGET_PAGE_BITS: target_page_bits,
    SUBSECTION_CAPABILITIES: capabilities,
    SUBSECTION_UUID: uuid,
}

#: One known subsection with its body, for building test streams.
subsection_capabilities = Struct(
    "marker" / Int8ub,
    "name" / CountedString,
    "version_id" / Int32ub,
    "caps" / PrefixedArray(Int32ub, CountedString),
)

__all__ = [
    "configuration_head",
    "subsection_header",
    "target_page_bits",
    "capabilities",
    "uuid",
    "SUBSECTION_BODIES",
    "this",
]
