# Reads the Mix project in the current directory for `precomp fetch` and writes what it
# needs to the file named by the first argument, as one Erlang term: `{ok, Map}` or
# `{error, Message}`, then prints the second argument on a line of its own (precomp goes on
# from there without waiting for this VM to end). Run with the local `elixir`, MIX_ENV and
# MIX_TARGET set as the consumer's build will have them: mix.exs is code, and only Mix can say
# where the build directory is, which deps the project declares with which options, and which
# toolchain Mix records in `compile.elixir_scm`.
#
# Nothing is fetched or compiled, and deps are not converged: the top-level deps come from
# the project config (every umbrella child's, for an umbrella), the rest from mix.lock.
#
# No module is defined here: compiling one costs this VM more than evaluating these few
# functions (mix.exs is compiled all the same, as Mix compiles it).

[out, answered | _] = System.argv()

# Anything mix.exs prints must not end up in our output file.
Mix.start()
Mix.shell(Mix.Shell.Quiet)

builtin_scms = [Mix.SCM.Git, Mix.SCM.Path]
non_hex_keys = [:git, :github, :path, :in_umbrella]
# Options that make Mix build the dependency differently from how the package builds itself.
custom_build_keys = [:compile, :manager, :app, :system_env, :config]

# The SCM Mix gives a Hex dependency: the first non-built-in SCM that accepts plain
# options. Under Mix with the Hex archive that is Hex.SCM; a plain `elixir` does not load
# archives, so Hex.SCM is also the default when nothing else claims the dependency.
hex_scm = fn ->
  deps_path = Mix.Project.deps_path()

  Enum.find_value(Mix.SCM.available() -- builtin_scms, fn scm ->
    try do
      opts = [dest: Path.join(deps_path, "precomp_probe"), build: "precomp_probe"]
      if scm.accepts_options(:precomp_probe, opts), do: scm
    rescue
      _ -> nil
    end
  end) || Hex.SCM
end

# A dependency as mix.exs declares it: `app`, `{app, opts}`, `{app, requirement}`,
# `{app, requirement, opts}`.
dep = fn
  app when is_atom(app) -> {app, []}
  {app, opts} when is_list(opts) -> {app, opts}
  {app, _requirement} -> {app, []}
  {app, _requirement, opts} when is_list(opts) -> {app, opts}
end

describe = fn declared ->
  {app, opts} = dep.(declared)
  only = opts[:only]
  targets = opts[:targets]

  %{
    app: Atom.to_string(app),
    env: to_string(opts[:env] || :prod),
    active:
      (is_nil(only) or Mix.env() in List.wrap(only)) and
        (is_nil(targets) or Mix.target() in List.wrap(targets)),
    hex: not Enum.any?(non_hex_keys, &Keyword.has_key?(opts, &1)),
    custom: for(key <- custom_build_keys, Keyword.has_key?(opts, key), do: Atom.to_string(key))
  }
end

run = fn ->
  config = Mix.Project.config()
  build_path = Mix.Project.build_path(config)
  umbrella? = Mix.Project.umbrella?(config)

  {apps, deps} =
    if umbrella? do
      children = Mix.Project.apps_paths(config) || %{}

      children
      |> Enum.sort()
      |> Enum.reduce({[], []}, fn {app, path}, {apps, deps} ->
        child_deps =
          Mix.Project.in_project(app, path, fn _ -> Mix.Project.config()[:deps] || [] end)

        {apps ++ [app], deps ++ child_deps}
      end)
    else
      app = config[:app] || throw({:error, "mix.exs has no :app"})
      {[app], config[:deps] || []}
    end

  compile_locks =
    if umbrella? do
      Enum.map(apps, &Path.join([build_path, "lib", Atom.to_string(&1), ".mix", "compile.lock"]))
    else
      [Path.join(Mix.Project.manifest_path(config), "compile.lock")]
    end

  scm = hex_scm.()

  %{
    apps: Enum.map(apps, &Atom.to_string/1),
    umbrella: umbrella?,
    build_path: build_path,
    deps_path: Mix.Project.deps_path(config),
    lockfile: Path.expand(config[:lockfile] || "mix.lock"),
    config_path: Path.expand(config[:config_path] || "config/config.exs"),
    compile_locks: compile_locks,
    mix_env: Atom.to_string(Mix.env()),
    mix_target: Atom.to_string(Mix.target()),
    elixir: System.version(),
    otp_release: List.to_string(:erlang.system_info(:otp_release)),
    system_architecture: List.to_string(:erlang.system_info(:system_architecture)),
    hex_scm: inspect(scm),
    # Exactly what Mix.Dep.ElixirSCM writes for a dependency it compiled with Elixir.
    elixir_scm:
      Base.encode16(
        :erlang.term_to_binary({1, {System.version(), :erlang.system_info(:otp_release)}, scm}),
        case: :lower
      ),
    deps: deps |> Enum.map(describe) |> Enum.uniq_by(& &1.app)
  }
end

result =
  try do
    Mix.Project.in_project(:precomp_fetch_probe, ".", fn _module -> {:ok, run.()} end)
  catch
    {:error, message} -> {:error, message}
    kind, reason -> {:error, Exception.format_banner(kind, reason, __STACKTRACE__)}
  end

File.write!(out, :io_lib.format(~c"~tp.~n", [result]))
# precomp reads the answer from here on; what follows only matters when it asks for it.
IO.write("\n" <> answered <> "\n")

# With a third argument, precomp_proto's config dump script: the consumer's compile-time
# config is printed to stdout from this same VM, after the answer, saving precomp fetch a
# second VM start when a package reads compile_env. A config that does not evaluate prints
# nothing here; fetch evaluates it again on its own when it needs it, and reports that error
# then.
with [_out, _answered, dump_script] <- System.argv(),
     {:ok, %{config_path: config_path, mix_env: env, mix_target: target}} <- result do
  try do
    System.argv([config_path, env, target])
    Code.require_file(dump_script)
  rescue
    _ -> :ok
  catch
    _, _ -> :ok
  end
end
