//! The `arbiter` binary: parse the command line, set up telemetry, run.

use anyhow::Context;
use arbiter::config::{Cli, Command, ConfigError};

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
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
            if let Some(Err(e)) = args.cluster_options().map(|c| c.validate()) {
                eprintln!("error: cluster: {e}");
                std::process::exit(2);
            }
            print!("{}", args.describe());
            println!("# configuration ok");
            Ok(())
        }
        Command::Serve(args) => {
            arbiter::telemetry::init(args.log_format);
            raise_open_files_limit();
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let served = runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("binding {}", args.listen))?;
                // The server's errors name their causes in their own message.
                arbiter::server::run(listener, args.server_config(), shutdown_signal())
                    .await
                    .map_err(anyhow::Error::from)
            });
            // Dropping a runtime waits for every blocking task; one stuck on a failing disk
            // would keep the process alive for ever.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            if let Err(e) = &served {
                tracing::error!(error = %e, "exiting with an error");
            }
            served
        }
        Command::Models(args) => client(args.client.json, || arbiter::cli::models(&args)),
        Command::Tests(args) => client(args.client.json, || arbiter::cli::tests(&args)),
        Command::Audit(args) => client(args.client.json, || arbiter::cli::audit(&args)),
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

/// Runs a client subcommand: prints its output, or its error (as JSON with `json`) on stderr and
/// exits 1.
fn client<F, Fut>(json: bool, command: F) -> anyhow::Result<()>
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
        Err(e) if json => {
            eprintln!("{}", e.to_json());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Makes glibc's allocator use one arena for every thread unless the operator chose otherwise
/// with `MALLOC_ARENA_MAX`.
///
/// glibc gives threads that contend for an arena arenas of their own (up to 8 per core), and each
/// keeps the memory freed into it. The server's threads (runtime workers, the journal, snapshot
/// and refresher threads) each allocate in bursts, so 10k tests with results held ~16 MiB more
/// with the default than with one arena (BENCHMARKS.md); small allocations still go through
/// per-thread caches without taking the arena's lock. Must run before any thread starts.
#[allow(unsafe_code)] // the one FFI call to glibc; the library itself has no unsafe code
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Raises the soft limit on open files to the hard limit (often 1024 → 524288): every
/// connection and upload holds a descriptor, and the soft default is meant for interactive
/// programs. Uploads are bounded separately (`--max-concurrent-uploads`).
#[allow(unsafe_code)] // getrlimit/setrlimit FFI; the library itself has no unsafe code
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed; no other effect.
        let raised = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
                let soft = limit.rlim_cur;
                limit.rlim_cur = limit.rlim_max;
                soft == limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
            }
        };
        if raised {
            tracing::debug!(open_files = limit.rlim_cur, "open files limit");
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot raise the open files limit"
            );
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (inside the
/// runtime, before the server starts), not when it is first polled: a signal sent as soon as
/// the server says it serves must not take the default action (exit without draining).
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &'static str| {
        let installed = signal(kind);
        async move {
            match installed {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received"),
            () = terminate => tracing::info!("SIGTERM received"),
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
