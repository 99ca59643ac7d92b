//! The build recipe: which way of compiling this builder follows, recorded in every manifest
//! it signs (`Provenance.recipe`) and compared by audits (docs/builder.md "The build
//! recipe").
//!
//! The build key names *what* is compiled (the package, its closure's builds, the
//! toolchain's OTP and Elixir, the Mix env, the target, the compile-time config). *How* it
//! is compiled is not in the key: two builders that compile the same key differently can
//! both produce correct artifacts that differ in bytes — where a package's beams follow
//! atom order (docs/builder.md "Atom order"), the atom list it boots from decides the order
//! of its generated clauses. Clients take either (the recipe is provenance, not an input
//! of the key, so one builder's upgrade never splits their hit rates), while an audit only
//! compares builds of one recipe: a rebuild with another recipe proves nothing about the
//! published bytes.

/// The recipe this builder compiles with: `precomp-build-recipe-N`.
///
/// **Bump N** (and add a line to the history below) in any change that can change an
/// artifact's bytes for the same build key:
/// - how the atom list a package boots from is computed (the prediction, pass 1's hook,
///   what the list includes or leaves out, its order), and the hook (`atoms.exs`) itself —
///   its names are atoms of every predicted list;
/// - when a package takes one pass or two (`atoms::erlang_compile_runs_code`);
/// - the sandbox's compile flags and environment (`ERL_FLAGS`, `ERL_AFLAGS`, `MIX_*`,
///   `ERL_COMPILER_OPTIONS`, locale, the command lines);
/// - the generated project's layout and canonical paths (`/build`, `deps/APP`, `mix.exs`,
///   `config/`), and what the artifact takes from the build directory;
/// - the artifact's encoding (tar entry order, modes, times, owners; gzip level and header).
///
/// Not a bump: a change that gives byte-identical artifacts for every key (checked, e.g.
/// by comparing the boot scripts and `SYNTHETIC=stack`'s artifacts with main's: docs/builder.md
/// "Not a recipe change"), or one that changes the key (the key already tells those apart).
///
/// History:
/// - `precomp-build-recipe-1`: one compile pass (no atom list). Not recorded in manifests.
/// - `precomp-build-recipe-2`: two passes, booting pass 2 from pass 1's atom list. Not
///   recorded in manifests.
/// - `precomp-build-recipe-3`: one pass from an atom list predicted from the inputs, two
///   when the prediction falls short (docs/builder.md "One pass from a predicted atom
///   list"). The first recorded; manifests without a recipe were built by 1, 2 or 3.
/// - `precomp-build-recipe-4`: the same, with the list predicted without a VM of its own: the
///   builder writes the toolchain's and the closure's atoms into the boot script, and the
///   compile VM makes the names the package's sources give, sorted, before Mix starts; every
///   checked pass loads the hook's beam instead of compiling it (docs/builder.md "One pass
///   from a predicted atom list").
pub const RECIPE: &str = "precomp-build-recipe-4";
