//! The sandbox's HTML: plain forms, no scripts, readable on a phone.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:0 auto;padding:1rem;\
color:#222}.banner{background:#fff3cd;border:1px solid #e0c36b;padding:.4rem .6rem;\
font-size:.85rem;border-radius:.3rem}label{display:block;margin:.8rem 0 .2rem}\
input[type=text],input[type=tel],input[type=url]{width:100%;box-sizing:border-box;padding:.6rem;\
font-size:1rem}.error{color:#a00;font-size:.9rem}.buttons{display:flex;gap:.8rem;margin-top:1.2rem}\
.buttons button,button.main{flex:1;padding:.8rem;font-size:1.05rem;border:2px solid #333;\
border-radius:.4rem;background:#fff;cursor:pointer}.amount{font-size:2rem;margin:.6rem 0}\
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem .8rem}dt{color:#666}";

pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - Kazaya</title><style>{STYLE}</style></head><body>\
         <p class=\"banner\">Kazaya sandbox: test mode, no real members or money.</p>\
         <h1>{title}</h1>{body}</body></html>",
        title = esc(title),
    );
    (status, Html(html)).into_response()
}

/// A dead end: something is wrong with the request itself; never redirects anywhere.
pub(super) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(status, title, &format!("<p>{}</p>", esc(message)))
}

pub(super) async fn home() -> Response {
    page(
        StatusCode::OK,
        "Kazaya sandbox",
        "<p>A test-mode Kazaya: OAuth2 login at <code>/oauth/authorize</code>, payments at \
         <code>/v1/payments</code>, delivery attempts at <code>/sandbox/callbacks</code>.</p>",
    )
}

fn error_line(error: Option<&str>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default()
}

pub(super) fn login(status: StatusCode, txn: &str, client: &str, error: Option<&str>) -> Response {
    page(
        status,
        "Log in to Kazaya",
        &format!(
            "<p>{client} asks you to log in with your Kazaya account.</p>{error}\
             <form method=\"post\" action=\"/oauth/login\">\
             <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
             <label for=\"phone\">Mobile number</label>\
             <input type=\"tel\" id=\"phone\" name=\"phone\" autocomplete=\"tel\" required>\
             <p><small>Test mode: no SMS code is sent. New numbers register next.</small></p>\
             <div class=\"buttons\"><button type=\"submit\">Continue</button></div></form>",
            client = esc(client),
            error = error_line(error),
            txn = esc(txn),
        ),
    )
}

pub(super) struct RegisterForm<'a> {
    pub txn: &'a str,
    pub phone: &'a str,
    pub nickname: &'a str,
    pub avatar: &'a str,
    pub errors: &'a [(&'static str, String)],
}

pub(super) fn register(status: StatusCode, form: &RegisterForm<'_>) -> Response {
    let err = |field: &str| {
        form.errors
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(f, m)| {
                format!(
                    "<p class=\"error\" id=\"{f}-error\" role=\"alert\">{}</p>",
                    esc(m)
                )
            })
            .unwrap_or_default()
    };
    page(
        status,
        "Become a Kazaya member",
        &format!(
            "<p>This number is not a Kazaya member yet. Tell us a little about you.</p>\
             <form method=\"post\" action=\"/oauth/register\">\
             <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
             <label for=\"phone\">Mobile number</label>\
             <input type=\"tel\" id=\"phone\" name=\"phone\" value=\"{phone}\" required>{phone_err}\
             <label for=\"nickname\">Nickname</label>\
             <input type=\"text\" id=\"nickname\" name=\"nickname\" value=\"{nickname}\" \
             maxlength=\"32\" required>{nickname_err}\
             <label for=\"avatar\">Avatar picture URL (optional)</label>\
             <input type=\"url\" id=\"avatar\" name=\"avatar\" value=\"{avatar}\">{avatar_err}\
             <div class=\"buttons\"><button type=\"submit\">Register</button></div></form>",
            txn = esc(form.txn),
            phone = esc(form.phone),
            nickname = esc(form.nickname),
            avatar = esc(form.avatar),
            phone_err = err("phone"),
            nickname_err = err("nickname"),
            avatar_err = err("avatar"),
        ),
    )
}

pub(super) fn consent(txn: &str, client: &str, nickname: &str) -> Response {
    page(
        StatusCode::OK,
        "Allow access?",
        &format!(
            "<p>Hello {nickname}. <strong>{client}</strong> would like to know your Kazaya \
             user id, mobile number, nickname and avatar.</p>\
             <form method=\"post\" action=\"/oauth/consent\">\
             <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
             <div class=\"buttons\">\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
             </div></form>",
            nickname = esc(nickname),
            client = esc(client),
            txn = esc(txn),
        ),
    )
}

/// Minor units as a decimal amount with the currency code.
pub(super) fn money(amount: i64, currency: &str) -> String {
    let decimals = match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" => 0,
        _ => 2,
    };
    if decimals == 0 {
        return format!("{amount} {currency}");
    }
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", a / 100, a % 100)
}

pub(super) struct PayView<'a> {
    pub payment_id: &'a str,
    pub merchant: &'a str,
    pub description: &'a str,
    pub order_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub payer: &'a str,
}

pub(super) fn pay(view: &PayView<'_>) -> Response {
    page(
        StatusCode::OK,
        "Pay with Kazaya",
        &format!(
            "<p class=\"amount\">{amount}</p>\
             <dl><dt>To</dt><dd>{merchant}</dd><dt>For</dt><dd>{description}</dd>\
             <dt>Order</dt><dd>{order}</dd><dt>Paying as</dt><dd>{payer}</dd></dl>\
             <form method=\"post\" action=\"/pay/{id}\"><div class=\"buttons\">\
             <button type=\"submit\" name=\"decision\" value=\"pay\">Pay</button>\
             <button type=\"submit\" name=\"decision\" value=\"decline\">Decline</button>\
             </div></form>",
            amount = esc(&money(view.amount, view.currency)),
            merchant = esc(view.merchant),
            description = esc(view.description),
            order = esc(view.order_id),
            payer = esc(view.payer),
            id = esc(view.payment_id),
        ),
    )
}

pub(super) fn settled(status: StatusCode, what: &str, return_url: &str) -> Response {
    page(
        status,
        "Payment",
        &format!(
            "<p>{}</p><p><a href=\"{}\">Back to the shop</a></p>",
            esc(what),
            esc(return_url)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(money(1234, "CNY"), "12.34 CNY");
        assert_eq!(money(5, "CNY"), "0.05 CNY");
        assert_eq!(money(500, "JPY"), "500 JPY");
    }
}
