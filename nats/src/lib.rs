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
//! - [`cluster`]: three such servers routed into a JetStream cluster on loopback, for the
//!   failover test and benchmark.
//!
//! JetStream is transport, not truth: Postgres holds every event first (DESIGN.md section 1).

pub mod auth;
pub mod cluster;
pub mod server;
pub mod streams;
pub mod subjects;

use std::time::Duration;

/// The servers of a NATS URL that may list several, comma-separated
/// (`nats://a:4222,nats://b:4222`): a client given every node of a cluster reconnects to
/// another by itself when its node goes (the server also gossips the rest once connected).
pub fn server_addrs(url: &str) -> std::io::Result<Vec<async_nats::ServerAddr>> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no NATS server in the URL",
        ));
    }
    Ok(addrs)
}

/// Connects in the background: a process that starts while NATS is down keeps serving what it
/// can and catches up when the server appears.
///
/// A user and password in the URL (`nats://user:password@host:port`) are sent to the server:
/// async-nats itself ignores them.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers = server_addrs(url)?;
    let options = match servers
        .first()
        .and_then(|a| Some((a.username()?.to_owned(), a.password()?.to_owned())))
    {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    };
    options
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
        .connect(servers)
        .await
}

/// The user and password written into a NATS URL, if any.
pub fn url_credentials(url: &str) -> Option<(String, String)> {
    let addr: async_nats::ServerAddr = url.parse().ok()?;
    Some((addr.username()?.to_owned(), addr.password()?.to_owned()))
}

/// The URL without its user and password (to print or to probe as an anonymous client).
pub fn url_without_credentials(url: &str) -> String {
    match url.parse::<async_nats::ServerAddr>() {
        Ok(addr) if addr.has_user_pass() => {
            let mut u = addr.into_inner();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        _ => url.to_owned(),
    }
}

pub fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}
