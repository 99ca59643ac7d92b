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
#      in (sources at deps/APP, the generated mix.exs and mix.lock, each package with the
#      manager the consumer's Mix uses); `mix deps.compile` runs there from an empty
#      `_build`, outside any sandbox, with the same environment the sandbox sets
#      (ERL_COMPILER_OPTIONS=deterministic, MIX_ENV=prod, MIX_REBAR3);
#   4. precomp: a fresh data directory (no stored builds to reuse; package tarballs already
#      downloaded, as the baseline's sources are already unpacked) and `precomp build --lock
#      mix.lock --toolchain TOOLCHAIN` (every package in the sandbox, as a DAG, --jobs =
#      CPUs);
#   3 and 4 run back to back ROUNDS times, in alternating order;
#   5. prints each round with its ratio and the CPU seconds the machine spent during each
#      run ("machine CPU", from /proc/stat: the run's own only when nothing else runs), and
#      the median of the rounds' ratios precomp / baseline (target: <= TARGET, default 1.00).
#
# Settings (environment): SYNTHETIC=stack (instead of the fixture lock, a generated
# Phoenix-sized stack as heavy as the real one: 29 packages, Mix, rebar3 and erlang.mk-style,
# a NIF, ~6 MB of beams; bench/synthetic_stack.exs) or SYNTHETIC=N (N generated Mix packages
# of MODULES modules each, default 40), TARGET (1.00), JOBS (precomp build --jobs; default
# the CPUs),
# ROUNDS (default 3), TOOLCHAIN (host), KEEP (0), PRECOMP (a precomp
# binary to measure instead of building one), PRECOMP_BEFORE (a second precomp binary, e.g.
# built before a change, timed in each round with its own ratio: after PRECOMP in odd
# rounds, before it in even ones), TOOLCHAINS (toolchain store, default the
# scratch data directory; set it to /var/cache/precomp-test to use the test images).
# Needs: cargo, elixir, rebar3, bubblewrap (.ci/setup installs them). Exits non-zero only if
# a build fails; a missed target is reported, not an error.
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-3}
TARGET=${TARGET:-1.00}
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
if [ "${SYNTHETIC:-}" = stack ]; then
  make_stack_lock
elif [ "${SYNTHETIC:-0}" -gt 0 ]; then
  make_synthetic_lock "$SYNTHETIC" "${MODULES:-40}"
else
  make_fixture_lock
fi

build_args=(build --lock "$SCRATCH/mix.lock" --mirror "file://$SCRATCH/repo"
  --toolchain "$TOOLCHAIN" --key "$SCRATCH/keys/bench.key")
if [ -n "${TOOLCHAINS:-}" ]; then build_args+=(--toolchains "$TOOLCHAINS"); fi
if [ -n "${JOBS:-}" ]; then build_args+=(--jobs "$JOBS"); fi

# The baseline's project: exactly what the builder compiles in.
"$PRECOMP" --data "$SCRATCH/prepare-data" "${build_args[@]}" --prepare "$SCRATCH/project" 2>/dev/null
cp -r "$SCRATCH/prepare-data/builds/sources" "$SCRATCH/sources"

echo "bench/builder: $PACKAGES packages, toolchain $TOOLCHAIN, $(nproc) CPUs, $ROUNDS rounds, $(date -u +%FT%TZ)"
# Each round times the baseline and precomp back to back, in alternating order, so that load
# from elsewhere on a shared machine falls on both alike; each round's ratio is printed.
# The baseline runs outside any sandbox on the host toolchain; on an image (OTP 27 on
# trixie) it runs in one `precomp toolchain run` of that image, the project writable.
# CPU seconds the whole machine has spent (user, nice, system, irq), from /proc/stat: a
# run's share only when nothing else runs, so the rounds print it as "machine CPU".
TICKS=$(getconf CLK_TCK)
busy() { awk -v hz="$TICKS" '/^cpu / { print ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

# Each round prints "WALL CPU" (seconds).
baseline_round() {
  rm -rf "$SCRATCH/project/_build"
  local start end cpu
  cpu=$(busy)
  start=$(now)
  if [ "$TOOLCHAIN" = host ]; then
    (cd "$SCRATCH/project" && ERL_COMPILER_OPTIONS=deterministic MIX_ENV=prod \
      MIX_REBAR3=$(command -v rebar3) HEX_OFFLINE=1 mix deps.compile >"$SCRATCH/baseline.log" 2>&1)
  else
    "$PRECOMP" --data "${TOOLCHAINS:-$SCRATCH/prepare-data}" toolchain run "$TOOLCHAIN" \
      --output "$SCRATCH/project" --env MIX_ENV=prod --env MIX_REBAR3=/usr/bin/rebar3 \
      --env HEX_OFFLINE=1 -- mix deps.compile >"$SCRATCH/baseline.log" 2>&1
  fi || { cat "$SCRATCH/baseline.log" >&2; echo "mix deps.compile failed" >&2; return 1; }
  end=$(now)
  echo "$(elapsed "$start" "$end") $(elapsed "$cpu" "$(busy)")"
}
precomp_round() {
  local data="$SCRATCH/data-$1" binary=${2:-$PRECOMP} start end cpu
  rm -rf "$data"
  mkdir -p "$data/builds" && chmod 755 "$data"
  cp -r "$SCRATCH/sources" "$data/builds/sources"
  cpu=$(busy)
  start=$(now)
  "$binary" --data "$data" "${build_args[@]}" >"$SCRATCH/precomp.log" 2>&1 || {
    cat "$SCRATCH/precomp.log" >&2; echo "$binary build failed" >&2; return 1; }
  end=$(now)
  echo "$(elapsed "$start" "$end") $(elapsed "$cpu" "$(busy)")"
  rm -rf "$data"
}
# measure WALL_VAR CPU_VAR ROUND_FUNCTION ARGS...: runs a round, exits if it failed.
measure() {
  local wall_var=$1 cpu_var=$2 result
  shift 2
  result=$("$@") || exit 1
  read -r "${wall_var?}" "${cpu_var?}" <<<"$result"
}
baseline=()
precomp=()
ratios=()
before=()
before_ratios=()
for round in $(seq "$ROUNDS"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  o=
  if [ $((round % 2)) = 1 ]; then
    measure b bc baseline_round; measure p pc precomp_round "$round"
    # Another precomp binary (e.g. before a change): last in odd rounds, first in even ones.
    if [ -n "${PRECOMP_BEFORE:-}" ]; then measure o oc precomp_round "$round-before" "$PRECOMP_BEFORE"; fi
  else
    if [ -n "${PRECOMP_BEFORE:-}" ]; then measure o oc precomp_round "$round-before" "$PRECOMP_BEFORE"; fi
    measure p pc precomp_round "$round"; measure b bc baseline_round
  fi
  baseline+=("$b"); precomp+=("$p")
  r=$(awk -v p="$p" -v b="$b" 'BEGIN { print p / b }')
  ratios+=("$r")
  printf '  round %d (load %s): mix deps.compile %6.2f s, precomp build (sandbox) %6.2f s, ratio %.2fx (machine CPU %.1f s and %.1f s)\n' \
    "$round" "$load" "$b" "$p" "$r" "$bc" "$pc"
  if [ -n "$o" ]; then
    before+=("$o")
    ro=$(awk -v p="$o" -v b="$b" 'BEGIN { print p / b }')
    before_ratios+=("$ro")
    printf '  round %d: PRECOMP_BEFORE build %6.2f s, ratio %.2fx (machine CPU %.1f s)\n' "$round" "$o" "$ro" "$oc"
  fi
done

b=$(printf '%s\n' "${baseline[@]}" | median)
p=$(printf '%s\n' "${precomp[@]}" | median)
ratio=$(printf '%s\n' "${ratios[@]}" | median)
verdict=$(awk -v r="$ratio" -v t="$TARGET" 'BEGIN { print (r <= t) ? 1 : 0 }')
printf 'median: mix deps.compile %.2f s, precomp build %.2f s, ratio %.2fx (median of the rounds; target <= %sx: %s)\n' \
  "$b" "$p" "$ratio" "$TARGET" "$([ "$verdict" = 1 ] && echo met || echo MISSED)"
if [ -n "${PRECOMP_BEFORE:-}" ]; then
  printf 'median: PRECOMP_BEFORE build %.2f s, ratio %.2fx\n' \
    "$(printf '%s\n' "${before[@]}" | median)" "$(printf '%s\n' "${before_ratios[@]}" | median)"
fi
