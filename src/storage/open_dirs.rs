//! Data directories open in this process: a second [`super::Storage::open`] of one is refused,
//! and tests wait for a closed one to be released ([`wait_until_released`]). Other processes are
//! kept out by an exclusive lock on the directory's `lock` file, taken before anything in the
//! directory is read or repaired.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::{Result, StorageError};

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

/// The lock file of a data directory.
pub(super) const LOCK_FILE: &str = "lock";

/// A data directory's entry in [`open_dirs`], with its lock file once taken; both are given up
/// when it is dropped.
#[derive(Debug)]
pub(super) struct Registered {
    key: PathBuf,
    lock: Option<std::fs::File>,
}

impl Registered {
    /// Claims `data_dir` for this process; `None` when it is held already.
    pub(super) fn claim(data_dir: &Path) -> Option<Self> {
        let key = dir_key(data_dir);
        let claimed = open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        claimed.then_some(Self { key, lock: None })
    }

    /// Takes the exclusive lock on `data_dir`'s lock file, which keeps other processes out.
    pub(super) fn lock(&mut self, data_dir: &Path) -> Result<()> {
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StorageError::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
            // A file system without file locks: the store's own lock still refuses a second
            // server, but only after that server has read the log.
            Err(std::fs::TryLockError::Error(e)) if locks_unsupported(&e) => {
                tracing::warn!(path = %path.display(), error = %e, "file locks are not supported here; a second server on this directory is refused only by the store's lock");
                Ok(())
            }
            Err(std::fs::TryLockError::Error(source)) => Err(StorageError::Io {
                context: format!("locking {}", path.display()),
                source,
            }),
        }
    }
}

/// Whether `e` says the file system does not lock files at all.
fn locks_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::ENOLCK | libc::EOPNOTSUPP)
        )
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Unlocked first: a waiter told the directory is released may lock it at once.
        drop(self.lock.take());
        open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
