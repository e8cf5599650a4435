//! grpcio, a gRPC implementation independent of the server's, as a test client: `.ci/run`
//! installs it (pinned) into `target/test-venv`.

use std::path::PathBuf;

/// The Python interpreter with grpcio: `ARBITER_TEST_PYTHON`, else `.ci/run`'s virtualenv. In CI
/// (`CI` set) its absence fails the test; elsewhere the caller skips with a message.
pub(crate) fn python_with_grpcio() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ARBITER_TEST_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/test-venv/bin/python"
        ))),
    ];
    let found = candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcio is missing: .ci/run installs it into target/test-venv"
        );
        eprintln!("skipped: no python with grpcio (set ARBITER_TEST_PYTHON)");
    }
    found
}

/// The path of a script in `tests/python/`.
pub(crate) fn script(name: &str) -> String {
    format!("{}/tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}
