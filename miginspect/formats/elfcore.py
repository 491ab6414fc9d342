"""ELF64 core file header and program headers (System V gABI, x86-64 psABI).

Only what a memory image needs: the file header (Elf64_Ehdr) and one PT_LOAD
program header (Elf64_Phdr) per guest-physical range, little-endian. Readers
such as Volatility 3 map `p_paddr .. p_paddr + p_memsz` to the file bytes at
`p_offset`.
"""

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4

Elf64_Ehdr = Struct(
    "e_ident_mag" / Const(ELFMAG),
    "e_ident_class" / Int8ul,
    "e_ident_data" / Int8ul,
    "e_ident_version" / Int8ul,
    "e_ident_osabi" / Int8ul,
    "e_ident_pad" / Bytes(8),
    "e_type" / Int16ul,
    "e_machine" / Int16ul,
    "e_version" / Int32ul,
    "e_entry" / Int64ul,
    "e_phoff" / Int64ul,
    "e_shoff" / Int64ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)

Elf64_Phdr = Struct(
    "p_type" / Int32ul,
    "p_flags" / Int32ul,
    "p_offset" / Int64ul,
    "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul,
    "p_filesz" / Int64ul,
    "p_memsz" / Int64ul,
    "p_align" / Int64ul,
)

EHDR_SIZE = Elf64_Ehdr.sizeof()
PHDR_SIZE = Elf64_Phdr.sizeof()
assert EHDR_SIZE == 64 and PHDR_SIZE == 56
