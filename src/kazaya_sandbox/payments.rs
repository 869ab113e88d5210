//! Payments: the merchant API (`/v1/payments`), the hosted pay page (`/pay/{id}`) and refunds.

use super::pages::{self, PayView};
use super::{callbacks, new_id, ApiFail, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Status {
    Pending,
    Succeeded,
    Failed,
    Refunded,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RefundRec {
    refund_id: String,
    amount: i64,
    reason: Option<String>,
    created_at: DateTime<Utc>,
}

pub(super) struct PaymentRec {
    id: String,
    client_id: String,
    request: CreatePayment,
    status: Status,
    refunded: i64,
    refunds: Vec<RefundRec>,
    created_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
}

/// The first answer to an idempotency key, and what it was for.
pub(super) struct StoredAnswer {
    fingerprint: [u8; 32],
    status: StatusCode,
    body: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CreatePayment {
    order_id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    description: String,
    user_id: String,
    return_url: String,
    notify_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CreateRefund {
    amount: i64,
    #[serde(default)]
    reason: Option<String>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiFail> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if key.is_empty() || key.len() > 255 {
        return Err(ApiFail::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "an Idempotency-Key header of 1 to 255 characters is required",
        )
        .field("Idempotency-Key"));
    }
    Ok(key.to_owned())
}

fn fingerprint(scope: &str, request: &impl Serialize) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    hasher.finalize().into()
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiFail> {
    serde_json::from_slice(body).map_err(|e| {
        ApiFail::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// Looks an idempotency key up: `Some(answer)` replays the first answer (or refuses a different
/// request under the same key).
fn replay(
    db: &super::Db,
    client_id: &str,
    key: &str,
    print: &[u8; 32],
) -> Option<Result<Response, ApiFail>> {
    let stored = db
        .idempotency
        .get(&(client_id.to_owned(), key.to_owned()))?;
    if stored.fingerprint != *print {
        return Some(Err(ApiFail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        )
        .field("Idempotency-Key")));
    }
    let mut response = (stored.status, Json(stored.body.clone())).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Some(Ok(response))
}

fn http_url(raw: &str) -> bool {
    reqwest::Url::parse(raw)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false)
}

fn validate(db: &super::Db, r: &CreatePayment) -> Result<(), ApiFail> {
    let bad = |code, field, message: &str| {
        Err(ApiFail::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).field(field))
    };
    if r.order_id.trim().is_empty() || r.order_id.len() > 64 {
        return bad(
            "invalid_order_id",
            "order_id",
            "order_id: 1 to 64 characters",
        );
    }
    if r.amount <= 0 || r.amount > 1_000_000_000_000 {
        return bad(
            "invalid_amount",
            "amount",
            "amount: a positive integer of minor units",
        );
    }
    if r.currency.len() != 3 || !r.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad(
            "invalid_currency",
            "currency",
            "currency: an ISO 4217 code in upper case",
        );
    }
    if r.description.chars().count() > 256 {
        return bad(
            "invalid_description",
            "description",
            "description: 256 characters at most",
        );
    }
    if !db.members.contains_key(&r.user_id) {
        return bad("unknown_user", "user_id", "user_id is not a Kazaya member");
    }
    if !http_url(&r.return_url) {
        return bad("invalid_url", "return_url", "return_url: an http(s) URL");
    }
    if !http_url(&r.notify_url) {
        return bad("invalid_url", "notify_url", "notify_url: an http(s) URL");
    }
    Ok(())
}

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiFail> {
    let client = shared
        .basic_client(&headers)
        .ok_or_else(ApiFail::unauthorized)?;
    let key = idempotency_key(&headers)?;
    let request: CreatePayment = json_body(&body)?;
    let print = fingerprint("payment", &request);
    let mut db = shared.db();
    if let Some(answer) = replay(&db, &client.client_id, &key, &print) {
        return answer;
    }
    validate(&db, &request)?;
    let id = new_id("kzp");
    let pay_url = format!("{}/pay/{id}", shared.base_url);
    let answer = json!({
        "payment_id": id,
        "status": "pending",
        "pay_url": pay_url,
        "order_id": request.order_id,
        "amount": request.amount,
        "currency": request.currency,
    });
    db.payments.insert(
        id.clone(),
        PaymentRec {
            id: id.clone(),
            client_id: client.client_id.clone(),
            request,
            status: Status::Pending,
            refunded: 0,
            refunds: Vec::new(),
            created_at: Utc::now(),
            settled_at: None,
        },
    );
    db.idempotency.insert(
        (client.client_id.clone(), key),
        StoredAnswer {
            fingerprint: print,
            status: StatusCode::CREATED,
            body: answer.clone(),
        },
    );
    tracing::info!(payment_id = %id, "kazaya sandbox: payment created");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/payments/{id}"))],
        Json(answer),
    )
        .into_response())
}

fn not_found() -> ApiFail {
    ApiFail::new(StatusCode::NOT_FOUND, "no_such_payment", "no such payment")
}

fn describe(p: &PaymentRec) -> Value {
    json!({
        "payment_id": p.id,
        "order_id": p.request.order_id,
        "amount": p.request.amount,
        "currency": p.request.currency,
        "description": p.request.description,
        "user_id": p.request.user_id,
        "status": p.status,
        "refunded_amount": p.refunded,
        "refunds": p.refunds,
        "created_at": p.created_at,
        "settled_at": p.settled_at,
    })
}

pub(super) async fn status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiFail> {
    let client = shared
        .basic_client(&headers)
        .ok_or_else(ApiFail::unauthorized)?;
    let db = shared.db();
    let payment = db
        .payments
        .get(&id)
        .filter(|p| p.client_id == client.client_id)
        .ok_or_else(not_found)?;
    let mut answer = describe(payment);
    if let Some(m) = &db.misreport {
        m.apply(&mut answer);
    }
    Ok(Json(answer))
}

/// Sandbox only: `GET /v1/payments/{id}` misreports every payment from now on, as a faulty or
/// hostile platform (or something between) might, so a client's checks can be tested. Each
/// field given replaces the real one in the answer; nothing stored changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Misreport {
    order_id: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    status: Option<Status>,
}

impl Misreport {
    fn apply(&self, answer: &mut Value) {
        if let Some(v) = &self.order_id {
            answer["order_id"] = json!(v);
        }
        if let Some(v) = self.amount {
            answer["amount"] = json!(v);
        }
        if let Some(v) = &self.currency {
            answer["currency"] = json!(v);
        }
        if let Some(v) = self.status {
            answer["status"] = json!(v);
        }
    }
}

/// `PUT /sandbox/misreport` sets the [`Misreport`]; `DELETE` ends it.
pub(super) async fn set_misreport(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<StatusCode, ApiFail> {
    let misreport: Misreport = json_body(&body)?;
    tracing::warn!(
        ?misreport,
        "kazaya sandbox: payment status will be misreported"
    );
    shared.db().misreport = Some(misreport);
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn clear_misreport(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.db().misreport = None;
    StatusCode::NO_CONTENT
}

/// The callback `data` for a payment, as it stands.
fn event_data(p: &PaymentRec, amount: i64, refund_id: Option<&str>) -> Value {
    let mut data = json!({
        "payment_id": p.id,
        "order_id": p.request.order_id,
        "amount": amount,
        "currency": p.request.currency,
        "status": p.status,
        "refunded_amount": p.refunded,
    });
    if let Some(r) = refund_id {
        data["refund_id"] = json!(r);
    }
    data
}

pub(super) async fn refund(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFail> {
    let client = shared
        .basic_client(&headers)
        .ok_or_else(ApiFail::unauthorized)?;
    let key = idempotency_key(&headers)?;
    let request: CreateRefund = json_body(&body)?;
    let print = fingerprint(&format!("refund\0{id}"), &request);
    let mut db = shared.db();
    if let Some(answer) = replay(&db, &client.client_id, &key, &print) {
        return answer;
    }
    let payment = db
        .payments
        .get_mut(&id)
        .filter(|p| p.client_id == client.client_id)
        .ok_or_else(not_found)?;
    if payment.status != Status::Succeeded {
        return Err(ApiFail::new(
            StatusCode::CONFLICT,
            "payment_not_refundable",
            format!(
                "only a succeeded payment can be refunded; this one is {}",
                payment.status.as_str()
            ),
        ));
    }
    let remaining = payment.request.amount - payment.refunded;
    if request.amount <= 0 {
        return Err(ApiFail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "amount: a positive integer of minor units",
        )
        .field("amount"));
    }
    if request.amount > remaining {
        return Err(ApiFail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_exceeds_refundable",
            format!("at most {remaining} can still be refunded"),
        )
        .field("amount"));
    }
    let refund_id = new_id("kzr");
    payment.refunded += request.amount;
    if payment.refunded == payment.request.amount {
        payment.status = Status::Refunded;
    }
    payment.refunds.push(RefundRec {
        refund_id: refund_id.clone(),
        amount: request.amount,
        reason: request.reason.clone(),
        created_at: Utc::now(),
    });
    let data = event_data(payment, request.amount, Some(&refund_id));
    let notify_url = payment.request.notify_url.clone();
    let answer = json!({
        "refund_id": refund_id,
        "payment_id": id,
        "amount": request.amount,
        "status": "succeeded",
        "refunded_amount": payment.refunded,
    });
    db.idempotency.insert(
        (client.client_id.clone(), key),
        StoredAnswer {
            fingerprint: print,
            status: StatusCode::CREATED,
            body: answer.clone(),
        },
    );
    drop(db);
    callbacks::send(&shared, notify_url, "refund.succeeded", data);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

fn mask_phone(phone: &str) -> String {
    let n = phone.chars().count();
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n && i >= 3 { '*' } else { c })
        .collect()
}

fn unknown_payment_page() -> Response {
    pages::error_page(
        StatusCode::NOT_FOUND,
        "No such payment",
        "This payment does not exist.",
    )
}

pub(super) async fn pay_page(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let db = shared.db();
    let Some(p) = db.payments.get(&id) else {
        return unknown_payment_page();
    };
    if p.status != Status::Pending {
        return pages::settled(
            StatusCode::OK,
            &format!("This payment is {}.", p.status.as_str()),
            &p.request.return_url,
        );
    }
    let payer = db
        .members
        .get(&p.request.user_id)
        .map(|m| format!("{} ({})", m.nickname, mask_phone(&m.phone)))
        .unwrap_or_else(|| p.request.user_id.clone());
    let merchant = shared
        .clients
        .get(&p.client_id)
        .map(|c| c.name.as_str())
        .unwrap_or(&p.client_id);
    pages::pay(&PayView {
        payment_id: &p.id,
        merchant,
        description: &p.request.description,
        order_id: &p.request.order_id,
        amount: p.request.amount,
        currency: &p.request.currency,
        payer: &payer,
    })
}

#[derive(Deserialize)]
pub(super) struct PayDecision {
    decision: String,
}

fn see_other(return_url: &str, id: &str, status: Status) -> Response {
    let location = match reqwest::Url::parse(return_url) {
        Ok(mut url) => {
            url.query_pairs_mut()
                .append_pair("payment_id", id)
                .append_pair("status", status.as_str());
            url.to_string()
        }
        Err(_) => return_url.to_owned(),
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => pages::settled(StatusCode::OK, "Done.", return_url),
    }
}

pub(super) async fn pay_submit(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Form(form): Form<PayDecision>,
) -> Response {
    let wanted = match form.decision.as_str() {
        "pay" => Status::Succeeded,
        "decline" => Status::Failed,
        _ => return pages::error_page(StatusCode::BAD_REQUEST, "Pay", "Choose Pay or Decline."),
    };
    let mut db = shared.db();
    let Some(p) = db.payments.get_mut(&id) else {
        return unknown_payment_page();
    };
    if p.status != Status::Pending {
        // A second click of the same button: same outcome, no second callback.
        let same =
            p.status == wanted || (wanted == Status::Succeeded && p.status == Status::Refunded);
        if same {
            return see_other(&p.request.return_url, &p.id, p.status);
        }
        return pages::settled(
            StatusCode::CONFLICT,
            &format!("This payment is already {}.", p.status.as_str()),
            &p.request.return_url,
        );
    }
    p.status = wanted;
    p.settled_at = Some(Utc::now());
    let kind = if wanted == Status::Succeeded {
        "payment.succeeded"
    } else {
        "payment.failed"
    };
    let data = event_data(p, p.request.amount, None);
    let notify_url = p.request.notify_url.clone();
    let response = see_other(&p.request.return_url, &p.id, p.status);
    drop(db);
    tracing::info!(payment_id = %id, kind, "kazaya sandbox: payment settled");
    callbacks::send(&shared, notify_url, kind, data);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_middle_of_phone_numbers() {
        assert_eq!(mask_phone("13800138000"), "138****8000");
        assert_eq!(mask_phone("1234567"), "1234567");
    }
}
