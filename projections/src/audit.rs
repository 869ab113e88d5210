//! Audit: reading history, point-in-time answers, verifiable history, safe rebuilds.
//!
//! - [`history`]: the log in log order from any position, filtered, as NDJSON lines (each event
//!   with its metadata, position and chain hash), and live follow without gap or duplicate.
//! - [`verify`]: walks the hash chain from genesis and names the first position where the stored
//!   events and the chain disagree.
//! - [`signing`]: Ed25519-signed checkpoints of the chain head, their export, and the consistency
//!   check of an old checkpoint against the current log.
//! - [`as_of`]: read models as they stood at a past moment, folded from the log.
//! - [`rebuild`]: a read model rebuilt from position 0 into a shadow table and swapped in, while
//!   readers keep being served and the live projector keeps its exactly-once checkpoint.

pub mod as_of;
pub mod history;
pub mod rebuild;
pub mod signing;
pub mod verify;
