#!/usr/bin/env bash
# Installs what the sample generator and the QEMU-backed tests need:
# QEMU 10 (x86_64 and aarch64) + libvirt 11 from Debian's bookworm-backports suite, QEMU 7.2
# unpacked side by side (dpkg -x), Debian amd64 and arm64 kernels with their System.map,
# busybox-static, gcc, compressors.
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
  qemu-system-x86 qemu-system-arm qemu-utils >/dev/null
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

# Guest kernels with their System.map: the amd64 one bookworm's linux-image-amd64 depends on,
# and the arm64 one its linux-image-arm64 depends on. Debian's System.map is a one-line stub
# (the real one is in the ~850 MB -dbg package): the forensics tests take linux_banner's
# address from the kernel's own kallsyms with vmlinux-to-elf (test extra) instead. arm64 lists are read into a private apt state folder
# (same Debian URI as the machine's source), so the machine's apt setup is not changed.
put_kernel() {  # put_kernel DEB DEST_DIR: vmlinuz and System.map from one package, together
  local x; x=$(mktemp -d)
  dpkg -x "$1" "$x"
  mkdir -p "$2"
  cp "$x"/boot/vmlinuz-* "$2/vmlinuz.new" && cp "$x"/boot/System.map-* "$2/System.map.new"
  mv "$2/vmlinuz.new" "$2/vmlinuz" && mv "$2/System.map.new" "$2/System.map"
  rm -rf "$x"
}
if [ ! -f "$LAB/vmlinuz" ] || [ ! -f "$LAB/System.map" ]; then
  kpkg=$(apt-cache depends linux-image-amd64/bookworm 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "$kpkg/bookworm" >/dev/null)
  put_kernel "$(ls "$tmp"/*.deb)" "$LAB"
  rm -rf "$tmp"
fi
if [ ! -f "$LAB/arm64/vmlinuz" ] || [ ! -f "$LAB/arm64/System.map" ]; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts"
  uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
  keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
  printf 'Types: deb\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\nArchitectures: arm64\n' \
    "$uri" "$keyring" > "$tmp/parts/arm64.sources"
  aopt=(-o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o Dir::Etc::SourceList=/dev/null
        -o "Dir::Etc::SourceParts=$tmp/parts" -o APT::Architecture=arm64
        -o APT::Architectures::=arm64 -o Dir::State::status=/dev/null)
  apt-get "${aopt[@]}" update -q >/dev/null
  kpkg=$(apt-cache "${aopt[@]}" depends linux-image-arm64 2>/dev/null | awk '/Depends: linux-image-6/ {print $2; exit}')
  (cd "$tmp" && apt-get "${aopt[@]}" download -q "$kpkg" >/dev/null 2>&1)
  put_kernel "$(ls "$tmp"/*.deb)" "$LAB/arm64"
  rm -rf "$tmp"
fi
# The small guest kernel the sample generator and the QEMU-backed tests boot (tinyconfig
# plus samples/guest/tiny-kernel.config from Debian's linux-source-6.1): a few minutes the first
# time, then cached under $LAB (rebuilt only when the config fragment or the source changes).
bash "$(dirname "$0")/guest/build-kernel.sh" >/dev/null
echo "install-lab: QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), QEMU 7.2 in $LAB/qemu72, kernels $LAB/vmlinuz, $LAB/arm64/vmlinuz, $LAB/tiny-vmlinuz"
