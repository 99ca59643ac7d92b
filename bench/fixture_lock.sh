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

# The same, for N generated Mix packages of M modules each (SYNTHETIC=N MODULES=M): a lock of
# the size the issues' targets speak of (a 26-package Phoenix-style lock), made of our own
# generated code. The first package is a dependency of every other one, as telemetry or plug
# are. Names are zero-padded to N's width (synth_01..synth_26, synth_001..synth_150).
#
# F (optional, default 0) sets how heavy each module is: 0 gives the small modules bench/builder
# measures (20 one-line functions); F > 0 gives F functions each returning its own 32-digit
# label, so beams weigh and compress about as real ones do (~2.7:1): F=50 with M=40 makes about
# 190 KiB of artifact per package, 5.5 MiB for 29 packages, like the real Phoenix 1.7 stack.
make_synthetic_lock() {
  local n=$1 m=$2 f=${3:-0} dir="$SCRATCH/packages" i j name first functions
  first=$(seq -w 1 "$n" | head -n 1)
  if [ "$f" -gt 0 ]; then
    functions="for k <- 1..$f do
    label = Base.encode16(:erlang.md5(\"#{__MODULE__}/#{k}\"))
    def unquote(:\"f#{k}\")(x), do: {x * unquote(k) + JJ, unquote(label)}
  end"
  else
    functions='for k <- 1..20, do: def unquote(:"f#{k}")(x), do: x * unquote(k) + JJ'
  fi
  RELEASES=""
  for i in $(seq -w 1 "$n"); do
    name="synth_$i"
    mkdir -p "$dir/$name/lib/$name"
    local deps="[]"
    [ "$i" != "$first" ] && deps="[{:synth_$first, \"~> 1.0\"}]"
    cat >"$dir/$name/mix.exs" <<MIX
defmodule Synth$i.MixProject do
  use Mix.Project

  def project do
    [app: :$name, version: "1.0.0", elixir: "~> 1.14", deps: $deps,
     description: "precomp bench: generated package $i of $n.",
     package: [licenses: ["Apache-2.0"], links: %{}]]
  end

  def application, do: [extra_applications: [:logger]]
end
MIX
    for j in $(seq -w 1 "$m"); do
      cat >"$dir/$name/lib/$name/mod_$j.ex" <<EX
defmodule Synth$i.Mod$j do
  @moduledoc "Generated module $j of package $i."
  defstruct [:id, :name, tags: [], count: 0]

  @doc "Builds a value."
  def new(id, name), do: %__MODULE__{id: id, name: name}

  def tag(%__MODULE__{} = v, tag), do: %{v | tags: [tag | v.tags], count: v.count + 1}

  def describe(%__MODULE__{id: id, name: name, count: count}) do
    "#{__MODULE__}:#{id}:#{name}:#{count}" |> String.upcase() |> String.split(":") |> Enum.join("/")
  end

  def sum(list) when is_list(list), do: Enum.reduce(list, 0, fn x, acc -> x * $j + acc end)
  ${functions//JJ/$j}
end
EX
    done
    RELEASES="$RELEASES $name@1.0.0"
  done
  PACKAGES=$n
  "$PRECOMP" repo keygen --out "$SCRATCH/repo.pem" >/dev/null
  "$PRECOMP" repo build --packages "$dir" --key "$SCRATCH/repo.pem" --out "$SCRATCH/repo" >/dev/null
  "$PRECOMP" keys generate --name bench --out "$SCRATCH/keys" >/dev/null
  # shellcheck disable=SC2086
  "$PRECOMP" repo lock --repo "$SCRATCH/repo" --public-key "$SCRATCH/repo.pem.pub" \
    --out "$SCRATCH/mix.lock" $RELEASES
}

# The same for the generated Phoenix-sized stack (SYNTHETIC=stack): 29 packages of our own
# generated code shaped like a real Phoenix + Ecto + Cowboy lock — Mix, rebar3 and
# erlang.mk-style members, a NIF, ~560 modules, ~6 MB of beams (bench/synthetic_stack.exs).
make_stack_lock() {
  RELEASES=$(elixir "$ROOT/bench/synthetic_stack.exs" "$SCRATCH/packages")
  PACKAGES=$(echo $RELEASES | wc -w)
  "$PRECOMP" repo keygen --out "$SCRATCH/repo.pem" >/dev/null
  "$PRECOMP" repo build --packages "$SCRATCH/packages" --key "$SCRATCH/repo.pem" --out "$SCRATCH/repo" >/dev/null
  "$PRECOMP" keys generate --name bench --out "$SCRATCH/keys" >/dev/null
  # shellcheck disable=SC2086
  "$PRECOMP" repo lock --repo "$SCRATCH/repo" --public-key "$SCRATCH/repo.pem.pub" \
    --out "$SCRATCH/mix.lock" $RELEASES
}
