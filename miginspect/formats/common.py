"""Primitive encodings shared by the QEMU stream grammars (all integers big-endian)."""

from construct import Int8ub, PascalString

#: A "counted string": u8 length then that many bytes, no NUL (section and
#: RAMBlock idstrs, subsection and capability names). latin-1 maps every byte,
#: so any byte sequence parses and builds back unchanged.
CountedString = PascalString(Int8ub, "latin-1")
