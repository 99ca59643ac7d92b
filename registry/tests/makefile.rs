//! The Makefile reader against GNU make itself: for each Makefile, every variable asked for
//! must read exactly as make computes it (make prints them with `$(file ...)`), with an empty
//! environment as the reader assumes.

use std::path::Path;
use std::process::Command;

use precomp_registry::source::makefile::Makefile;

/// Our own stand-in for erlang.mk: the project defaults of erlang.mk's core/core.mk.
const ERLANG_MK_STANDIN: &str =
    "PROJECT ?= $(notdir $(CURDIR))\nPROJECT := $(strip $(PROJECT))\nPROJECT_VERSION ?= rolling\n";

/// `vars` as GNU make computes them for `makefile` in `dir`.
fn gnu_make(dir: &Path, vars: &[&str]) -> Vec<String> {
    let out = dir.join("precomp-out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        dir.join("precomp-print.mk"),
        ".PHONY: precomp-print\nprecomp-print: ; @:\n$(foreach v,$(PRECOMP_VARS),$(file >$(PRECOMP_OUT)/$(v),$($(v))))\n",
    )
    .unwrap();
    let output = Command::new("make")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-s", "-r", "-R", "--no-print-directory"])
        .args(["-f", "Makefile", "-f", "precomp-print.mk", "precomp-print"])
        .arg(format!("PRECOMP_VARS={}", vars.join(" ")))
        .arg(format!("PRECOMP_OUT={}", out.display()))
        .output()
        .expect("running `make` (install it with `apt-get install make`)");
    assert!(
        output.status.success(),
        "make failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    vars.iter()
        .map(|v| {
            let text = std::fs::read_to_string(out.join(v)).unwrap();
            // $(file ...) ends what it writes with a newline.
            text.strip_suffix('\n').unwrap_or(&text).to_string()
        })
        .collect()
}

/// Checks the reader against make on `makefile` (beside our erlang.mk stand-in).
fn agrees_with_make(makefile: &str, vars: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Makefile"), makefile).unwrap();
    std::fs::write(dir.path().join("erlang.mk"), ERLANG_MK_STANDIN).unwrap();
    let expected = gnu_make(dir.path(), vars);
    let name = dir.path().file_name().unwrap().to_str().unwrap();
    let ours = Makefile::parse(makefile, name).unwrap();
    for (var, want) in vars.iter().zip(&expected) {
        let got = ours
            .value(var)
            .unwrap_or_else(|e| panic!("{var}: {e}\n{makefile}"));
        assert_eq!(&got, want, "{var} differs from make's in:\n{makefile}");
    }
}

#[test]
fn assignments_and_continuations() {
    agrees_with_make(
        "# comment\nA = one   two\nB := $(A) three # trailing comment\nC ?= set\nC ?= not again\n\
         D = first\nD += second\nE := simple\nE += $(A)\nF ::= double\nG = has \\# hash\n\
         H = line one \\\n    continued \\\n\tand again\noverride I = overridden\nexport J = exported\n\
         K = late $(L)\nL = bound later\nM = $$dollar\nN := $(UNSET)\n\
         dep_$(firstword $(A)) = computed name\nX = x\nY = $X and $(X) and ${X}\n",
        &[
            "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "M", "N", "dep_one", "Y",
        ],
    );
}

#[test]
fn conditionals() {
    agrees_with_make(
        "A = yes\nifeq ($(A),yes)\nB = taken\nelse\nB = not taken\nendif\n\
         ifneq \"$(A)\" 'yes'\nC = wrong\nelse ifeq ($(A), yes)\nC = else-if\nelse\nC = last\nendif\n\
         ifdef UNSET_IN_A_CLEAN_BUILD\nD = env\nendif\nifndef UNSET_IN_A_CLEAN_BUILD\nE = no env\nendif\n\
         EMPTY =\nifdef EMPTY\nF = empty is not defined\nelse\nF = empty\nendif\n\
         ifeq ($(A),no)\n ifeq ($(A),yes)\n G = nested in a false branch\n endif\nelse\n ifneq ($(strip $(A)),)\n G = nested\n endif\nendif\n\
         ifdef HIPE\n\tERLC_OPTS += -smp +native\nendif\nERLC_OPTS ?= +debug_info\n",
        &["B", "C", "D", "E", "F", "G", "ERLC_OPTS"],
    );
}

#[test]
fn defines_rules_and_recipes() {
    agrees_with_make(
        "define META\n#{\n\tlicenses => [<<\"ISC\">>],\n\tvsn => <<\"$(V)\">>\n}\nendef\nV = 1.2.3\n\
         define OUTER =\nbefore\ndefine INNER\nin\nendef\nafter\nendef\n\
         all: build\n\tDEPS = a recipe line, not a variable\n\t@echo $(DEPS)\n\n# comment in the recipe\n\tX = still recipe\n\
         DEPS = real\ntarget: TARGET_ONLY = target-specific\nother: ; @echo inline recipe\nAFTER = after rules\n\
         app:: rebar.config\n\t$(MAKE) x\n",
        &["META", "OUTER", "DEPS", "TARGET_ONLY", "AFTER"],
    );
}

#[test]
fn functions_and_substitution_references() {
    agrees_with_make(
        "W = b a  c a\nSRC = src/a.erl src/b.erl include/c.hrl\n\
         F1 = $(if $(W),yes,no)$(if $(UNSET),yes,no)$(if $(UNSET),yes)\n\
         F2 = $(or $(UNSET),,second,third) $(and a,b,last) [$(and a,,c)]\n\
         F3 = [$(strip   a   b  )] $(subst a,A,$(W)) $(patsubst src/%.erl,ebin/%.beam,$(SRC))\n\
         F4 = $(filter %.erl,$(SRC)) | $(filter-out %.erl,$(SRC)) | $(sort $(W)) | $(findstring a,$(W))[$(findstring z,$(W))]\n\
         F5 = $(word 2,$(W)) $(words $(W)) $(wordlist 2,3,$(W)) $(firstword $(W)) $(lastword $(W))\n\
         F6 = $(addprefix deps/,$(W)) $(addsuffix .mk,a b) $(notdir $(SRC)) $(dir $(SRC) plain)\n\
         F7 = $(SRC:.erl=.beam) $(SRC:src/%=lib/%)\n\
         F8 = $(subst $(comma),;,a$(comma)b) $(if $(filter a,$(W)),$(word 1,$(sort $(W))),none)\ncomma := ,\n",
        &["F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8"],
    );
}

#[test]
fn erlang_mk_defaults_and_the_fixture_makefiles() {
    agrees_with_make(
        "PROJECT_DESCRIPTION = no name, no version\ninclude erlang.mk\n-include not-there.mk\n",
        &["PROJECT", "PROJECT_VERSION", "PROJECT_DESCRIPTION"],
    );
    agrees_with_make(
        "PROJECT =   spaced  \nPROJECT_VERSION = 2.0.0\ninclude $(if $(ERLANG_MK_FILENAME),$(ERLANG_MK_FILENAME),erlang.mk)\n",
        &["PROJECT", "PROJECT_VERSION"],
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for (makefile, vars) in [
        (
            root.join("sources/mk_web/Makefile"),
            &[
                "PROJECT",
                "PROJECT_DESCRIPTION",
                "PROJECT_VERSION",
                "DEPS",
                "BUILD_DEPS",
                "LOCAL_DEPS",
                "dep_mk_erl",
                "dep_erl_ids",
                "hex_req_erl_ids",
                "dep_jsonish",
                "HEX_TARBALL_EXTRA_METADATA",
                "ERLC_OPTS",
            ][..],
        ),
        (
            root.join("packages/mk_erl/Makefile"),
            &[
                "PROJECT",
                "PROJECT_DESCRIPTION",
                "PROJECT_VERSION",
                "DEPS",
                "HEX_TARBALL_EXTRA_METADATA",
            ][..],
        ),
    ] {
        agrees_with_make(&std::fs::read_to_string(makefile).unwrap(), vars);
    }
}

#[test]
fn what_is_not_evaluated_is_an_error_never_a_guess() {
    let make = Makefile::parse(
        "V = $(shell git describe)\nFILES = $(wildcard src/*.erl)\nCMD != date\n\
         ifeq ($(shell uname),Linux)\nDEPS = linux_only\nelse\nDEPS = other\nendif\n\
         SAFE = fine\nLOOP = $(LOOP2)\nLOOP2 = $(LOOP)\n",
        "dir",
    )
    .unwrap();
    for (var, says) in [
        ("V", "$(shell git describe"),
        ("FILES", "$(wildcard src/*.erl"),
        ("CMD", "`!=`"),
        ("DEPS", "line 4: $(shell uname"),
        ("LOOP", "refers to itself"),
    ] {
        let err = make.value(var).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{var}: ")) && err.contains(says),
            "{err}"
        );
    }
    assert_eq!(make.value("SAFE").unwrap(), "fine");
    assert_eq!(make.value("UNSET").unwrap(), "");

    for (text, says) in [
        ("ifeq (a,a)\nA = 1\n", "line 1: conditional has no `endif`"),
        ("endif\n", "line 1: `endif` without"),
        ("define X\nno end\n", "line 1: `define X` has no `endef`"),
    ] {
        let err = Makefile::parse(text, "dir").unwrap_err().to_string();
        assert!(err.contains(says), "{text:?}: {err}");
    }
}
