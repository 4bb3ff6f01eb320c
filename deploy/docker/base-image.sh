#!/usr/bin/env bash
# Makes a base image for the Dockerfile from this machine's own files, for hosts that reach no
# image registry: busybox (a shell and the tools the Dockerfile's RUN steps use), the C library
# and other shared libraries that `shoal` and `shoal-agent` link, CA certificates, and
# /etc/passwd with root and `nonroot` (65532). Imported with `docker import`; nothing is pulled.
#
#   deploy/docker/base-image.sh [--image NAME:TAG] [--bin PATH]...
#
# --image  the image to make [default: shoal-base:local]
# --bin    a binary whose libraries the image must have [default: the shoal and shoal-agent that
#          cargo built, release else debug]
#
# Then: deploy/docker/build.sh --base shoal-base:local (see docs/operators.md, "Images").
set -euo pipefail
cd "$(dirname "$0")/../.."

image="shoal-base:local"
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image="$2"; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "base-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ${#bins[@]} -eq 0 ]; then
  for b in shoal shoal-agent; do
    for c in "${CARGO_TARGET_DIR:-target}/release/$b" "${CARGO_TARGET_DIR:-target}/debug/$b"; do
      if [ -x "$c" ]; then bins+=("$c"); break; fi
    done
  done
fi
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] || { echo "base-image.sh: busybox is needed (apt-get install busybox-static)" >&2; exit 2; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# Copies the shared libraries (and the loader) a binary links, at their host paths.
add_libs() {
  { ldd "$1" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
  done
}

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/ssl/certs,tmp,var/tmp,proc,sys,dev,root,home/nonroot}
chmod 1777 "$root/tmp" "$root/var/tmp"
cp -L "$busybox" "$root/bin/busybox"
add_libs "$busybox"
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
for b in "${bins[@]}"; do add_libs "$b"; done
# Name resolution through /etc/hosts and DNS, as glibc reads it.
for f in /etc/nsswitch.conf /etc/ssl/certs/ca-certificates.crt; do
  [ -e "$f" ] && cp -L "$f" "$root$f"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\nnogroup:x:65534:\n' >"$root/etc/group"
chown 65532:65532 "$root/home/nonroot"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
  --change 'LABEL shoal.image=base' \
  - "$image" >/dev/null
echo "built $image"
