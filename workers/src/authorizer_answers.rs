//! Authorizers that subscribe instead of serving an endpoint may answer over NATS: a message on
//! `latch.authorizers.{number}.answers` with the callback's body and its Standard Webhooks
//! headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) is handled exactly as the
//! signed HTTP callback, and the outcome (or the error body) is the reply.
//!
//! This listener only carries messages: the check and the one command behind an answer belong
//! to the API's callback, handed in as an [`AnswerHandler`], so both doors run the same code.

use futures::StreamExt;
use latch_nats::subjects;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The Standard Webhooks headers an answer carries.
pub const WEBHOOK_HEADERS: [&str; 3] = [
    latch_domain::webhooks::ID_HEADER,
    latch_domain::webhooks::TIMESTAMP_HEADER,
    latch_domain::webhooks::SIGNATURE_HEADER,
];

/// Checks one signed answer and executes its command; the reply (the outcome or an error body).
#[async_trait::async_trait]
pub trait AnswerHandler: Send + Sync {
    async fn answer(
        &self,
        authorizer: &str,
        headers: Vec<(&'static str, String)>,
        body: bytes::Bytes,
    ) -> serde_json::Value;
}

/// Serves answers until `shutdown`; each is handled on its own task.
pub async fn run(
    nats: async_nats::Client,
    handler: Arc<dyn AnswerHandler>,
    shutdown: CancellationToken,
) {
    let mut answers = match nats.subscribe(subjects::AUTHORIZER_ANSWERS_ALL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to authorizer answers");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = answers.next() => match m { Some(m) => m, None => return },
        };
        let Some(number) =
            subjects::parse_authorizer_answers_subject(message.subject.as_str()).map(str::to_owned)
        else {
            continue;
        };
        let headers: Vec<(&'static str, String)> = WEBHOOK_HEADERS
            .into_iter()
            .filter_map(|name| {
                let value = message.headers.as_ref()?.get(name)?;
                Some((name, value.as_str().to_owned()))
            })
            .collect();
        let (nats, handler) = (nats.clone(), handler.clone());
        tokio::spawn(async move {
            let reply = handler.answer(&number, headers, message.payload).await;
            if let Some(to) = message.reply {
                if let Err(e) = nats.publish(to, reply.to_string().into()).await {
                    tracing::warn!(error = %e, "answer reply not sent");
                }
            }
        });
    }
}
