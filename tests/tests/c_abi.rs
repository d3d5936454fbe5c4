//! Compiles `tests/c/cpt_smoke.c` against `kmod-shim/include/cpt.h` and `libkmod_shim`, with
//! `-Wall -Wextra -Werror`, shared and static, and runs it with every backend that works here.
//!
//! The libraries come from `cargo build --workspace` (which `scripts/test.sh` runs first).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn lib(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

fn compile(out: &Path, link: &[&str]) {
    let status = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(out)
        .arg("-I")
        .arg(repo().join("kmod-shim/include"))
        .arg(repo().join("tests/c/cpt_smoke.c"))
        .args(link)
        .status()
        .expect("gcc must be installed (.ci/run installs it)");
    assert!(status.success(), "gcc failed for {}", out.display());
}

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

#[test]
fn c_program_against_the_shared_library() {
    let so = lib("libkmod_shim.so");
    let dir = so.parent().unwrap().to_str().unwrap().to_owned();
    let exe = profile_dir().join("cpt_smoke_shared");
    compile(
        &exe,
        &["-L", &dir, "-lkmod_shim", &format!("-Wl,-rpath,{dir}")],
    );
    for b in backends() {
        run(&exe, b);
    }
}

#[test]
fn c_program_against_the_static_library() {
    let a = lib("libkmod_shim.a");
    let exe = profile_dir().join("cpt_smoke_static");
    compile(&exe, &[a.to_str().unwrap(), "-lpthread", "-ldl", "-lm"]);
    for b in backends() {
        run(&exe, b);
    }
}

#[test]
fn unknown_backend_is_refused_with_a_clear_error() {
    let so = lib("libkmod_shim.so");
    let dir = so.parent().unwrap().to_str().unwrap().to_owned();
    let exe = profile_dir().join("cpt_smoke_shared_bad");
    compile(
        &exe,
        &["-L", &dir, "-lkmod_shim", &format!("-Wl,-rpath,{dir}")],
    );
    let out = Command::new(&exe)
        .env("CPT_BACKEND", "nonsense")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown backend 'nonsense'"), "{stderr}");
}
