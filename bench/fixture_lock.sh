# Sourced by bench/builder/run.sh and bench/fetch/run.sh: timing helpers, and the fixture
# repository, builder key and lock both benchmarks measure. Expects ROOT, PRECOMP, SCRATCH.

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Every fixture release, shapes at 1.0.0: the largest fixture lock.
RELEASES="counter_ex@1.0.0 env_reader@1.0.0 erl_counter@1.0.0 erl_ids@1.0.0 mk_erl@1.0.0
  opt_user@1.0.0 plain_ex@1.0.0 shape_user@1.0.0 shapes@1.0.0 tiny_nif@1.0.0"
PACKAGES=$(echo $RELEASES | wc -w)

# $SCRATCH/repo (signed static repository of tests/fixtures/packages), $SCRATCH/keys/bench.key
# (+ .pub), $SCRATCH/mix.lock.
make_fixture_lock() {
  "$PRECOMP" repo keygen --out "$SCRATCH/repo.pem" >/dev/null
  "$PRECOMP" repo build --packages "$ROOT/tests/fixtures/packages" --key "$SCRATCH/repo.pem" \
    --out "$SCRATCH/repo" >/dev/null
  "$PRECOMP" keys generate --name bench --out "$SCRATCH/keys" >/dev/null
  # shellcheck disable=SC2086
  "$PRECOMP" repo lock --repo "$SCRATCH/repo" --public-key "$SCRATCH/repo.pem.pub" \
    --out "$SCRATCH/mix.lock" $RELEASES
}
