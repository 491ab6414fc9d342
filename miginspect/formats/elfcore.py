"""ELF64 core file: header, program headers, notes, and the note payloads QEMU's
`dump-guest-memory` writes per vCPU (target/i386/arch_dump.c, target/arm/arch_dump.c).

The file header (Elf64_Ehdr), one PT_NOTE and one PT_LOAD program header
(Elf64_Phdr) per guest-physical range, little-endian. Readers such as
Volatility 3 map `p_paddr .. p_paddr + p_memsz` to the file bytes at `p_offset`.

Notes (Elf64_Nhdr, then the name and the descriptor, each padded to 4 bytes):

* x86_64 (the first vCPU in long mode): one "CORE" NT_PRSTATUS per vCPU
  (`x86_64_elf_prstatus`: pr_pid = cpu index + 1, then `x86_64_user_regs_struct`),
  then one "QEMU" note of type 0 per vCPU (`QEMUCPUState`: version 1, its own size,
  general registers, rip, rflags, segments, ldt/tr/gdt/idt, cr0..cr4, kernel_gs_base).
  Not in long mode: NT_PRSTATUS holds the i386 `x86_elf_prstatus` instead.
* aarch64: per vCPU a "CORE" NT_PRSTATUS (`aarch64_elf_prstatus`: x0..x30, sp, pc,
  pstate, pr_fpvalid 1) followed by a "CORE" NT_PRFPREG (`aarch64_user_vfp_state`:
  v0..v31 as low/high 64-bit halves, fpsr, fpcr).
"""

from construct import (
    Aligned,
    Array,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
    this,
)

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
NT_PRFPREG = 2  # NT_FPREGSET
QEMU_NOTE_TYPE = 0  # the "QEMU" note carries type 0
QEMUCPUSTATE_VERSION = 1
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

Elf64_Nhdr = Struct(
    "n_namesz" / Int32ul,
    "n_descsz" / Int32ul,
    "n_type" / Int32ul,
)

#: One note: header, name (with its NUL) and descriptor, each padded to 4 bytes.
Elf64_Note = Struct(
    "n_namesz" / Int32ul,
    "n_descsz" / Int32ul,
    "n_type" / Int32ul,
    "name" / Aligned(4, Bytes(this.n_namesz)),
    "desc" / Aligned(4, Bytes(this.n_descsz)),
)

# -- x86 -------------------------------------------------------------------------------------
_X86_64_USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                     "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
                     "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
x86_64_user_regs_struct = Struct(*(n / Int64ul for n in _X86_64_USER_REGS))

x86_64_elf_prstatus = Struct(
    Padding(32),
    "pid" / Int32ul,
    Padding(76),
    "regs" / x86_64_user_regs_struct,
    Padding(8),
)

x86_user_regs_struct = Struct(
    *(n / Int32ul for n in ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax")),
    "ds" / Int16ul, Padding(2), "es" / Int16ul, Padding(2),
    "fs" / Int16ul, Padding(2), "gs" / Int16ul, Padding(2),
    "orig_eax" / Int32ul, "eip" / Int32ul,
    "cs" / Int16ul, Padding(2),
    "eflags" / Int32ul, "esp" / Int32ul,
    "ss" / Int16ul, Padding(2),
)

x86_elf_prstatus = Struct(
    Padding(24),
    "pid" / Int32ul,
    Padding(44),
    "regs" / x86_user_regs_struct,
    Padding(4),
)

QEMUCPUSegment = Struct(
    "selector" / Int32ul,
    "limit" / Int32ul,
    "flags" / Int32ul,
    "pad" / Int32ul,
    "base" / Int64ul,
)

QEMU_CPU_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
QEMU_CPU_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")

QEMUCPUState = Struct(
    "version" / Int32ul,
    "size" / Int32ul,
    *(n / Int64ul for n in QEMU_CPU_GPRS),
    "rip" / Int64ul,
    "rflags" / Int64ul,
    *(n / QEMUCPUSegment for n in QEMU_CPU_SEGMENTS),
    "cr" / Array(5, Int64ul),
    "kernel_gs_base" / Int64ul,
)

# -- aarch64 ---------------------------------------------------------------------------------
aarch64_user_regs = Struct(
    "regs" / Array(31, Int64ul),
    "sp" / Int64ul,
    "pc" / Int64ul,
    "pstate" / Int64ul,
)

aarch64_elf_prstatus = Struct(
    Padding(32),
    "pr_pid" / Int32ul,
    Padding(76),
    "pr_reg" / aarch64_user_regs,
    "pr_fpvalid" / Int32ul,
    Padding(4),
)

aarch64_user_vfp_state = Struct(
    "vregs" / Array(64, Int64ul),
    "fpsr" / Int32ul,
    "fpcr" / Int32ul,
    Padding(8),
)

NHDR_SIZE = Elf64_Nhdr.sizeof()
assert x86_64_elf_prstatus.sizeof() == 336 and x86_elf_prstatus.sizeof() == 144
assert QEMUCPUState.sizeof() == 440
assert aarch64_elf_prstatus.sizeof() == 392 and aarch64_user_vfp_state.sizeof() == 528
