//! `arbiter tests report`: one SVG a quant can read at a glance — the approximate posterior of
//! each arm's mean return (normal with the sample mean and standard error, i.e. a flat prior),
//! each arm's allocation share over time, and each comparison's Holm-adjusted always-valid
//! p-value over time against the significance level, with the stop (and its winner) and the
//! close of settlement marked. Arms differ in colour and in dash pattern, so lines that overlap
//! stay apart.

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

/// Dash patterns by arm: solid, dashed, dotted, dash-dot…
const DASHES: [&str; 4] = ["none", "8 4", "2 3", "8 3 2 3"];

fn dash(i: usize) -> &'static str {
    DASHES[i % DASHES.len()]
}

/// Seconds since the epoch of a timestamp.
fn seconds(t: Option<&prost_types::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + f64::from(t.nanos) * 1e-9)
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
            title: "Posterior density of each arm's mean return per result (normal approximation)",
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
            r#"<path class="posterior" data-arm="{}" d="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            escape(&arm.arm_id),
            d.trim_end(),
            color(i),
            dash(i)
        );
    }
}

/// The time axis of the history panels: from the first point to the last (or the end of the
/// results, whichever is later), in seconds since the start.
#[derive(Clone, Copy)]
struct Timeline {
    t0: f64,
    t1: f64,
}

impl Timeline {
    fn of(history: &pb::TestHistory, results: &pb::TestResults) -> Self {
        let time = |p: &pb::HistoryPoint| seconds(p.time.as_ref()).unwrap_or(0.0);
        let t0 = history.points.first().map(time).unwrap_or(0.0);
        // A settling test's axis reaches the close of settlement, so that point shows.
        let settles = seconds(results.settles_at.as_ref()).filter(|_| !results.settled);
        let t1 = history
            .points
            .last()
            .map(time)
            .into_iter()
            .chain(seconds(results.stopped_at.as_ref()))
            .chain(settles)
            .fold(t0, f64::max);
        Self { t0, t1 }
    }

    fn x(&self, t: f64) -> f64 {
        scale(t, self.t0, self.t1, LEFT, RIGHT)
    }

    fn span(&self) -> String {
        format!("{:.0} s since start", self.t1 - self.t0)
    }
}

/// The frame of a panel over time (seconds since the start on x); returns the timeline.
fn time_axis(
    svg: &mut String,
    line: Timeline,
    (top, bottom): (f64, f64),
    title: &str,
    y: (&str, &str),
) -> Timeline {
    let span = line.span();
    axis(
        svg,
        Frame {
            top,
            bottom,
            title,
            x: ("0 s", &span),
            y,
        },
    );
    line
}

/// Vertical lines at the stop (with its winner) and at the close of settlement, if in view.
fn events(svg: &mut String, results: &pb::TestResults, line: Timeline, top: f64, bottom: f64) {
    let stop = seconds(results.stopped_at.as_ref());
    let settle = if results.settled {
        None
    } else {
        seconds(results.settles_at.as_ref())
    };
    let mut mark = |t: f64, label: String, class: &str| {
        if t < line.t0 || t > line.t1 + 1e-9 {
            return;
        }
        let x = line.x(t);
        let _ = writeln!(
            svg,
            r##"<line class="{class}" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#000" stroke-dasharray="4 2"/><text x="{:.1}" y="{}" font-size="11">{}</text>"##,
            x + 3.0,
            top + 12.0,
            escape(&label)
        );
    };
    if let Some(t) = stop {
        let winner = if results.winner.is_empty() {
            "no winner".to_string()
        } else {
            format!("winner {}", results.winner)
        };
        mark(t, format!("stopped ({winner})"), "stop");
    }
    if let Some(t) = settle {
        mark(t, "settles".to_string(), "settlement");
    }
}

fn share_panel(
    svg: &mut String,
    history: &pb::TestHistory,
    results: &pb::TestResults,
    top: f64,
    bottom: f64,
) {
    let line = time_axis(
        svg,
        Timeline::of(history, results),
        (top, bottom),
        "Allocation share per arm (% of decisions) over time",
        ("0%", "100%"),
    );
    for (i, arm) in history.arm_ids.iter().enumerate() {
        let mut d = String::new();
        for (k, p) in history.points.iter().enumerate() {
            let share = p.shares.get(i).copied().unwrap_or(0.0);
            let px = line.x(seconds(p.time.as_ref()).unwrap_or(line.t0));
            let py = scale(share, 0.0, 1.0, bottom, top);
            let _ = write!(d, "{}{px:.1},{py:.1} ", if k == 0 { "M" } else { "L" });
        }
        let _ = writeln!(
            svg,
            r#"<path class="share" data-arm="{}" d="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            escape(arm),
            d.trim_end(),
            color(i),
            dash(i)
        );
    }
    events(svg, results, line, top, bottom);
}

/// The smallest p-value the significance panel shows (its axis is logarithmic, 1 at the top).
const P_FLOOR: f64 = 1e-6;

fn significance_panel(
    svg: &mut String,
    history: &pb::TestHistory,
    results: &pb::TestResults,
    alpha: Option<f64>,
    top: f64,
    bottom: f64,
) {
    let line = time_axis(
        svg,
        Timeline::of(history, results),
        (top, bottom),
        "Always-valid p-value per comparison with the control (Holm-adjusted, log scale)",
        ("1e-6", "1"),
    );
    let y = |p: f64| {
        let p = p.clamp(P_FLOOR, 1.0);
        scale(p.log10(), P_FLOOR.log10(), 0.0, bottom, top)
    };
    if let Some(alpha) = alpha {
        let ya = y(alpha);
        let _ = writeln!(
            svg,
            r##"<line class="alpha" x1="{LEFT}" y1="{ya:.1}" x2="{RIGHT}" y2="{ya:.1}" stroke="#888" stroke-dasharray="2 2"/><text x="{RIGHT}" y="{:.1}" font-size="11" text-anchor="end">α = {alpha}</text>"##,
            ya - 3.0
        );
    }
    for (c, comparison) in results.comparisons.iter().enumerate() {
        let arm = results
            .arms
            .iter()
            .position(|a| a.arm_id == comparison.treatment_arm)
            .unwrap_or(c + 1);
        let mut d = String::new();
        for p in &history.points {
            let Some(&value) = p.adjusted_p_values.get(c) else {
                continue;
            };
            let px = line.x(seconds(p.time.as_ref()).unwrap_or(line.t0));
            let _ = write!(
                d,
                "{}{px:.1},{:.1} ",
                if d.is_empty() { "M" } else { "L" },
                y(value)
            );
        }
        let _ = writeln!(
            svg,
            r#"<path class="significance" data-arm="{}" d="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{}"/>"#,
            escape(&comparison.treatment_arm),
            d.trim_end(),
            color(arm),
            dash(arm)
        );
    }
    events(svg, results, line, top, bottom);
}

/// The report of a test as an SVG document; `alpha` (the test's significance level), when known,
/// is drawn on the significance panel.
pub fn render(results: &pb::TestResults, history: &pb::TestHistory, alpha: Option<f64>) -> String {
    let legend_rows = results.arms.len() as f64;
    let legend_top = 900.0;
    let height = legend_top + 20.0 + 18.0 * legend_rows;
    let status = match pb::TestStatus::try_from(results.status) {
        Ok(pb::TestStatus::Running) => "running",
        Ok(pb::TestStatus::Paused) => "paused",
        Ok(pb::TestStatus::Completed) if results.settled => "completed, settled",
        Ok(pb::TestStatus::Completed) => "completed, settling",
        Ok(pb::TestStatus::Cancelled) => "cancelled",
        _ => "unknown status",
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">Test {} — {status}, {} results, {} allocations{}</text>
"#,
        escape(&results.test_id),
        results.total_requests,
        results.total_allocations,
        if results.winner.is_empty() {
            String::new()
        } else {
            format!(", winner {}", escape(&results.winner))
        }
    );
    posterior_panel(&mut svg, results, 70.0, 290.0);
    share_panel(&mut svg, history, results, 350.0, 570.0);
    significance_panel(&mut svg, history, results, alpha, 630.0, 850.0);
    for (i, a) in results.arms.iter().enumerate() {
        let y = legend_top + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3" stroke-dasharray="{}"/><text x="{}" y="{y}" font-size="12">{} {}: n = {}, mean {:+.5} per result, share {:.1}%, P(best) {:.3}, max drawdown {:.5}{}</text>"#,
            y - 4.0,
            LEFT + 24.0,
            y - 4.0,
            color(i),
            dash(i),
            LEFT + 30.0,
            escape(&a.arm_id),
            escape(&a.model_registry_id),
            a.total_requests,
            a.mean_return,
            a.allocation_weight * 100.0,
            a.probability_best.unwrap_or(0.0),
            a.max_drawdown,
            if a.drift_detected { ", drift" } else { "" }
        );
    }
    svg.push_str("</svg>\n");
    svg
}
