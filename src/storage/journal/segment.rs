//! The journal's files: segment naming, the entry format, and what opening finds on disk.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Entry;
use crate::storage::{Result, StorageError};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"ARBJNL01";
/// Why a file holds nothing: shorter than [`MAGIC`], or all zeros.
const NO_HEADER: &str = "no complete header";
/// Bytes before each payload: length, checksum, position.
const ENTRY_HEADER: usize = 16;

pub(super) fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

pub(super) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.journal"))
}

/// Makes a directory entry (a created or removed file) durable.
pub(super) use crate::storage::sync_dir;

/// The segments in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut firsts = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in listing {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".journal") {
            let first = stem.parse::<u64>().map_err(|_| StorageError::Corrupt {
                key: entry.path().display().to_string(),
                why: "journal file name is not a position".into(),
            })?;
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// The valid entries of one segment file, and the byte length they end at.
pub(super) fn read_segment(path: &Path) -> Result<(Vec<Entry>, u64, Option<String>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(format!("reading {}", path.display())))?;
    // Shorter than a header, or all zeros (a file whose creation a power loss cut short): empty.
    if bytes.len() < MAGIC.len() || bytes.iter().all(|&b| b == 0) {
        return Ok((Vec::new(), 0, Some(NO_HEADER.into())));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(StorageError::Corrupt {
            key: path.display().to_string(),
            why: "not a journal segment (bad magic)".into(),
        });
    }
    let mut entries = Vec::new();
    let mut at = MAGIC.len();
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        let Some(header) = bytes.get(at..at + ENTRY_HEADER) else {
            break Some(format!("entry header cut short at byte {at}"));
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let position = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let Some(payload) = bytes.get(at + ENTRY_HEADER..at + ENTRY_HEADER + len) else {
            break Some(format!("entry at byte {at} cut short"));
        };
        if checksum(position, payload) != crc {
            break Some(format!("entry at byte {at} fails its checksum"));
        }
        if entries
            .last()
            .is_some_and(|e: &Entry| e.position >= position)
        {
            break Some(format!("entry at byte {at} repeats an earlier position"));
        }
        entries.push(Entry {
            position,
            payload: payload.to_vec(),
        });
        at += ENTRY_HEADER + len;
    };
    Ok((entries, at as u64, damage))
}

pub(super) fn checksum(position: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&position.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

pub(super) fn create_segment(dir: &Path, first: u64) -> Result<File> {
    let path = segment_path(dir, first);
    let created = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(MAGIC)?;
            file.sync_data()?;
            Ok(file)
        })
        .map_err(io_error(format!("creating {}", path.display())))
        .and_then(|file| sync_dir(dir).map(|()| file));
    if created.is_err() {
        // Appends continue in the previous segment, which must stay the newest one on disk.
        let _ = std::fs::remove_file(&path);
        let _ = sync_dir(dir);
    }
    created
}

/// What opening a journal directory found, after repairing what a crash may leave.
pub(super) struct Recovered {
    /// First positions of the segments, oldest first.
    pub segments: Vec<u64>,
    /// Every valid entry, in position order.
    pub entries: Vec<Entry>,
    /// The newest segment, open for appending at its end.
    pub current: File,
    /// The position of the next entry.
    pub next: u64,
    /// Whether `current` holds any entry.
    pub current_has_entries: bool,
}

/// Reads every segment in `dir` (creating it if needed), cuts a torn tail off the newest, and
/// removes newest files a rotation left without a header. Damage anywhere else is an error.
pub(super) fn recover(dir: &Path) -> Result<Recovered> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    let mut segments = list_segments(dir)?;
    let highest_first = segments.last().copied().unwrap_or(1);
    drop_unfinished_rotations(dir, &mut segments)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut current = None;
    for (i, &first) in segments.iter().enumerate() {
        let path = segment_path(dir, first);
        let newest = i + 1 == segments.len();
        let (read, valid_len, damage) = read_segment(&path)?;
        if read.first().is_some_and(|e| e.position < first)
            || read
                .first()
                .zip(entries.last())
                .is_some_and(|(a, b)| a.position <= b.position)
        {
            return Err(StorageError::Corrupt {
                key: path.display().to_string(),
                why: "journal positions out of order across segments".into(),
            });
        }
        if let Some(why) = damage {
            if !newest {
                return Err(StorageError::Corrupt {
                    key: path.display().to_string(),
                    why: format!("{why}, in a segment that was complete before the next began"),
                });
            }
            tracing::warn!(file = %path.display(), %why, "cutting off a torn journal tail");
        }
        entries.extend(read);
        if newest {
            current = Some(open_for_append(&path, valid_len)?);
        }
    }
    let last_position = entries.last().map_or(0, |e| e.position);
    let next = (last_position + 1).max(highest_first);
    let current = match current {
        Some(file) => file,
        None => {
            segments.push(next);
            create_segment(dir, next)?
        }
    };
    let current_has_entries = segments.last().is_some_and(|&f| last_position >= f);
    Ok(Recovered {
        segments,
        entries,
        current,
        next,
        current_has_entries,
    })
}

/// Removes newest files without a complete header: rotations that never completed (a crash in
/// [`create_segment`], or a failure whose clean-up failed too). Appends went on in the segment
/// before them, which is then the newest, where a torn tail may be.
fn drop_unfinished_rotations(dir: &Path, segments: &mut Vec<u64>) -> Result<()> {
    while segments.len() > 1 {
        let path = segment_path(dir, *segments.last().expect("non-empty"));
        if read_segment(&path)?.2.as_deref() != Some(NO_HEADER) {
            break;
        }
        std::fs::remove_file(&path)
            .map_err(io_error(format!("removing empty {}", path.display())))?;
        segments.pop();
        sync_dir(dir)?;
    }
    Ok(())
}

/// Opens the newest segment for appending after its last valid entry (`valid_len` bytes; a
/// file without a complete header gets one).
fn open_for_append(path: &Path, valid_len: u64) -> Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    if valid_len < MAGIC.len() as u64 {
        file.set_len(0)
            .and_then(|()| file.write_all(MAGIC))
            .map_err(io_error(format!(
                "rewriting the header of {}",
                path.display()
            )))?;
    } else {
        file.set_len(valid_len)
            .map_err(io_error(format!("truncating {}", path.display())))?;
    }
    file.seek(SeekFrom::End(0))
        .and_then(|_| file.sync_data())
        .map_err(io_error(format!("opening {}", path.display())))?;
    Ok(file)
}
