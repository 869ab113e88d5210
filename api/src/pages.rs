//! The web pages of QR-code login: the PC's login page (`/login`), the phone app's confirm page
//! (`/app/qr`, a stand-in for the native app's screen) and the logged-in view (`/console`).
//!
//! Plain HTML with vanilla JS and one stylesheet, compiled into the binary from `web/`; no build
//! step and no external resources. Scripts and styles are separate same-origin files, so the
//! Content-Security-Policy needs no `'unsafe-inline'`: an injected `<script>` or `style=""` does
//! nothing. Pages are never cached (`no-store`) and may not be framed (`X-Frame-Options: DENY`,
//! `frame-ancestors 'none'`): a framed QR login page invites clickjacking, and a cached one would
//! show a stale code.

use crate::AppState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// What a page may load: its own scripts, styles, pictures (the QR arrives as a `blob:` URL),
/// and its own origin over fetch and WebSocket. Nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const LOGIN_HTML: &str = include_str!("../../web/login.html");
const APP_HTML: &str = include_str!("../../web/app.html");
const CONSOLE_HTML: &str = include_str!("../../web/console.html");
const LOGIN_JS: &str = include_str!("../../web/login.js");
const APP_JS: &str = include_str!("../../web/app.js");
const CONSOLE_JS: &str = include_str!("../../web/console.js");
const CSS: &str = include_str!("../../web/latch.css");

pub fn router() -> Router<AppState> {
    routes()
}

/// The routes, for any state (they use none).
fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/login", get(login_page))
        .route("/app/qr", get(|| async { page(APP_HTML) }))
        .route("/console", get(|| async { page(CONSOLE_HTML) }))
        .route("/web/login.js", get(|| async { script(LOGIN_JS) }))
        .route("/web/app.js", get(|| async { script(APP_JS) }))
        .route("/web/console.js", get(|| async { script(CONSOLE_JS) }))
        .route(
            "/web/latch.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}

/// The login page in the language the browser prefers: the seed's Chinese, or English. The
/// page's `lang` carries the choice; `login.js` words every prompt by it.
async fn login_page(headers: axum::http::HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let html = match language(accept) {
        Language::Chinese => LOGIN_HTML.replacen("<html lang=\"en\">", "<html lang=\"zh-CN\">", 1),
        Language::English => LOGIN_HTML.to_owned(),
    };
    ([(header::VARY, "Accept-Language")], page(html))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Chinese,
    English,
}

/// The better of Chinese and English by `Accept-Language` weights (RFC 9110 section 12.5.4);
/// ties go to the one listed first, and a browser that names neither gets the seed's Chinese.
fn language(accept: &str) -> Language {
    let mut best: Option<(f32, Language)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let lang = match primary {
            "zh" => Language::Chinese,
            "en" => Language::English,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map_or(Language::Chinese, |(_, l)| l)
}

fn page(html: impl IntoResponse) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
}

fn script(js: &'static str) -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", js)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Test support: a page's HTML has nothing inline that its Content-Security-Policy would block,
/// no absolute URL, and its script never builds DOM from markup strings.
#[cfg(test)]
pub(crate) fn assert_nothing_inline(html: &str, js: &str) {
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/web/"), "inline script: {tag}");
    }
    assert!(!html.contains(" style="), "inline style attribute");
    assert!(!html.contains("<style"), "inline style element");
    for tag in html.split('<').skip(1).filter(|t| !t.starts_with("!--")) {
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        let handler = tag.split_whitespace().skip(1).find(|a| a.starts_with("on"));
        assert!(handler.is_none(), "inline event handler in <{tag}>");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!js.contains("innerHTML"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_preferred_of_chinese_and_english_wins() {
        use super::{language, Language::*};
        assert_eq!(language("zh-CN,zh;q=0.9,en;q=0.8"), Chinese);
        assert_eq!(language("en-US,en;q=0.9"), English);
        assert_eq!(language("en;q=0.5, zh-TW;q=0.8"), Chinese);
        assert_eq!(language("fr-FR, en;q=0.3"), English);
        assert_eq!(language("de"), Chinese);
        assert_eq!(language(""), Chinese);
        assert_eq!(language("zh;q=0, en;q=0.1"), English);
    }

    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> axum::response::Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(res: &'a axum::response::Response, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn pages_are_uncached_unframeable_and_locked_down() {
        for path in ["/login", "/app/qr", "/console"] {
            let res = get(path).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
            assert_eq!(header(&res, "cache-control"), "no-store");
            assert_eq!(header(&res, "x-frame-options"), "DENY");
            assert_eq!(header(&res, "referrer-policy"), "no-referrer");
            let csp = header(&res, "content-security-policy");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe-inline"), "{csp}");
        }
    }

    #[test]
    fn pages_have_nothing_inline_the_policy_would_block() {
        for html in [LOGIN_HTML, APP_HTML, CONSOLE_HTML] {
            for (i, _) in html.match_indices("<script") {
                let tag = &html[i..i + html[i..].find('>').unwrap()];
                assert!(tag.contains(" src=\"/web/"), "inline script: {tag}");
            }
            assert!(!html.contains(" style="), "inline style attribute");
            assert!(!html.contains("<style"), "inline style element");
            for tag in html.split('<').skip(1) {
                let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
                let handler = tag.split_whitespace().skip(1).find(|a| a.starts_with("on"));
                assert!(handler.is_none(), "inline event handler in <{tag}>");
            }
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }

    #[tokio::test]
    async fn every_script_and_stylesheet_a_page_names_is_served() {
        for html in [LOGIN_HTML, APP_HTML, CONSOLE_HTML] {
            for (i, _) in html.match_indices("\"/web/") {
                let path = &html[i + 1..i + 1 + html[i + 1..].find('"').unwrap()];
                let res = get(path).await;
                assert_eq!(res.status(), StatusCode::OK, "{path}");
                let kind = header(&res, "content-type");
                assert!(
                    kind.starts_with("text/javascript") || kind.starts_with("text/css"),
                    "{path}: {kind}"
                );
            }
        }
    }
}
