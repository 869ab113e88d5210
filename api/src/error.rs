//! The one error shape every endpoint answers with:
//! `{ "error": { "code": "...", "message": "...", "field": "..." } }`.
//!
//! Client mistakes are 4xx with a stable code and, where one field is at fault, its name.
//! Internal failures are logged with detail and shown only as `internal`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_domain::device::{DeviceError, ParseError};
use latch_domain::store::CommandError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// A token that was good once and is no longer: `token_revoked` (logout, `latch token
    /// revoke`, its user disabled) or `token_expired`. Stable codes, so a client knows to log in
    /// again rather than retry.
    #[error("{message}")]
    TokenRefused { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    /// 403 with its own stable code (`sticker_required`, `forged_cabinet_link`, ...).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The body is over the limit; refused before it is read further.
    #[error("the body may be at most {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request took longer than the configured request timeout.
    #[error("the request took longer than {millis} ms and was stopped; try again")]
    Timeout { millis: u64 },
    /// The read models are further behind the log than the configured limit: commands wait
    /// until they catch up, so the lag cannot grow without bound.
    #[error("the read models are {behind} events behind the log (limit {limit}); nothing was written, try again shortly")]
    ReadModelsBehind { behind: i64, limit: i64 },
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn parts(&self) -> (StatusCode, &str, Option<&str>) {
        match self {
            Self::BadRequest { code, field, .. } => {
                (StatusCode::BAD_REQUEST, code, field.as_deref())
            }
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Self::TokenRefused { code, .. } => (StatusCode::UNAUTHORIZED, code, None),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            Self::Denied { code, .. } => (StatusCode::FORBIDDEN, code, None),
            Self::NotFound { code, .. } => (StatusCode::NOT_FOUND, code, None),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code, None),
            Self::Unprocessable { code, field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, field.as_deref())
            }
            Self::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code, None),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            Self::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout", None),
            Self::ReadModelsBehind { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "read_models_behind", None)
            }
        }
    }
}

impl ApiError {
    /// The status and body this error answers with; internals are logged here and hidden.
    pub fn to_body(&self) -> (StatusCode, ErrorBody) {
        let (status, code, field) = self.parts();
        let message = match self {
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "something went wrong on our side; it has been logged".to_owned()
            }
            Self::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                "the event store is unavailable; nothing was written, try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        (
            status,
            ErrorBody {
                error: ErrorDetail {
                    code: code.to_owned(),
                    message,
                    field: field.map(str::to_owned),
                },
            },
        )
    }

    /// Headers that go with the error (Retry-After).
    pub fn add_headers(&self, response: &mut Response) {
        if let Self::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(
            self,
            Self::Unavailable(_) | Self::Timeout { .. } | Self::ReadModelsBehind { .. }
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.to_body();
        let mut response = (status, axum::Json(body)).into_response();
        self.add_headers(&mut response);
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        Self::BadRequest {
            code: "invalid_field",
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if latch_domain::store::is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<latch_domain::vault::VaultError> for ApiError {
    fn from(e: latch_domain::vault::VaultError) -> Self {
        match e {
            latch_domain::vault::VaultError::Sql(e) => e.into(),
            // A wrong or missing secrets key is the operator's to fix; the caller learns nothing
            // about the secret.
            other => {
                tracing::error!(error = %other, "vault");
                Self::Internal("a stored secret is unusable".into())
            }
        }
    }
}

impl From<CommandError<DeviceError>> for ApiError {
    fn from(e: CommandError<DeviceError>) -> Self {
        match e {
            CommandError::Rejected(d) if d.is_not_found() => Self::NotFound {
                code: d.code(),
                message: d.to_string(),
            },
            CommandError::Rejected(d) => Self::Conflict {
                code: d.code(),
                message: d.to_string(),
            },
            other => from_command_error(other),
        }
    }
}

/// The aggregate-independent part of mapping a command failure.
pub fn from_command_error<E: std::error::Error>(e: CommandError<E>) -> ApiError {
    match e {
        CommandError::Rejected(inner) => ApiError::Conflict {
            code: "rejected",
            message: inner.to_string(),
        },
        CommandError::Conflict => ApiError::Conflict {
            code: "concurrent_modification",
            message: "the resource kept changing while we tried; try again".into(),
        },
        CommandError::IdempotencyMismatch => ApiError::Unprocessable {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was already used for a different request".into(),
            field: Some("Idempotency-Key".into()),
        },
        CommandError::Unavailable(d) => ApiError::Unavailable(d),
        CommandError::Internal(d) => ApiError::Internal(d),
    }
}
