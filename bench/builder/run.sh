#!/usr/bin/env bash
# bench/builder: a sandboxed `precomp build` of a fixture lock against a plain
# `mix deps.compile` of the same lock, on this machine, in the same run.
#
#   bash bench/builder/run.sh
#
# What it does (everything in a scratch directory, removed on exit unless KEEP=1):
#   1. builds precomp in release mode (cargo build --release -p precomp);
#   2. makes a signed static repository of tests/fixtures/packages (precomp repo build), a
#      builder key (precomp keys generate) and a mix.lock of every fixture release
#      (precomp repo lock; shapes at 1.0.0);
#   3. baseline: `precomp build --prepare DIR` writes the very project the builder compiles
#      in (sources at deps/APP, the generated mix.exs); then, ROUNDS times, `_build` is
#      removed and `mix deps.compile` runs there, outside any sandbox, with the same
#      environment the sandbox sets (ERL_COMPILER_OPTIONS=deterministic, MIX_ENV=prod,
#      MIX_REBAR3); each run is timed;
#   4. precomp: ROUNDS times, a fresh data directory (no stored builds to reuse; package
#      tarballs already downloaded, as the baseline's sources are already unpacked) and
#      `precomp build --lock mix.lock --toolchain TOOLCHAIN` (every package in the sandbox,
#      as a DAG, --jobs = CPUs); each run is timed;
#   5. prints each run, the medians, and the ratio precomp / baseline (target: <= 1.15).
#
# Settings (environment): SYNTHETIC=N (instead of the fixture lock, N generated Mix packages
# of MODULES modules each, default 40: a lock the size of the issues' 26-package reference),
# ROUNDS (default 3), TOOLCHAIN (host), KEEP (0), PRECOMP (a precomp
# binary to measure instead of building one), TOOLCHAINS (toolchain store, default the
# scratch data directory; set it to /var/cache/precomp-test to use the test images).
# Needs: cargo, elixir, rebar3, bubblewrap (.ci/setup installs them). Exits non-zero only if
# a build fails; a missed target is reported, not an error.
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-3}
TOOLCHAIN=${TOOLCHAIN:-host}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "${PRECOMP:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p precomp)
  PRECOMP="$ROOT/target/release/precomp"
fi

SCRATCH=$(mktemp -d /tmp/precomp-bench-builder.XXXXXX)
chmod 755 "$SCRATCH"
cleanup() {
  if [ "$KEEP" = 1 ]; then echo "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# shellcheck source=bench/fixture_lock.sh
. "$ROOT/bench/fixture_lock.sh"
if [ "${SYNTHETIC:-0}" -gt 0 ]; then
  make_synthetic_lock "$SYNTHETIC" "${MODULES:-40}"
else
  make_fixture_lock
fi

build_args=(build --lock "$SCRATCH/mix.lock" --mirror "file://$SCRATCH/repo"
  --toolchain "$TOOLCHAIN" --key "$SCRATCH/keys/bench.key")
if [ -n "${TOOLCHAINS:-}" ]; then build_args+=(--toolchains "$TOOLCHAINS"); fi

# The baseline's project: exactly what the builder compiles in.
"$PRECOMP" --data "$SCRATCH/prepare-data" "${build_args[@]}" --prepare "$SCRATCH/project" 2>/dev/null
cp -r "$SCRATCH/prepare-data/builds/sources" "$SCRATCH/sources"

echo "bench/builder: $PACKAGES packages, toolchain $TOOLCHAIN, $(nproc) CPUs, $ROUNDS rounds"
baseline=()
for round in $(seq "$ROUNDS"); do
  rm -rf "$SCRATCH/project/_build"
  start=$(now)
  (cd "$SCRATCH/project" && ERL_COMPILER_OPTIONS=deterministic MIX_ENV=prod \
    MIX_REBAR3=$(command -v rebar3) HEX_OFFLINE=1 mix deps.compile >"$SCRATCH/baseline.log" 2>&1) || {
    cat "$SCRATCH/baseline.log"; exit 1; }
  end=$(now)
  t=$(elapsed "$start" "$end")
  baseline+=("$t")
  printf '  mix deps.compile      round %d: %6.2f s\n' "$round" "$t"
done

precomp=()
for round in $(seq "$ROUNDS"); do
  data="$SCRATCH/data-$round"
  mkdir -p "$data/builds" && chmod 755 "$data"
  cp -r "$SCRATCH/sources" "$data/builds/sources"
  start=$(now)
  "$PRECOMP" --data "$data" "${build_args[@]}" >"$SCRATCH/precomp.log" 2>&1 || {
    cat "$SCRATCH/precomp.log"; exit 1; }
  end=$(now)
  t=$(elapsed "$start" "$end")
  precomp+=("$t")
  printf '  precomp build (sandbox) round %d: %6.2f s\n' "$round" "$t"
done

b=$(printf '%s\n' "${baseline[@]}" | median)
p=$(printf '%s\n' "${precomp[@]}" | median)
ratio=$(awk -v p="$p" -v b="$b" 'BEGIN { print p / b }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.15) ? 1 : 0 }')
printf 'median: mix deps.compile %.2f s, precomp build %.2f s, ratio %.2fx (target <= 1.15x: %s)\n' \
  "$b" "$p" "$ratio" "$([ "$verdict" = 1 ] && echo met || echo MISSED)"
