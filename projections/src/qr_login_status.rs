//! QR-login status: where each QR login stands, for the sweeper, operators and audits.
//!
//! [`evolve`] is the whole projection as a pure function. Pages are not served from this table
//! (they need answers within milliseconds of a transition; see latch-api's `qr::hub`), but both
//! fold the same events with the same meaning.

use crate::log::LoggedEvent;
use crate::projector::{apply_model, Model, Projection, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::qr_login::{QrLogin, QrLoginEvent};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

pub mod queries;

pub const NAME: &str = "qr_login_status";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct QrLoginStatus {
    pub login_id: Uuid,
    pub state: String,
    pub origin_ip: String,
    pub user_agent: String,
    pub minted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub app_user: Option<String>,
    pub ext: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub redeem_by: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub session_id: Option<Uuid>,
    pub last_position: i64,
}

pub fn parse_qr_event(event: &LoggedEvent) -> Result<QrLoginEvent, ProjectionError> {
    let event = event.upcast();
    serde_json::from_value::<QrLoginEvent>(event.payload.clone()).map_err(|e| {
        if event.event_version == QrLoginEvent::VERSION
            && QrLoginEvent::TYPES.contains(&event.event_type.as_str())
        {
            ProjectionError::BadPayload {
                position: event.position,
                detail: e.to_string(),
            }
        } else {
            ProjectionError::UnknownEvent {
                position: event.position,
                aggregate_type: event.aggregate_type.clone(),
                event_type: event.event_type.clone(),
                version: event.event_version.clone(),
            }
        }
    })
}

/// The next state of one login's row after `event`.
pub fn evolve(
    current: Option<QrLoginStatus>,
    event: &LoggedEvent,
) -> Result<Option<QrLoginStatus>, ProjectionError> {
    use QrLoginEvent as E;
    let parsed = parse_qr_event(event)?;
    let mut row = match (current, parsed) {
        (
            None,
            E::QrCodeMinted {
                login_id,
                origin,
                at,
                expires_at,
                ..
            },
        ) => QrLoginStatus {
            login_id: login_id.as_uuid(),
            state: "waiting".into(),
            origin_ip: origin.ip,
            user_agent: origin.user_agent,
            minted_at: at,
            expires_at,
            app_user: None,
            ext: None,
            locked_at: None,
            confirmed_at: None,
            redeem_by: None,
            finished_at: None,
            session_id: None,
            last_position: event.position,
        },
        // The aggregate refuses everything before minting: unreachable for a healthy log.
        (None, _) => return Ok(None),
        (Some(mut row), parsed) => {
            match parsed {
                E::QrCodeMinted { .. } => {}
                E::QrCodeLocked { user, ext, at } => {
                    row.state = "scanned".into();
                    row.app_user = Some(user);
                    row.ext = ext.map(|e| e.as_str().to_owned());
                    row.locked_at = Some(at);
                }
                E::QrLoginConfirmed { at, redeem_by, .. } => {
                    row.state = "confirmed".into();
                    row.confirmed_at = Some(at);
                    row.redeem_by = Some(redeem_by);
                }
                E::QrLoginCancelled { at, .. } => {
                    row.state = "cancelled".into();
                    row.finished_at = Some(at);
                }
                E::QrCodeExpired { at } => {
                    row.state = "expired".into();
                    row.finished_at = Some(at);
                }
                E::QrLoginRedeemed { session_id, at, .. } => {
                    row.state = "redeemed".into();
                    row.session_id = Some(session_id);
                    row.finished_at = Some(at);
                }
            }
            row
        }
    };
    row.last_position = event.position;
    Ok(Some(row))
}

pub fn login_uuid(event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&event.aggregate_id).map_err(|e| ProjectionError::BadPayload {
        position: event.position,
        detail: format!("qr_login aggregate id: {e}"),
    })
}

#[derive(Debug, Clone, Default)]
pub struct QrLoginStatusProjection;

impl Projection for QrLoginStatusProjection {
    fn name(&self) -> &str {
        NAME
    }

    fn wants(&self, aggregate_type: &str) -> bool {
        aggregate_type == Model::aggregate_type(self)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> Result<(), ProjectionError> {
        apply_model(self, conn, events).await
    }
}

impl Model for QrLoginStatusProjection {
    type Row = QrLoginStatus;
    fn name(&self) -> &'static str {
        NAME
    }
    fn aggregate_type(&self) -> &'static str {
        QrLogin::TYPE
    }
    fn key(&self, event: &LoggedEvent) -> Result<Uuid, ProjectionError> {
        login_uuid(event)
    }
    fn evolve(
        &self,
        current: Option<QrLoginStatus>,
        event: &LoggedEvent,
    ) -> Result<Option<QrLoginStatus>, ProjectionError> {
        evolve(current, event)
    }
    async fn load(
        &self,
        conn: &mut PgConnection,
        table: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, QrLoginStatus)>, sqlx::Error> {
        let rows = load_rows(conn, table, ids).await?;
        Ok(rows.into_iter().map(|r| (r.login_id, r)).collect())
    }
    async fn write(
        &self,
        conn: &mut PgConnection,
        table: &str,
        rows: &[&QrLoginStatus],
    ) -> Result<(), sqlx::Error> {
        upsert_into(conn, table, rows).await
    }
}

/// The rows of `table` (the live `qr_login_status` or a rebuild's shadow copy) for `ids`.
pub async fn load_rows(
    conn: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> Result<Vec<QrLoginStatus>, sqlx::Error> {
    sqlx::query_as::<_, QrLoginStatus>(&format!("SELECT * FROM {table} WHERE login_id = ANY($1)"))
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Inserts or replaces `rows` in `table` (the live `qr_login_status` or a rebuild's shadow copy).
pub async fn upsert_into(
    conn: &mut PgConnection,
    table: &str,
    rows: &[&QrLoginStatus],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(1000) {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO {table} (login_id, state, origin_ip, user_agent, minted_at, expires_at,
                 app_user, ext, locked_at, confirmed_at, redeem_by, finished_at, session_id,
                 last_position) "
        ));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.login_id)
                .push_bind(&r.state)
                .push_bind(&r.origin_ip)
                .push_bind(&r.user_agent)
                .push_bind(r.minted_at)
                .push_bind(r.expires_at)
                .push_bind(&r.app_user)
                .push_bind(&r.ext)
                .push_bind(r.locked_at)
                .push_bind(r.confirmed_at)
                .push_bind(r.redeem_by)
                .push_bind(r.finished_at)
                .push_bind(r.session_id)
                .push_bind(r.last_position);
        });
        q.push(
            " ON CONFLICT (login_id) DO UPDATE SET state = EXCLUDED.state,
                 app_user = EXCLUDED.app_user, ext = EXCLUDED.ext, locked_at = EXCLUDED.locked_at,
                 confirmed_at = EXCLUDED.confirmed_at, redeem_by = EXCLUDED.redeem_by,
                 finished_at = EXCLUDED.finished_at, session_id = EXCLUDED.session_id,
                 last_position = EXCLUDED.last_position",
        );
        // One statement text per row count: not kept as a prepared statement, or every batch size
        // seen would stay in each connection's statement cache (sqlx keeps 100 per connection, a
        // 1,000-row upsert's description is tens of KiB) and in each Postgres backend. That cache
        // was what grew `latch serve` by ~470 bytes per command in the soak bench.
        q.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}
