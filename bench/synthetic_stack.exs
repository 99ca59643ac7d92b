# Writes a generated Phoenix-sized dependency stack for the benchmarks into DIR:
#
#   elixir bench/synthetic_stack.exs DIR
#
# 29 packages of our own generated code (no third-party source) with the shape of a real
# Phoenix + Ecto + Cowboy lock (../shared/design/mix-mechanics.md §7): 22 Mix packages of
# 2 to 90 modules (structs, docs, macros used by dependents, binary pattern matching), three
# rebar3 packages, three erlang.mk-style packages (a committed ebin/APP.app and a Makefile:
# syn_cowlib and syn_cowboy with a rebar.config, so their build tools are [make, rebar3];
# syn_ranch with none, so [make] only, like ranch 1.8.0), one NIF built with make from a
# Mix compiler, and priv files. syn_cowlib stands for cowlib: a few huge generated parsers
# that take the Erlang compiler seconds, at the head of the cowlib -> cowboy -> plug_cowboy
# -> phoenix chain. About 560 modules and 6 MB of beams in all.
#
# Names, versions and dependencies come from the table below; every package is 1.0.0.

[dir] = System.argv()

defmodule Stack do
  # Iterations of compile-time work per Elixir module (Macros.precomputed/1): calibrated so
  # that `mix deps.compile` of the stack takes about the CPU time the real stack's does here
  # (mix-mechanics.md §7: ~51 s, of which ~19 s in rebar3).
  @macro_work 1_200_000

  # {name, kind, modules, functions per module, deps}; a dep ending in "?" is optional.
  # kinds: :mix, :rebar3, :mk (erlang.mk, with rebar.config), :mk_only (erlang.mk, Makefile
  # only), :nif (Mix + a C NIF).
  def packages do
    [
      {"syn_telemetry", :rebar3, 3, 30, []},
      {"syn_telemetry_poller", :rebar3, 4, 30, ["syn_telemetry"]},
      {"syn_mime", :mix, 2, 116, []},
      {"syn_decimal", :mix, 4, 35, []},
      {"syn_jason", :mix, 12, 15, ["syn_decimal?"]},
      {"syn_nimble_options", :mix, 6, 13, []},
      {"syn_nimble_parsec", :mix, 8, 20, []},
      {"syn_castore", :mix, 2, 10, []},
      {"syn_plug_crypto", :mix, 8, 10, []},
      {"syn_cowlib", :mk, 14, 15, []},
      {"syn_ranch", :mk_only, 25, 10, []},
      {"syn_cowboy", :mk, 40, 12, ["syn_cowlib", "syn_ranch"]},
      {"syn_cowboy_telemetry", :rebar3, 2, 20, ["syn_cowboy", "syn_telemetry"]},
      {"syn_plug", :mix, 45, 12, ["syn_mime", "syn_plug_crypto", "syn_telemetry"]},
      {"syn_db_connection", :mix, 20, 12, ["syn_telemetry"]},
      {"syn_ecto", :mix, 90, 12, ["syn_decimal", "syn_jason?", "syn_telemetry"]},
      {"syn_postgrex", :mix, 60, 12, ["syn_db_connection", "syn_decimal", "syn_jason?"]},
      {"syn_ecto_sql", :mix, 40, 12,
       ["syn_db_connection", "syn_ecto", "syn_postgrex?", "syn_telemetry"]},
      {"syn_phoenix_pubsub", :mix, 10, 10, []},
      {"syn_phoenix_template", :mix, 5, 10, []},
      {"syn_phoenix_html", :mix, 12, 12, []},
      {"syn_websock", :mix, 2, 20, []},
      {"syn_websock_adapter", :mix, 5, 8, ["syn_plug", "syn_websock"]},
      {"syn_telemetry_metrics", :mix, 10, 10, ["syn_telemetry"]},
      {"syn_plug_cowboy", :mix, 10, 10, ["syn_cowboy", "syn_cowboy_telemetry", "syn_plug"]},
      {"syn_phoenix", :mix, 80, 12,
       [
         "syn_castore?",
         "syn_jason?",
         "syn_phoenix_pubsub",
         "syn_phoenix_template",
         "syn_plug",
         "syn_plug_cowboy?",
         "syn_plug_crypto",
         "syn_telemetry",
         "syn_websock_adapter"
       ]},
      {"syn_phoenix_ecto", :mix, 8, 10, ["syn_ecto", "syn_phoenix_html?", "syn_plug"]},
      {"syn_gettext", :mix, 15, 12, ["syn_nimble_parsec"]},
      {"syn_nif", :nif, 2, 20, []}
    ]
  end

  def camel(name), do: Macro.camelize(name)

  def dep_name(dep), do: String.trim_trailing(dep, "?")

  def write(dir) do
    for {name, kind, modules, functions, deps} <- packages() do
      root = Path.join(dir, name)
      File.rm_rf!(root)
      File.mkdir_p!(root)

      case kind do
        kind when kind in [:mix, :nif] -> mix_package(root, name, kind, modules, functions, deps)
        :rebar3 -> rebar3_package(root, name, modules, functions, deps)
        kind when kind in [:mk, :mk_only] -> erlang_mk_package(root, name, kind, modules, functions, deps)
      end
    end
  end

  # ---- Mix packages ----------------------------------------------------------------------

  def mix_package(root, name, kind, modules, functions, deps) do
    mod = camel(name)
    lib = Path.join([root, "lib", name])
    File.mkdir_p!(lib)

    dep_specs =
      Enum.map(deps, fn dep ->
        if String.ends_with?(dep, "?"),
          do: ~s({:#{dep_name(dep)}, "~> 1.0", optional: true}),
          else: ~s({:#{dep}, "~> 1.0"})
      end)

    {compilers, nif_task, files} =
      if kind == :nif do
        {"compilers: [:syn_nif] ++ Mix.compilers(),", nif_task(), "files: ~w(lib c_src Makefile mix.exs),"}
      else
        {"", "", ""}
      end

    File.write!(Path.join(root, "mix.exs"), """
    #{nif_task}defmodule #{mod}.MixProject do
      use Mix.Project

      def project do
        [app: :#{name}, version: "1.0.0", elixir: "~> 1.14", #{compilers}
         deps: [#{Enum.join(dep_specs, ", ")}],
         description: "precomp bench: generated package #{name}.",
         package: [#{files} licenses: ["Apache-2.0"], links: %{}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(lib, "macros.ex"), macros_module(mod))
    # Each module uses a required Mix dependency's macros and struct at compile time.
    mix_names = for {n, k, _, _, _} <- packages(), k in [:mix, :nif], do: n
    first_dep = Enum.find(deps, &(&1 in mix_names))

    for j <- 1..modules do
      File.write!(Path.join(lib, "mod_#{pad(j)}.ex"), elixir_module(mod, j, functions, first_dep))
    end

    if name == "syn_castore" do
      File.mkdir_p!(Path.join(root, "priv"))
      pem = for i <- 1..2500, into: "", do: "cert #{i}: " <> String.duplicate("QUJD", 18) <> "\n"
      File.write!(Path.join([root, "priv", "cacerts.pem"]), pem)
    end

    if kind == :nif, do: nif_sources(root)
  end

  def pad(j), do: String.pad_leading(Integer.to_string(j), 2, "0")

  def macros_module(mod) do
    """
    defmodule #{mod}.Macros do
      @moduledoc "Macros dependents of this generated package expand at compile time."

      @doc """
      A constant computed while the caller compiles: stands for the compile-time work of
      macro-heavy code (Ecto schemas and queries, Phoenix routers, Plug builders).
      \"""
      defmacro precomputed(n) do
        Enum.reduce(1..n, 0, fn i, acc -> :erlang.phash2({i, acc, Integer.to_string(i, 36)}) end)
      end

      defmacro defaccessors(fields) do
        for field <- fields do
          quote do
            def unquote(:"get_\#{field}")(map), do: Map.get(map, unquote(field))
            def unquote(:"put_\#{field}")(map, value), do: Map.put(map, unquote(field), value)
          end
        end
      end
    end
    """
  end

  def elixir_module(mod, j, functions, first_dep) do
    uses_dep =
      if first_dep do
        dep = camel(first_dep)

        """
          require #{dep}.Macros
          #{dep}.Macros.defaccessors([:alpha, :beta, :gamma])
          def from_dep(id), do: %#{dep}.Mod01{id: id, name: "from #{mod}"}
        """
      else
        ""
      end

    """
    defmodule #{mod}.Mod#{pad(j)} do
      @moduledoc "Generated module #{j} of #{mod} (precomp bench)."
      defstruct [:id, :name, tags: [], count: 0, meta: %{}]

      @type t :: %__MODULE__{id: term(), name: String.t() | nil, tags: [atom()], count: non_neg_integer(), meta: map()}

    #{uses_dep}
      require #{mod}.Macros
      @doc "A checksum the compiler computes."
      def checksum, do: #{mod}.Macros.precomputed(#{@macro_work})

      @doc "Builds a value."
      @spec new(term(), String.t()) :: t()
      def new(id, name), do: %__MODULE__{id: id, name: name}

      def tag(%__MODULE__{} = v, tag), do: %{v | tags: [tag | v.tags], count: v.count + 1}

      def describe(%__MODULE__{id: id, name: name, count: count}) do
        "\#{__MODULE__}:\#{id}:\#{name}:\#{count}" |> String.upcase() |> String.split(":") |> Enum.join("/")
      end

#{steps(functions)}
#{parses(functions)}
      def parse(_), do: :error
    end
    """
  end

  # Written out function by function, as hand-written code is (no compile-time loops), so
  # that source size says how much there is to compile.
  def steps(functions) do
    for k <- 1..functions, into: "" do
      """
        @doc "Step #{k}: folds `x` into the value."
        def step_#{k}(%__MODULE__{count: c} = v, x) when is_integer(x) do
          case rem(x + #{k}, 3) do
            0 -> %{v | count: c + #{k}}
            1 -> %{v | meta: Map.put(v.meta, #{k}, x)}
            _ -> %{v | tags: [:t#{k} | v.tags]}
          end
        end

      """
    end
  end

  def parses(functions) do
    for k <- 1..functions, into: "" do
      ~s|  def parse(<<"key#{k}=", rest::binary>>), do: {#{k}, rest}\n|
    end
  end

  def nif_task do
    """
    defmodule Mix.Tasks.Compile.SynNif do
      @moduledoc "Builds priv/syn_nif.so with make (stand-in for elixir_make)."
      use Mix.Task.Compiler

      @impl true
      def run(_args) do
        case System.cmd("make", ["--no-print-directory"], env: [{"MIX_APP_PATH", Mix.Project.app_path()}], stderr_to_stdout: true) do
          {_, 0} -> :ok
          {output, status} -> Mix.raise("make failed for syn_nif (exit status \#{status}): \#{output}")
        end
      end
    end

    """
  end

  def nif_sources(root) do
    File.mkdir_p!(Path.join(root, "c_src"))

    File.write!(Path.join(root, "Makefile"), """
    ERTS_INCLUDE_DIR ?= $(shell erl -noshell -eval 'io:format("~s", [lists:concat([code:root_dir(), "/erts-", erlang:system_info(version), "/include"])]), halt().')
    PRIV_DIR = $(if $(MIX_APP_PATH),$(MIX_APP_PATH)/priv,priv)
    CFLAGS ?= -O2 -Wall
    all:
    \t@mkdir -p "$(PRIV_DIR)"
    \t$(CC) $(CFLAGS) -fPIC -I"$(ERTS_INCLUDE_DIR)" -shared -o "$(PRIV_DIR)/syn_nif.so" c_src/syn_nif.c
    .PHONY: all
    """)

    funcs =
      for k <- 1..40, into: "" do
        """
        static ERL_NIF_TERM mix_#{k}(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
        {
            ErlNifSInt64 a;
            (void)argc;
            if (!enif_get_int64(env, argv[0], &a)) return enif_make_badarg(env);
            return enif_make_int64(env, (a * #{k * 7 + 1}) ^ (a >> #{rem(k, 13) + 1}));
        }
        """
      end

    table = for k <- 1..40, into: "", do: ~s(    {"mix_#{k}", 1, mix_#{k}, 0},\n)

    File.write!(Path.join([root, "c_src", "syn_nif.c"]), """
    #include <erl_nif.h>
    #{funcs}
    static ErlNifFunc nif_funcs[] = {
    #{table}};

    ERL_NIF_INIT(Elixir.SynNif.Native, nif_funcs, NULL, NULL, NULL, NULL)
    """)

    File.write!(Path.join([root, "lib", "syn_nif", "native.ex"]), """
    defmodule SynNif.Native do
      @moduledoc "NIFs from priv/syn_nif.so."
      @on_load :load_nif
      @doc false
      def load_nif, do: :erlang.load_nif(:filename.join(:code.priv_dir(:syn_nif), ~c"syn_nif"), 0)
    #{for k <- 1..40, into: "", do: "  def mix_#{k}(_a), do: :erlang.nif_error(:not_loaded)\n"}end
    """)
  end

  # ---- Erlang packages -------------------------------------------------------------------

  def rebar3_package(root, name, modules, functions, deps) do
    src = Path.join(root, "src")
    File.mkdir_p!(src)
    deps_terms = Enum.map_join(deps, ", ", &~s({#{&1}, "~> 1.0"}))
    File.write!(Path.join(root, "rebar.config"), "{erl_opts, [debug_info]}.\n{deps, [#{deps_terms}]}.\n")

    File.write!(Path.join(src, "#{name}.app.src"), """
    {application, #{name}, [
        {description, "precomp bench: generated rebar3 package #{name}"},
        {vsn, "1.0.0"},
        {registered, []},
        {applications, [kernel, stdlib#{Enum.map_join(deps, "", &(", " <> &1))}]},
        {env, []},
        {modules, []},
        {licenses, ["Apache-2.0"]},
        {links, []}
    ]}.
    """)

    erlang_modules(root, name, modules, functions)
  end

  def erlang_mk_package(root, name, kind, modules, functions, deps) do
    File.mkdir_p!(Path.join(root, "ebin"))
    mods = erlang_modules(root, name, modules, functions)
    mods = if name == "syn_cowlib", do: mods ++ cowlib_parsers(root), else: mods

    File.write!(Path.join([root, "ebin", "#{name}.app"]), """
    {application, '#{name}', [
    \t{description, "precomp bench: generated erlang.mk-style package #{name}"},
    \t{vsn, "1.0.0"},
    \t{modules, [#{Enum.map_join(mods, ",", &"'#{&1}'")}]},
    \t{registered, []},
    \t{applications, [kernel,stdlib#{Enum.map_join(deps, "", &("," <> &1))}]},
    \t{env, []},
    \t{licenses, ["Apache-2.0"]},
    \t{links, []}
    ]}.
    """)

    # erlang.mk's project variables, which `precomp repo build` publishes the package from
    # (README "erlang.mk"): build tools [make, rebar3], or [make] only for :mk_only (ranch
    # 1.8.0's release metadata says so), requirements from DEPS and hex_req_NAME.
    build_tools = if kind == :mk_only, do: ",\n\tbuild_tools => [<<\"make\">>]", else: ""
    deps_lines =
      if deps == [] do
        ""
      else
        "DEPS = #{Enum.join(deps, " ")}\n" <>
          Enum.map_join(deps, "", &"dep_#{&1} = hex 1.0.0\nhex_req_#{&1} = ~> 1.0\n")
      end

    File.write!(Path.join(root, "Makefile"), """
    PROJECT = #{name}
    PROJECT_DESCRIPTION = precomp bench: generated erlang.mk-style package #{name}
    PROJECT_VERSION = 1.0.0
    #{deps_lines}
    define HEX_TARBALL_EXTRA_METADATA
    \#{
    \tlicenses => [<<"Apache-2.0">>]#{build_tools}
    }
    endef

    # Generated: compiles src/*.erl into ebin/, as an erlang.mk project's `make` does.
    SOURCES := $(wildcard src/*.erl)
    all: $(patsubst src/%.erl,ebin/%.beam,$(SOURCES))
    ebin/%.beam: src/%.erl
    \terlc +debug_info -I include -o ebin $<
    .PHONY: all
    """)

    if kind == :mk do
      deps_terms = Enum.map_join(deps, ", ", &~s({#{&1}, "~> 1.0"}))
      File.write!(Path.join(root, "rebar.config"), "{deps, [#{deps_terms}]}.\n{erl_opts, [debug_info]}.\n")
    end
  end

  def erlang_modules(root, name, modules, functions) do
    src = Path.join(root, "src")
    include = Path.join(root, "include")
    File.mkdir_p!(src)
    File.mkdir_p!(include)
    File.write!(Path.join(include, "#{name}.hrl"), "-record(#{name}_item, {id, name, tags = [], count = 0}).\n-define(#{String.upcase(name)}_LIMIT, 1000).\n")

    for j <- 1..modules do
      m = "#{name}_m#{pad(j)}"

      steps =
        for k <- 1..functions, into: "" do
          """
          step_#{k}(#item{count = C} = V, X) when is_integer(X) ->
              case (X + #{k}) rem 3 of
                  0 -> V#item{count = C + #{k}};
                  1 -> V#item{tags = [t#{k} | V#item.tags]};
                  _ -> V
              end.
          """
        end

      parse =
        for k <- 1..functions, into: "" do
          ~s|parse(<<"key#{k}=", Rest/binary>>) -> {#{k}, Rest};\n|
        end

      File.write!(Path.join(src, "#{m}.erl"), """
      %% Generated module #{j} of #{name} (precomp bench).
      -module(#{m}).
      -compile([export_all, nowarn_export_all]).
      -include("#{name}.hrl").
      -record(item, {id, name, tags = [], count = 0}).

      new(Id, Name) -> #item{id = Id, name = Name}.
      limit() -> ?#{String.upcase(name)}_LIMIT.
      describe(#item{id = Id, name = Name, count = C}) ->
          iolist_to_binary(io_lib:format("~p:~s:~p", [Id, Name, C])).
      #{steps}#{parse}parse(_) -> error.
      """)

      m
    end
  end

  # cowlib's cost: generated parsers with thousands of binary-matching clauses.
  def cowlib_parsers(root) do
    for {m, clauses} <- [{"syn_cowlib_http_hd", 1500}, {"syn_cowlib_hpack", 700}] do
      body =
        for k <- 1..clauses, into: "" do
          ~s|name(<<"x-header-#{k}:", R/bits>>) -> {#{k}, trim(R)};\n|
        end

      File.write!(Path.join([root, "src", "#{m}.erl"]), """
      %% Generated parser (precomp bench): #{clauses} clauses of binary matching.
      -module(#{m}).
      -export([name/1]).
      #{body}name(_) -> error.
      trim(<<$\\s, R/bits>>) -> trim(R);
      trim(R) -> R.
      """)

      m
    end
  end
end

Stack.write(dir)
IO.puts(Enum.map_join(Stack.packages(), " ", fn {name, _, _, _, _} -> "#{name}@1.0.0" end))
