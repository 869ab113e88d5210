//! How a QR endpoint fails: [`QrFail`] answers in the seed's shape (`statusflag` -1 or -2) with
//! our error object, and the refusals the endpoints share.

use crate::error::ApiError;
use axum::response::{IntoResponse, Response};
use axum::Json;
use latch_domain::device::ParseError;
use latch_domain::qr_login::{PageStatus, QrLoginError};
use latch_domain::store::CommandError;
use serde_json::json;
use std::time::Duration;

/// A QR endpoint's failure, in the seed's shape plus our error object.
#[derive(Debug)]
pub enum QrFail {
    /// Refused or faulted: `statusflag: -1`.
    Error(ApiError),
    /// The code is no longer usable: `statusflag: -2`, with which way it ended.
    Gone(QrLoginError),
}

impl From<ApiError> for QrFail {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl From<ParseError> for QrFail {
    fn from(e: ParseError) -> Self {
        Self::Error(e.into())
    }
}

impl From<sqlx::Error> for QrFail {
    fn from(e: sqlx::Error) -> Self {
        Self::Error(e.into())
    }
}

impl From<CommandError<QrLoginError>> for QrFail {
    fn from(e: CommandError<QrLoginError>) -> Self {
        match e {
            CommandError::Rejected(e) if e.statusflag() == -2 => Self::Gone(e),
            CommandError::Rejected(e) => Self::Error(refusal(e)),
            other => Self::Error(crate::error::from_command_error(other)),
        }
    }
}

pub(super) fn refusal(e: QrLoginError) -> ApiError {
    use QrLoginError as E;
    let (code, message) = (e.code(), e.to_string());
    match e {
        E::UnknownCode => ApiError::NotFound { code, message },
        E::NotLockOwner | E::WrongBrowser => ApiError::Forbidden(message),
        _ => ApiError::Conflict { code, message },
    }
}

impl IntoResponse for QrFail {
    fn into_response(self) -> Response {
        match self {
            Self::Gone(e) => {
                let state = match e {
                    QrLoginError::Cancelled => PageStatus::Cancelled,
                    QrLoginError::AlreadyRedeemed => PageStatus::Redeemed,
                    _ => PageStatus::Expired,
                };
                Json(json!({
                    "statusflag": -2,
                    "state": state.as_str(),
                    "error": { "code": e.code(), "message": e.to_string() },
                }))
                .into_response()
            }
            Self::Error(e) => {
                let (status, body) = e.to_body();
                let mut value = json!({ "statusflag": -1, "error": body.error });
                if status.is_server_error() {
                    value["errorCode"] = json!(-1);
                    value["message"] = json!(body.error.message);
                }
                // Forbidden carries a generic code in ApiError; keep the precise one.
                if let ApiError::Forbidden(_) = e {
                    value["error"]["code"] = json!(forbidden_code(&body.error.message));
                }
                let mut response = (status, Json(value)).into_response();
                e.add_headers(&mut response);
                response
            }
        }
    }
}

fn forbidden_code(message: &str) -> &'static str {
    if message == QrLoginError::NotLockOwner.to_string() {
        QrLoginError::NotLockOwner.code()
    } else if message == QrLoginError::WrongBrowser.to_string() {
        QrLoginError::WrongBrowser.code()
    } else {
        "forbidden"
    }
}

pub(super) fn too_many(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::TooManyRequests {
        code: "rate_limited",
        message: format!("too many {what}; try again in {secs} s"),
        retry_after_secs: secs,
    }
}
