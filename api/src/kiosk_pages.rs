//! The locker's own screen: `/lockers/kiosk/{site}` (`web/kiosk.html` + `kiosk.js`).
//!
//! A locker may be its own terminal. The kiosk page serves two kinds of people at one site:
//!
//! - a compartment holder logs in with user number and password (`POST /lockers/login`); the
//!   Bearer token lives only in the page's memory (never a cookie, never storage), the page
//!   lists their compartments at this site, and a deposit opens the door (the `locker-doors`
//!   worker, from `ParcelDeposited`). Leaving, or a short idle time, revokes the token
//!   (`POST /logout`) and returns to the start screen.
//! - a recipient collects with the compartment number and pickup code. They have no account, so
//!   the screen itself is the caller: a kiosk token (role `kiosk`, subject `kiosk:<site>`,
//!   issued by `latch token --role kiosk --subject kiosk:<site>`), which may only collect at its
//!   own site (see [`crate::lockers::parcels::collect`]); its wrong codes count against the
//!   kiosk's pickup limit. The screen is set up once by opening
//!   `/lockers/kiosk/<site>#kiosk=<token>`: the script keeps the token in `localStorage` and
//!   removes it from the address bar. The fragment never reaches the server or its logs.
//!
//! No API of its own: the page only uses existing routes.

use crate::error::ApiError;
use crate::locker_pages::{locked_down, script_of};
use crate::AppState;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use latch_domain::device::SiteCode;

const KIOSK_HTML: &str = include_str!("../../web/kiosk.html");
const KIOSK_JS: &str = include_str!("../../web/kiosk.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lockers/kiosk/{site}", get(page))
        .route("/web/kiosk.js", get(|| async { script_of(KIOSK_JS) }))
}

/// The kiosk page of one site (the script reads the site from the address).
async fn page(Path(site): Path<String>) -> Response {
    match SiteCode::parse("site", &site) {
        Ok(_) => locked_down(KIOSK_HTML),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_nothing_inline_the_policy_would_block() {
        crate::pages::assert_nothing_inline(KIOSK_HTML, KIOSK_JS);
    }

    #[tokio::test]
    async fn the_page_is_locked_down_and_names_a_real_site() {
        let res = page(Path("610091".into())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(!csp.contains("unsafe-inline"));
        let bad = page(Path("no such site!".into())).await;
        assert_eq!(bad.status(), 400);
    }
}
