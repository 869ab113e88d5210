//! The lockers projection's writes, one change at a time: each [`Change`] the pure `evolve`
//! decided becomes its SQL here (runs that can go in one statement are in `batch`).

use super::Change;
use sqlx::PgConnection;

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
        Change::Reserved {
            id,
            holder,
            window_start,
            expires_at,
            at,
        } => {
            sqlx::query(
                "UPDATE locker_compartments SET status = 'reserved', holder = $2, window_start = $3,
                   expires_at = $4, depositor = NULL, parcel = NULL, updated_at = $5, last_position = $6
                 WHERE compartment_id = $1",
            )
            .bind(id)
            .bind(holder)
            .bind(window_start)
            .bind(expires_at)
            .bind(at)
            .bind(position)
            .execute(conn)
            .await?;
        }
        Change::HolderSet { id, holder, at } => {
            sqlx::query(
                "UPDATE locker_compartments SET holder = $2, updated_at = $3, last_position = $4
                 WHERE compartment_id = $1",
            )
            .bind(id)
            .bind(holder)
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
        Change::HoldingEnded { id, ended_by, at } => {
            sqlx::query(
                "UPDATE compartment_holders SET held_to = $2, ended_by = $3
                 WHERE compartment_id = $1 AND held_to IS NULL",
            )
            .bind(id)
            .bind(at)
            .bind(ended_by)
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
