#!/usr/bin/env bash
# Installs what the sample generator and the QEMU-backed tests need:
# QEMU 10 + libvirt 11 from Debian's bookworm-backports suite, QEMU 7.2 unpacked
# side by side (dpkg -x), a Debian kernel, busybox-static, gcc, compressors.
# The backports URI is copied at run time from the machine's own Debian source.
set -euo pipefail
LAB="${MIGINSPECT_LAB:-/opt/miginspect-lab}"
mkdir -p "$LAB"
export DEBIAN_FRONTEND=noninteractive

src=/etc/apt/sources.list.d/debian.sources
bp=/etc/apt/sources.list.d/miginspect-backports.sources
if [ ! -f "$bp" ]; then
  uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
  keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "$uri" "$keyring" > "$bp"
fi
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends busybox-static gcc libc6-dev cpio gzip xz-utils \
  bzip2 zstd lzop file >/dev/null
apt-get install -y -q --no-install-recommends -t bookworm-backports \
  qemu-system-x86 qemu-utils >/dev/null
if [ "${MIGINSPECT_NO_LIBVIRT:-0}" != 1 ]; then
  apt-get install -y -q --no-install-recommends -t bookworm-backports \
    libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu >/dev/null || \
    echo "install-lab: libvirt could not be installed; libvirt tests will skip" >&2
fi

# QEMU 7.2: bookworm's own packages, unpacked beside QEMU 10.
if [ ! -x "$LAB/qemu72/usr/bin/qemu-system-x86_64" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q \
     "qemu-system-x86/bookworm" "qemu-system-data/bookworm" "qemu-system-common/bookworm" >/dev/null)
  mkdir -p "$LAB/qemu72"
  for d in "$tmp"/*.deb; do dpkg -x "$d" "$LAB/qemu72"; done
  rm -rf "$tmp"
fi

# Guest kernel: the one bookworm's linux-image-amd64 depends on.
if [ ! -f "$LAB/vmlinuz" ]; then
  kpkg=$(apt-cache depends linux-image-amd64/bookworm 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "$kpkg/bookworm" >/dev/null && dpkg -x ./*.deb x)
  cp "$tmp"/x/boot/vmlinuz-* "$LAB/vmlinuz"
  rm -rf "$tmp"
fi
echo "install-lab: QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), QEMU 7.2 in $LAB/qemu72, kernel $LAB/vmlinuz"
