#!/usr/bin/env bash
# Builds the precomp container image from target/release/precomp (build it first, on Debian
# bookworm: `cargo build --release -p precomp`). Usage: ops/deploy/build-image.sh [TAG]
# Uses docker, or podman when docker is absent.
set -euo pipefail
tag=${1:-precomp:latest}
root=$(cd "$(dirname "$0")/../.." && pwd)
binary="$root/target/release/precomp"
if [ ! -x "$binary" ]; then
  echo "no $binary: run \`cargo build --release -p precomp\` first" >&2
  exit 1
fi
engine=$(command -v docker || command -v podman || true)
if [ -z "$engine" ]; then
  echo "neither docker nor podman is installed" >&2
  exit 1
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/precomp"
"$engine" build -f "$root/ops/deploy/Containerfile" -t "$tag" "$context"
