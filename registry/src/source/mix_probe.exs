# Reads the Mix project in the current directory and writes its Hex package metadata, as
# `mix hex.build` computes it, to the file named by the first argument: one Erlang term,
# `{ok, Map}` or `{error, Message}`. `precomp repo build` runs this with the local `elixir`
# because mix.exs is code: only Mix can say what it declares.
#
# Follows hexpm/hex lib/mix/tasks/hex.build.ex (bd57e0d, v2.5.1+): `meta_for/3` and
# `package/2` (name, description, the default file list of lib/hex/package.ex, directories
# listed with their contents, `.DS_Store` and `exclude_patterns` dropped), `dependencies/0`
# (top-level, :prod, Hex-only, no override/compile/manager/app/system_env) and `deorg_repo`.
# Dependencies come from the project config, not from fetched deps, so nothing needs to be
# fetched. `package_config` says whether mix.exs configures a Hex package at all (`:package`),
# which decides who publishes a project that also has rebar3 files.

[out] = System.argv()

# Anything mix.exs prints must not end up in our output file.
Mix.start()
Mix.shell(Mix.Shell.Quiet)

defmodule PrecompProbe do
  @default_files ~w(lib priv .formatter.exs mix.exs README* readme* LICENSE* license*
                    CHANGELOG* changelog* src c_src Makefile*)
  @scm_keys [:git, :github, :path, :in_umbrella]
  @forbidden_dep_opts [:override, :compile, :manager, :app]

  def run do
    config = Mix.Project.config()

    if Mix.Project.umbrella?(config) do
      throw({:error, "umbrella projects cannot be Hex packages"})
    end

    package = Map.new(config[:package] || [])
    app = config[:app] || throw({:error, "mix.exs has no :app"})
    version = config[:version] || throw({:error, "mix.exs has no :version"})

    case Version.parse(version) do
      {:ok, _} -> :ok
      :error -> throw({:error, "version #{inspect(version)} is not a valid SemVer version"})
    end

    files = package_files(package)
    if files == [], do: throw({:error, "the package has no files"})

    # meta_for/3 merges :package over the root fields; package/2 then trims the description.
    description = String.trim(package[:description] || config[:description] || "")

    %{
      app: to_string(app),
      name: to_string(package[:name] || app),
      version: version,
      description: description,
      licenses: Enum.map(package[:licenses] || [], &to_string/1),
      links: (package[:links] || %{}) |> Enum.map(fn {k, v} -> {to_string(k), to_string(v)} end) |> Enum.sort(),
      build_tools: if(tools = package[:build_tools], do: Enum.map(tools, &to_string/1), else: :undefined),
      elixir: if(req = config[:elixir], do: to_string(req), else: :undefined),
      files: files,
      requirements: requirements(config[:deps] || []),
      package_config: config[:package] != nil
    }
  end

  # expand_paths/2 and dir_files/1: each pattern's matches (Path.wildcard, no dot files),
  # every directory followed by its entries (links not followed), first occurrence kept.
  defp package_files(package) do
    dir = File.cwd!()
    expanded_dir = Path.expand(dir)
    exclude = package[:exclude_patterns] || []

    (package[:files] || @default_files)
    |> Enum.map(&Path.join(dir, &1))
    |> Enum.flat_map(&Path.wildcard/1)
    |> Enum.flat_map(&dir_files/1)
    |> Enum.map(&Path.expand/1)
    |> Enum.uniq()
    |> Enum.map(&Path.relative_to(&1, expanded_dir))
    |> Enum.reject(fn path ->
      Path.basename(path) == ".DS_Store" or Enum.any?(exclude, &(path =~ &1))
    end)
  end

  # Hex lists a directory in File.ls!/1 order, the file system's; sorted here so the result
  # does not depend on it.
  defp dir_files(path) do
    case File.lstat(path) do
      {:ok, %File.Stat{type: :directory}} ->
        entries = path |> File.ls!() |> Enum.sort()
        [path | Enum.flat_map(entries, &dir_files(Path.join(path, &1)))]

      _ ->
        [path]
    end
  end

  defp requirements(deps) do
    deps
    |> Enum.map(&normalize_dep/1)
    |> Enum.filter(fn {_app, _req, opts} ->
      if only = opts[:only], do: :prod in List.wrap(only), else: true
    end)
    |> Enum.map(fn {app, req, opts} ->
      # package_dep?/1: a :hex key, or no SCM key.
      unless Keyword.has_key?(opts, :hex) or not Enum.any?(@scm_keys, &Keyword.has_key?(opts, &1)) do
        throw({:error, "dependency #{app} is not a Hex package (only Hex packages can be dependencies)"})
      end

      if forbidden = Enum.find(@forbidden_dep_opts, &Keyword.has_key?(opts, &1)) do
        throw({:error, "dependency #{app} sets #{inspect(forbidden)}, which a package cannot publish"})
      end

      if Keyword.get(opts, :system_env, []) != [] do
        throw({:error, "dependency #{app} sets :system_env, which a package cannot publish"})
      end

      repo = to_string(opts[:repo] || opts[:organization] || "hexpm")

      repo =
        case String.split(repo, ":", parts: 2) do
          [_source, org] -> org
          [repo] -> repo
        end

      %{
        name: to_string(opts[:hex] || app),
        app: to_string(app),
        requirement: req || throw({:error, "dependency #{app} has no version requirement"}),
        optional: opts[:optional] || false,
        repository: repo
      }
    end)
    |> Enum.sort_by(& &1.name)
  end

  defp normalize_dep({app, req}) when is_binary(req), do: {app, req, []}
  defp normalize_dep({app, opts}) when is_list(opts), do: {app, nil, opts}
  defp normalize_dep({app, req, opts}), do: {app, req, opts}
  defp normalize_dep(app) when is_atom(app), do: {app, nil, []}
end

result =
  try do
    Mix.Project.in_project(:precomp_probe, ".", fn _module -> {:ok, PrecompProbe.run()} end)
  catch
    {:error, message} -> {:error, message}
    kind, reason -> {:error, Exception.format_banner(kind, reason, __STACKTRACE__)}
  end

File.write!(out, :io_lib.format(~c"~tp.~n", [result]))
