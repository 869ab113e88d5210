//! Members and the OAuth2 authorization-code flow (RFC 6749 section 4.1, PKCE per RFC 7636).

use super::pages::{self, RegisterForm};
use super::{basic_credentials, bearer, new_id, random_token, ApiFail, Shared};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The scopes the sandbox knows.
const SCOPES: &[&str] = &["profile"];

#[derive(Debug, Clone, Serialize)]
pub(super) struct MemberRec {
    pub user_id: String,
    pub phone: String,
    pub nickname: String,
    pub avatar: Option<String>,
}

/// A login between `/oauth/authorize` and the redirect, carried by the pages' hidden `txn`.
pub(super) struct PendingLogin {
    client_id: String,
    redirect_uri: String,
    /// Whether the request named `redirect_uri` (then the token request must repeat it).
    redirect_given: bool,
    state: Option<String>,
    scope: String,
    challenge: Option<String>,
    member: Option<String>,
    expires: Instant,
}

pub(super) struct CodeRec {
    client_id: String,
    redirect_uri: String,
    redirect_given: bool,
    member: String,
    scope: String,
    challenge: Option<String>,
    expires: Instant,
    /// The access token this code was exchanged for, once it has been.
    redeemed: Option<String>,
}

pub(super) struct TokenRec {
    member: String,
    expires: Instant,
}

#[derive(Deserialize)]
pub(super) struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The redirect carrying an RFC 6749 4.1.2.1 error (only to a registered URI).
fn redirect_error(
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let Ok(mut url) = reqwest::Url::parse(redirect_uri) else {
        return pages::error_page(StatusCode::BAD_REQUEST, "Login failed", description);
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error);
        q.append_pair("error_description", description);
        if let Some(state) = state {
            q.append_pair("state", state);
        }
    }
    found(url.as_str())
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => pages::error_page(StatusCode::BAD_REQUEST, "Login failed", "bad redirect URI"),
    }
}

/// A PKCE S256 challenge is base64url(SHA-256(verifier)) without padding: 43 characters.
fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    let Some(client) = p.client_id.as_deref().and_then(|id| shared.clients.get(id)) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "The application that sent you here is not registered with Kazaya (client_id).",
        );
    };
    let (redirect_uri, redirect_given) = match p.redirect_uri.as_deref() {
        Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => (uri.to_owned(), true),
        Some(_) => {
            return pages::error_page(
                StatusCode::BAD_REQUEST,
                "Unregistered redirect",
                "The address this application wants you sent back to is not registered with \
                 Kazaya (redirect_uri), so you are not sent there.",
            )
        }
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => {
            return pages::error_page(
                StatusCode::BAD_REQUEST,
                "Missing redirect",
                "The application did not say where to send you back (redirect_uri).",
            )
        }
    };
    let state = p.state.as_deref();
    if p.response_type.as_deref() != Some("code") {
        return redirect_error(
            &redirect_uri,
            "unsupported_response_type",
            "only response_type=code is supported",
            state,
        );
    }
    let scope = p
        .scope
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("profile");
    if let Some(unknown) = scope.split(' ').find(|s| !SCOPES.contains(s)) {
        return redirect_error(
            &redirect_uri,
            "invalid_scope",
            &format!("unknown scope {unknown:?}"),
            state,
        );
    }
    let challenge = match (
        p.code_challenge.as_deref(),
        p.code_challenge_method.as_deref(),
    ) {
        (None, None) => None,
        (Some(c), Some("S256")) if valid_challenge(c) => Some(c.to_owned()),
        (Some(_), Some("S256")) => {
            return redirect_error(
                &redirect_uri,
                "invalid_request",
                "code_challenge must be 43 base64url characters",
                state,
            )
        }
        _ => return redirect_error(
            &redirect_uri,
            "invalid_request",
            "PKCE needs code_challenge with code_challenge_method=S256 (plain is not supported)",
            state,
        ),
    };
    let txn = random_token();
    let now = Instant::now();
    let mut db = shared.db();
    db.logins.retain(|_, l| l.expires > now);
    db.logins.insert(
        txn.clone(),
        PendingLogin {
            client_id: client.client_id.clone(),
            redirect_uri,
            redirect_given,
            state: p.state.clone(),
            scope: scope.to_owned(),
            challenge,
            member: None,
            expires: now + shared.settings.login_ttl,
        },
    );
    drop(db);
    pages::login(StatusCode::OK, &txn, &client.name, None)
}

fn expired_login() -> Response {
    pages::error_page(
        StatusCode::BAD_REQUEST,
        "Login expired",
        "This login is no longer valid. Go back to the application and start again.",
    )
}

/// A phone number in a canonical form: digits with an optional leading `+`, 6 to 15 digits;
/// spaces, dashes and brackets are dropped.
fn normalize_phone(raw: &str) -> Option<String> {
    let kept: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = kept.strip_prefix('+').unwrap_or(&kept);
    let ok = (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(kept)
}

fn client_name(shared: &Shared, client_id: &str) -> String {
    shared
        .clients
        .get(client_id)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| client_id.to_owned())
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    txn: String,
    phone: String,
}

pub(super) async fn login(State(shared): State<Arc<Shared>>, Form(f): Form<LoginForm>) -> Response {
    let mut db = shared.db();
    let Some(login) = db.logins.get(&f.txn).filter(|l| l.expires > Instant::now()) else {
        return expired_login();
    };
    let client_id = login.client_id.clone();
    let Some(phone) = normalize_phone(&f.phone) else {
        return pages::login(
            StatusCode::UNPROCESSABLE_ENTITY,
            &f.txn,
            &client_name(&shared, &client_id),
            Some("Enter a mobile number: 6 to 15 digits, optionally starting with +."),
        );
    };
    let Some(member_id) = db.by_phone.get(&phone).cloned() else {
        drop(db);
        return pages::register(
            StatusCode::OK,
            &RegisterForm {
                txn: &f.txn,
                phone: &phone,
                nickname: "",
                avatar: "",
                errors: &[],
            },
        );
    };
    if let Some(login) = db.logins.get_mut(&f.txn) {
        login.member = Some(member_id.clone());
    }
    if db
        .consents
        .contains(&(member_id.clone(), client_id.clone()))
    {
        return finish(&shared, &mut db, &f.txn);
    }
    let nickname = db
        .members
        .get(&member_id)
        .map(|m| m.nickname.clone())
        .unwrap_or_default();
    drop(db);
    pages::consent(&f.txn, &client_name(&shared, &client_id), &nickname)
}

#[derive(Deserialize)]
pub(super) struct RegisterFields {
    txn: String,
    phone: String,
    nickname: String,
    #[serde(default)]
    avatar: String,
}

fn check_avatar(raw: &str) -> Result<Option<String>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > 2048 {
        return Err("The avatar URL is too long (2048 characters at most).".into());
    }
    match reqwest::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some(url.to_string()))
        }
        _ => Err("The avatar must be an http or https URL of a picture.".into()),
    }
}

pub(super) async fn register(
    State(shared): State<Arc<Shared>>,
    Form(f): Form<RegisterFields>,
) -> Response {
    let mut db = shared.db();
    let Some(login) = db.logins.get(&f.txn).filter(|l| l.expires > Instant::now()) else {
        return expired_login();
    };
    let client_id = login.client_id.clone();
    let mut errors: Vec<(&'static str, String)> = Vec::new();
    let phone = normalize_phone(&f.phone);
    match &phone {
        None => errors.push((
            "phone",
            "Enter a mobile number: 6 to 15 digits, optionally starting with +.".into(),
        )),
        Some(p) if db.by_phone.contains_key(p) => errors.push((
            "phone",
            "This number is already a member; go back and log in.".into(),
        )),
        Some(_) => {}
    }
    let nickname = f.nickname.trim();
    let nickname_chars = nickname.chars().count();
    if nickname_chars == 0 || nickname_chars > 32 || nickname.chars().any(char::is_control) {
        errors.push((
            "nickname",
            "Choose a nickname of 1 to 32 characters.".into(),
        ));
    }
    let avatar = check_avatar(&f.avatar).unwrap_or_else(|e| {
        errors.push(("avatar", e));
        None
    });
    if !errors.is_empty() {
        drop(db);
        return pages::register(
            StatusCode::UNPROCESSABLE_ENTITY,
            &RegisterForm {
                txn: &f.txn,
                phone: &f.phone,
                nickname: &f.nickname,
                avatar: &f.avatar,
                errors: &errors,
            },
        );
    }
    let phone = phone.unwrap_or_default();
    let member = MemberRec {
        user_id: new_id("kzu"),
        phone: phone.clone(),
        nickname: nickname.to_owned(),
        avatar,
    };
    tracing::info!(user_id = %member.user_id, "kazaya sandbox: member registered");
    db.by_phone.insert(phone, member.user_id.clone());
    let user_id = member.user_id.clone();
    db.members.insert(user_id.clone(), member);
    if let Some(login) = db.logins.get_mut(&f.txn) {
        login.member = Some(user_id);
    }
    drop(db);
    pages::consent(&f.txn, &client_name(&shared, &client_id), nickname)
}

#[derive(Deserialize)]
pub(super) struct ConsentForm {
    txn: String,
    decision: String,
}

pub(super) async fn consent(
    State(shared): State<Arc<Shared>>,
    Form(f): Form<ConsentForm>,
) -> Response {
    let mut db = shared.db();
    let Some(login) = db.logins.get(&f.txn).filter(|l| l.expires > Instant::now()) else {
        return expired_login();
    };
    let Some(member) = login.member.clone() else {
        return expired_login();
    };
    match f.decision.as_str() {
        "allow" => {
            let client_id = login.client_id.clone();
            db.consents.insert((member, client_id));
            finish(&shared, &mut db, &f.txn)
        }
        "deny" => {
            let login = db.logins.remove(&f.txn);
            let Some(login) = login else {
                return expired_login();
            };
            redirect_error(
                &login.redirect_uri,
                "access_denied",
                "the member declined",
                login.state.as_deref(),
            )
        }
        _ => pages::error_page(
            StatusCode::BAD_REQUEST,
            "Allow access?",
            "Choose Allow or Deny.",
        ),
    }
}

/// Ends a login: a fresh single-use code, and the browser sent back with it.
fn finish(shared: &Shared, db: &mut super::Db, txn: &str) -> Response {
    let Some(login) = db.logins.remove(txn) else {
        return expired_login();
    };
    let Some(member) = login.member else {
        return expired_login();
    };
    let now = Instant::now();
    db.codes.retain(|_, c| c.expires > now);
    let code = random_token();
    db.codes.insert(
        code.clone(),
        CodeRec {
            client_id: login.client_id,
            redirect_uri: login.redirect_uri.clone(),
            redirect_given: login.redirect_given,
            member,
            scope: login.scope,
            challenge: login.challenge,
            expires: now + shared.settings.code_ttl,
            redeemed: None,
        },
    );
    let Ok(mut url) = reqwest::Url::parse(&login.redirect_uri) else {
        return pages::error_page(StatusCode::BAD_REQUEST, "Login failed", "bad redirect URI");
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(state) = &login.state {
            q.append_pair("state", state);
        }
    }
    found(url.as_str())
}

/// An RFC 6749 section 5.2 error.
fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kazaya\""),
        );
    }
    response
}

fn invalid_grant(description: &str) -> Response {
    token_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let client = if let Some((id, secret)) = basic_credentials(&headers) {
        match shared.check_client(&id, &secret) {
            Some(c) if form.get("client_id").is_none_or(|f| *f == c.client_id) => c,
            _ => {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed",
                )
            }
        }
    } else {
        match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => match shared.check_client(id, secret) {
                Some(c) => c,
                None => {
                    return token_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "client authentication failed",
                    )
                }
            },
            _ => {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "authenticate with HTTP Basic or client_id and client_secret",
                )
            }
        }
    };
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=authorization_code is supported",
        );
    }
    let Some(code) = form.get("code") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is missing",
        );
    };
    let now = Instant::now();
    let mut db = shared.db();
    let Some(rec) = db.codes.get_mut(code.as_str()) else {
        return invalid_grant("unknown or expired code");
    };
    if rec.expires <= now {
        return invalid_grant("unknown or expired code");
    }
    if rec.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if let Some(token) = rec.redeemed.clone() {
        // RFC 6749 4.1.2: a code used twice revokes what it granted, and is forgotten.
        db.tokens.remove(&token);
        db.codes.remove(code.as_str());
        tracing::warn!("kazaya sandbox: authorization code replayed; its token is revoked");
        return invalid_grant("the code has already been used");
    }
    match form.get("redirect_uri") {
        Some(uri) if *uri != rec.redirect_uri => {
            return invalid_grant("redirect_uri differs from the authorization request")
        }
        None if rec.redirect_given => {
            return invalid_grant("redirect_uri is required: the authorization request had one")
        }
        _ => {}
    }
    match (&rec.challenge, form.get("code_verifier")) {
        (None, None) => {}
        (None, Some(_)) => return invalid_grant("code_verifier without a code_challenge"),
        (Some(_), None) => return invalid_grant("code_verifier is required"),
        (Some(challenge), Some(verifier)) => {
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if !valid_verifier(verifier)
                || !super::constant_eq(computed.as_bytes(), challenge.as_bytes())
            {
                return invalid_grant("code_verifier does not match the code_challenge");
            }
        }
    }
    let access_token = random_token();
    rec.redeemed = Some(access_token.clone());
    rec.expires = now + shared.settings.code_ttl; // kept a little longer to recognise replays
    let member = rec.member.clone();
    let scope = rec.scope.clone();
    db.tokens.retain(|_, t| t.expires > now);
    db.tokens.insert(
        access_token.clone(),
        TokenRec {
            member: member.clone(),
            expires: now + shared.settings.access_token_ttl,
        },
    );
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": shared.settings.access_token_ttl.as_secs(),
            "scope": scope,
            "kazaya_user_id": member,
        })),
    )
        .into_response()
}

pub(super) async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let member = bearer(&headers).and_then(|token| {
        let db = shared.db();
        let rec = db
            .tokens
            .get(token)
            .filter(|t| t.expires > Instant::now())?;
        db.members.get(&rec.member).cloned()
    });
    match member {
        Some(m) => Json(m).into_response(),
        None => {
            let mut response = ApiFail::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "a valid Bearer access token is required",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_avatars() {
        assert_eq!(
            normalize_phone("138 0013-8000").as_deref(),
            Some("13800138000")
        );
        assert_eq!(
            normalize_phone("+86 13800138000").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(normalize_phone("12345"), None);
        assert_eq!(normalize_phone("1380013800a"), None);
        assert_eq!(check_avatar(""), Ok(None));
        assert!(check_avatar("javascript:alert(1)").is_err());
        assert!(check_avatar("https://img.example/a.png").unwrap().is_some());
    }

    #[test]
    fn pkce_shapes() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(valid_challenge(&challenge));
        assert!(valid_verifier(verifier));
    }
}
