//! The `arbiter` binary: parse the command line, set up telemetry, run.

use anyhow::Context;
use arbiter::config::{Cli, Command, ConfigError};

fn main() -> anyhow::Result<()> {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    match cli.command {
        Command::Serve(args) if args.check_config => {
            print!("{}", args.describe());
            println!("# configuration ok");
            Ok(())
        }
        Command::Serve(args) => {
            arbiter::telemetry::init(args.log_format);
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("binding {}", args.listen))?;
                arbiter::server::run(listener, args.server_config(), shutdown_signal())
                    .await
                    .context("server failed")
            })
        }
        Command::Models(args) => client(|| arbiter::cli::models(&args)),
        Command::Tests(args) => client(|| arbiter::cli::tests(&args)),
        Command::Audit(args) => client(|| arbiter::cli::audit(&args)),
        Command::Bench(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let report = runtime
                .block_on(arbiter::loadgen::run(&args))
                .context("benchmark failed")?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

/// Runs a client subcommand: prints its output, or its error and exits 1.
fn client<F, Fut>(command: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String, arbiter::cli::CliError>>,
{
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match runtime.block_on(command()) {
        Ok(output) => {
            print!("{output}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
