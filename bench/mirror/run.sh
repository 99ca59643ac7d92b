#!/usr/bin/env bash
# bench/mirror: how fast `precomp serve` serves objects it has cached, next to nginx serving
# the same files from disk, on this machine, in the same run.
#
#   bash bench/mirror/run.sh
#
# What it does, start to finish (everything on 127.0.0.1, everything stopped on exit):
#   1. builds precomp in release mode (cargo build --release -p precomp);
#   2. makes a key (precomp repo keygen) and a signed static repository from
#      tests/fixtures/packages (precomp repo build) in a scratch directory;
#   3. starts Debian's nginx on that directory (worker_processes 2, sendfile, open_file_cache,
#      keep-alive without a request limit, access_log off); it is both precomp's upstream and
#      the reference server;
#   4. starts `precomp serve` (the release binary, default settings) with that nginx as
#      --upstream and the repository's key as --upstream-key;
#   5. warms the mirror: GETs every tarball and /packages/NAME once through it, and checks the
#      bytes equal the files nginx serves;
#   6. for tarballs, then for registry files: runs wrk (THREADS threads, CONNECTIONS keep-alive
#      connections) against precomp, then against nginx, one after the other, each with a
#      WARMUP run that is thrown away followed by a DURATION run that is measured; wrk's
#      script (paths.lua) cycles through the same list of paths for both servers; CPU time
#      of the server, of wrk and of the whole machine is recorded for each measured run;
#   7. runs wrk once more on cached tarballs with HIGH_CONNECTIONS (1000) connections against
#      precomp, which must answer every request without an error (the open file limit is
#      raised for it);
#   8. prints a table, whether the target holds (tarballs: precomp >= 0.9 x nginx's
#      requests/s, precomp p99 < 10 ms, and no error at 1000 connections), and one summary
#      line per object kind, tarballs last.
# bench/mirror/README.md says how to read the output.
#
# Settings (environment): DURATION (default 10s), WARMUP (3s), CONNECTIONS (64), HIGH_CONNECTIONS (1000), THREADS (2),
# PIN (0: no CPU pinning, server and wrk share every core; 1: server on CPU 0, wrk on CPU 1,
# with taskset), KEEP (0; 1 keeps the scratch directory and prints its path), PRECOMP (a
# precomp binary to measure instead of building one, e.g. to compare two builds), QUIET_WAIT
# (0; N waits up to N seconds before each run for the machine to be quiet, 3 s in a row with
# under 10% of its CPU busy, and repeats a run that other load disturbed, up to 3 times: for
# shared machines).
# Needs: cargo, nginx and wrk (Debian: apt-get install nginx wrk; .ci/setup installs both), curl.
# Exits non-zero only if the setup fails or a server answers with errors; a missed target is
# reported, not an error.
set -euo pipefail
export LC_ALL=C
# 1000 connections for wrk, as many for precomp, and nginx's: raise the open file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PIN=${PIN:-0}
HIGH_CONNECTIONS=${HIGH_CONNECTIONS:-1000}
KEEP=${KEEP:-0}
QUIET_WAIT=${QUIET_WAIT:-0}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

for tool in cargo curl wrk /usr/sbin/nginx; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench/mirror: $tool is missing (apt-get install nginx wrk curl; see .ci/setup)" >&2
    exit 1
  }
done
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null 2>&1 || { echo "bench/mirror: PIN=1 needs taskset" >&2; exit 1; }
  [ "$(nproc)" -ge 2 ] || { echo "bench/mirror: PIN=1 needs 2 CPUs" >&2; exit 1; }
  server_cpu=(taskset -c 0)
  client_cpu=(taskset -c 1)
else
  server_cpu=()
  client_cpu=()
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/precomp-bench-mirror.XXXXXX")
precomp_pid=""
nginx_pid=""
cleanup() {
  local status=$?
  [ -z "$precomp_pid" ] || { kill "$precomp_pid" 2>/dev/null || true; wait "$precomp_pid" 2>/dev/null || true; }
  [ -z "$nginx_pid" ] || { kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; }
  if [ "$KEEP" = 1 ]; then
    echo "bench/mirror: scratch directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "bench/mirror: $*" >&2; }

# 1. Build (unless PRECOMP names a binary to measure instead).
if [ -n "${PRECOMP:-}" ]; then
  precomp=$(cd "$(dirname "$PRECOMP")" && pwd)/$(basename "$PRECOMP")
  log "using $precomp (not building)"
else
  log "building precomp (release)"
  cargo build --release --quiet -p precomp
  precomp="$root/target/release/precomp"
fi

# 2. A signed static repository.
log "building the static repository from tests/fixtures/packages"
"$precomp" repo keygen --out "$work/key.pem" >/dev/null
"$precomp" --data "$work/build-data" repo build --packages tests/fixtures/packages \
  --key "$work/key.pem" --out "$work/repo" >/dev/null
# nginx's workers run as an unprivileged user when nginx is started as root.
chmod -R a+rX "$work"
(cd "$work/repo" && find tarballs -type f -name '*.tar' | sort | sed 's|^|/|') >"$work/tarballs.paths"
(cd "$work/repo" && find packages -type f | sort | sed 's|^|/|') >"$work/registry.paths"
[ -s "$work/tarballs.paths" ] && [ -s "$work/registry.paths" ] || { log "the repository is empty"; exit 1; }

# 3. nginx on the repository: the upstream and the reference.
nginx_config() {
  local port=$1
  cat <<EOF
daemon off;
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    types { }
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    etag on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    server {
        listen 127.0.0.1:$port;
        root $work/repo;
        # The same Cache-Control headers precomp sends (as hex.pm does).
        location /tarballs/ { add_header Cache-Control "public, max-age=604800"; }
        location / { add_header Cache-Control "public, max-age=3600"; }
    }
}
EOF
}

wait_http() { # URL SECONDS PID: waits until URL answers 200, or the process dies.
  local url=$1 deadline=$((SECONDS + $2)) pid=$3
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

mkdir -p "$work/nginx"
nginx_port=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  # Skip a port something already answers on.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
  nginx_config "$port" >"$work/nginx/nginx.conf"
  "${server_cpu[@]}" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" \
    -e "$work/nginx/error.log" </dev/null >/dev/null 2>&1 &
  nginx_pid=$!
  if wait_http "http://127.0.0.1:$port/names" 10 "$nginx_pid"; then
    nginx_port=$port
    break
  fi
  kill "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=""
done
[ -n "$nginx_port" ] || { log "nginx did not start:"; cat "$work/nginx/error.log" >&2; exit 1; }
nginx_url="http://127.0.0.1:$nginx_port"
log "nginx serving the repository at $nginx_url"

# 4. precomp serve, defaults but for the upstream.
"${server_cpu[@]}" "$precomp" --data "$work/precomp-data" serve --listen 127.0.0.1:0 \
  --upstream "$nginx_url" --upstream-key "$work/key.pem.pub" \
  </dev/null >"$work/precomp.out" 2>"$work/precomp.err" &
precomp_pid=$!
precomp_url=""
deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
  line=$(head -n 1 "$work/precomp.out" 2>/dev/null || true)
  if [[ "$line" == "precomp mirror listening on http://"* ]]; then
    precomp_url=${line#precomp mirror listening on }
    break
  fi
  kill -0 "$precomp_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$precomp_url" ] || { log "precomp serve did not start:"; cat "$work/precomp.err" >&2; exit 1; }
log "precomp serving at $precomp_url (upstream $nginx_url)"

# 5. Warm the mirror: every object once, and the same bytes as the files.
warm() {
  local path
  while read -r path; do
    curl -fsS -o "$work/fetched" "$precomp_url$path" || { log "warming $path failed"; exit 1; }
    cmp -s "$work/fetched" "$work/repo$path" || { log "$path: precomp's bytes differ from the file"; exit 1; }
  done <"$1"
}
warm "$work/registry.paths"
warm "$work/tarballs.paths"
upstream_total() { # requests the mirror has sent upstream so far
  curl -fsS "$precomp_url/metrics" | awk '/^precomp_mirror_upstream_requests_total/ { n += $2 } END { print n + 0 }'
}
upstream_before=$(upstream_total)
log "mirror warm: $(wc -l <"$work/tarballs.paths") tarballs, $(wc -l <"$work/registry.paths") registry files cached"

# 6. Load: one server at a time.
# Besides wrk's figures, each measured run records CPU time (clock ticks, from /proc): the
# server's (all its processes and threads), wrk's, and the whole machine's. What neither used
# is other load on the machine during the run, which makes a run's figures unreliable when it
# is large.
tick_us=$((1000000 / $(getconf CLK_TCK)))
cpus=$(nproc)
# Busy time: user + nice + system + irq + softirq + steal. (Softirq work, most of which is
# the loopback traffic itself, is charged to the process it interrupted.)
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# CPU time of the waited-for children of this script's shell (wrk, once it has exited).
children_ticks() { awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"; }
process_ticks() { # PID...: user + system ticks of these processes, all threads
  local pid
  for pid in "$@"; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
    awk '{ sub(/^.*\) /, ""); n += $12 + $13 } END { print n + 0 }'
}
server_pids() { # SERVER
  if [ "$1" = precomp ]; then echo "$precomp_pid"; else echo "$nginx_pid" $(pgrep -P "$nginx_pid" || true); fi
}

wait_quiet() { # waits up to QUIET_WAIT seconds for 3 s in a row under 10% busy
  local deadline=$((SECONDS + QUIET_WAIT)) quiet=0 m0 m1
  while [ "$SECONDS" -lt "$deadline" ]; do
    m0=$(machine_ticks)
    sleep 1
    m1=$(machine_ticks)
    if [ $(((m1 - m0) * tick_us)) -lt $((cpus * 100000)) ]; then quiet=$((quiet + 1)); else quiet=0; fi
    [ "$quiet" -lt 3 ] || return 0
  done
  [ "$QUIET_WAIT" -eq 0 ] || log "    the machine is still busy after ${QUIET_WAIT}s; measuring anyway"
}

declare -A result
run_wrk() { # KIND SERVER URL
  local kind=$1 server=$2 url=$3 out line pids m0 s0 c0 m1 s1 c1
  wait_quiet
  BENCH_PATHS="$work/$kind.paths" "${client_cpu[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" \
    -d "$WARMUP" -s "$here/paths.lua" "$url" >"$work/wrk-$kind-$server-warmup.txt"
  out="$work/wrk-$kind-$server.txt"
  read -r -a pids <<<"$(server_pids "$server")"
  c0=$(children_ticks)
  m0=$(machine_ticks)
  s0=$(process_ticks "${pids[@]}")
  BENCH_PATHS="$work/$kind.paths" "${client_cpu[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" \
    -d "$DURATION" --latency -s "$here/paths.lua" "$url" >"$out"
  s1=$(process_ticks "${pids[@]}")
  m1=$(machine_ticks)
  c1=$(children_ticks)
  line=$(grep '^BENCH ' "$out") || { log "wrk printed no result:"; cat "$out" >&2; exit 1; }
  line+=" server_ticks=$((s1 - s0)) machine_ticks=$((m1 - m0)) client_ticks=$((c1 - c0))"
  # Machine CPU used by neither the server nor wrk, as a share of all CPUs.
  line+=" other=$(awk -v o=$(((m1 - m0) - (s1 - s0) - (c1 - c0))) -v us="$tick_us" -v cpus="$cpus" \
    -v d="$(field "$line" duration_us)" 'BEGIN { o = o * us / (cpus * d) * 100; printf "%.0f", o < 0 ? 0 : o }')"
  result[$kind.$server]=$line
}
field() { # LINE NAME
  local word
  for word in $1; do
    [[ "$word" == "$2="* ]] && { echo "${word#*=}"; return; }
  done
}
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

log "load: wrk -t $THREADS -c $CONNECTIONS, warm-up $WARMUP, measured $DURATION, pinning $([ "$PIN" = 1 ] && echo "server CPU 0, wrk CPU 1" || echo off)"
for kind in tarballs registry; do
  for server in precomp nginx; do
    if [ "$server" = precomp ]; then url=$precomp_url; else url=$nginx_url; fi
    log "  $kind from $server"
    for attempt in 1 2 3; do
      run_wrk "$kind" "$server" "$url"
      # On a shared machine (QUIET_WAIT set), a run disturbed by other load is done again.
      [ "$QUIET_WAIT" -gt 0 ] && [ "$(field "${result[$kind.$server]}" other)" -ge 10 ] || break
      [ "$attempt" -eq 3 ] || log "    other load during the run ($(field "${result[$kind.$server]}" other)%): again"
    done
  done
done

# Many connections at once: every request answered, none refused.
log "  tarballs from precomp with $HIGH_CONNECTIONS connections"
run_wrk_high() {
  local out="$work/wrk-tarballs-precomp-c$HIGH_CONNECTIONS.txt" line
  wait_quiet
  BENCH_PATHS="$work/tarballs.paths" "${client_cpu[@]}" wrk -t "$THREADS" -c "$HIGH_CONNECTIONS" \
    -d "$WARMUP" -s "$here/paths.lua" "$precomp_url" >/dev/null
  BENCH_PATHS="$work/tarballs.paths" "${client_cpu[@]}" wrk -t "$THREADS" -c "$HIGH_CONNECTIONS" \
    -d "$DURATION" --latency -s "$here/paths.lua" "$precomp_url" >"$out"
  line=$(grep '^BENCH ' "$out") || { log "wrk printed no result:"; cat "$out" >&2; exit 1; }
  high=$line
}
run_wrk_high

# The mirror should have answered everything from its cache.
upstream_after=$(upstream_total)

# 7. Report.
echo
echo "bench/mirror: $(date -u +%Y-%m-%dT%H:%M:%SZ), wrk -t $THREADS -c $CONNECTIONS -d $DURATION (after $WARMUP warm-up), keep-alive, pinning $([ "$PIN" = 1 ] && echo on || echo off)"
echo "machine: $cpus CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r);" \
  "$(/usr/sbin/nginx -v 2>&1 | sed 's/^nginx version: //');" \
  "wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }');" \
  "precomp $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)$([ -n "${PRECOMP:-}" ] && echo " (binary $precomp)")"
printf '%-9s %-8s %9s %7s %7s %7s %7s %6s %5s %5s %6s\n' objects server req/s "p50 ms" "p90 ms" \
  "p99 ms" "max ms" errors srv% wrk% other%
share() { # TICKS: as a percentage of all CPUs over the measured run of $line
  awk -v t="$1" -v us="$tick_us" -v d="$(field "$line" duration_us)" -v cpus="$cpus" \
    'BEGIN { printf "%.0f", t * us / (cpus * d) * 100 }'
}
failed=0
busy=0
for kind in tarballs registry; do
  for server in precomp nginx; do
    line=${result[$kind.$server]}
    errors=$(($(field "$line" non2xx) + $(field "$line" socket_errors)))
    [ "$errors" -eq 0 ] || failed=1
    other=$(field "$line" other)
    [ "$other" -lt 10 ] || busy=1
    printf '%-9s %-8s %9.0f %7s %7s %7s %7s %6d %5s %5s %6s\n' "$kind" "$server" "$(field "$line" rps)" \
      "$(ms "$(field "$line" p50_us)")" "$(ms "$(field "$line" p90_us)")" \
      "$(ms "$(field "$line" p99_us)")" "$(ms "$(field "$line" max_us)")" "$errors" \
      "$(share "$(field "$line" server_ticks)")" "$(share "$(field "$line" client_ticks)")" "$other"
  done
done
high_errors=$(($(field "$high" non2xx) + $(field "$high" socket_errors)))
[ "$high_errors" -eq 0 ] || failed=1
printf '%-9s %-8s %9.0f %7s %7s %7s %7s %6d   (%d connections)\n' tarballs precomp "$(field "$high" rps)" \
  "$(ms "$(field "$high" p50_us)")" "$(ms "$(field "$high" p90_us)")" "$(ms "$(field "$high" p99_us)")" \
  "$(ms "$(field "$high" max_us)")" "$high_errors" "$HIGH_CONNECTIONS"
if [ "$busy" -ne 0 ]; then
  echo "warning: other processes used 10% or more of the machine's CPU during a run (other%): its figures are unreliable"
fi
if [ "$upstream_after" -ne "$upstream_before" ]; then
  echo "note: the mirror sent $((upstream_after - upstream_before)) requests upstream during the load runs (registry TTL expired?)"
fi
declare -A ratio_of summary_of
for kind in tarballs registry; do
  p=${result[$kind.precomp]}
  n=${result[$kind.nginx]}
  ratio_of[$kind]=$(awk -v a="$(field "$p" rps)" -v b="$(field "$n" rps)" 'BEGIN { printf "%.2f", a / b }')
  summary_of[$kind]=$(printf '%s: precomp %.0f req/s p50 %s ms p99 %s ms | nginx %.0f req/s p50 %s ms p99 %s ms | ratio %s' \
    "$kind" "$(field "$p" rps)" "$(ms "$(field "$p" p50_us)")" "$(ms "$(field "$p" p99_us)")" \
    "$(field "$n" rps)" "$(ms "$(field "$n" p50_us)")" "$(ms "$(field "$n" p99_us)")" "${ratio_of[$kind]}")
done
p99_ms=$(ms "$(field "${result[tarballs.precomp]}" p99_us)")
if awk -v r="${ratio_of[tarballs]}" -v p="$p99_ms" -v e="$high_errors" 'BEGIN { exit !(r >= 0.9 && p < 10 && e == 0) }'; then
  echo "target (tarballs: ratio >= 0.90, precomp p99 < 10 ms, no error at $HIGH_CONNECTIONS connections): met"
else
  echo "target (tarballs: ratio >= 0.90, precomp p99 < 10 ms, no error at $HIGH_CONNECTIONS connections): MISSED"
fi
echo
echo "${summary_of[registry]}"
echo "${summary_of[tarballs]}"
if [ "$failed" -ne 0 ]; then
  log "a server answered with errors (non-2xx or socket errors, or errors at $HIGH_CONNECTIONS connections); wrk's output is in $work (KEEP=1 keeps it)"
  exit 1
fi
