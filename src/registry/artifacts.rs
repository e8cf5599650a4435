//! Artifact files: `<data-dir>/artifacts/<model_id>/<version>.bin`, each name escaped by
//! [`paths::file_name`] and checked by [`paths::child`] to stay inside `artifacts/`.
//!
//! Uploads stream into `<data-dir>/tmp/` while being hashed, are fsynced, and are renamed into
//! place (then the directory is fsynced) only when the registration commits. An [`Upload`] or
//! [`FinishedUpload`] that is dropped before [`ArtifactStore::install`] removes its temporary file,
//! so a failed or aborted upload leaves nothing behind; files left by a crash are swept at start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::types::{RegistryId, Sha256Digest};
use super::RegistryError;
use crate::storage::paths;

/// Where artifacts live.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    tmp: PathBuf,
    next_upload: AtomicU64,
}

impl ArtifactStore {
    /// Creates the directories and removes temporary files left by a previous process.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let root = data_dir.join("artifacts");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root)
            .map_err(RegistryError::io("creating artifacts directory"))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(RegistryError::io("clearing tmp directory"))?;
        }
        std::fs::create_dir_all(&tmp).map_err(RegistryError::io("creating tmp directory"))?;
        Ok(Self {
            root,
            tmp,
            next_upload: AtomicU64::new(0),
        })
    }

    /// The file of a registered version.
    pub fn path(&self, id: &RegistryId) -> Result<PathBuf, RegistryError> {
        let dir = paths::child(&self.root, &paths::file_name(id.model_id.as_str()));
        dir.and_then(|dir| paths::child(&dir, &format!("{}.bin", id.version)))
            .map_err(RegistryError::io(format!("locating the artifact of {id}")))
    }

    /// Moves the file of a version whose model id starts with a dot from where older builds put
    /// it (ids were joined unescaped, so `.` named `artifacts/` itself and `..` the data
    /// directory) to its escaped path. Returns whether a file moved. Blocking.
    pub fn adopt_legacy(&self, id: &RegistryId) -> Result<bool, RegistryError> {
        if !id.model_id.as_str().starts_with('.') {
            return Ok(false);
        }
        let target = self.path(id)?;
        let legacy = self
            .root
            .join(id.model_id.as_str())
            .join(format!("{}.bin", id.version));
        if target.exists() || !legacy.is_file() {
            return Ok(false);
        }
        let dir = target
            .parent()
            .expect("artifact paths have a model directory");
        std::fs::create_dir_all(dir).map_err(RegistryError::io("creating model directory"))?;
        std::fs::rename(&legacy, &target)
            .map_err(RegistryError::io(format!("moving the artifact of {id}")))?;
        sync_dir(dir)?;
        if let Some(old_dir) = legacy.parent() {
            sync_dir(old_dir)?;
        }
        sync_dir(&self.root)?;
        Ok(true)
    }

    /// Starts an upload limited to `limit` bytes.
    pub async fn begin(&self, limit: u64) -> Result<Upload, RegistryError> {
        let n = self.next_upload.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("upload-{}-{n}", std::process::id()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(RegistryError::io("creating upload file"))?;
        Ok(Upload {
            file,
            guard: TempFile(Some(path)),
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Moves a finished upload to the version's final path, durably. Blocking.
    pub fn install(&self, upload: FinishedUpload, id: &RegistryId) -> Result<(), RegistryError> {
        let target = self.path(id)?;
        let dir = target
            .parent()
            .expect("artifact paths have a model directory");
        std::fs::create_dir_all(dir).map_err(RegistryError::io("creating model directory"))?;
        let mut guard = upload.guard;
        let source = guard.0.take().expect("a finished upload owns its file");
        if let Err(source_err) = std::fs::rename(&source, &target) {
            let _ = std::fs::remove_file(&source);
            return Err(RegistryError::io("installing artifact")(source_err));
        }
        sync_dir(dir)?;
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Removes the file of a version (missing files are fine). Blocking.
    pub fn remove(&self, id: &RegistryId) -> Result<(), RegistryError> {
        match std::fs::remove_file(self.path(id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RegistryError::io(format!("removing artifact of {id}"))(e)),
        }
    }

    /// Every artifact file as (model id, file stem, path), for the start-up sweep.
    pub fn files(&self) -> Result<Vec<(String, String, PathBuf)>, RegistryError> {
        let mut out = Vec::new();
        let models =
            std::fs::read_dir(&self.root).map_err(RegistryError::io("listing artifacts"))?;
        for model in models {
            let model = model.map_err(RegistryError::io("listing artifacts"))?;
            let model_name = paths::id_of_file_name(&model.file_name().to_string_lossy());
            if !model.path().is_dir() {
                out.push((model_name, String::new(), model.path()));
                continue;
            }
            let files =
                std::fs::read_dir(model.path()).map_err(RegistryError::io("listing artifacts"))?;
            for file in files {
                let file = file.map_err(RegistryError::io("listing artifacts"))?;
                let path = file.path();
                let stem = path
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(".bin").to_string())
                    .unwrap_or_default();
                out.push((model_name.clone(), stem, path));
            }
        }
        Ok(out)
    }

    /// Hashes a version's file. Blocking.
    pub fn hash(&self, id: &RegistryId) -> Result<(Sha256Digest, u64), RegistryError> {
        let mut file = self.open_existing(id)?;
        hash_reader(&mut file).map_err(RegistryError::io(format!("reading artifact of {id}")))
    }

    /// Opens a version's file and checks it against `expected` before returning it, rewound to
    /// the start. Blocking.
    pub fn open_verified(
        &self,
        id: &RegistryId,
        expected: Sha256Digest,
    ) -> Result<(File, u64), RegistryError> {
        let mut file = self.open_existing(id)?;
        let context = || format!("reading artifact of {id}");
        let (actual, size) = hash_reader(&mut file).map_err(RegistryError::io(context()))?;
        if actual != expected {
            tracing::warn!(registry_id = %id, %expected, %actual, "stored artifact fails its checksum; not served");
            return Err(RegistryError::ChecksumMismatch {
                what: "artifact",
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(RegistryError::io(context()))?;
        Ok((file, size))
    }

    fn open_existing(&self, id: &RegistryId) -> Result<File, RegistryError> {
        File::open(self.path(id)?).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RegistryError::ArtifactMissing {
                registry_id: id.to_string(),
            },
            _ => RegistryError::io(format!("opening artifact of {id}"))(e),
        })
    }
}

fn hash_reader(reader: &mut impl Read) -> std::io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest(hasher.finalize().into()), size))
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    Ok(crate::storage::sync_dir(dir)?)
}

/// Removes its file when dropped, unless the file was taken.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An artifact being received.
#[derive(Debug)]
pub struct Upload {
    file: tokio::fs::File,
    guard: TempFile,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Upload {
    /// Appends a chunk, enforcing the size limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        let size = self.size + chunk.len() as u64;
        if size > self.limit {
            return Err(RegistryError::ArtifactTooLarge { limit: self.limit });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(RegistryError::io("writing upload"))?;
        self.hasher.update(chunk);
        self.size = size;
        Ok(())
    }

    /// Flushes and fsyncs the file and returns its digest.
    pub async fn finish(mut self) -> Result<FinishedUpload, RegistryError> {
        self.file
            .flush()
            .await
            .map_err(RegistryError::io("flushing upload"))?;
        self.file
            .sync_all()
            .await
            .map_err(RegistryError::io("syncing upload"))?;
        Ok(FinishedUpload {
            guard: self.guard,
            digest: Sha256Digest(self.hasher.finalize().into()),
            size: self.size,
        })
    }
}

/// A complete, fsynced upload waiting to be installed.
#[derive(Debug)]
pub struct FinishedUpload {
    guard: TempFile,
    /// SHA-256 of the bytes.
    pub digest: Sha256Digest,
    /// Number of bytes.
    pub size: u64,
}

impl FinishedUpload {
    /// Where the bytes are until they are installed.
    pub fn path(&self) -> &Path {
        self.guard
            .0
            .as_deref()
            .expect("a finished upload owns its file until it is installed")
    }
}
