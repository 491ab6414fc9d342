"""libvirt save image header (virQEMUSaveHeader, src/qemu/qemu_saveimage.h).

92 bytes written as a native struct, i.e. in the writing host's byte order,
then the domain XML (NUL-terminated), the optional cookie, zero padding up to
92 + data_len; the QEMU stream starts right after.
"""

from construct import Bytes, Int32sb, Int32sl, Padding, Struct

QEMU_SAVE_MAGIC = b"LibvirtQemudSave"
QEMU_SAVE_PARTIAL = b"LibvirtQemudPart"
QEMU_SAVE_VERSION = 2
QEMU_SAVE_HEADER_SIZE = 92

# virQEMUSaveFormat (src/qemu/qemu_saveimage_format.h); numbers are on-disk ABI.
QEMU_SAVE_FORMAT_RAW = 0
QEMU_SAVE_FORMAT_GZIP = 1
QEMU_SAVE_FORMAT_BZIP2 = 2
QEMU_SAVE_FORMAT_XZ = 3
QEMU_SAVE_FORMAT_LZOP = 4
QEMU_SAVE_FORMAT_ZSTD = 5
QEMU_SAVE_FORMAT_SPARSE = 6

QEMU_SAVE_FORMAT_NAMES = {
    QEMU_SAVE_FORMAT_RAW: "raw",
    QEMU_SAVE_FORMAT_GZIP: "gzip",
    QEMU_SAVE_FORMAT_BZIP2: "bzip2",
    QEMU_SAVE_FORMAT_XZ: "xz",
    QEMU_SAVE_FORMAT_LZOP: "lzop",
    QEMU_SAVE_FORMAT_ZSTD: "zstd",
    QEMU_SAVE_FORMAT_SPARSE: "sparse",
}


def _header(i32):
    return Struct(
        "magic" / Bytes(16),
        "version" / i32,
        "data_len" / i32,
        "was_running" / i32,
        "format" / i32,
        "cookieOffset" / i32,
        Padding(56),  # unused[14]
    )


#: Header as written by a little-endian host (x86, aarch64, ppc64le, ...).
virQEMUSaveHeader_le = _header(Int32sl)
#: Header as written by a big-endian host (s390x).
virQEMUSaveHeader_be = _header(Int32sb)

assert virQEMUSaveHeader_le.sizeof() == QEMU_SAVE_HEADER_SIZE
