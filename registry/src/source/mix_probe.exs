# Reads the Mix project in the current directory and writes its Hex package metadata, as
# `mix hex.build` computes it, to the file named by the first argument: one Erlang term,
# `{ok, Map}` or `{error, Message}`. `precomp repo build` runs this with the local `elixir`
# because mix.exs is code: only Mix can say what it declares.
#
# Follows hexpm/hex lib/mix/tasks/hex.build.ex: the default file list, `exclude_patterns`,
# the dependency rules (top-level, :prod, Hex-only, no override/compile/manager/app) and
# `deorg_repo`. Dependencies come from the project config, not from fetched deps, so nothing
# needs to be fetched.

[out] = System.argv()

# Anything mix.exs prints must not end up in our output file.
Mix.start()
Mix.shell(Mix.Shell.Quiet)

defmodule PrecompProbe do
  @default_files ~w(lib priv .formatter.exs mix.exs README* readme* LICENSE* license*
                    CHANGELOG* changelog* src c_src Makefile*)
  @scm_keys [:git, :github, :path, :in_umbrella]
  @forbidden_dep_opts [:override, :compile, :manager, :app, :system_env]

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

    %{
      app: to_string(app),
      name: to_string(package[:name] || app),
      version: version,
      description: String.trim(package[:description] || config[:description] || ""),
      licenses: Enum.map(package[:licenses] || [], &to_string/1),
      links: (package[:links] || %{}) |> Enum.map(fn {k, v} -> {to_string(k), to_string(v)} end) |> Enum.sort(),
      build_tools: if(tools = package[:build_tools], do: Enum.map(tools, &to_string/1), else: :undefined),
      elixir: if(req = config[:elixir], do: to_string(req), else: :undefined),
      files: files,
      requirements: requirements(config[:deps] || [])
    }
  end

  defp package_files(package) do
    dir = File.cwd!()
    exclude = (package[:exclude_patterns] || []) ++ [~r/\W\.DS_Store$/]

    (package[:files] || @default_files)
    |> Enum.map(&Path.join(dir, &1))
    |> Enum.flat_map(&Path.wildcard(&1, match_dot: true))
    |> Enum.flat_map(fn path ->
      if File.dir?(path), do: Path.wildcard(Path.join(path, "**"), match_dot: true), else: [path]
    end)
    |> Enum.filter(&File.regular?/1)
    |> Enum.map(&Path.relative_to(&1, dir))
    |> Enum.reject(fn path -> Enum.any?(exclude, &exclude?(path, &1)) end)
    |> Enum.uniq()
    |> Enum.sort()
  end

  defp exclude?(path, %Regex{} = regex), do: Regex.match?(regex, path)
  defp exclude?(path, pattern) when is_binary(pattern), do: String.contains?(path, pattern)

  defp requirements(deps) do
    deps
    |> Enum.map(&normalize_dep/1)
    |> Enum.filter(fn {_app, _req, opts} ->
      if only = opts[:only], do: :prod in List.wrap(only), else: true
    end)
    |> Enum.map(fn {app, req, opts} ->
      if Enum.any?(@scm_keys, &Keyword.has_key?(opts, &1)) do
        throw({:error, "dependency #{app} is not a Hex package (only Hex packages can be dependencies)"})
      end

      if forbidden = Enum.find(@forbidden_dep_opts, &Keyword.has_key?(opts, &1)) do
        throw({:error, "dependency #{app} sets #{inspect(forbidden)}, which a package cannot publish"})
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
