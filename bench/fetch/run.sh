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
#      - `mix deps.compile` (MIX_ENV=dev, as a consumer's CI would; COMPILE=0 leaves it out);
#      - `precomp fetch --project P --mirror URL --trust KEY` (MIX_ENV=dev): probe the project,
#        look up, download, verify and install every artifact with Mix's markers;
#      - with PRECOMP_BEFORE=BINARY, the same fetch by that binary (a before/after comparison
#        in the same run);
#      - a plain sequential loop of `tar -xzf` over the same artifact files (already on
#        disk), each into _build/dev/lib/APP (made by one `mkdir -p` first);
#   6. prints each run, the medians and the ratios: fetch / tar (target <= 1.0, issue 14) and
#      mix deps.compile / fetch.
#
# Settings (environment): SYNTHETIC=N (instead of the fixture lock, N generated Mix packages
# of MODULES modules (default 40) of FUNCTIONS functions (default 50): about 190 KiB of
# artifact per package, so SYNTHETIC=29 weighs what the real Phoenix 1.7 stack does, 5.5 MiB;
# FUNCTIONS=0 gives bench/builder's light modules), ROUNDS (default 5), COMPILE (1),
# PRECOMP_BEFORE (unset), KEEP (0), REUSE (a directory an earlier run kept with KEEP=1: its
# repository, published builds and project are used again, only the mirror is started),
# PRECOMP (a precomp binary to measure instead of building one), ASIDE (0: each step's _build
# is deleted before the next step; 1: moved aside and deleted after the last round. On a
# journal-less ext4, as on the bench machine, inodes freed in the last minute are skipped one
# by one at every inode allocation (ext4's recently_deleted), so with ASIDE=0 each step pays
# for what the steps before it deleted). Needs: cargo, elixir, rebar3, bubblewrap, curl
# (.ci/setup).
# Exits non-zero only if a step fails; a missed target is reported, not an error.
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-5}
KEEP=${KEEP:-0}
COMPILE=${COMPILE:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "${PRECOMP:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p precomp)
  PRECOMP="$ROOT/target/release/precomp"
fi

if [ -n "${REUSE:-}" ]; then
  SCRATCH=$REUSE
  KEEP=1
else
  SCRATCH=$(mktemp -d /tmp/precomp-bench-fetch.XXXXXX)
  chmod 755 "$SCRATCH"
fi
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ "$KEEP" = 1 ]; then echo "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# shellcheck source=bench/fixture_lock.sh
. "$ROOT/bench/fixture_lock.sh"
if [ -n "${REUSE:-}" ]; then
  PACKAGES=$(wc -l <"$SCRATCH/built.json")
elif [ "${SYNTHETIC:-0}" -gt 0 ]; then
  make_synthetic_lock "$SYNTHETIC" "${MODULES:-40}" "${FUNCTIONS:-50}"
else
  make_fixture_lock
fi

# The mirror, with an upload token for the bench key.
mkdir -p "$SCRATCH/mirror"
[ -n "${REUSE:-}" ] || TOKEN=$("$PRECOMP" --data "$SCRATCH/mirror" token create --name bench --key "$SCRATCH/keys/bench.pub" 2>/dev/null)
"$PRECOMP" --data "$SCRATCH/mirror" serve --listen 127.0.0.1:0 --upstream "file://$SCRATCH/repo" \
  --upstream-key "$SCRATCH/repo.pem.pub" >"$SCRATCH/serve.out" 2>"$SCRATCH/serve.err" &
SERVER_PID=$!
for _ in $(seq 100); do
  URL=$(sed -n 's/^precomp mirror listening on //p' "$SCRATCH/serve.out")
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$SCRATCH/serve.err"; exit 1; }

PROJECT="$SCRATCH/project"
if [ -z "${REUSE:-}" ]; then
  mkdir -p "$SCRATCH/builder"
  chmod 755 "$SCRATCH/builder"
  "$PRECOMP" --data "$SCRATCH/builder" build --json --lock "$SCRATCH/mix.lock" --mirror "$URL" \
    --key "$SCRATCH/keys/bench.key" --publish --token "$TOKEN" >"$SCRATCH/built.json" 2>"$SCRATCH/build.err" \
    || { cat "$SCRATCH/build.err"; exit 1; }

  "$PRECOMP" --data "$SCRATCH/builder" build --lock "$SCRATCH/mix.lock" --mirror "$URL" \
    --key "$SCRATCH/keys/bench.key" --prepare "$PROJECT" 2>/dev/null
  # The builder's project pins each dependency's manager (`manager:`), which a consumer's
  # mix.exs does not: precomp fetch leaves a dependency with `manager:` set to Mix.
  sed -i 's/, manager: :[a-z0-9]*//' "$PROJECT/mix.exs"
  cp "$SCRATCH/mix.lock" "$PROJECT/mix.lock"
  for dep in "$PROJECT"/deps/*; do touch "$dep/.fetch"; done
fi
ARTIFACT_BYTES=$(sed -n 's/.*"artifact_size":\([0-9]*\).*/\1/p' "$SCRATCH/built.json" | awk '{ s += $1 } END { print s }')

# The tar loop's inputs, worked out before anything is timed.
dirs=(); artifacts=()
while read -r line; do
  app=$(echo "$line" | sed 's/.*"app":"\([^"]*\)".*/\1/')
  dirs+=("$PROJECT/_build/dev/lib/$app")
  artifacts+=("$(echo "$line" | sed 's/.*"artifact":"\([^"]*\)".*/\1/')")
done <"$SCRATCH/built.json"

ASIDE=${ASIDE:-0}
ASIDE_DIR="$SCRATCH/aside"
empty_build() { # an empty _build for the next step (see ASIDE)
  if [ "$ASIDE" = 1 ] && [ -d "$PROJECT/_build" ]; then
    mkdir -p "$ASIDE_DIR"
    mv "$PROJECT/_build" "$(mktemp -d "$ASIDE_DIR/XXXXXX")/"
  else
    rm -rf "$PROJECT/_build"
  fi
}

fetch_with() { # BINARY LOG: one timed fetch from an empty _build; prints the seconds
  empty_build
  local start
  start=$(now)
  MIX_ENV=dev "$1" fetch --project "$PROJECT" --mirror "$URL" --trust "$SCRATCH/keys/bench.pub" \
    --require-all >"$2" 2>&1 || { cat "$2" >&2; exit 1; }
  elapsed "$start" "$(now)"
}

echo "bench/fetch: $PACKAGES packages ($ARTIFACT_BYTES bytes of artifacts), $(nproc) CPUs, $ROUNDS rounds, ASIDE=$ASIDE, load $(cut -d' ' -f1-3 /proc/loadavg)"
compile=(); fetch=(); before=(); untar=()
for round in $(seq "$ROUNDS"); do
  line="  round $round:"
  if [ "$COMPILE" = 1 ]; then
    empty_build
    start=$(now)
    (cd "$PROJECT" && MIX_ENV=dev MIX_REBAR3=$(command -v rebar3) mix deps.compile >"$SCRATCH/compile.log" 2>&1) \
      || { cat "$SCRATCH/compile.log"; exit 1; }
    t=$(elapsed "$start" "$(now)"); compile+=("$t")
    line="$line mix deps.compile $(printf '%6.2f' "$t") s  "
  fi

  tf=$(fetch_with "$PRECOMP" "$SCRATCH/fetch.log"); fetch+=("$tf")
  line="$line precomp fetch $(printf '%6.3f' "$tf") s  "
  if [ -n "${PRECOMP_BEFORE:-}" ]; then
    tb=$(fetch_with "$PRECOMP_BEFORE" "$SCRATCH/fetch-before.log"); before+=("$tb")
    line="$line (before: $(printf '%6.3f' "$tb") s)  "
  fi

  empty_build
  start=$(now)
  mkdir -p "${dirs[@]}"
  for i in "${!artifacts[@]}"; do
    tar -xzf "${artifacts[$i]}" -C "${dirs[$i]}"
  done
  tt=$(elapsed "$start" "$(now)"); untar+=("$tt")
  echo "$line tar -xzf $(printf '%6.3f' "$tt") s"
done

rm -rf "$ASIDE_DIR"
f=$(printf '%s\n' "${fetch[@]}" | median)
x=$(printf '%s\n' "${untar[@]}" | median)
ratio=$(awk -v f="$f" -v x="$x" 'BEGIN { print f / x }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.0) ? "met" : "MISSED" }')
printf 'median: precomp fetch %.3f s, tar -xzf %.3f s' "$f" "$x"
if [ -n "${PRECOMP_BEFORE:-}" ]; then
  b=$(printf '%s\n' "${before[@]}" | median)
  printf ', fetch before %.3f s' "$b"
fi
if [ "$COMPILE" = 1 ]; then
  c=$(printf '%s\n' "${compile[@]}" | median)
  printf ', mix deps.compile %.2f s' "$c"
fi
printf '\nratio: precomp fetch / tar -xzf %.2fx (target <= 1.0x: %s)' "$ratio" "$verdict"
if [ -n "${PRECOMP_BEFORE:-}" ]; then
  printf '; before: %.2fx' "$(awk -v b="$b" -v x="$x" 'BEGIN { print b / x }')"
fi
if [ "$COMPILE" = 1 ]; then
  printf '; mix deps.compile / precomp fetch %.1fx' "$(awk -v c="$c" -v f="$f" 'BEGIN { print c / f }')"
fi
printf '\n'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
