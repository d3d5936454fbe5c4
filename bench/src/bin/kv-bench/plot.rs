//! A hand-written SVG of request-count time series: one panel per series, stacked, sharing the
//! time axis and the count scale so the servers can be compared by eye; checkpoint/BGSAVE
//! moments as dashed vertical lines. No plotting dependency for one simple figure.

use std::fmt::Write;

/// One time series: requests completed per bucket, and moments to mark.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub bucket_ms: u64,
    pub counts: Vec<u32>,
    pub marks_ms: Vec<f64>,
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const PANEL_H: f64 = 200.0;
const GAP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A "nice" axis maximum and tick step for `max`.
fn nice(max: f64) -> (f64, f64) {
    let max = max.max(1.0);
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the figure.
pub fn svg(title: &str, series: &[Series]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + series.len() as f64 * (PANEL_H + GAP) + BOTTOM - GAP;
    let t_max_ms = series
        .iter()
        .map(|s| s.counts.len() as f64 * s.bucket_ms as f64)
        .fold(1.0, f64::max);
    let (x_max, x_step) = nice(t_max_ms / 1e3);
    let y_peak = series
        .iter()
        .flat_map(|s| s.counts.iter())
        .copied()
        .max()
        .unwrap_or(1) as f64;
    let (y_max, y_step) = nice(y_peak * 1.05);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        esc(title)
    );
    for (i, s) in series.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP);
        let bottom = top + PANEL_H;
        let x = |sec: f64| LEFT + sec / x_max * plot_w;
        let y = |v: f64| bottom - v / y_max * PANEL_H;
        let color = COLORS[i % COLORS.len()];
        // Panel title, frame, grid and ticks.
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{}" fill="{color}">{}</text>"#,
            top - 6.0,
            esc(&s.label)
        );
        let _ = writeln!(
            o,
            r#"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="black"/>"#
        );
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let yy = y(v);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0
            );
            v += y_step;
        }
        let mut t = 0.0;
        while t <= x_max + 1e-9 {
            let xx = x(t);
            let _ = writeln!(
                o,
                r#"<line x1="{xx:.1}" y1="{bottom}" x2="{xx:.1}" y2="{}" stroke="black"/><text x="{xx:.1}" y="{}" text-anchor="middle">{t}</text>"#,
                bottom + 5.0,
                bottom + 18.0
            );
            t += x_step;
        }
        let _ = writeln!(
            o,
            r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">requests / {} ms</text>"#,
            top + PANEL_H / 2.0,
            s.bucket_ms
        );
        // Marks first, so the series is drawn over them.
        for &m in &s.marks_ms {
            let xx = x(m / 1e3);
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{bottom}" stroke="#ff7f0e" stroke-dasharray="4,3"/>"##
            );
        }
        let mut pts = String::new();
        for (k, &c) in s.counts.iter().enumerate() {
            // Each bucket's count at the bucket's end: that is when those requests completed.
            let sec = (k + 1) as f64 * s.bucket_ms as f64 / 1e3;
            let _ = write!(pts, "{:.1},{:.1} ", x(sec), y(c as f64));
        }
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1"/>"#,
            pts.trim_end()
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{}" y="{}" text-anchor="middle">time since start of run (s); dashed: checkpoint / BGSAVE issued</text>"##,
        LEFT + plot_w / 2.0,
        height - 12.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice(5.0), (5.0, 1.0));
        assert_eq!(nice(233.0), (250.0, 50.0));
    }

    #[test]
    fn renders_polyline_and_marks() {
        let s = svg(
            "t<1>",
            &[Series {
                label: "a".into(),
                bucket_ms: 10,
                counts: vec![1, 2, 3],
                marks_ms: vec![15.0],
            }],
        );
        assert!(s.contains("<polyline"));
        assert!(s.contains("stroke-dasharray"));
        assert!(s.contains("t&lt;1&gt;"));
    }
}
