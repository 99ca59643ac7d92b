#!/usr/bin/env bash
# bench/fetch: `precomp fetch` of a lock's artifacts against `mix deps.compile` from scratch
# and against plain `tar -xzf` of the same artifacts, on this machine, in the same run.
#
#   bash bench/fetch/run.sh
#
# What it does (everything in a scratch directory, on 127.0.0.1, stopped and removed on exit
# unless KEEP=1):
#   1. builds precomp in release mode (cargo build --release -p precomp);
#   2. a signed static repository of tests/fixtures/packages, a builder key, a mix.lock of
#      every fixture release (the largest fixture lock; shapes at 1.0.0), `precomp serve` in
#      front of the repository with an upload token bound to the key;
#   3. `precomp build --lock mix.lock --publish` (every package, in the sandbox);
#   4. the consumer: `precomp build --prepare` writes a Mix project with every package of the
#      lock as a dependency, unpacked under deps/ as `mix deps.get` leaves them, and the lock;
#   5. ROUNDS times each, from an empty _build, timed:
#      - `mix deps.compile` (MIX_ENV=dev, as a consumer's CI would);
#      - `precomp fetch --project P --mirror URL --trust KEY` (MIX_ENV=dev): probe the project,
#        look up, download, verify and install every artifact with Mix's markers;
#      - `tar -xzf` of the same artifact files (already on disk) into _build/dev/lib/APP;
#   6. prints each run, the medians and the ratios: fetch / tar (target <= 2.0) and
#      mix deps.compile / fetch.
#
# Settings (environment): SYNTHETIC=N (instead of the fixture lock, N generated Mix packages
# of MODULES modules each, default 40: a lock the size of the issues' 26-package reference),
# ROUNDS (default 5), KEEP (0), PRECOMP (a precomp binary to measure
# instead of building one). Needs: cargo, elixir, rebar3, bubblewrap, curl (.ci/setup).
# Exits non-zero only if a step fails; a missed target is reported, not an error.
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-5}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "${PRECOMP:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p precomp)
  PRECOMP="$ROOT/target/release/precomp"
fi

SCRATCH=$(mktemp -d /tmp/precomp-bench-fetch.XXXXXX)
chmod 755 "$SCRATCH"
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
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

# The mirror, with an upload token for the bench key.
mkdir -p "$SCRATCH/mirror"
TOKEN=$("$PRECOMP" --data "$SCRATCH/mirror" token create --name bench --key "$SCRATCH/keys/bench.pub" 2>/dev/null)
"$PRECOMP" --data "$SCRATCH/mirror" serve --listen 127.0.0.1:0 --upstream "file://$SCRATCH/repo" \
  --upstream-key "$SCRATCH/repo.pem.pub" >"$SCRATCH/serve.out" 2>"$SCRATCH/serve.err" &
SERVER_PID=$!
for _ in $(seq 100); do
  URL=$(sed -n 's/^precomp mirror listening on //p' "$SCRATCH/serve.out")
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$SCRATCH/serve.err"; exit 1; }

mkdir -p "$SCRATCH/builder"
chmod 755 "$SCRATCH/builder"
"$PRECOMP" --data "$SCRATCH/builder" build --json --lock "$SCRATCH/mix.lock" --mirror "$URL" \
  --key "$SCRATCH/keys/bench.key" --publish --token "$TOKEN" >"$SCRATCH/built.json" 2>"$SCRATCH/build.err" \
  || { cat "$SCRATCH/build.err"; exit 1; }

PROJECT="$SCRATCH/project"
"$PRECOMP" --data "$SCRATCH/builder" build --lock "$SCRATCH/mix.lock" --mirror "$URL" \
  --key "$SCRATCH/keys/bench.key" --prepare "$PROJECT" 2>/dev/null
cp "$SCRATCH/mix.lock" "$PROJECT/mix.lock"
for dep in "$PROJECT"/deps/*; do touch "$dep/.fetch"; done
ARTIFACT_BYTES=$(sed -n 's/.*"artifact_size":\([0-9]*\).*/\1/p' "$SCRATCH/built.json" | awk '{ s += $1 } END { print s }')

echo "bench/fetch: $PACKAGES packages ($ARTIFACT_BYTES bytes of artifacts), $(nproc) CPUs, $ROUNDS rounds"
compile=(); fetch=(); untar=()
for round in $(seq "$ROUNDS"); do
  rm -rf "$PROJECT/_build"
  start=$(now)
  (cd "$PROJECT" && MIX_ENV=dev MIX_REBAR3=$(command -v rebar3) mix deps.compile >"$SCRATCH/compile.log" 2>&1) \
    || { cat "$SCRATCH/compile.log"; exit 1; }
  t=$(elapsed "$start" "$(now)"); compile+=("$t")

  rm -rf "$PROJECT/_build"
  start=$(now)
  MIX_ENV=dev "$PRECOMP" fetch --project "$PROJECT" --mirror "$URL" --trust "$SCRATCH/keys/bench.pub" \
    --require-all >"$SCRATCH/fetch.log" 2>&1 || { cat "$SCRATCH/fetch.log"; exit 1; }
  tf=$(elapsed "$start" "$(now)"); fetch+=("$tf")

  rm -rf "$PROJECT/_build"
  start=$(now)
  while read -r line; do
    app=$(echo "$line" | sed 's/.*"app":"\([^"]*\)".*/\1/')
    artifact=$(echo "$line" | sed 's/.*"artifact":"\([^"]*\)".*/\1/')
    mkdir -p "$PROJECT/_build/dev/lib/$app"
    tar -xzf "$artifact" -C "$PROJECT/_build/dev/lib/$app"
  done <"$SCRATCH/built.json"
  tt=$(elapsed "$start" "$(now)"); untar+=("$tt")
  printf '  round %d: mix deps.compile %6.2f s   precomp fetch %6.3f s   tar -xzf %6.3f s\n' "$round" "$t" "$tf" "$tt"
done

c=$(printf '%s\n' "${compile[@]}" | median)
f=$(printf '%s\n' "${fetch[@]}" | median)
x=$(printf '%s\n' "${untar[@]}" | median)
ratio=$(awk -v f="$f" -v x="$x" 'BEGIN { print f / x }')
saving=$(awk -v c="$c" -v f="$f" 'BEGIN { print c / f }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 2.0) ? "met" : "MISSED" }')
printf 'median: mix deps.compile %.2f s, precomp fetch %.3f s, tar -xzf %.3f s\n' "$c" "$f" "$x"
printf 'ratio: precomp fetch / tar -xzf %.2fx (target <= 2.0x: %s); mix deps.compile / precomp fetch %.1fx\n' \
  "$ratio" "$verdict" "$saving"
