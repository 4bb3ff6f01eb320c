#!/usr/bin/env bash
# Builds Shoal's Docker sandbox image from this machine's own files, with no registry pull: a root
# filesystem holding `shoal-agent`, a shell and basic tools (busybox when it is installed, else the
# host's /bin/sh and a few coreutils), the shared libraries they link and the dynamic loader, turned
# into an image by `docker import`. The `docker` provider builds the same image by itself when it is
# missing; this script is for operators who want it built ahead of time, or inspected.
#
#   deploy/docker/build-image.sh [--agent PATH] [--image NAME:TAG] [--rootfs-only DIR]
#
# --agent        the shoal-agent binary [default: target/release/shoal-agent, else target/debug]
# --image        the image to make [default: shoal-sandbox:local]
# --rootfs-only  write the root filesystem into DIR and stop (no Docker needed)
set -euo pipefail
cd "$(dirname "$0")/../.."

agent=""
image="shoal-sandbox:local"
rootfs_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --rootfs-only) rootfs_only="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$agent" ]; then
  for c in "${CARGO_TARGET_DIR:-target}/release/shoal-agent" "${CARGO_TARGET_DIR:-target}/debug/shoal-agent"; do
    if [ -x "$c" ]; then agent="$c"; break; fi
  done
fi
[ -n "$agent" ] && [ -x "$agent" ] || { echo "build-image.sh: no shoal-agent binary (cargo build -p shoal-agent, or --agent PATH)" >&2; exit 2; }

if [ -n "$rootfs_only" ]; then
  root="$rootfs_only"
  mkdir -p "$root"
else
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
fi

# Copies one host file into the root at the same path, and the libraries it needs.
add_with_libs() {
  local src="$1" dest="$2"
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
  # ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader.
  { ldd "$src" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
  done
}

mkdir -p "$root"/{bin,usr/bin,usr/local/bin,etc,tmp,work,proc,sys,dev,root}
chmod 1777 "$root/tmp"
add_with_libs "$agent" /usr/local/bin/shoal-agent

busybox="$(command -v busybox || true)"
if [ -n "$busybox" ]; then
  add_with_libs "$busybox" /bin/busybox
  for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
else
  add_with_libs "$(readlink -f /bin/sh)" /bin/sh
  for tool in cat echo ls sleep head tail env true false mkdir rm cp mv wc grep sed id dd yes printf uname; do
    p="$(command -v "$tool" || true)"
    [ -n "$p" ] && [ -f "$p" ] && add_with_libs "$p" "/bin/$tool"
  done
fi

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

if [ -n "$rootfs_only" ]; then
  echo "root filesystem written to $root"
  exit 0
fi

start=$(date +%s.%N)
tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/shoal-agent"]' \
  --change 'WORKDIR /work' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'LABEL shoal.image=sandbox' \
  - "$image" >/dev/null
end=$(date +%s.%N)
echo "built $image in $(echo "$end - $start" | bc 2>/dev/null || echo "?")s"
