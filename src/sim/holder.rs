//! A simulated locker's own record of who holds each compartment it opens (issue 14).
//!
//! Latch sends each holder change as a request on `latch.cmd.<id>.holder` and redelivers it
//! until the locker answers `{"ok":true}`. The table keeps, per compartment, the holder and the
//! log position that set it, and takes an update only when its position is newer, so a
//! redelivered or overtaken update is acknowledged and changes nothing. With a state
//! directory the table lives in `<dir>/<device-id>.holders.json`, written (to a temporary file,
//! then renamed) before the answer, so an acknowledged update survives a restart of the
//! simulator; without one it lives in memory only. `latch.sim.<id>.holders` answers with the
//! whole table, for tests and operators to compare with the read model.

use latch_domain::telemetry::HolderCommand;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// What the locker knows of one compartment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Who may use it (`None`: nobody).
    pub holder: Option<String>,
    /// The log position of the update that said so.
    pub position: i64,
}

/// The table, by compartment id, and where it is kept.
#[derive(Debug, Default)]
pub struct HolderTable {
    entries: BTreeMap<String, Held>,
    file: Option<PathBuf>,
}

/// The file a device's table is kept in under `dir`.
pub fn table_file(dir: &Path, device: Uuid) -> PathBuf {
    dir.join(format!("{device}.holders.json"))
}

impl HolderTable {
    /// The table of `device`, read from `dir` when given (empty if the file is not there yet).
    pub fn open(dir: Option<&Path>, device: Uuid) -> Result<Self, String> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let file = table_file(dir, device);
        let entries = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a holder table: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Self {
            entries,
            file: Some(file),
        })
    }

    pub fn entries(&self) -> &BTreeMap<String, Held> {
        &self.entries
    }

    /// Takes `update` if it is newer than what the table has for its compartment, keeping the
    /// table on disk before returning. `Ok(false)`: already known (or overtaken), nothing
    /// changed. On a write error the table stays as it was, so the update is taken again when
    /// it comes back.
    pub fn apply(&mut self, update: &HolderCommand) -> Result<bool, String> {
        if update.compartment_id.is_empty() {
            return Err("compartment_id is empty".into());
        }
        if let Some(held) = self.entries.get(&update.compartment_id) {
            if held.position >= update.position {
                return Ok(false);
            }
        }
        let before = self.entries.insert(
            update.compartment_id.clone(),
            Held {
                holder: update.holder.clone(),
                position: update.position,
            },
        );
        if let Err(e) = self.save() {
            match before {
                Some(held) => self.entries.insert(update.compartment_id.clone(), held),
                None => self.entries.remove(&update.compartment_id),
            };
            return Err(e);
        }
        Ok(true)
    }

    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let body = serde_json::to_vec_pretty(&self.entries).map_err(|e| e.to_string())?;
        let tmp = file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&body)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, file)
        };
        write().map_err(|e| format!("{}: {e}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn update(compartment: &str, holder: Option<&str>, position: i64) -> HolderCommand {
        HolderCommand {
            compartment_id: compartment.into(),
            holder: holder.map(str::to_owned),
            position,
            at: Utc::now(),
        }
    }

    #[test]
    fn only_a_newer_position_changes_the_holder() {
        let mut t = HolderTable::default();
        assert_eq!(t.apply(&update("S:01", Some("13455555555"), 5)), Ok(true));
        // Redelivered: acknowledged, nothing changes.
        assert_eq!(t.apply(&update("S:01", Some("13455555555"), 5)), Ok(false));
        assert_eq!(t.apply(&update("S:01", None, 9)), Ok(true));
        // Overtaken: an older update arriving late does not bring the old holder back.
        assert_eq!(t.apply(&update("S:01", Some("13499996666"), 7)), Ok(false));
        assert_eq!(
            t.entries()["S:01"],
            Held {
                holder: None,
                position: 9
            }
        );
        assert!(t.apply(&update("", None, 10)).is_err());
    }

    #[test]
    fn the_table_outlives_a_restart_in_its_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let device = Uuid::now_v7();
        let mut t = HolderTable::open(Some(dir.path()), device).unwrap();
        assert!(t.entries().is_empty());
        t.apply(&update("S:01", Some("13455555555"), 3)).unwrap();
        t.apply(&update("S:02", Some("13466666666"), 4)).unwrap();
        drop(t);
        assert!(table_file(dir.path(), device).exists());
        let again = HolderTable::open(Some(dir.path()), device).unwrap();
        assert_eq!(again.entries().len(), 2);
        assert_eq!(
            again.entries()["S:02"].holder.as_deref(),
            Some("13466666666")
        );
        // Another device's table is its own.
        let other = HolderTable::open(Some(dir.path()), Uuid::now_v7()).unwrap();
        assert!(other.entries().is_empty());
    }
}
