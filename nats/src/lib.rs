//! Latch on NATS.
//!
//! - [`subjects`]: the subject layout. Devices publish under `latch.dev.<id>.`, hear commands on
//!   `latch.cmd.<id>.`, domain events go out on `latch.events.<aggregate>.<type>.<id>` and refused
//!   messages on `latch.dlq.<source>`.
//! - [`streams`]: the JetStream streams and durable consumers, created or updated idempotently at
//!   start-up with explicit settings. Only features of nats-server 2.9 are used.
//! - [`auth`]: the server-side permissions that confine each device to its own subtree.
//! - [`server`]: a private nats-server (temp store, random port) behind a Drop guard, for tests
//!   and for `latch dev` when nothing listens on the default port.
//!
//! JetStream is transport, not truth: Postgres holds every event first (DESIGN.md section 1).

pub mod auth;
pub mod server;
pub mod streams;
pub mod subjects;

use std::time::Duration;

/// Connects in the background: a process that starts while NATS is down keeps serving what it
/// can and catches up when the server appears.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
        .connect(url)
        .await
}

pub fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}
