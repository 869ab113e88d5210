//! Grant-request delivery: a `GrantRequested` event that names an authorizer is published on the
//! authorizer's own NATS subject and POSTed to its service endpoint as a Standard Webhooks
//! delivery signed with its secret.
//!
//! Everything comes from the log: the request from the event, the endpoint and secret from the
//! authorizer's stream, whether it is still worth sending from the grant's stream, loaded afresh
//! before every attempt. The durable consumer's message is acknowledged only once the endpoint
//! answered 2xx or the grant is no longer open (answered, expired, past its deadline), so a
//! crash or restart at any point leads to another attempt, never to a lost request.
//!
//! Retries are JetStream naks with the next pause of the backoff schedule; every attempt carries
//! the same webhook id (`msg_` + the grant id), so the authorizer acts on it once. When the
//! schedule is used up the message goes to the dead-letter stream with the reason and the grant
//! is left to expire at its deadline. The NATS copy goes out with every attempt too (core NATS
//! keeps nothing for a subscriber that was away), with the same id and signature headers.
//!
//! The POST goes through [`latch_domain::outbound::client_builder`]: TLS verified against the
//! webpki roots plus the configured extra roots, and redirects never followed. An endpoint that
//! answers 3xx has not taken the request (the attempt counts as failed and is retried on the
//! schedule); the signed request is never re-sent to wherever the 3xx points. With
//! [`DeliveryConfig::require_https`] (production) an `http://` endpoint is refused outright.

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{AckKind, Context, Message};
use async_nats::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use latch_domain::clock::SharedClock;
use latch_domain::locker::grant::GrantStatus;
use latch_domain::locker::{GrantEvent, GrantTarget};
use latch_domain::store::Store;
use latch_domain::webhooks::{self, secret_key, sign};
use latch_nats::{streams, subjects};
use latch_projections::LoggedEvent;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub const CONSUMER: &str = "grant-delivery";
/// The grant aggregate's type, as the relay names it in event subjects.
const GRANT_TYPE: &str = "locker_grant";

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Pauses between attempts: one attempt, then one more after each pause.
    pub backoff: Vec<Duration>,
    /// How long one POST may take.
    pub request_timeout: Duration,
    /// Deliveries under way at once, so one slow endpoint does not hold up the rest.
    pub max_in_flight: usize,
    /// Trust anchors beyond the webpki roots (`LATCH_EXTRA_CA_FILE`).
    pub roots: latch_domain::outbound::TlsRoots,
    /// Refuse (dead-letter) a request whose endpoint is not `https://` (production mode).
    pub require_https: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            backoff: latch_domain::locker::DEFAULT_WEBHOOK_BACKOFF_SECS
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            roots: Default::default(),
            require_https: false,
        }
    }
}

/// What an authorizer receives, as webhook `data` and on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRequestMessage {
    pub request_id: Uuid,
    pub site: String,
    pub compartment: String,
    pub size: String,
    pub authorizer: String,
    pub requester: String,
    pub deadline: DateTime<Utc>,
}

impl GrantRequestMessage {
    /// The request as an authorizer sees it, from the grant's `GrantRequested`.
    pub fn new(
        grant_id: Uuid,
        compartment: &latch_domain::locker::CompartmentId,
        size: &latch_domain::locker::Size,
        authorizer: &latch_domain::locker::AuthorizerNumber,
        requester: &latch_domain::locker::UserNumber,
        deadline: DateTime<Utc>,
    ) -> Self {
        Self {
            request_id: grant_id,
            site: compartment.site.as_str().to_owned(),
            compartment: compartment.number.as_str().to_owned(),
            size: size.as_str().to_owned(),
            authorizer: authorizer.to_string(),
            requester: requester.to_string(),
            deadline,
        }
    }
}

/// The webhook id of a grant request: the same on every attempt, so the authorizer dedups.
pub fn webhook_id(grant_id: Uuid) -> String {
    format!("msg_{}", grant_id.simple())
}

/// The durable consumer: only grant requests; no server-side backoff or delivery limit, because
/// the worker paces retries itself (nak with delay) and dead-letters with a reason instead of
/// letting the server drop the message silently at a limit.
pub fn consumer_config(config: &DeliveryConfig) -> pull::Config {
    let mut c = streams::durable(
        CONSUMER,
        &subjects::events_of_type(GRANT_TYPE, "GrantRequested"),
    );
    c.backoff = Vec::new();
    c.max_deliver = -1;
    // Longer than one attempt, so a slow endpoint is not raced by a redelivery of its own request.
    c.ack_wait = (config.request_timeout * 3).max(Duration::from_secs(30));
    c
}

/// What became of one attempt.
#[derive(Debug)]
enum Outcome {
    /// Delivered, or nothing (more) to deliver.
    Done(&'static str),
    /// The endpoint did not take it: try again on the schedule.
    Undelivered(String),
    /// It can never be delivered: dead-letter it now.
    Refused(&'static str, String),
    /// Postgres or NATS away: try again later, never dead-lettered for this.
    Unavailable(String),
}

pub struct GrantDelivery {
    store: Arc<Store>,
    client: Client,
    js: Context,
    clock: SharedClock,
    http: reqwest::Client,
    config: DeliveryConfig,
}

impl GrantDelivery {
    pub fn new(
        store: Arc<Store>,
        client: Client,
        js: Context,
        clock: SharedClock,
        config: DeliveryConfig,
    ) -> Self {
        // No redirects: a 3xx is an undelivered attempt, never a second POST elsewhere.
        let http = latch_domain::outbound::client_builder(&config.roots)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .build()
            .unwrap_or_else(|e| {
                // The roots were checked when they were read; this is not expected.
                tracing::error!(error = %e, "grant delivery http client unusable; without extra roots");
                latch_domain::outbound::client_builder(&Default::default())
                    .timeout(config.request_timeout)
                    .build()
                    .unwrap_or_default()
            });
        Self {
            store,
            client,
            js,
            clock,
            http,
            config,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        while !shutdown.is_cancelled() {
            if let Err(e) = this.consume(&shutdown).await {
                tracing::warn!(error = %e, "grant delivery consumer unavailable");
                crate::consume::pause(&shutdown, Duration::from_millis(500)).await;
            }
        }
        tracing::info!("grant delivery stopped");
    }

    async fn consume(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let consumer = streams::ensure_consumer(
            &self.js,
            subjects::EVENTS_STREAM,
            consumer_config(&self.config),
        )
        .await?;
        let limit = self.config.max_in_flight.max(1);
        // Pull no more than can be worked on: a pulled message waits out the ack wait if this
        // process stops before it is started.
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(limit)
            .messages()
            .await?;
        let mut in_flight = JoinSet::new();
        let result = loop {
            if in_flight.len() >= limit {
                in_flight.join_next().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = messages.next() => match next {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(e.into()),
                    Some(Ok(message)) => {
                        let this = self.clone();
                        in_flight.spawn(async move { this.handle(message).await });
                    }
                },
            }
        };
        if shutdown.is_cancelled() {
            // Hand back what was pulled but not started, so the next worker need not wait.
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                message.ack_with(AckKind::Nak(None)).await.ok();
            }
        }
        while in_flight.join_next().await.is_some() {}
        result
    }

    async fn handle(&self, message: Message) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
        let span = tracing::info_span!(
            "grant_delivery",
            attempt = delivered,
            grant = tracing::field::Empty
        );
        async {
            let outcome = self.attempt(&message.payload).await;
            let counted = match &outcome {
                Outcome::Done(_) => "settled",
                Outcome::Undelivered(_) => "undelivered",
                Outcome::Refused(..) => "refused",
                Outcome::Unavailable(_) => "unavailable",
            };
            metrics::counter!("latch_webhook_attempts_total", "webhook" => "grant_request", "outcome" => counted)
                .increment(1);
            let retries_used = (delivered - 1) as usize;
            let settled = match outcome {
                Outcome::Done(why) => {
                    tracing::info!(why, "grant request settled");
                    message.ack().await
                }
                Outcome::Undelivered(why) => match self.config.backoff.get(retries_used) {
                    Some(pause) => {
                        tracing::warn!(%why, retry_in = ?pause, "grant request not delivered; will retry");
                        message.ack_with(AckKind::Nak(Some(*pause))).await
                    }
                    None => {
                        tracing::error!(%why, "grant request undelivered after every attempt");
                        self.dead_letter(&message, "webhook_undelivered", &why, delivered)
                            .await
                    }
                },
                Outcome::Refused(reason, detail) => {
                    tracing::error!(reason, %detail, "grant request cannot be delivered");
                    self.dead_letter(&message, reason, &detail, delivered).await
                }
                Outcome::Unavailable(why) => {
                    let pause = self
                        .config
                        .backoff
                        .get(retries_used.min(self.config.backoff.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(Duration::from_secs(1));
                    tracing::warn!(%why, retry_in = ?pause, "grant delivery cannot check the grant now");
                    message.ack_with(AckKind::Nak(Some(pause))).await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "could not settle the grant request message; it will come back");
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, payload: &[u8]) -> Outcome {
        let logged: LoggedEvent = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => return Outcome::Refused("unreadable_event", e.to_string()),
        };
        let logged = logged.upcast();
        let Ok(GrantEvent::GrantRequested {
            grant_id,
            compartment,
            size,
            requester,
            target: GrantTarget::Authorizer { authorizer },
            deadline,
            ..
        }) = serde_json::from_value::<GrantEvent>(logged.payload.clone())
        else {
            // A direct grant: nobody to tell.
            return Outcome::Done("direct");
        };
        tracing::Span::current().record("grant", tracing::field::display(grant_id));
        let now = self.clock.now();
        if now >= deadline {
            return Outcome::Done("past_deadline");
        }
        match self.store.grants.load(&logged.aggregate_id).await {
            Ok(Some(grant)) if grant.status == GrantStatus::Requested => {}
            Ok(Some(grant)) => return Outcome::Done(grant.status.as_str()),
            Ok(None) => {
                return Outcome::Refused("unknown_grant", logged.aggregate_id.clone());
            }
            Err(e) => return Outcome::Unavailable(e.to_string()),
        }
        let company = match self.store.authorizers.load(authorizer.as_str()).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Outcome::Refused(
                    "unknown_authorizer",
                    format!("no authorizer {authorizer}"),
                )
            }
            Err(e) => return Outcome::Unavailable(e.to_string()),
        };
        let secret = match self.store.vault.secret(&company.secret_id).await {
            Ok(secret) => secret.unwrap_or_default(),
            Err(latch_domain::vault::VaultError::Sql(e)) => {
                return Outcome::Unavailable(e.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "authorizer secret unusable");
                String::new()
            }
        };
        let Some(key) = secret_key(&secret) else {
            return Outcome::Refused(
                "invalid_secret",
                format!("authorizer {authorizer} has no usable signing secret"),
            );
        };
        let request = GrantRequestMessage::new(
            grant_id,
            &compartment,
            &size,
            &authorizer,
            &requester,
            deadline,
        );
        let body = match serde_json::to_vec(
            &serde_json::json!({ "type": "grant.requested", "data": request }),
        ) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Outcome::Refused("unencodable_request", e.to_string()),
        };
        let id = webhook_id(grant_id);
        let timestamp = now.timestamp();
        let signature = sign(&key, &id, timestamp, &body);

        let mut headers = async_nats::HeaderMap::new();
        headers.insert(webhooks::ID_HEADER, id.as_str());
        headers.insert(webhooks::TIMESTAMP_HEADER, timestamp.to_string().as_str());
        headers.insert(webhooks::SIGNATURE_HEADER, signature.as_str());
        let subject = subjects::authorizer_grants(authorizer.as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, body.clone())
            .await
        {
            return Outcome::Unavailable(format!("NATS: {e}"));
        }

        let Some(endpoint) = company.endpoint else {
            return Outcome::Done("no_endpoint");
        };
        if self.config.require_https && !endpoint.as_str().starts_with("https://") {
            return Outcome::Refused(
                "insecure_endpoint",
                format!("authorizer {authorizer}'s endpoint is not https (production mode)"),
            );
        }
        let sent = self
            .http
            .post(endpoint.as_str())
            .header("content-type", "application/json")
            .header(webhooks::ID_HEADER, &id)
            .header(webhooks::TIMESTAMP_HEADER, timestamp.to_string())
            .header(webhooks::SIGNATURE_HEADER, signature)
            .header("idempotency-key", &id)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Done("delivered"),
            Ok(r) if r.status().is_redirection() => Outcome::Undelivered(format!(
                "endpoint answered {} (redirects are not followed)",
                r.status()
            )),
            Ok(r) => Outcome::Undelivered(format!("endpoint answered {}", r.status())),
            // The whole chain: a TLS failure names the certificate problem.
            Err(e) => Outcome::Undelivered(format!(
                "endpoint unreachable: {}",
                latch_domain::outbound::error_chain(&e)
            )),
        }
    }

    /// Publishes to the dead-letter stream, then terminates the original; if the dead-letter
    /// publish fails the original comes back later instead of vanishing.
    async fn dead_letter(
        &self,
        message: &Message,
        reason: &str,
        detail: &str,
        attempts: i64,
    ) -> Result<(), async_nats::Error> {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        metrics::counter!("latch_dead_letters_total", "consumer" => CONSUMER, "reason" => reason.to_owned())
            .increment(1);
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(format!("grant-delivery-{sequence}"))
            .header("Latch-Reason", reason)
            .header("Latch-Detail", truncate(detail, 512))
            .header("Latch-Subject", message.subject.as_str())
            .header("Latch-Stream-Sequence", sequence.to_string().as_str())
            .header("Latch-Attempts", attempts.to_string().as_str());
        let stored = async {
            self.js
                .send_publish(subjects::deadletter(CONSUMER), publish)
                .await?
                .await?;
            Ok::<(), async_nats::Error>(())
        }
        .await;
        if let Err(e) = stored {
            let pause = self
                .config
                .backoff
                .last()
                .copied()
                .unwrap_or(Duration::from_secs(30));
            message.ack_with(AckKind::Nak(Some(pause))).await?;
            return Err(e);
        }
        message.ack_with(AckKind::Term).await?;
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_sees_only_grant_requests_and_paces_itself() {
        let c = consumer_config(&DeliveryConfig::default());
        assert_eq!(
            c.filter_subject,
            "latch.events.locker_grant.GrantRequested.*"
        );
        assert!(c.backoff.is_empty());
        assert_eq!(c.max_deliver, -1);
        assert!(c.ack_wait >= Duration::from_secs(30));
    }

    #[test]
    fn the_webhook_id_is_the_grant_id() {
        let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        assert_eq!(webhook_id(id), "msg_01900000000070008000000000000001");
        assert_eq!(truncate("快递公司", 4), "快");
    }
}
