"""VMState payload encoding (migration/vmstate.c, migration/vmstate-types.c).

A VMState payload is its fields back to back, no tags and no lengths, then
zero or more subsections. Only the vmdescription JSON (or QEMU's source)
says where one field ends. This module holds the encodings of the basic
field types, keyed by the VMStateInfo name the JSON uses in `type`, and the
subsection header. Anything not listed here is opaque bytes of the `size`
the JSON gives.
"""

from __future__ import annotations

from construct import (
    Const,
    Float64b,
    FormatField,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64sb,
    Int64ub,
    Struct,
)

from .common import CountedString
from .stream import QEMU_VM_SUBSECTION

#: Written instead of an element when an array-of-pointers slot is NULL
#: (VMS_ARRAY_OF_POINTER_AUTO_ALLOC); the JSON calls that field type "nullptr".
VMS_NULLPTR_MARKER = 0x30

#: JSON `type` of fields that hold a nested VMState description.
STRUCT_TYPES = ("struct", "vstruct")
#: JSON `type` of a VMSTATE_WITH_TMP field: the nested fields sit in the field
#: object itself (`fields`, `vmsd_name`), not under `struct`.
TMP_TYPE = "tmp"
NULLPTR_TYPE = "nullptr"

#: Basic integer / float encodings: JSON type name -> big-endian field.
#: The "equal" and "le" variants are checked on load, encoded like the plain type.
VMSTATE_SCALARS: dict[str, FormatField] = {
    "bool": Int8ub,
    "int8": Int8sb,
    "uint8": Int8ub,
    "uint8 equal": Int8ub,
    "int16": Int16sb,
    "uint16": Int16ub,
    "uint16 equal": Int16ub,
    "int32": Int32sb,
    "int32 equal": Int32sb,
    "int32 le": Int32sb,
    "uint32": Int32ub,
    "uint32 equal": Int32ub,
    "int64": Int64sb,
    "int64 equal": Int64sb,
    "uint64": Int64ub,
    "float64": Float64b,
    # QEMUTimer: be64 expiry time in ns, -1 when the timer is not armed.
    "timer": Int64sb,
}

#: CPU_Double_U: two be32 halves, upper first.
CPU_Double_U = Struct(
    "upper" / Int32ub,
    "lower" / Int32ub,
)

#: Types the JSON names whose bytes are not numbers (shown as hex).
VMSTATE_OPAQUE = ("buffer", "unused_buffer", "bitmap", "qtailq", "qlist", "gtree",
                  "capability", "fd", "pci config", "pci irq state")

#: vmstate_subsection_save(): marker, counted name (starts with the parent's
#: vmsd name), be32 version; the subsection's own payload follows.
vmstate_subsection_header = Struct(
    "marker" / Const(QEMU_VM_SUBSECTION, Int8ub),
    "name" / CountedString,
    "version_id" / Int32ub,
)
