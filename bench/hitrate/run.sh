#!/usr/bin/env bash
# bench/hitrate: the hit rate CI gets from the mirror, round after round, for three consumers
# of the fixture lock, and the time from a miss to its build being available.
#
#   bash bench/hitrate/run.sh
#
# What it does (everything in a scratch directory, on 127.0.0.1, stopped and removed on exit
# unless KEEP=1):
#   1. builds precomp (cargo build -p precomp, unless PRECOMP names a binary);
#   2. a signed static repository of tests/fixtures/packages, a builder key, the fixture lock
#      (bench/fixture_lock.sh), `precomp serve` in front of it with a builder token;
#   3. the image-only toolchain, as an org gets its CI image: an OCI image made here from our
#      own trixie root (OTP 27, Elixir 1.18; the shared store's image, one gzip layer), pushed
#      by skopeo to a registry on loopback (Debian's docker-registry), and imported from there
#      into the worker's data directory with `precomp toolchain import
#      127.0.0.1:PORT/ci/elixir:trixie`. The worker has that tuple only through the import;
#   4. one `precomp worker --toolchain host --toolchain 127.0.0.1:PORT/ci/elixir:trixie` (polling every POLL seconds;
#      Mix env prod, the one Mix builds dependencies in) from the start, with no config of its
#      own;
#   5. three consumers, each `precomp build --prepare`'s project of the lock (MIX_ENV=dev):
#      - default:  the host toolchain (OTP 25, Elixir 1.14), no config;
#      - custom:   the host toolchain, config/config.exs giving env_reader other compile-time
#                  values (greeting, format.punctuation);
#      - imported: OTP 27 / Elixir 1.18 — the trixie root's elixir, mix and erl run under
#                  bubblewrap — a toolchain the worker has only as the imported image;
#   6. ROUNDS rounds (default 3): each consumer runs `precomp fetch --json --request-builds`
#      (from an empty _build), then the bench waits until the mirror's job listing shows no
#      open miss and no live job. It prints each round's hit rate per consumer and, per round,
#      the time from the first miss reported to every reported miss being available (closed
#      by a published build or a failure), with the number of jobs the worker did, their
#      build time, and the longest a leasable miss waited for the worker to lease it. Targets:
#      default and imported 100% on round 2, custom by round 3; a miss available within its
#      build time (plus the builds queued before it) and one worker poll: every lease wait at
#      most POLL + 1 s (the mirror records report times in whole seconds).
#
# Settings (environment): ROUNDS (3), POLL (worker poll seconds, 2), KEEP (0), PRECOMP (a
# precomp binary), WAIT_LIMIT (seconds to wait for the worker per round, 1800). Needs: cargo,
# elixir, rebar3, bubblewrap, curl, python3, skopeo, docker-registry, the trixie image in $PRECOMP_TOOLCHAIN_CACHE
# (/var/cache/precomp-test; `cargo test -p precomp-sandbox --test images` builds it), root
# (toolchain import). Exits non-zero only if a step fails; a missed target is reported.
set -euo pipefail
export LC_ALL=C

ROUNDS=${ROUNDS:-3}
POLL=${POLL:-2}
KEEP=${KEEP:-0}
WAIT_LIMIT=${WAIT_LIMIT:-1800}
CACHE=${PRECOMP_TOOLCHAIN_CACHE:-/var/cache/precomp-test}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "${PRECOMP:-}" ]; then
  (cd "$ROOT" && cargo build -q -p precomp)
  PRECOMP="$ROOT/target/debug/precomp"
fi

SCRATCH=$(mktemp -d /tmp/precomp-bench-hitrate.XXXXXX)
chmod 755 "$SCRATCH"
SERVER_PID=
WORKER_PID=
REGISTRY_PID=
cleanup() {
  for pid in $WORKER_PID $SERVER_PID $REGISTRY_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then echo "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# shellcheck source=bench/fixture_lock.sh
. "$ROOT/bench/fixture_lock.sh"
make_fixture_lock

# The mirror, with a builder token for the bench key.
mkdir -p "$SCRATCH/mirror"
TOKEN=$("$PRECOMP" --data "$SCRATCH/mirror" token create --name bench --key "$SCRATCH/keys/bench.pub" 2>/dev/null)
"$PRECOMP" --data "$SCRATCH/mirror" serve --listen 127.0.0.1:0 --upstream "file://$SCRATCH/repo" \
  --upstream-key "$SCRATCH/repo.pem.pub" >"$SCRATCH/serve.out" 2>"$SCRATCH/serve.err" &
SERVER_PID=$!
URL=
for _ in $(seq 100); do
  URL=$(sed -n 's/^precomp mirror listening on //p' "$SCRATCH/serve.out")
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$SCRATCH/serve.err"; exit 1; }

# The image-only toolchain: an OCI layout of our trixie root, imported into the worker's store.
TRIXIE_ROOT=$(grep -l '"suite": "trixie"' "$CACHE"/toolchains/*/toolchain.json | head -1 | xargs dirname)/root
[ -d "$TRIXIE_ROOT/usr/bin" ] || { echo "no trixie image in $CACHE/toolchains" >&2; exit 1; }
LAYOUT="$SCRATCH/ci-image"
mkdir -p "$LAYOUT/blobs/sha256" "$SCRATCH/worker"
chmod 755 "$SCRATCH/worker"
start=$(now)
# (The layout writer reads the layer from stdin, so it is a file, not a here-document.)
cat >"$SCRATCH/layout.py" <<'PY'
import gzip, hashlib, json, os, platform, sys
layout = sys.argv[1]
blobs = os.path.join(layout, "blobs", "sha256")
def put(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)
staged = os.path.join(layout, "layer.tmp")
diff_id = hashlib.sha256()
with open(staged, "wb") as raw:
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        while chunk := sys.stdin.buffer.read(1 << 20):
            diff_id.update(chunk)
            gz.write(chunk)
layer = hashlib.sha256()
with open(staged, "rb") as f:
    while chunk := f.read(1 << 20):
        layer.update(chunk)
size = os.path.getsize(staged)
os.rename(staged, os.path.join(blobs, layer.hexdigest()))
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
config = json.dumps({
    "architecture": arch, "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id.hexdigest()]},
}).encode()
config_digest, config_size = put(config)
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": config_digest, "size": config_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer.hexdigest(), "size": size}],
}).encode()
manifest_digest, manifest_size = put(manifest)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "trixie"}}]}, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
tar --numeric-owner -C "$TRIXIE_ROOT" -cf - . | python3 "$SCRATCH/layout.py" "$LAYOUT"
# The CI image's registry, on loopback (plain HTTP, which import allows on loopback only).
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$SCRATCH/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $SCRATCH/registry
http:
  addr: 127.0.0.1:$PORT
YML
docker-registry serve "$SCRATCH/registry.yml" >"$SCRATCH/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break
  sleep 0.1
done
IMPORTED="127.0.0.1:$PORT/ci/elixir:trixie"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$LAYOUT:trixie" "docker://$IMPORTED"
rm -rf "$LAYOUT"
"$PRECOMP" --data "$SCRATCH/worker" toolchain import "$IMPORTED" >"$SCRATCH/import.out" 2>"$SCRATCH/import.err" \
  || { cat "$SCRATCH/import.err"; exit 1; }
IMPORTED_ID=$("$PRECOMP" --data "$SCRATCH/worker" toolchain list --json | python3 -c '
import json, sys
print(next(t["id"] for t in json.load(sys.stdin) if t["id"] != "host"))')
printf 'pushed the trixie root to %s and imported it as toolchain %s in %.0f s\n' "$IMPORTED" "$IMPORTED_ID" \
  "$(elapsed "$start" "$(now)")"

# Each line of the worker's output with the time it came: a job's start ("job N: building" on
# stderr) and its end (its JSON line on stdout).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }

# The worker: the host toolchain and the imported one.
"$PRECOMP" --data "$SCRATCH/worker" worker --mirror "$URL" --token "$TOKEN" --key "$SCRATCH/keys/bench.key" \
  --toolchain host --toolchain "$IMPORTED" --poll-seconds "$POLL" --name bench --json \
  > >(stamp >"$SCRATCH/worker.out") 2> >(stamp >"$SCRATCH/worker.err") &
WORKER_PID=$!

# The consumers.
"$PRECOMP" --data "$SCRATCH/prepare" build --lock "$SCRATCH/mix.lock" --mirror "$URL" \
  --key "$SCRATCH/keys/bench.key" --prepare "$SCRATCH/default" 2>/dev/null
# The builder's project pins each dependency's manager (`manager:`), which a consumer's mix.exs
# does not: precomp fetch leaves a dependency with `manager:` set to Mix.
sed -i 's/, manager: :[a-z0-9]*//' "$SCRATCH/default/mix.exs"
cp "$SCRATCH/mix.lock" "$SCRATCH/default/mix.lock"
for dep in "$SCRATCH/default"/deps/*; do touch "$dep/.fetch"; done
cp -a "$SCRATCH/default" "$SCRATCH/custom"
cp -a "$SCRATCH/default" "$SCRATCH/imported"
mkdir -p "$SCRATCH/custom/config"
cat >"$SCRATCH/custom/config/config.exs" <<'EXS'
import Config
config :env_reader, greeting: "hitrate bench", format: [punctuation: "!"]
EXS
BIN="$SCRATCH/trixie-bin"
mkdir -p "$BIN"
for name in elixir mix erl; do
  printf '#!/bin/sh\nexec bwrap --bind / / --dev-bind /dev /dev --ro-bind %q /usr --ro-bind %q /etc -- /usr/bin/%s "$@"\n' \
    "$TRIXIE_ROOT/usr" "$TRIXIE_ROOT/etc" "$name" >"$BIN/$name"
  chmod 755 "$BIN/$name"
done

# fetch CONSUMER ROUND: prints the hit rate and writes the fetch's JSON lines.
fetch() {
  local consumer=$1 round=$2 path=$PATH out="$SCRATCH/fetch-$1-$2.json"
  [ "$consumer" = imported ] && path="$BIN:$PATH"
  rm -rf "$SCRATCH/$consumer/_build"
  PATH=$path MIX_ENV=dev "$PRECOMP" fetch --project "$SCRATCH/$consumer" --mirror "$URL" \
    --trust "$SCRATCH/keys/bench.pub" --json --request-builds >"$out" 2>"$SCRATCH/fetch-$consumer-$round.err" \
    || { cat "$SCRATCH/fetch-$consumer-$round.err"; exit 1; }
  python3 - "$out" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
summary = next(l for l in lines if l.get("summary"))
deps = [l for l in lines if not l.get("summary")]
hits = sum(1 for d in deps if d["status"] in ("installed", "current", "replaced"))
misses = [f'{d["app"]}({d.get("kind", "?")})' for d in deps if d["status"] == "miss"]
print(f'{hits}/{len(deps)} {100.0 * hits / max(len(deps), 1):.0f}% '
      f'OTP {summary["otp"]} Elixir {summary["elixir"]} reported {summary["requested_builds"]}'
      + (f' misses: {" ".join(misses)}' if misses else ''))
PY
}

# Open misses and live jobs on the mirror, as "MISSES JOBS".
pending() {
  curl -sf -H "authorization: Bearer $TOKEN" "$URL/precomp/v1/jobs" | python3 -c '
import json, sys
listing = json.load(sys.stdin)
print(sum(t["open_misses"] for t in listing["tuples"]), len(listing["jobs"]))'
}

# When the oldest open miss was first reported (unix seconds), else now.
oldest_reported() {
  curl -sf -H "authorization: Bearer $TOKEN" "$URL/precomp/v1/jobs" | python3 -c '
import json, sys, time
tuples = json.load(sys.stdin)["tuples"]
print(min((t["oldest_reported"] for t in tuples), default=time.time()))'
}

echo "bench/hitrate: fixture lock ($PACKAGES packages), worker poll ${POLL} s, $(nproc) CPUs, $ROUNDS rounds"
declare -A RATE
for round in $(seq "$ROUNDS"); do
  # The round's first miss counts from when the mirror recorded it (its first_reported, in
  # whole seconds, rounded down: the wait is over-estimated by up to 1 s); the worker's jobs
  # of the round are those started after the round's first fetch began.
  round_start=$(now)
  reported=
  for consumer in default custom imported; do
    line=$(fetch "$consumer" "$round")
    RATE[$consumer,$round]=${line%% *}
    printf '  round %d %-8s %s\n' "$round" "$consumer" "$line"
    case "$line" in
      *" reported 0"*) ;;
      *) [ -n "$reported" ] || reported=$(oldest_reported) ;;
    esac
  done
  [ -n "$reported" ] || { printf '  round %d: nothing reported\n' "$round"; continue; }
  waited=0
  while true; do
    read -r open live < <(pending)
    [ "$open" = 0 ] && [ "$live" = 0 ] && break
    waited=$(elapsed "$reported" "$(now)")
    awk -v w="$waited" -v l="$WAIT_LIMIT" 'BEGIN { exit !(w > l) }' && { echo "  the worker did not catch up within $WAIT_LIMIT s" >&2; exit 1; }
    sleep 1
  done
  done_at=$(now)
  # The jobs this round: started after the misses were reported. Build time: each job's end
  # (its JSON line) minus its start; what the wait has on top is leasing, polling and the
  # listing's 1 s poll, which should be at most one worker poll + 1 s.
  python3 - "$SCRATCH/worker.err" "$SCRATCH/worker.out" "$reported" "$done_at" "$POLL" "$round" "$round_start" <<'PY'
import json, re, sys
err, out, reported, done_at, poll, round_, round_start = sys.argv[1:8]
reported, done_at, poll, round_start = float(reported), float(done_at), float(poll), float(round_start)
starts, ends = {}, {}
for line in open(err):
    t, _, text = line.partition(" ")
    m = re.match(r"job (\d+): building (\S+) (\S+) .* with toolchain (\S+)", text)
    if m and float(t) >= round_start:
        starts[m.group(1)] = (float(t), m.group(2), m.group(4))
for line in open(out):
    t, _, text = line.partition(" ")
    try:
        job = json.loads(text)
    except ValueError:
        continue
    if str(job.get("job")) in starts:
        ends[str(job["job"])] = (float(t), job.get("outcome"))
if not starts:
    print(f"  round {round_}: nothing to build")
    sys.exit()
build = sum(ends[j][0] - starts[j][0] for j in ends)
# Available: the last job's result line (printed once it published or recorded a failure).
wait = max((e[0] for e in ends.values()), default=done_at) - reported
# A miss waits for the jobs before it, then at most one poll to be leased, then its build: the
# idle gap before each job (from the previous job's end, or the first report) is that poll.
gaps, free = [], reported
for j in sorted(starts, key=lambda j: starts[j][0]):
    gaps.append(max(0.0, starts[j][0] - free))
    free = ends.get(j, (starts[j][0], None))[0]
outcomes = {}
for j, (_, outcome) in ends.items():
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
toolchains = sorted({s[2] for s in starts.values()})
verdict = "met" if max(gaps) <= poll + 1 else "MISSED"
print(f"  round {round_}: {len(starts)} jobs ({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))}; "
      f"toolchains {', '.join(toolchains)}): first miss reported -> every miss available {wait:.1f} s, "
      f"of which building {build:.1f} s; longest wait for a lease {max(gaps):.1f} s "
      f"(target <= poll {poll:.0f} s + 1 s: {verdict})")
PY
done

verdict() { [ "$1" = "$2" ] && echo met || echo MISSED; }
full() { local c; c=${RATE[$1,$2]:-0/0}; [ "${c%/*}" = "${c#*/}" ] && echo yes || echo no; }
echo "hit rates (hits/dependencies): $(for c in default custom imported; do
  printf '%s' "$c"; for r in $(seq "$ROUNDS"); do printf ' %s' "${RATE[$c,$r]}"; done; printf '; '; done)"
echo "targets: default 100% on round 2: $(verdict "$(full default 2)" yes); imported 100% on round 2: $(verdict "$(full imported 2)" yes); custom 100% by round 3: $(verdict "$(full custom 3)" yes)"
