//! `cpt-bench` runs and prints well-formed JSON lines (behaviour only: no timing is asserted).

use std::process::Command;

#[test]
fn cpt_bench_prints_one_json_object_per_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_cpt-bench"))
        .args(["--sizes", "1M", "--dirty", "1,50", "--runs", "1"])
        .args(["--backends", "uffd-wp,mprotect,soft-dirty,full"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cpt-bench failed: {stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let measured: Vec<_> = lines
        .iter()
        .filter(|l| l.get("query_ms").is_some())
        .collect();
    let unavailable: Vec<_> = lines
        .iter()
        .filter(|l| l.get("unavailable").is_some())
        .collect();
    // soft-dirty either runs or says why not; the others always run on this kernel.
    assert_eq!(measured.len() + unavailable.len() * 2, 8, "{lines:?}");
    for l in &measured {
        for key in [
            "query_ms",
            "cptfork_parent_ms",
            "plain_fork_ms",
            "copy_dirty_ms",
            "full_copy_ms",
            "first_write_fault_us",
        ] {
            assert!(
                l[key]
                    .as_f64()
                    .is_some_and(|v| v >= 0.0 || key == "first_write_fault_us"),
                "{key} in {l}"
            );
        }
        let (dirty, reported) = (
            l["dirty_pages"].as_u64().unwrap(),
            l["reported_pages"].as_u64().unwrap(),
        );
        match l["backend"].as_str().unwrap() {
            "uffd-wp" => assert_eq!(reported, dirty, "{l}"),
            "full" => assert_eq!(reported, 256, "{l}"),
            _ => assert!(reported >= dirty, "{l}"),
        }
    }
    for l in &unavailable {
        assert!(!l["unavailable"].as_str().unwrap().is_empty());
    }
}
