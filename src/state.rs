//! The state fold: how the commands in the log are applied to the store, whichever domain
//! logged them. The store is the fold of the log up to its last checkpoint; opening replays
//! the entries after it, commands through [`Fold`], so a command has the same outcome when it
//! is executed and whenever it is replayed.
//!
//! A command's entry begins with its domain's byte: [`registry::command::DOMAIN`] for model
//! registrations, promotions and deletions, [`experiment::command::DOMAIN`] for the creation,
//! pause, resume and stop of tests and the close of their settlement.

use std::path::Path;

use crate::storage::{self, CommandFold, Storage, WriteBatch};
use crate::{experiment, registry};

/// Applies every domain's commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fold;

impl CommandFold for Fold {
    fn replay(&self, store: &Storage, command: &[u8]) -> Result<WriteBatch, String> {
        match command.split_first() {
            Some((&registry::command::DOMAIN, body)) => registry::command::replay(store, body),
            Some((&experiment::command::DOMAIN, body)) => experiment::command::replay(store, body),
            Some((domain, _)) => Err(format!("unknown command domain {domain:#04x}")),
            None => Err("an empty command".into()),
        }
    }
}

/// Opens the storage of `data_dir`, replaying its log with [`Fold`].
pub fn open_storage(data_dir: &Path) -> storage::Result<Storage> {
    Storage::open_with(data_dir, &Fold)
}
