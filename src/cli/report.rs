//! `arbiter tests report`: one SVG a quant can read at a glance — the approximate posterior of
//! each arm's mean return (normal with the sample mean and standard error, i.e. a flat prior),
//! and each arm's allocation share over time from the test's history.

use std::fmt::Write;

use crate::pb;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 860.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Maps `v` in [lo, hi] to [a, b] (the middle when the range is empty).
fn scale(v: f64, lo: f64, hi: f64, a: f64, b: f64) -> f64 {
    if hi > lo {
        a + (v - lo) / (hi - lo) * (b - a)
    } else {
        (a + b) / 2.0
    }
}

/// A panel's frame: title, axes and the labels of both ends of each axis.
struct Frame<'a> {
    top: f64,
    bottom: f64,
    title: &'a str,
    x: (&'a str, &'a str),
    y: (&'a str, &'a str),
}

fn axis(svg: &mut String, frame: Frame<'_>) {
    let Frame {
        top,
        bottom,
        title,
        x: (x_lo, x_hi),
        y: (y_lo, y_hi),
    } = frame;
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>
<line x1="{LEFT}" y1="{bottom}" x2="{RIGHT}" y2="{bottom}" stroke="#444"/>
<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#444"/>
<text x="{LEFT}" y="{}" font-size="11">{}</text><text x="{RIGHT}" y="{}" font-size="11" text-anchor="end">{}</text>
<text x="{}" y="{bottom}" font-size="11" text-anchor="end">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>
"##,
        top - 8.0,
        escape(title),
        bottom + 15.0,
        escape(x_lo),
        bottom + 15.0,
        escape(x_hi),
        LEFT - 5.0,
        escape(y_lo),
        LEFT - 5.0,
        top + 10.0,
        escape(y_hi),
    );
}

fn posterior_panel(svg: &mut String, results: &pb::TestResults, top: f64, bottom: f64) {
    // Standard error per arm; arms with fewer than two results have no curve.
    let curves: Vec<Option<(f64, f64)>> = results
        .arms
        .iter()
        .map(|a| {
            let se = a.std_return / (a.total_requests.max(1) as f64).sqrt();
            (a.total_requests >= 2 && se > 0.0).then_some((a.mean_return, se))
        })
        .collect();
    let lo = curves
        .iter()
        .flatten()
        .map(|(m, se)| m - 4.0 * se)
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .flatten()
        .map(|(m, se)| m + 4.0 * se)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (-1.0, 1.0)
    };
    let density = |x: f64, m: f64, se: f64| {
        (-0.5 * ((x - m) / se).powi(2)).exp() / (se * (2.0 * std::f64::consts::PI).sqrt())
    };
    let peak = curves
        .iter()
        .flatten()
        .map(|(m, se)| density(*m, *m, *se))
        .fold(0.0, f64::max);
    let (x_lo, x_hi, y_hi) = (
        format!("{lo:+.5}"),
        format!("{hi:+.5}"),
        format!("{peak:.3e}"),
    );
    axis(
        svg,
        Frame {
            top,
            bottom,
            title: "Posterior of each arm's mean return (normal approximation)",
            x: (&x_lo, &x_hi),
            y: ("0", &y_hi),
        },
    );
    for (i, (arm, curve)) in results.arms.iter().zip(&curves).enumerate() {
        let mut d = String::new();
        if let Some((m, se)) = curve {
            for step in 0..=200 {
                let x = lo + (hi - lo) * f64::from(step) / 200.0;
                let px = scale(x, lo, hi, LEFT, RIGHT);
                let py = scale(density(x, *m, *se), 0.0, peak, bottom, top);
                let _ = write!(d, "{}{px:.1},{py:.1} ", if step == 0 { "M" } else { "L" });
            }
        }
        let _ = writeln!(
            svg,
            r#"<path class="posterior" data-arm="{}" d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            escape(&arm.arm_id),
            d.trim_end(),
            color(i)
        );
    }
}

fn share_panel(svg: &mut String, history: &pb::TestHistory, top: f64, bottom: f64) {
    let seconds = |p: &pb::HistoryPoint| {
        p.time
            .as_ref()
            .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) * 1e-9)
    };
    let t0 = history.points.first().map(seconds).unwrap_or(0.0);
    let t1 = history.points.last().map(seconds).unwrap_or(0.0);
    let span = format!("+{:.0} s", t1 - t0);
    axis(
        svg,
        Frame {
            top,
            bottom,
            title: "Allocation share per arm over time",
            x: ("start", &span),
            y: ("0%", "100%"),
        },
    );
    for (i, arm) in history.arm_ids.iter().enumerate() {
        let mut d = String::new();
        for (k, p) in history.points.iter().enumerate() {
            let share = p.shares.get(i).copied().unwrap_or(0.0);
            let px = scale(seconds(p), t0, t1, LEFT, RIGHT);
            let py = scale(share, 0.0, 1.0, bottom, top);
            let _ = write!(d, "{}{px:.1},{py:.1} ", if k == 0 { "M" } else { "L" });
        }
        let _ = writeln!(
            svg,
            r#"<path class="share" data-arm="{}" d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            escape(arm),
            d.trim_end(),
            color(i)
        );
    }
}

/// The report of a test as an SVG document.
pub fn render(results: &pb::TestResults, history: &pb::TestHistory) -> String {
    let legend_rows = results.arms.len() as f64;
    let height = 640.0 + 18.0 * legend_rows;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">Test {} ({} results, {} allocations)</text>
"#,
        escape(&results.test_id),
        results.total_requests,
        results.total_allocations
    );
    posterior_panel(&mut svg, results, 70.0, 300.0);
    share_panel(&mut svg, history, 370.0, 600.0);
    for (i, a) in results.arms.iter().enumerate() {
        let y = 640.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}" font-size="12">{} {}: n = {}, mean {:+.5}, share {:.1}%, P(best) {:.3}</text>"#,
            y - 10.0,
            color(i),
            LEFT + 18.0,
            escape(&a.arm_id),
            escape(&a.model_registry_id),
            a.total_requests,
            a.mean_return,
            a.allocation_weight * 100.0,
            a.probability_best.unwrap_or(0.0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
