//! The real `arbiter` binary as a child process: started on 127.0.0.1:0 with its address read from
//! its log, signalled the way an operator or a crash would, and killed when a test ends (or panics)
//! without stopping it, so a failed test leaves no server behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::pb::{
    admin_client::AdminClient, allocator_client::AllocatorClient,
    experiments_client::ExperimentsClient, registry_client::RegistryClient,
};
use tonic::transport::Channel;

/// A running `arbiter serve` process.
pub(crate) struct Binary {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// Every line the server has logged so far.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

/// Starts `arbiter serve` on 127.0.0.1:0 and reads the bound address from its log. The address is
/// logged only after recovery, so a server that cannot start fails this call at once (its stderr
/// closes) instead of after the timeout.
pub(crate) fn spawn_binary(data_dir: &Path) -> Binary {
    spawn_binary_with(data_dir, &[])
}

/// [`spawn_binary`] with more flags for `arbiter serve`: returns once it serves as the writer
/// (or alone).
pub(crate) fn spawn_binary_with(data_dir: &Path, flags: &[&str]) -> Binary {
    spawn_binary_until(data_dir, flags, "arbiter serving")
}

/// Starts `arbiter serve` on `data_dir` with `flags`; returns once it logs `serving` (a line
/// with its `addr=`): "arbiter serving" for a writer, "standing by: following" for a cluster's
/// standby that serves reads.
pub(crate) fn spawn_binary_until(data_dir: &Path, flags: &[&str], serving: &str) -> Binary {
    let serving = serving.to_string();
    // A `--listen` among `flags` (a restart on a known address) replaces the default.
    let listen = if flags.contains(&"--listen") {
        &[][..]
    } else {
        &["--listen", "127.0.0.1:0"][..]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .arg("serve")
        .args(listen)
        .args(["--log-format", "plain", "--shutdown-grace-secs", "3"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(flags)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arbiter");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[arbiter] {line}");
            lines.lock().expect("log").push(line.clone());
            if !sent {
                if let Some(rest) = line
                    .contains(&serving)
                    .then(|| line.split("addr=").nth(1))
                    .flatten()
                {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("arbiter did not log its address ({e}): it failed to start"));
    Binary {
        child,
        url: format!("http://{addr}"),
        log,
    }
}

impl Binary {
    /// A new connection, retried briefly: the listener is bound before the address is logged,
    /// but a loaded machine may still refuse the very first attempt.
    pub(crate) async fn channel(&self) -> Channel {
        for _ in 0..100 {
            let endpoint = Channel::from_shared(self.url.clone()).expect("url");
            if let Ok(channel) = endpoint.connect().await {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot connect to {}", self.url);
    }

    /// A Registry client on a new connection.
    pub(crate) async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    /// An Experiments client on a new connection.
    pub(crate) async fn experiments(&self) -> ExperimentsClient<Channel> {
        ExperimentsClient::new(self.channel().await)
    }

    /// An Allocator client on a new connection.
    pub(crate) async fn allocator(&self) -> AllocatorClient<Channel> {
        AllocatorClient::new(self.channel().await)
    }

    /// An Admin client on a new connection.
    pub(crate) async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// Sends `signal` (e.g. "-TERM", "-KILL") with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the process to exit, letting the test's own connections run meanwhile.
    pub(crate) async fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..800 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = self.child.kill();
        panic!("arbiter did not exit");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // A no-op once the process has been waited for: std remembers its exit status and
        // never signals a reaped (possibly reused) pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
