//! An order router that decides per signal in its own process and reports its fills.
//!
//! ```sh
//! cargo run -p arbiter-client --example router -- \
//!     --server http://127.0.0.1:50051 --test-id signal_ab [--signals 100000] [--token T]
//! ```
//!
//! For each signal it asks the local allocator which model to use (no network round trip),
//! "routes" the order, and reports the realised return of the fill, attributed by the decision
//! id. The reporter also sends the decisions it drew, so the server's allocation counts and
//! sample-ratio check include them. Stop the server while it runs: decisions go on (flagged
//! stale), and the results wait in the reporter's buffer until the server is back.

use std::time::{Duration, Instant};

use arbiter_client::{LocalAllocator, Reporter, ReporterOptions, WatchOptions};

struct Args {
    servers: Vec<String>,
    test_id: String,
    signals: u64,
    token: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        servers: Vec::new(),
        test_id: String::new(),
        signals: 100_000,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => args.servers.push(value()?),
            "--test-id" => args.test_id = value()?,
            "--signals" => {
                args.signals = value()?.parse().map_err(|e| format!("--signals: {e}"))?
            }
            "--token" => args.token = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.servers.is_empty() || args.test_id.is_empty() {
        return Err(
            "usage: router --server URL [--server URL …] --test-id ID [--signals N] \
                    [--token T]"
                .into(),
        );
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let endpoints = args
        .servers
        .iter()
        .map(|s| tonic::transport::Endpoint::from_shared(s.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let client_id = format!("router-example-{}", std::process::id());
    let mut watch = WatchOptions::new(&client_id).tests([args.test_id.clone()]);
    let mut report = ReporterOptions::new(&client_id);
    if let Some(token) = &args.token {
        watch = watch.token(token);
        report = report.token(token);
    }
    let allocator = LocalAllocator::start(endpoints.clone(), watch);
    if !allocator.ready(Duration::from_secs(10)).await {
        return Err("no allocation table from the server within 10 s".into());
    }
    let reporter = Reporter::start(endpoints, Some(allocator.clone()), report);

    let started = Instant::now();
    let mut deciding = Duration::ZERO;
    let mut stale = 0u64;
    let mut unit_key = String::new();
    for signal in 0..args.signals {
        unit_key.clear();
        use std::fmt::Write;
        let _ = write!(unit_key, "signal-{signal}");
        let t = Instant::now();
        let decision = allocator.allocate(&args.test_id, &unit_key)?;
        deciding += t.elapsed();
        stale += u64::from(decision.stale);
        // The fill: a made-up return, a little better for arm_1.
        let edge = if decision.arm_id() == "arm_1" {
            2e-4
        } else {
            0.0
        };
        let noise = ((signal * 7919) % 1000) as f64 / 1e6 - 5e-4;
        reporter.report(decision.result(edge + noise, "")).await;
        if signal % 10_000 == 0 {
            println!(
                "signal {signal}: {} via {} (p = {:.3}, table v{}, {:?})",
                decision.arm_id(),
                decision.model_registry_id(),
                decision.propensity,
                decision.table_version(),
                allocator.freshness()
            );
        }
    }
    let flushed = reporter.flush(Duration::from_secs(30)).await;
    let stats = reporter.stats();
    println!(
        "{} signals in {:.2} s; mean decision {:.0} ns; {stale} stale; results accepted {}, \
         duplicates {}, rejected {}; decision counts accepted {}; all acknowledged: {flushed}",
        args.signals,
        started.elapsed().as_secs_f64(),
        deciding.as_nanos() as f64 / args.signals.max(1) as f64,
        stats.accepted,
        stats.duplicates,
        stats.rejected,
        stats.counts_accepted
    );
    Ok(())
}
