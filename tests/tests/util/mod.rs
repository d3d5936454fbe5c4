//! The shared test support (`testkit/`, crate `hotspare-testkit`), under the name the test
//! files use.
#![allow(unused_imports)]

pub use hotspare_testkit::*;

/// The `RESUMED <ops> <digest>` line a resumed kvmodel prints: (operations, state digest).
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn resumed_line(stdout: &str, context: &str) -> (u64, u32) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESUMED "))
        .unwrap_or_else(|| panic!("no RESUMED: {stdout} {context}"));
    let mut f = line.split(' ').skip(1);
    let ops: u64 = f.next().unwrap().parse().unwrap();
    let digest: u32 = f.next().unwrap().parse().unwrap();
    (ops, digest)
}
