#!/usr/bin/env bash
# Builds the `shoal` and `shoal-agent` images from the repository's Dockerfile and tags each with
# the version (Cargo.toml) and the git revision: NAME:VERSION and NAME:VERSION-REVISION
# (REVISION gets `-dirty` when the work tree has changes).
#
#   deploy/docker/build.sh [--prefix REGISTRY/OWNER/] [--base IMAGE] [--prebuilt DIR] [--push]
#
# --prefix    put before the image names, e.g. ghcr.io/acme/ [default: none]
# --base      one local image for both the builder and the runtime stage, e.g. the one
#             deploy/docker/base-image.sh makes; needs --prebuilt (it has no cargo)
# --prebuilt  a directory holding `shoal` and `shoal-agent` built by cargo on this host: the
#             builder stage copies them instead of compiling (fast; the binaries must fit the
#             runtime base's C library)
# --push      docker push every tag afterwards
#
# With neither --base nor --prebuilt this is the ordinary build from the public rust and debian
# images: cargo compiles inside Docker. Prints the tags it made, one a line, last.
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix=""
base=""
prebuilt=""
push=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --prebuilt) prebuilt="$2"; shift 2 ;;
    --push) push=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$base" ] && [ -z "$prebuilt" ]; then
  echo "build.sh: --base needs --prebuilt (a local base has no Rust toolchain)" >&2
  exit 2
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi

args=(--build-arg "SHOAL_VERSION=$version" --build-arg "SHOAL_REVISION=$revision")
[ -n "$base" ] && args+=(--build-arg "RUST_IMAGE=$base" --build-arg "RUNTIME_IMAGE=$base")

context="."
if [ -n "$prebuilt" ]; then
  for b in shoal shoal-agent; do
    [ -x "$prebuilt/$b" ] || { echo "build.sh: no $prebuilt/$b" >&2; exit 2; }
  done
  # A context of the two binaries only: nothing else is needed when the builder copies them.
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  mkdir "$context/prebuilt"
  cp "$prebuilt/shoal" "$prebuilt/shoal-agent" "$context/prebuilt/"
  args+=(--build-arg "PREBUILT=prebuilt")
fi

tags=()
for target in shoal-agent shoal; do
  name="$prefix$target"
  docker build -q -f Dockerfile "${args[@]}" --target "$target" \
    -t "$name:$version" -t "$name:$version-$revision" "$context" >/dev/null
  tags+=("$name:$version" "$name:$version-$revision")
done
if [ -n "$push" ]; then
  for t in "${tags[@]}"; do docker push "$t"; done
fi
printf '%s\n' "${tags[@]}"
