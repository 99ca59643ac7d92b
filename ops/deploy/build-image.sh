#!/usr/bin/env bash
# Builds the precomp container image from target/release/precomp (build it first, on Debian
# bookworm: `cargo build --release -p precomp`), or from $PRECOMP_BINARY when set (any precomp
# binary made on bookworm; precomp/tests/deploy.rs passes the tests' debug build).
#
#   ops/deploy/build-image.sh [TAG] [BUILD OPTIONS...]
#
# BUILD OPTIONS go to `ENGINE build` as they are, e.g. `--build-arg BASE=IMAGE` for another
# bookworm base image, or `--network=host` where the engine's bridge network cannot reach the
# Debian mirror. ENGINE is $CONTAINER_ENGINE when set, else docker when its daemon answers,
# else podman.
set -euo pipefail
tag=${1:-precomp:latest}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
binary=${PRECOMP_BINARY:-$root/target/release/precomp}
if [ ! -x "$binary" ]; then
  echo "no $binary: run \`cargo build --release -p precomp\` first (or set PRECOMP_BINARY)" >&2
  exit 1
fi
engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  # A docker client without a daemon (or without access to it) cannot build.
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null; then
    echo "docker is installed but its daemon does not answer (docker info failed), and podman" \
      "is not installed: start the daemon, or apt-get install podman" >&2
    exit 1
  else
    echo "neither docker nor podman is installed: apt-get install podman" >&2
    exit 1
  fi
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/precomp"
echo "building $tag with $engine from $binary" >&2
"$engine" build -f "$root/ops/deploy/Containerfile" -t "$tag" "$@" "$context"
