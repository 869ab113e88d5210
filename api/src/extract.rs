//! Request extractors that turn every client mistake into an [`ApiError`] naming the field.

use crate::auth::Actor;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Method};
use latch_domain::store::{CommandContext, IdempotencyKey};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Largest JSON body any command accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body, parsed with the path of any offending field, keeping the raw bytes for the
/// idempotency fingerprint.
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::BadRequest {
                code: "unsupported_media_type",
                message: "send the body as application/json".into(),
                field: None,
            });
        }
        let RawBody(raw) = RawBody::from_request(req, state).await?;
        if raw.len() > MAX_BODY {
            return Err(ApiError::PayloadTooLarge { limit: MAX_BODY });
        }
        let de = &mut serde_json::Deserializer::from_slice(&raw);
        let value = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            let (code, field) = if inner.is_syntax() || inner.is_eof() {
                ("malformed_json", None)
            } else if let Some(name) = named_field(&message) {
                // A missing field is reported against its parent object.
                let field = if path == "." {
                    name
                } else if path.ends_with(name.as_str()) {
                    path
                } else {
                    format!("{path}.{name}")
                };
                ("invalid_field", Some(field))
            } else {
                ("invalid_field", (path != ".").then_some(path))
            };
            ApiError::BadRequest {
                code,
                message,
                field,
            }
        })?;
        Ok(Self { value, raw })
    }
}

/// A query string, parsed into `T`; a string that does not fit is refused as `invalid_query`
/// with axum's account of what did not parse (it names the offending parameter). Handlers take
/// it as `Result<Query<T>, ApiError>` when other checks (the caller's role) must be answered
/// first, so the order of refusals stays the handler's choice.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_query",
                message: e.body_text(),
                field: None,
            })
    }
}

/// A body as bytes, read only up to the router's body limit (`DefaultBodyLimit`): a longer one
/// is refused with 413 as soon as it passes the limit. Webhooks take their body this way, so
/// verifying a signature never means reading an unbounded body first.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<crate::edge::BodyLimit>()
            .map_or(crate::edge::DEFAULT_BODY_LIMIT, |l| l.0);
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::BadRequest {
                        code: "body_unreadable",
                        message: e.body_text(),
                        field: None,
                    }
                }
            })
    }
}

/// The field named in serde's "missing field `x`" / "unknown field `x`" messages.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// Who asked, which request this is, and the client's idempotency key if it sent one.
pub struct RequestMeta {
    pub request_id: Uuid,
    pub correlation_id: Uuid,
    pub idempotency_key: Option<String>,
    pub method: Method,
    pub path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header_uuid = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Uuid::parse_str(v).ok())
        };
        let request_id = header_uuid("x-request-id").unwrap_or_else(Uuid::now_v7);
        let correlation_id = header_uuid("x-correlation-id").unwrap_or(request_id);
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let key = v.to_str().ok().filter(|k| {
                    (1..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
                });
                Some(
                    key.ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_idempotency_key",
                            "Idempotency-Key",
                            "must be 1-128 printable ASCII characters",
                        )
                    })?
                    .to_owned(),
                )
            }
        };
        Ok(Self {
            request_id,
            correlation_id,
            idempotency_key,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
        })
    }
}

impl RequestMeta {
    /// The command context for `actor`, with the idempotency key scoped to them and
    /// fingerprinted with this request's method, path and body.
    pub fn context(&self, actor: &Actor, body: &[u8]) -> CommandContext {
        let mut ctx = CommandContext::new(actor.to_string());
        ctx.request_id = self.request_id;
        ctx.causation_id = self.request_id;
        ctx.correlation_id = self.correlation_id;
        if let Some(key) = &self.idempotency_key {
            let mut fingerprint = Vec::with_capacity(body.len() + self.path.len() + 8);
            fingerprint.extend_from_slice(self.method.as_str().as_bytes());
            fingerprint.push(b' ');
            fingerprint.extend_from_slice(self.path.as_bytes());
            fingerprint.push(b'\n');
            fingerprint.extend_from_slice(body);
            ctx.idempotency = Some(IdempotencyKey::new(&actor.to_string(), key, &fingerprint));
        }
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[derive(Debug, serde::Deserialize)]
    struct Limit {
        #[allow(dead_code)]
        limit: Option<u32>,
    }

    #[tokio::test]
    async fn a_query_that_does_not_parse_is_invalid_query_naming_the_parameter() {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri("/x?limit=many")
            .body(())
            .unwrap()
            .into_parts();
        let Err(e) = Query::<Limit>::from_request_parts(&mut parts, &()).await else {
            panic!("`limit=many` parsed");
        };
        let (status, body) = e.to_body();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body.error.code, "invalid_query");
        assert!(
            body.error.message.contains("limit"),
            "{}",
            body.error.message
        );
        assert_eq!(body.error.field, None);
    }
}
