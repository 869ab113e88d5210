//! JetStream streams and durable consumers, declared with every setting that matters spelled out.

use crate::subjects::*;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// How often a consumer message is delivered before it is given up (and dead-lettered), and the
/// pause before each redelivery. The server uses the last pause for any later attempt.
pub const MAX_DELIVER: i64 = 5;
pub const BACKOFF: [Duration; 4] = [
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(40),
    Duration::from_secs(80),
];

pub fn events_stream() -> Config {
    Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some(
            "Every committed domain event, in log order: sequence == log position".into(),
        ),
        subjects: vec![EVENTS_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        // Msg-Id = event id: a relay that republishes after a crash is deduplicated here too.
        duplicate_window: Duration::from_secs(120),
        // History lives in Postgres; nothing downstream may quietly rewrite the transport copy.
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Size limits of a stream that devices (or failures) can fill: when reached, the oldest
/// messages go (discard old), so a chatty or hostile device cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_bytes: i64,
    pub max_messages: i64,
    pub max_message_size: i32,
}

/// TELEMETRY's own dedupe window: the shortest nats-server accepts (100 ms), see
/// [`telemetry_stream_with`].
pub const TELEMETRY_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// TELEMETRY: 1 GiB, a million messages, 64 KiB each.
pub const TELEMETRY_LIMITS: StreamLimits = StreamLimits {
    max_bytes: 1 << 30,
    max_messages: 1_000_000,
    max_message_size: 64 * 1024,
};

/// DEADLETTER: 256 MiB, 100,000 messages, 64 KiB each (ingest keeps at most a prefix).
pub const DEADLETTER_LIMITS: StreamLimits = StreamLimits {
    max_bytes: 256 << 20,
    max_messages: 100_000,
    max_message_size: 64 * 1024,
};

pub fn telemetry_stream() -> Config {
    telemetry_stream_with(TELEMETRY_LIMITS)
}

pub fn telemetry_stream_with(limits: StreamLimits) -> Config {
    Config {
        max_bytes: limits.max_bytes,
        max_messages: limits.max_messages,
        max_message_size: limits.max_message_size,
        name: TELEMETRY_STREAM.to_owned(),
        description: Some("Raw device telemetry, awaiting validation by the ingest worker".into()),
        subjects: vec![TELEMETRY_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: 7 * DAY,
        // JetStream deduplicates on Nats-Msg-Id across the whole stream, and a device chooses
        // its headers: one device could suppress another's message by publishing its id first.
        // So devices send no Nats-Msg-Id (a message without one is never suppressed), Latch
        // deduplicates on (device id from the subject, msg_id) in ingest, and the stream's own
        // window is the server's minimum (it has no "off"; 0 means its 2-minute default).
        duplicate_window: TELEMETRY_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

pub fn deadletter_stream() -> Config {
    deadletter_stream_with(DEADLETTER_LIMITS)
}

pub fn deadletter_stream_with(limits: StreamLimits) -> Config {
    Config {
        max_bytes: limits.max_bytes,
        max_messages: limits.max_messages,
        max_message_size: limits.max_message_size,
        discard: DiscardPolicy::Old,
        name: DEADLETTER_STREAM.to_owned(),
        description: Some("Messages refused or given up, with the reason in headers".into()),
        subjects: vec![DEADLETTER_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: 30 * DAY,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub fn grants_stream() -> Config {
    Config {
        name: GRANTS_STREAM.to_owned(),
        description: Some(
            "Each authorizer's grants, requested to settled, for its own durable consumer".into(),
        ),
        subjects: vec![GRANTS_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: 30 * DAY,
        // Msg-Id = event id: a redelivered event is stored once.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The durable consumer an authorizer reads its grant feed through: made by Latch, filtered
/// to the authorizer's own subjects, so the authorizer's identity needs no right to create
/// consumers (which could name any filter), only to read and ack this one.
pub fn authorizer_feed_consumer(authorizer: &str) -> String {
    format!("authorizer-{}", token(authorizer))
}

/// Makes (or keeps) [`authorizer_feed_consumer`] on GRANTS.
pub async fn ensure_authorizer_feed(
    js: &Context,
    authorizer: &str,
) -> Result<(), async_nats::Error> {
    let name = authorizer_feed_consumer(authorizer);
    let stream = js.get_stream(GRANTS_STREAM).await?;
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("authorizer {authorizer}'s grant feed")),
                filter_subject: grant_feed_all(authorizer),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

/// Creates the four streams, or brings their settings up to date. Safe to run from every
/// process at every start. Retries for a while: a server that just started may not have
/// JetStream ready yet.
pub async fn ensure_streams(js: &Context) -> Result<(), async_nats::Error> {
    ensure_streams_with(js, TELEMETRY_LIMITS, DEADLETTER_LIMITS).await
}

/// As [`ensure_streams`], with the size limits of TELEMETRY and DEADLETTER from configuration.
pub async fn ensure_streams_with(
    js: &Context,
    telemetry: StreamLimits,
    deadletter: StreamLimits,
) -> Result<(), async_nats::Error> {
    ensure_streams_replicated(js, telemetry, deadletter, 1).await
}

/// As [`ensure_streams_with`], each stream kept on `replicas` servers (1 on a single server, 3
/// in a three-node cluster: a stream then survives the loss of any one node). Consumers take
/// their stream's count. Changing it later updates the streams in place.
pub async fn ensure_streams_replicated(
    js: &Context,
    telemetry: StreamLimits,
    deadletter: StreamLimits,
    replicas: usize,
) -> Result<(), async_nats::Error> {
    ensure_streams_for(
        js,
        &StreamPlan {
            telemetry,
            deadletter,
            replicas,
            edge_domains: Vec::new(),
        },
    )
    .await
}

/// Everything configuration says about the streams.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub telemetry: StreamLimits,
    pub deadletter: StreamLimits,
    pub replicas: usize,
    /// JetStream domains of edge sites (leaf nodes) whose [`SITE_TELEMETRY_STREAM`] TELEMETRY
    /// sources.
    pub edge_domains: Vec<String>,
}

/// The stream an edge site keeps on its leaf node: its cabinets' telemetry, held at the site
/// while the uplink is down (a week, 1 GiB by default) and sourced by the central TELEMETRY
/// stream, in order, once it is back. The leaf must not also forward `latch.dev.>` over its
/// link (`deny_exports`), or a report would arrive twice by two paths, out of order.
pub const SITE_TELEMETRY_STREAM: &str = "SITE_TELEMETRY";

pub fn site_telemetry_stream(limits: StreamLimits) -> Config {
    Config {
        name: SITE_TELEMETRY_STREAM.to_owned(),
        description: Some("This site's cabinet telemetry, until the centre has sourced it".into()),
        ..telemetry_stream_with(limits)
    }
}

/// Makes (or keeps) the site stream, through a connection to the site's leaf node.
pub async fn ensure_site_stream(
    js: &Context,
    limits: StreamLimits,
) -> Result<(), async_nats::Error> {
    js.create_or_update_stream(site_telemetry_stream(limits))
        .await?;
    Ok(())
}

/// TELEMETRY's sources: each edge domain's site stream, over its JetStream API prefix.
fn edge_sources(domains: &[String]) -> Option<Vec<async_nats::jetstream::stream::Source>> {
    use async_nats::jetstream::stream::{External, Source};
    (!domains.is_empty()).then(|| {
        domains
            .iter()
            .map(|d| Source {
                name: SITE_TELEMETRY_STREAM.to_owned(),
                external: Some(External {
                    api_prefix: format!("$JS.{d}.API"),
                    delivery_prefix: None,
                }),
                ..Default::default()
            })
            .collect()
    })
}

/// Declares every stream as `plan` says, retrying while the server (or a cluster still
/// electing its leader) is not ready.
pub async fn ensure_streams_for(js: &Context, plan: &StreamPlan) -> Result<(), async_nats::Error> {
    let (telemetry, deadletter, replicas) = (plan.telemetry, plan.deadletter, plan.replicas);
    let mut attempt = 0;
    loop {
        let result = async {
            let telemetry = Config {
                sources: edge_sources(&plan.edge_domains),
                ..telemetry_stream_with(telemetry)
            };
            for config in [
                events_stream(),
                telemetry,
                deadletter_stream_with(deadletter),
                grants_stream(),
            ] {
                let config = Config {
                    num_replicas: replicas.max(1),
                    ..config
                };
                js.create_or_update_stream(config).await?;
            }
            Ok::<(), async_nats::Error>(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "streams not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A durable pull consumer with explicit acks, bounded redelivery with backoff, and a filter.
pub fn durable(name: &str, filter: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("latch worker {name}")),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // With backoff set, the server takes its first entry as the ack wait.
        ack_wait: BACKOFF[0],
        max_deliver: MAX_DELIVER,
        backoff: BACKOFF.to_vec(),
        filter_subject: filter.to_owned(),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

pub async fn ensure_consumer(
    js: &Context,
    stream: &str,
    config: pull::Config,
) -> Result<async_nats::jetstream::consumer::PullConsumer, async_nats::Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream = js.get_stream(stream).await?;
    Ok(stream.get_or_create_consumer(&name, config).await?)
}
