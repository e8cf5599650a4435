//! Results of `arbiter bench`: one measurement per scenario and system, ratios arbiter/baseline,
//! and their rendering as a table or JSON.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::BenchArgs;

/// One scenario against one system.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Scenario name.
    pub scenario: String,
    /// "arbiter", or the baseline: "echo" or "no-auth".
    pub system: String,
    /// Completed operations (calls, responses or acknowledged results).
    pub ops: u64,
    /// Wall time of the measurement in seconds.
    pub seconds: f64,
    /// Operations per second.
    pub rate: f64,
    /// Latency percentiles in microseconds (unary scenarios only).
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
}

impl Measurement {
    pub(super) fn new(
        scenario: String,
        system: &str,
        ops: u64,
        elapsed: Duration,
        latencies: Option<Histogram<u64>>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let percentile = |q: f64| {
            latencies
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        Self {
            scenario,
            system: system.to_string(),
            ops,
            seconds,
            rate: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
        }
    }
}

/// arbiter relative to the baseline for one scenario (latency: lower is better; rate: higher is
/// better).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Scenario name.
    pub scenario: String,
    /// arbiter rate / baseline rate.
    pub rate: f64,
    /// arbiter p50 / baseline p50.
    pub p50: Option<f64>,
    /// arbiter p99 / baseline p99.
    pub p99: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Milliseconds per scenario.
    pub duration_ms: u64,
    /// The arbiter target ("in-process" when the benchmark started it).
    pub target: String,
    /// Closed-loop connections.
    pub connections: u32,
    /// Closed-loop callers per connection.
    pub in_flight: u32,
    /// Whether the measured arbiter authenticated every call with a bearer token.
    pub authenticated: bool,
    /// The baseline's system name, when one ran.
    pub baseline: Option<String>,
    /// All measurements.
    pub measurements: Vec<Measurement>,
    /// arbiter / baseline, when the baseline ran.
    pub ratios: Vec<Ratio>,
}

impl Report {
    pub(super) fn new(args: &BenchArgs, measurements: Vec<Measurement>) -> Self {
        let find = |scenario: &str, system: &str| {
            measurements
                .iter()
                .find(|m| m.scenario == scenario && m.system == system)
        };
        let baseline = args.baseline_system();
        let ratios = measurements
            .iter()
            .filter(|m| m.system == "arbiter")
            .filter_map(|a| {
                let e = find(&a.scenario, baseline?)?;
                let div = |x: Option<f64>, y: Option<f64>| Some(x? / y?);
                Some(Ratio {
                    scenario: a.scenario.clone(),
                    rate: a.rate / e.rate,
                    p50: div(a.p50_us, e.p50_us),
                    p99: div(a.p99_us, e.p99_us),
                })
            })
            .collect();
        Self {
            duration_ms: args.duration_ms,
            target: args.target.clone().unwrap_or_else(|| "in-process".into()),
            connections: args.connections,
            in_flight: args.in_flight,
            authenticated: args.baseline == crate::config::Baseline::Unauthenticated,
            baseline: baseline.map(String::from),
            measurements,
            ratios,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        writeln!(
            f,
            "{:<36} {:<8} {:>13} {:>10} {:>10} {:>10}",
            "scenario", "system", "ops/s", "p50 µs", "p99 µs", "p99.9 µs"
        )?;
        for m in &self.measurements {
            writeln!(
                f,
                "{:<36} {:<8} {:>13.0} {:>10} {:>10} {:>10}",
                m.scenario,
                m.system,
                m.rate,
                opt(m.p50_us),
                opt(m.p99_us),
                opt(m.p999_us)
            )?;
        }
        if let (false, Some(baseline)) = (self.ratios.is_empty(), &self.baseline) {
            let arbiter = if self.authenticated {
                "arbiter (token auth)"
            } else {
                "arbiter"
            };
            writeln!(f, "\n{arbiter} / {baseline}")?;
            writeln!(
                f,
                "{:<36} {:>8} {:>8} {:>8}",
                "scenario", "rate", "p50", "p99"
            )?;
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
            for r in &self.ratios {
                writeln!(
                    f,
                    "{:<36} {:>8.2} {:>8} {:>8}",
                    r.scenario,
                    r.rate,
                    opt(r.p50),
                    opt(r.p99)
                )?;
            }
        }
        Ok(())
    }
}
