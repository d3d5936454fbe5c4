//! Where the built programs are, and compiling the C test programs against them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A library built by `cargo build --workspace` (which `scripts/test.sh` runs first).
pub fn lib(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// Compiles `tests/c/<source>` with `-Wall -Wextra -Werror` against the headers in `include`.
pub fn compile_c(source: &str, include: &str, out: &Path, link: &[&str]) {
    let status = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(out)
        .arg("-I")
        .arg(repo().join(include))
        .arg(repo().join("tests/c").join(source))
        .args(link)
        .status()
        .expect("gcc must be installed (.ci/run installs it)");
    assert!(status.success(), "gcc failed for {}", out.display());
}

/// Link arguments for a shared library in the profile directory, with an rpath to it.
pub fn link_shared(libname: &str) -> Vec<String> {
    let so = lib(&format!("lib{libname}.so"));
    let dir = so.parent().unwrap().to_str().unwrap().to_owned();
    vec![
        "-L".into(),
        dir.clone(),
        format!("-l{libname}"),
        format!("-Wl,-rpath,{dir}"),
    ]
}
