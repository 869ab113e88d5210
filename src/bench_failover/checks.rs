//! After the load has stopped and the relay has drained: was anything lost or doubled while
//! instances and nodes were killed? Each check is reported pass or fail with what it saw.

use super::Error;
use futures::StreamExt;
use latch_nats::subjects::EVENTS_STREAM;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// How long the relay and the projectors get to finish after the load stops.
const DRAIN: Duration = Duration::from_secs(60);

pub(super) struct Check {
    pub(super) what: &'static str,
    pub(super) pass: bool,
    pub(super) detail: String,
}

async fn count(pool: &PgPool, sql: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
    Ok(n)
}

pub(super) async fn run(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    acknowledged: &[Uuid],
) -> Result<Vec<Check>, Error> {
    // Drained: every event logged and on the stream, every acknowledged registration projected.
    let head_sql = "SELECT COALESCE(max(position), 0) FROM event_log";
    let drained = super::wait_for(DRAIN, || async {
        let (Ok(events), Ok(logged), Ok(head)) = (
            count(pool, "SELECT count(*) FROM events").await,
            count(pool, "SELECT count(*) FROM event_log").await,
            count(pool, head_sql).await,
        ) else {
            return false;
        };
        events == logged && super::stream_last(js).await == Some(head as u64)
    })
    .await;
    if drained.is_none() {
        tracing::warn!(
            "the relay did not drain in {} s; checking anyway",
            DRAIN.as_secs()
        );
    }
    let projected_sql = "SELECT count(*) FROM device_status WHERE device_id = ANY($1)";
    let projected = || async {
        sqlx::query_as::<_, (i64,)>(projected_sql)
            .bind(acknowledged)
            .fetch_one(pool)
            .await
            .map(|(n,)| n)
            .unwrap_or(0)
    };
    super::wait_for(DRAIN, || async {
        projected().await == acknowledged.len() as i64
    })
    .await;

    let mut checks = Vec::new();
    let (events, logged, head) = (
        count(pool, "SELECT count(*) FROM events").await?,
        count(pool, "SELECT count(*) FROM event_log").await?,
        count(pool, head_sql).await?,
    );
    checks.push(Check {
        what: "log dense (positions 1..head, every committed event logged)",
        pass: logged == head && events == logged,
        detail: format!("{events} events, {logged} logged, head {head}"),
    });
    let last = super::stream_last(js).await;
    checks.push(Check {
        what: "EVENTS last sequence == log head",
        pass: last == Some(head as u64),
        detail: format!(
            "stream at {}, log head {head}",
            last.map_or("?".into(), |l| l.to_string())
        ),
    });

    // Every message on the stream, in order, against the log's event at that position.
    let log: Vec<(Uuid,)> = sqlx::query_as("SELECT event_id FROM event_log ORDER BY position")
        .fetch_all(pool)
        .await?;
    let (read, misplaced, doubled) = read_stream(js, &log).await?;
    checks.push(Check {
        what: "nothing doubled on EVENTS (each sequence holds the log's event at that position, each event id once)",
        pass: read == log.len() && misplaced == 0 && doubled == 0,
        detail: format!(
            "{read} messages read of {}, {misplaced} at a position other than the log's, {doubled} event ids seen twice",
            log.len()
        ),
    });

    let (keyed, keys): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT metadata->>'idempotency_key') FROM events
          WHERE event_type = 'DeviceRegistered' AND metadata ? 'idempotency_key'",
    )
    .fetch_one(pool)
    .await?;
    checks.push(Check {
        what: "retried commands appended once (one registration per Idempotency-Key)",
        pass: keyed == keys,
        detail: format!("{keyed} registrations for {keys} keys"),
    });

    let (in_log,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT e.aggregate_id) FROM events e JOIN event_log l USING (event_id)
          WHERE e.event_type = 'DeviceRegistered' AND e.aggregate_id = ANY($1)",
    )
    .bind(acknowledged.iter().map(Uuid::to_string).collect::<Vec<_>>())
    .fetch_one(pool)
    .await?;
    let in_read_model = projected().await;
    let registered = count(
        pool,
        "SELECT count(*) FROM events WHERE event_type = 'DeviceRegistered'",
    )
    .await?;
    let rows = count(pool, "SELECT count(*) FROM device_status").await?;
    let n = acknowledged.len() as i64;
    checks.push(Check {
        what: "every acknowledged command logged and projected once",
        pass: in_log == n && in_read_model == n && registered == rows,
        detail: format!(
            "{n} acknowledged: {in_log} in the log, {in_read_model} in device_status; \
             {registered} registrations, {rows} device_status rows"
        ),
    });
    Ok(checks)
}

/// Reads the whole EVENTS stream once: how many messages, how many whose `Nats-Msg-Id` is not
/// the log's event at that sequence, and how many ids came twice.
async fn read_stream(
    js: &async_nats::jetstream::Context,
    log: &[(Uuid,)],
) -> Result<(usize, usize, usize), Error> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let last = stream.cached_info().state.last_sequence as usize;
    let (mut read, mut misplaced, mut doubled) = (0, 0, 0);
    if last == 0 {
        return Ok((0, 0, 0));
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = HashSet::with_capacity(last);
    let reading = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(message) = messages.next().await {
            let message = message?;
            let sequence = message.info().map_err(|e| e.to_string())?.stream_sequence as usize;
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .and_then(|v| Uuid::parse_str(v.as_str()).ok());
            read += 1;
            match id {
                Some(id) => {
                    if !seen.insert(id) {
                        doubled += 1;
                    }
                    if log.get(sequence.wrapping_sub(1)).map(|(e,)| *e) != Some(id) {
                        misplaced += 1;
                    }
                }
                None => misplaced += 1,
            }
            if sequence >= last {
                break;
            }
        }
        Ok::<(), Error>(())
    })
    .await;
    match reading {
        Ok(r) => r?,
        Err(_) => tracing::warn!(read, last, "EVENTS not read to the end in 120 s"),
    }
    Ok((read, misplaced, doubled))
}
