//! The lockers projection's writes, one change at a time: each [`Change`] the pure `evolve`
//! decided becomes its SQL here (runs that can go in one statement are in `batch`).

use super::windows::{self, WindowRow};
use super::{Began, Change};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A window a grant cuts, as deleted: holder, start, end, when it was booked.
type CutWindow = (String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

pub(super) async fn write(
    conn: &mut PgConnection,
    change: &Change,
    position: i64,
) -> Result<(), sqlx::Error> {
    match change {
        Change::Site { site, name, at } => {
            sqlx::query(
                "INSERT INTO locker_sites (site, name, registered_at, updated_at, last_position)
                 VALUES ($1, $2, $3, $3, $4)
                 ON CONFLICT (site) DO UPDATE SET name = $2, updated_at = $3, last_position = $4",
            )
            .bind(site)
            .bind(name)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::CompartmentInstalled {
            id,
            site,
            number,
            size,
            door,
            at,
        } => {
            sqlx::query(
                "INSERT INTO locker_compartments
                   (compartment_id, site, number, size, status, door_device, installed_at,
                    updated_at, last_position)
                 VALUES ($1, $2, $3, $4, 'free', $5, $6, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(site)
            .bind(number)
            .bind(size)
            .bind(door)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::DoorWired { id, door, at } => {
            sqlx::query(
                "UPDATE locker_compartments SET door_device = $2, updated_at = $3, last_position = $4
                 WHERE compartment_id = $1",
            )
            .bind(id)
            .bind(door)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::WindowBooked {
            id,
            holder,
            starts_at,
            ends_at,
            at,
        } => {
            sqlx::query(
                "INSERT INTO locker_windows (compartment_id, starts_at, ends_at, holder, position, booked_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(starts_at)
            .bind(ends_at)
            .bind(holder)
            .bind(position)
            .bind(at)
            .execute(conn)
            .await?;
        }
        Change::WindowHandedOn {
            id,
            from,
            to,
            range,
            at,
        } => {
            // The window cut is chosen as `windows::granted` chooses it in memory.
            let old: Option<CutWindow> = sqlx::query_as(
                "DELETE FROM locker_windows WHERE compartment_id = $1 AND starts_at = (
                   SELECT starts_at FROM locker_windows
                    WHERE compartment_id = $1 AND holder = $2
                      AND ($3::timestamptz IS NULL OR (starts_at <= $3 AND ends_at >= $4))
                    ORDER BY ($3::timestamptz IS NOT NULL) DESC,
                             NOT (starts_at <= $5 AND $5 < ends_at), ends_at <= $5, starts_at
                    LIMIT 1)
                 RETURNING holder, starts_at, ends_at, booked_at",
            )
            .bind(id)
            .bind(from)
            .bind(range.map(|r| r.0))
            .bind(range.map(|r| r.1))
            .bind(at)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((holder, starts_at, ends_at, booked_at)) = old {
                let old = WindowRow {
                    holder,
                    starts_at,
                    ends_at,
                };
                for piece in windows::cut(&old, to, *range) {
                    sqlx::query(
                        "INSERT INTO locker_windows
                           (compartment_id, starts_at, ends_at, holder, position, booked_at)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(piece.starts_at)
                    .bind(piece.ends_at)
                    .bind(&piece.holder)
                    .bind(position)
                    .bind(booked_at)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Change::WindowLapsed {
            id, holder, range, ..
        } => {
            sqlx::query(
                "DELETE FROM locker_windows WHERE compartment_id = $1 AND holder = $2
                   AND ($3::timestamptz IS NULL OR (starts_at = $3 AND ends_at = $4))",
            )
            .bind(id)
            .bind(holder)
            .bind(range.map(|r| r.0))
            .bind(range.map(|r| r.1))
            .execute(conn)
            .await?;
        }
        Change::WindowUsed { id, holder, at } => {
            // As `windows::pick` chooses.
            sqlx::query(
                "DELETE FROM locker_windows WHERE compartment_id = $1 AND starts_at = (
                   SELECT starts_at FROM locker_windows WHERE compartment_id = $1 AND holder = $2
                    ORDER BY NOT (starts_at <= $3 AND $3 < ends_at), ends_at <= $3, starts_at
                    LIMIT 1)",
            )
            .bind(id)
            .bind(holder)
            .bind(at)
            .execute(conn)
            .await?;
        }
        Change::CurrentWindow { id, at } => {
            sqlx::query(
                "UPDATE locker_compartments c
                    SET holder = w.holder, window_start = w.starts_at, expires_at = w.ends_at,
                        status = CASE WHEN w.holder IS NULL THEN 'free' ELSE 'reserved' END,
                        updated_at = $2, last_position = $3
                   FROM (SELECT 1) one
                   LEFT JOIN LATERAL (SELECT holder, starts_at, ends_at FROM locker_windows
                                       WHERE compartment_id = $1 ORDER BY starts_at LIMIT 1) w ON true
                  WHERE c.compartment_id = $1 AND c.status <> 'occupied'",
            )
            .bind(id)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::Deposited {
            id,
            depositor,
            parcel,
            at,
        } => {
            sqlx::query(
                "UPDATE locker_compartments SET status = 'occupied', holder = NULL, depositor = $2,
                   parcel = $3, updated_at = $4, last_position = $5
                 WHERE compartment_id = $1",
            )
            .bind(id)
            .bind(depositor)
            .bind(parcel)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::Freed { id, at } => {
            sqlx::query(
                "UPDATE locker_compartments SET status = 'free', holder = NULL, window_start = NULL,
                   expires_at = NULL, depositor = NULL, parcel = NULL, updated_at = $2, last_position = $3
                 WHERE compartment_id = $1",
            )
            .bind(id)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::HoldingEnded {
            id,
            holder,
            began,
            ended_by,
            at,
        } => {
            let (by, before) = match began {
                Began::Any => (None, None),
                Began::By(t) => (Some(*t), None),
                Began::Before(t) => (None, Some(*t)),
            };
            // A holding cut short by a grant of a later part already has its end: an earlier
            // one (a deposit before it) moves it forward.
            sqlx::query(
                "UPDATE compartment_holders SET held_to = $2, ended_by = $3
                 WHERE compartment_id = $1 AND holder = $4 AND (held_to IS NULL OR held_to > $2)
                   AND ($5::timestamptz IS NULL OR held_from <= $5)
                   AND ($6::timestamptz IS NULL OR held_from < $6)",
            )
            .bind(id)
            .bind(at)
            .bind(ended_by)
            .bind(holder)
            .bind(by)
            .bind(before)
            .execute(conn)
            .await?;
        }
        Change::HoldingResumed {
            id,
            holder,
            grant_id,
            from,
        } => {
            sqlx::query(
                "INSERT INTO compartment_holders
                   (compartment_id, position, holder, held_from, grant_id, authorizer)
                 SELECT $1, $2, holder, starts_at, $4, NULL FROM locker_windows
                  WHERE compartment_id = $1 AND holder = $3 AND starts_at = $5
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(position)
            .bind(holder)
            .bind(grant_id)
            .bind(from)
            .execute(conn)
            .await?;
        }
        Change::HoldingBegan {
            id,
            holder,
            grant_id,
            authorizer,
            at,
        } => {
            sqlx::query(
                "INSERT INTO compartment_holders
                   (compartment_id, position, holder, held_from, grant_id, authorizer)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(position)
            .bind(holder)
            .bind(at)
            .bind(grant_id)
            .bind(authorizer)
            .execute(conn)
            .await?;
        }
        Change::User { number, name, at } => {
            sqlx::query(
                "INSERT INTO locker_users (user_number, name, status, registered_at, updated_at, last_position)
                 VALUES ($1, $2, 'active', $3, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(number)
            .bind(name)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::UserStatus { number, status, at } => {
            sqlx::query(
                "UPDATE locker_users SET status = $2, updated_at = $3, last_position = $4
                 WHERE user_number = $1",
            )
            .bind(number)
            .bind(status)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::Authorizer {
            number,
            name,
            endpoint,
            at,
        } => {
            sqlx::query(
                "INSERT INTO locker_authorizers (number, name, endpoint, status, registered_at, updated_at, last_position)
                 VALUES ($1, $2, $3, 'active', $4, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(number)
            .bind(name)
            .bind(endpoint)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::AuthorizerStatus { number, status, at } => {
            sqlx::query(
                "UPDATE locker_authorizers SET status = $2, updated_at = $3, last_position = $4
                 WHERE number = $1",
            )
            .bind(number)
            .bind(status)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::AuthorizerEndpoint {
            number,
            endpoint,
            at,
        } => {
            sqlx::query(
                "UPDATE locker_authorizers SET endpoint = $2, updated_at = $3, last_position = $4
                 WHERE number = $1",
            )
            .bind(number)
            .bind(endpoint)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::GrantRequested {
            grant_id,
            compartment,
            size,
            requester,
            kind,
            authorizer,
            receiver,
            deadline,
            at,
        } => {
            sqlx::query(
                "INSERT INTO grant_requests (grant_id, compartment_id, size, requester, kind, authorizer,
                   receiver, status, deadline, requested_at, updated_at, last_position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested', $8, $9, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(grant_id)
            .bind(compartment)
            .bind(size)
            .bind(requester)
            .bind(kind)
            .bind(authorizer)
            .bind(receiver)
            .bind(deadline)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::DirectGrant {
            grant_id,
            compartment,
            requester,
            receiver,
            at,
        } => {
            // Direct grants recorded before issue 12 also have a grant stream of their own,
            // folded after this: its request finds the row here and its completion repeats it.
            sqlx::query(
                "INSERT INTO grant_requests (grant_id, compartment_id, size, requester, kind, authorizer,
                   receiver, status, deadline, requested_at, updated_at, last_position)
                 SELECT $1, $2, c.size, $3, 'direct', NULL, $4, 'completed', $5, $5, $5, $6
                   FROM locker_compartments c WHERE c.compartment_id = $2
                 ON CONFLICT DO NOTHING",
            )
            .bind(grant_id)
            .bind(compartment)
            .bind(requester)
            .bind(receiver)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::GrantStatus {
            grant_id,
            status,
            receiver,
            reason,
            at,
        } => {
            sqlx::query(
                "UPDATE grant_requests SET status = $2, receiver = COALESCE($3, receiver),
                   reason = COALESCE($4, reason), updated_at = $5, last_position = $6
                 WHERE grant_id = $1",
            )
            .bind(grant_id)
            .bind(status)
            .bind(receiver)
            .bind(reason)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::Notify {
            recipient,
            kind,
            grant_id,
            compartment,
            message,
            at,
        } => {
            sqlx::query(
                "INSERT INTO locker_inbox (recipient, position, kind, grant_id, compartment_id, message, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(recipient)
            .bind(position)
            .bind(kind)
            .bind(grant_id)
            .bind(compartment)
            .bind(message)
            .bind(at)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}
