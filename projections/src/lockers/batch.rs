//! Writes of the lockers model that one statement can do for a whole batch.
//!
//! The hot path of a locker network is the grant: each `HolderChanged` moves the holder, closes
//! one holding, opens the next, records the grant and notifies two people. Written change by
//! change that is six round trips per grant inside the projector's transaction, and the
//! projector is one task. Two shapes let a batch go in with a handful of statements instead:
//! - inbox rows only ever insert, keyed by (recipient, position, kind);
//! - holder changes on distinct compartments touch distinct rows (compartment, window, holding
//!   and grant rows are all per compartment or per grant), so within such a run they commute:
//!   the window and holding-end writes (which read what the event before them wrote) go one by
//!   one in log order, and the new holdings and grant rows, which only insert, go in one
//!   statement each for the whole run.

use super::write::write;
use super::Change;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::HashSet;
use uuid::Uuid;

/// A batch's `Change::Notify` rows, column by column for one `UNNEST` insert.
#[derive(Default)]
pub(super) struct Inbox {
    recipients: Vec<String>,
    positions: Vec<i64>,
    kinds: Vec<&'static str>,
    grant_ids: Vec<Option<Uuid>>,
    compartments: Vec<String>,
    messages: Vec<String>,
    ats: Vec<DateTime<Utc>>,
}

impl Inbox {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        recipient: String,
        position: i64,
        kind: &'static str,
        grant_id: Option<Uuid>,
        compartment: String,
        message: String,
        at: DateTime<Utc>,
    ) {
        self.recipients.push(recipient);
        self.positions.push(position);
        self.kinds.push(kind);
        self.grant_ids.push(grant_id);
        self.compartments.push(compartment);
        self.messages.push(message);
        self.ats.push(at);
    }

    pub(super) async fn write(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.recipients.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO locker_inbox (recipient, position, kind, grant_id, compartment_id, message, created_at)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::uuid[], $5::text[],
                                  $6::text[], $7::timestamptz[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.recipients)
        .bind(&self.positions)
        .bind(&self.kinds)
        .bind(&self.grant_ids)
        .bind(&self.compartments)
        .bind(&self.messages)
        .bind(&self.ats)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Consecutive holder changes, each on a compartment no other in the run touches.
#[derive(Default)]
pub(super) struct HolderRun {
    compartments: HashSet<String>,
    changes: Vec<(i64, Change)>,
}

impl HolderRun {
    /// Whether one event's changes (its notices aside) can join the run: only the kinds a
    /// holder change makes, all on one compartment the run does not hold yet.
    pub(super) fn takes(&self, changes: &[Change]) -> bool {
        let mut compartment = None;
        for change in changes {
            let id = match change {
                Change::WindowHandedOn { id, .. }
                | Change::CurrentWindow { id, .. }
                | Change::HoldingResumed { id, .. }
                | Change::HoldingEnded { id, .. }
                | Change::HoldingBegan { id, .. } => id,
                Change::DirectGrant { compartment, .. } => compartment,
                _ => return false,
            };
            if *compartment.get_or_insert(id) != id {
                return false;
            }
        }
        compartment.is_some_and(|id| !self.compartments.contains(id))
    }

    pub(super) fn push(&mut self, position: i64, changes: Vec<Change>) {
        for change in changes {
            if let Change::WindowHandedOn { id, .. } | Change::HoldingBegan { id, .. } = &change {
                self.compartments.insert(id.clone());
            }
            self.changes.push((position, change));
        }
    }

    /// Writes the run, kind by kind in the order one event's changes go, and empties it.
    pub(super) async fn write(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        self.compartments.clear();
        let mut began = Columns::default();
        let mut direct = Columns::default();
        for (position, change) in changes {
            match change {
                Change::HoldingBegan {
                    id,
                    holder,
                    grant_id,
                    authorizer,
                    at,
                } => {
                    began.push(position, id, holder, at);
                    began.grant_ids.push(grant_id);
                    began.others.push(authorizer);
                }
                Change::DirectGrant {
                    grant_id,
                    compartment,
                    requester,
                    receiver,
                    at,
                } => {
                    direct.push(position, compartment, requester, at);
                    direct.grant_ids.push(Some(grant_id));
                    direct.others.push(Some(receiver));
                }
                single => write(&mut *conn, &single, position).await?,
            }
        }
        if !began.ids.is_empty() {
            sqlx::query(
                "INSERT INTO compartment_holders
                   (compartment_id, position, holder, held_from, grant_id, authorizer)
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[],
                                      $5::uuid[], $6::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&began.ids)
            .bind(&began.positions)
            .bind(&began.texts)
            .bind(&began.ats)
            .bind(&began.grant_ids)
            .bind(&began.others)
            .execute(&mut *conn)
            .await?;
        }
        if !direct.ids.is_empty() {
            sqlx::query(
                "INSERT INTO grant_requests (grant_id, compartment_id, size, requester, kind, authorizer,
                   receiver, status, deadline, requested_at, updated_at, last_position)
                 SELECT u.grant_id, u.id, c.size, u.requester, 'direct', NULL, u.receiver,
                        'completed', u.at, u.at, u.at, u.position
                   FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                               $6::int8[]) AS u(grant_id, id, requester, receiver, at, position)
                   JOIN locker_compartments c ON c.compartment_id = u.id
                 ON CONFLICT DO NOTHING",
            )
            .bind(&direct.grant_ids)
            .bind(&direct.ids)
            .bind(&direct.texts)
            .bind(&direct.others)
            .bind(&direct.ats)
            .bind(&direct.positions)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// One statement's parameters, column by column.
#[derive(Default)]
struct Columns {
    positions: Vec<i64>,
    ids: Vec<String>,
    texts: Vec<String>,
    ats: Vec<DateTime<Utc>>,
    grant_ids: Vec<Option<Uuid>>,
    others: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, position: i64, id: String, text: String, at: DateTime<Utc>) {
        self.positions.push(position);
        self.ids.push(id);
        self.texts.push(text);
        self.ats.push(at);
    }
}
