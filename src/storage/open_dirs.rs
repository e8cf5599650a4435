//! Data directories open in this process: a second [`super::Storage::open`] of one is refused,
//! and tests wait for a closed one to be released ([`wait_until_released`]). (Other processes are
//! kept out by the store's file lock.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The set itself.
fn open_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static OPEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// Waits until no [`super::Storage`] of this process holds `data_dir` (its background threads may
/// outlive the server task by a moment); `false` if it is still held after `timeout`.
pub fn wait_until_released(data_dir: &Path, timeout: std::time::Duration) -> bool {
    let key = dir_key(data_dir);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let held = open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        if !held {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn dir_key(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf())
}

/// A data directory's entry in [`open_dirs`], removed when dropped.
#[derive(Debug)]
pub(super) struct Registered(PathBuf);

impl Registered {
    /// Claims `data_dir` for this process; `None` when it is held already.
    pub(super) fn claim(data_dir: &Path) -> Option<Self> {
        let key = dir_key(data_dir);
        let claimed = open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        claimed.then_some(Self(key))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}
