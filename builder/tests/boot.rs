//! The predicted pass's boot script as the builder writes it (crate::boot), against the
//! host's real Erlang/OTP and Elixir: the atoms read from real beams are every atom Erlang's
//! own reading finds, and the script boots a real VM with its atoms created in order.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use precomp_builder::boot;

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("run the host's Erlang/Elixir");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Every atom `erl` finds in `beam` as loading (atom table, literals) and reading its term
/// chunks do: `beam_lib`'s atoms, each literal and each term chunk through `binary_to_term`,
/// walked into tuples, lists, maps and export funs. One name a line.
fn erlang_atoms(beam: &Path) -> BTreeSet<String> {
    let script = r#"
        io:setopts([{encoding, unicode}]),
        [File] = init:get_plain_arguments(),
        {ok, _, Chunks} = beam_lib:all_chunks(File),
        {ok, {_, [{atoms, Table}]}} = beam_lib:chunks(File, [atoms]),
        Walk = fun W(T, Acc) when is_atom(T) -> [T | Acc];
                   W([H | T], Acc) -> W(T, W(H, Acc));
                   W(T, Acc) when is_tuple(T) -> W(tuple_to_list(T), Acc);
                   W(T, Acc) when is_map(T) -> W(maps:to_list(T), Acc);
                   W(T, Acc) when is_function(T) ->
                       {module, M} = erlang:fun_info(T, module),
                       {name, N} = erlang:fun_info(T, name),
                       [M, N | Acc];
                   W(_, Acc) -> Acc end,
        Literals = case lists:keyfind("LitT", 1, Chunks) of
            {_, <<_:32, Z/binary>>} ->
                <<Count:32, Table0/binary>> = zlib:uncompress(Z),
                Lit = fun L(0, _, Acc) -> Acc;
                          L(N, <<S:32, T:S/binary, Rest/binary>>, Acc) ->
                              L(N - 1, Rest, Walk(binary_to_term(T), Acc)) end,
                Lit(Count, Table0, []);
            false -> []
        end,
        Terms = [Walk(binary_to_term(B), []) || {Id, B} <- Chunks,
                 lists:member(Id, ["Attr", "CInf", "ExCk", "Dbgi", "Docs"])],
        All = [A || {_, A} <- Table] ++ Literals ++ lists:append(Terms),
        [io:put_chars([atom_to_binary(A, utf8), $\n]) || A <- lists:usort(All)],
        halt().
    "#;
    let out = run(Command::new("erl")
        .args(["-noshell", "-eval", script, "-extra"])
        .arg(beam));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_builder_reads_every_atom_erlang_reads_from_real_beams() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let ebin = dir.path().join("ebin");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&ebin).unwrap();
    // An Erlang module with literals of every kind that holds atoms: maps, tuples, records,
    // improper lists, an export fun, a quoted and a non-ASCII atom.
    std::fs::write(
        src.join("lit_mod.erl"),
        r#"-module(lit_mod).
-export([terms/0, f/1]).
-record(rec_name, {field_one = 'default ☃', field_two}).
-vsn(attr_version_atom).
-my_attr({custom_attr_atom, [nested_attr_atom]}).
terms() -> {#{map_key_atom => [map_value_atom | improper_tail_atom]},
            #rec_name{field_two = 'quoted atom'},
            fun lists:map/2, fun ?MODULE:f/1, 'ünïcode_atom', <<"not an atom">>}.
f(X) -> {fun_name_atom, X}.
"#,
    )
    .unwrap();
    run(Command::new("erlc")
        .args(["+debug_info", "-o"])
        .arg(&ebin)
        .arg(src.join("lit_mod.erl")));
    // An Elixir module with docs, a struct, a macro and module attributes (Docs, ExCk and
    // Elixir's Dbgi).
    std::fs::write(
        src.join("ex_mod.ex"),
        r#"defmodule Ex.LitMod do
  @moduledoc "Docs hold atoms: #{:doc_key_atom}"
  @my_attr %{attr_key_atom: [:attr_value_atom]}
  defstruct [:struct_field_atom, other_field: :struct_default_atom]
  @doc "A function."
  @spec f(atom()) :: {:spec_atom, atom()}
  def f(x), do: {:spec_atom, x, @my_attr, &String.upcase/1}
  defmacro m(arg), do: quote(do: {:macro_atom, unquote(arg)})
end
"#,
    )
    .unwrap();
    run(Command::new("elixirc")
        .arg("-o")
        .arg(&ebin)
        .arg(src.join("ex_mod.ex")));

    for name in ["lit_mod.beam", "Elixir.Ex.LitMod.beam"] {
        let path = ebin.join(name);
        let mut ours = BTreeSet::new();
        boot::beam_atoms(&std::fs::read(&path).unwrap(), &mut ours);
        let theirs = erlang_atoms(&path);
        let missing: Vec<_> = theirs.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "{name}: Erlang reads atoms the builder does not: {missing:?}"
        );
        assert!(theirs.len() > 20, "{name}: {theirs:?}");
    }
    // What the fixtures above were written to contain, found by both.
    let mut ours = BTreeSet::new();
    boot::beam_atoms(
        &std::fs::read(ebin.join("lit_mod.beam")).unwrap(),
        &mut ours,
    );
    for atom in [
        "map_key_atom",
        "improper_tail_atom",
        "quoted atom",
        "default ☃",
        "ünïcode_atom",
        "custom_attr_atom",
        "nested_attr_atom",
        "fun_name_atom",
    ] {
        assert!(ours.contains(atom), "{atom}");
    }
    let mut ours = BTreeSet::new();
    boot::beam_atoms(
        &std::fs::read(ebin.join("Elixir.Ex.LitMod.beam")).unwrap(),
        &mut ours,
    );
    for atom in [
        "attr_key_atom",
        "struct_default_atom",
        "spec_atom",
        "macro_atom",
    ] {
        assert!(ours.contains(atom), "{atom}");
    }
}

#[test]
fn the_boot_script_the_builder_writes_boots_a_real_vm_with_its_atoms_in_order() {
    let root = String::from_utf8(run(Command::new("erl").args([
        "-noshell",
        "-eval",
        "io:put_chars(code:root_dir()), halt().",
    ])))
    .unwrap();
    let original = std::fs::read(Path::new(&root).join("bin/no_dot_erlang.boot")).unwrap();
    let names = [
        "zz_precomp_b",
        "zz_precomp_a",
        "zz_precomp_é",
        "elixir_compiler_7",
        "lists",
    ];
    let atoms: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("predicted.boot");
    std::fs::write(&script, boot::boot_script(&original, &atoms).unwrap()).unwrap();

    // Booted from it, the VM starts (init ran the toolchain's instructions) and the new
    // atoms sit one after the other in the list's order; the pooled name was left out.
    let probe = r#"
        io:setopts([{encoding, unicode}]),
        Index = fun(Name) ->
            Count = erlang:system_info(atom_count),
            hd([I || I <- lists:seq(0, Count - 1),
                     atom_to_binary(binary_to_term(<<131, 75, I:24>>), utf8) =:= Name] ++ [none])
        end,
        [io:format("~ts ~p~n", [N, Index(N)]) || N <- [<<"zz_precomp_a">>, <<"zz_precomp_b">>,
                                                       <<"zz_precomp_é"/utf8>>, <<"elixir_compiler_7">>]],
        {ok, [[Boot]]} = init:get_argument(boot),
        io:format("boot ~ts~n", [Boot]),
        halt().
    "#;
    let boot = script.with_extension("");
    let out = run(Command::new("erl")
        .arg("-boot")
        .arg(&boot)
        .args(["-noshell", "-eval", probe]));
    let out = String::from_utf8(out).unwrap();
    let index = |name: &str| -> Option<u64> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|i| i.parse().ok())
    };
    let (a, b, e) = (
        index("zz_precomp_a").unwrap(),
        index("zz_precomp_b").unwrap(),
        index("zz_precomp_é").unwrap(),
    );
    assert_eq!((b, e), (a + 1, a + 2), "{out}");
    assert_eq!(index("elixir_compiler_7"), None, "{out}");
    assert!(out.contains(&format!("boot {}", boot.display())), "{out}");
}
