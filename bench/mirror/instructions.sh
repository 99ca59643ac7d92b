#!/usr/bin/env bash
# bench/mirror/instructions.sh: user-space instructions per cached request of `precomp serve`,
# counted with valgrind's cachegrind: deterministic, so unaffected by other load on a shared
# machine (unlike req/s). The server runs under cachegrind twice, answering N and then 2N
# requests for one cached object over one keep-alive connection (curl); the difference of the
# two totals divided by N is the cost of one request, start-up and warm-up cancelled out.
#
#   bash bench/mirror/instructions.sh [PATH...]   # default: a cached tarball and /packages/NAME
#
# Settings (environment): PRECOMP (binary; default: build release), REQUESTS (N, default 2000).
# Needs: valgrind, curl, and elixir (to build the fixture repository).
set -euo pipefail
export LC_ALL=C
REQUESTS=${REQUESTS:-2000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
for tool in valgrind curl; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
if [ -n "${PRECOMP:-}" ]; then
  precomp=$(cd "$(dirname "$PRECOMP")" && pwd)/$(basename "$PRECOMP")
else
  cargo build --release --quiet -p precomp
  precomp="$root/target/release/precomp"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/precomp-bench-instructions.XXXXXX")
server=""
cleanup() {
  [ -z "$server" ] || { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

"$precomp" repo keygen --out "$work/key.pem" >/dev/null
"$precomp" --data "$work/build-data" repo build --packages tests/fixtures/packages \
  --key "$work/key.pem" --out "$work/repo" >/dev/null
if [ "$#" -eq 0 ]; then
  set -- "/$(cd "$work/repo" && find tarballs -name '*.tar' | sort | head -n 1)" \
    "/$(cd "$work/repo" && find packages -type f | sort | head -n 1)"
fi

# Total instructions of one server run answering COUNT requests for PATH (after one warm-up).
instructions() { # PATH COUNT
  local path=$1 count=$2 port out urls
  rm -rf "$work/data" "$work/out"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$work/cachegrind.out" \
    "$precomp" --data "$work/data" serve --listen 127.0.0.1:0 \
    --upstream "file://$work/repo" --upstream-key "$work/key.pem.pub" \
    >"$work/out" 2>"$work/valgrind.log" &
  server=$!
  for _ in $(seq 600); do
    grep -q '^precomp mirror listening on' "$work/out" 2>/dev/null && break
    sleep 0.1
  done
  url=$(sed -n 's/^precomp mirror listening on //p' "$work/out")
  [ -n "$url" ] || { cat "$work/valgrind.log" >&2; exit 1; }
  curl -fsS -o /dev/null "$url$path"
  # One curl, one keep-alive connection, COUNT requests.
  urls=()
  for _ in $(seq "$count"); do urls+=("$url$path"); done
  curl -fsS "${urls[@]}" >/dev/null
  kill -TERM "$server"
  wait "$server" || true
  server=""
  awk '/^summary:/ { print $2 }' "$work/cachegrind.out"
}

for path in "$@"; do
  once=$(instructions "$path" "$REQUESTS")
  twice=$(instructions "$path" $((2 * REQUESTS)))
  echo "$path: $(((twice - once) / REQUESTS)) instructions per request (user space; $REQUESTS vs $((2 * REQUESTS)) requests)"
done
