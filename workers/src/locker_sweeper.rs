//! The lockers' clock: unused reservations and unanswered grant requests expire when due.
//!
//! Time, not an event, triggers these, so this is a sweep over the read models rather than a
//! log consumer. Each expiry is one command that is a no-op unless it is due (the aggregates
//! decide), so a sweep that races a grant, or runs in two processes, changes nothing twice.

use latch_domain::clock::SharedClock;
use latch_domain::locker::{CompartmentCommand, GrantCommand};
use latch_domain::store::{CommandContext, Store};
use latch_projections::lockers::queries;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Expires unused reservations and unanswered grant requests that are due at the clock's now;
/// how many events that appended.
pub async fn sweep_once(
    store: &Store,
    pool: &PgPool,
    clock: &SharedClock,
) -> Result<usize, sqlx::Error> {
    let now = clock.now();
    let mut done = 0;
    let due = queries::expired_reservations(pool, now, 500).await?;
    let ctx = CommandContext::new("system:lockers-sweeper");
    for id in due {
        let command = CompartmentCommand::Expire { at: now };
        match store
            .compartments
            .execute(&id, command.name(), command, &ctx)
            .await
        {
            Ok(e) => done += e.events.len(),
            Err(e) => tracing::warn!(compartment = %id, error = %e, "reservation not expired"),
        }
    }
    let due = queries::overdue_grants(pool, now, 500).await?;
    for id in due {
        let command = GrantCommand::Expire { at: now };
        match store
            .grants
            .execute(&id.to_string(), command.name(), command, &ctx)
            .await
        {
            Ok(e) => done += e.events.len(),
            Err(e) => tracing::warn!(grant = %id, error = %e, "grant request not expired"),
        }
    }
    Ok(done)
}

/// Runs [`sweep_once`] every `interval` until `shutdown`.
pub async fn run(
    store: Arc<Store>,
    pool: PgPool,
    clock: SharedClock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = sweep_once(&store, &pool, &clock).await {
            tracing::warn!(error = %e, "lockers sweep failed");
        }
    }
}
