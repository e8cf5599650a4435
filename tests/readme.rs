//! The README's command-line block runs as written, in order, against a fresh server; its
//! grpcurl blocks too where grpcurl is installed (none of the registries CI installs from carries
//! it, so there they are skipped with a message).

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The ```sh blocks of the README section headed `heading`, in order.
fn blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| {
            rest.split("\n```")
                .next()
                .expect("closed block")
                .to_string()
        })
        .collect()
}

/// Runs `script` with bash (`-e`: the first failing command fails it) in `dir`, with the built
/// `arbiter` first on the PATH and `ARBITER_SERVER` set.
async fn run(script: String, dir: &Path, server: &str) {
    let bin = Path::new(env!("CARGO_BIN_EXE_arbiter"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env("ARBITER_SERVER", server);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("bash runs");
    assert!(
        output.status.success(),
        "the README block failed:\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_block_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("data")).await;
    let work = tempfile::tempdir().expect("work dir");
    let scripts = blocks("Command line");
    assert_eq!(scripts.len(), 1, "one command-line block");
    run(scripts[0].clone(), work.path(), &server.url()).await;
    assert!(work.path().join("downloaded.onnx").exists());
    assert!(work.path().join("report.svg").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpcurl_blocks_run_as_written_where_grpcurl_is_installed() {
    let installed = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("skipped: grpcurl is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(&dir.path().join("data")).await;
    let work = tempfile::tempdir().expect("work dir");
    let address = server.addr.to_string();
    // The blocks name the quick start's address; this server listens elsewhere. The first
    // block of the section shows a server with TLS and tokens, which this one is not; the
    // section's Python client block is not a grpcurl block.
    let scripts = blocks("A grpcurl session")
        .into_iter()
        .skip(1)
        .filter(|s| s.contains("grpcurl"));
    for script in scripts {
        run(
            script.replace("127.0.0.1:50051", &address),
            work.path(),
            &server.url(),
        )
        .await;
    }
    server.stop().await;
}
