//! Compiles `tests/c/cpt_smoke.c` against `kmod-shim/include/cpt.h` and `libkmod_shim`, with
//! `-Wall -Wextra -Werror`, shared and static, and runs it with every backend that works here.
//!
//! The libraries come from `cargo build --workspace` (which `scripts/test.sh` runs first).

mod util;

use std::path::Path;
use std::process::Command;
use util::{lib, profile_dir};

fn run(exe: &Path, backend: &str) {
    let out = Command::new(exe)
        .env("CPT_BACKEND", backend)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("cpt_smoke: ok"),
        "{} with CPT_BACKEND={backend}: {}\n{stdout}{stderr}",
        exe.display(),
        out.status
    );
    if backend != "auto" {
        assert!(stdout.contains(&format!("backend {backend}")), "{stdout}");
    }
}

fn backends() -> Vec<&'static str> {
    let mut v = vec!["auto"];
    for k in kmod_shim::BackendKind::ALL {
        match k.probe() {
            Ok(()) => v.push(k.name()),
            Err(why) => eprintln!("!!! C ABI not run with backend {k}: {why}"),
        }
    }
    v
}

fn compile_shared(exe: &Path) {
    let link = util::link_shared("kmod_shim");
    let link: Vec<&str> = link.iter().map(String::as_str).collect();
    util::compile_c("cpt_smoke.c", "kmod-shim/include", exe, &link);
}

#[test]
fn c_program_against_the_shared_library() {
    let exe = profile_dir().join("cpt_smoke_shared");
    compile_shared(&exe);
    for b in backends() {
        run(&exe, b);
    }
}

#[test]
fn c_program_against_the_static_library() {
    let a = lib("libkmod_shim.a");
    let exe = profile_dir().join("cpt_smoke_static");
    util::compile_c(
        "cpt_smoke.c",
        "kmod-shim/include",
        &exe,
        &[a.to_str().unwrap(), "-lpthread", "-ldl", "-lm"],
    );
    for b in backends() {
        run(&exe, b);
    }
}

#[test]
fn unknown_backend_is_refused_with_a_clear_error() {
    let exe = profile_dir().join("cpt_smoke_shared_bad");
    compile_shared(&exe);
    let out = Command::new(&exe)
        .env("CPT_BACKEND", "nonsense")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown backend 'nonsense'"), "{stderr}");
}
