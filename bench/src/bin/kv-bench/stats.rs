//! Summaries of repeated measurements (min/median/max, as ../shared/BENCHMARKING.md asks) and the JSON
//! line output.

use std::io::Write;

use serde_json::{json, Value};

/// Linear-interpolated quantile of an ascending slice (0 for an empty one).
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Median of unsorted values.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile_sorted(&s, 0.5)
}

/// `{"min":..,"median":..,"max":..}` of repeated measurements, rounded to `digits` decimals.
pub fn min_med_max(v: &[f64], digits: i32) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let r = |x: f64| crate::serial::round(x, digits);
    json!({
        "min": s.first().copied().map(r),
        "median": (!s.is_empty()).then(|| r(quantile_sorted(&s, 0.5))),
        "max": s.last().copied().map(r),
    })
}

/// Percentage of throughput lost relative to a baseline (positive = slower).
pub fn lost_pct(value: f64, baseline: f64) -> f64 {
    if baseline <= 0.0 {
        return 0.0;
    }
    crate::serial::round((1.0 - value / baseline) * 100.0, 2)
}

/// Prints one measurement as a JSON line on stdout (flushed, so a killed run keeps what it
/// measured) and a short human line on stderr.
pub fn emit(v: Value) {
    let line = v.to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if line.len() > 300 {
        eprintln!("  -> {}…", &line[..line.floor_char_boundary_compat(300)]);
    } else {
        eprintln!("  -> {line}");
    }
}

/// `str::floor_char_boundary` is unstable; JSON from serde is ASCII-safe enough to cut at a
/// char boundary found by scanning back.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(median(&[3.0, 1.0, 2.0, 4.0]), 2.5);
        assert_eq!(lost_pct(90.0, 100.0), 10.0);
    }
}
