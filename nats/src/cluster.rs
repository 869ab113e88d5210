//! A private nats-server cluster on loopback, for the failover tests and `latch bench failover`.
//!
//! Three (or more) [`NatsServer`]s named `n1`, `n2`, ... route to one another and run JetStream,
//! each with its own temporary store; [`form`] waits until the cluster can hold replicated
//! streams. One place for this, so the test and the benchmark measure the same set-up.

use crate::server::{NatsServer, ServerError};
use crate::streams;
use async_nats::jetstream::Context;
use std::time::Duration;

pub struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// `size` nodes named `n1..`, each listing every route; they form on their own.
    pub async fn start(size: usize) -> Result<Self, ServerError> {
        let routes = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let all = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in routes.iter().enumerate() {
            let config = format!(
                "server_name: {}\ncluster {{\n  name: latch\n  listen: 127.0.0.1:{port}\n  routes: [ {all} ]\n}}\n",
                node_name(i)
            );
            nodes.push(NatsServer::start_with_config(Some(&config)).await?);
        }
        Ok(Self { nodes })
    }

    /// Every node's client URL, comma-separated: what `NATS_URL` is given.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// A node, to stop (SIGKILL) and restart on the same port and store.
    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    pub fn into_nodes(self) -> Vec<NatsServer> {
        self.nodes
    }
}

/// The server name of the `index`th node (from 0): `n1`, `n2`, ...
pub fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// The index of the node a server name (a stream leader's, say) names.
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// Waits until the cluster has formed and elected its meta leader, shown by its taking Latch's
/// streams with `replicas` copies (with the default limits; `latch serve` updates them to its
/// own at start).
pub async fn form(js: &Context, replicas: usize, limit: Duration) -> Result<(), String> {
    let formed = tokio::time::timeout(limit, async {
        loop {
            match streams::ensure_streams_replicated(
                js,
                streams::TELEMETRY_LIMITS,
                streams::DEADLETTER_LIMITS,
                replicas,
            )
            .await
            {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "cluster not formed yet"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    formed.map_err(|_| format!("the cluster did not take R{replicas} streams in {limit:?}"))
}

/// The server name of a stream's leader, once it has one.
pub async fn stream_leader(js: &Context, stream: &str) -> Option<String> {
    let mut stream = js.get_stream(stream).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.clone()?.leader
}

/// A stream's last sequence, when its leader answers.
pub async fn stream_last(js: &Context, stream: &str) -> Option<u64> {
    let mut stream = js.get_stream(stream).await.ok()?;
    Some(stream.info().await.ok()?.state.last_sequence)
}

/// True when a stream has a leader and every other replica is online and current: a node that
/// was restarted has caught up.
pub async fn stream_replicas_current(js: &Context, stream: &str, replicas: usize) -> bool {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    info.cluster.as_ref().is_some_and(|c| {
        c.leader.is_some()
            && c.replicas.len() + 1 == replicas
            && c.replicas.iter().all(|p| p.current && !p.offline)
    })
}

/// A loopback port free now (the OS picks it; the listener closes at once).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
