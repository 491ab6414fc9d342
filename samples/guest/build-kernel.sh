#!/usr/bin/env bash
# Builds the small guest kernel used by samples/generate.py:
# `make tinyconfig` + samples/guest/tiny-kernel.config from Debian's linux-source-6.1
# (installed by samples/install-lab.sh), output $LAB/tiny-vmlinuz.
# The generic Debian kernel occupies ~28 MiB of guest RAM (~8.5 MB per capture after zstd);
# this one a few MiB, which keeps the committed samples small.
set -euo pipefail
LAB="${MIGINSPECT_LAB:-/opt/miginspect-lab}"
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$LAB/tiny-vmlinuz"
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
need=""
[ -f "$SRC_TAR" ] || need="$need linux-source-6.1"
for t in flex bison make bc; do command -v $t >/dev/null || need="$need $t"; done
[ -f /usr/include/libelf.h ] || need="$need libelf-dev"
if [ -n "$need" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
fi
BUILD="$LAB/kernel-build"
frag="$HERE/tiny-kernel.config"
key=$( { cat "$frag"; stat -c '%s %Y' "$SRC_TAR"; } | sha256sum | cut -c1-16)
if [ -f "$OUT" ] && [ -f "$OUT.key" ] && [ "$(cat "$OUT.key")" = "$key" ]; then
  echo "$OUT"; exit 0
fi
rm -rf "$BUILD"; mkdir -p "$BUILD"
tar -C "$BUILD" -xf "$SRC_TAR"
cd "$BUILD"/linux-source-6.1
make -s tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null
make -s olddefconfig >/dev/null
for opt in $(grep -o '^CONFIG_[A-Z0-9_]*' "$frag"); do
  grep -q "^$opt=y" .config || { echo "build-kernel: $opt not set after olddefconfig" >&2; exit 1; }
done
make -s -j"$(nproc)" bzImage >/dev/null 2>&1
cp arch/x86/boot/bzImage "$OUT"
cp .config "$OUT.config"
echo "$key" > "$OUT.key"
cd "$LAB"; rm -rf "$BUILD"
echo "$OUT"
