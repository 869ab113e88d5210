//! QR-code login end to end in headless Chromium: the PC's login page (`/login`) and the phone
//! app's confirm page (`/app/qr`) in two browser sessions with separate cookie jars, against the
//! real application. The phone learns the code the way a phone does: by reading the QR picture
//! shown on the PC page.

use crate::browser::{
    before_every_page, click, console_log, wait_for_attr, wait_for_js, wait_for_text, ChromeDriver,
};
use crate::common::{spawn_app, TestApp};
use fantoccini::Client;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The `#qr` picture as shown, read back through a canvas and decoded like a phone camera would.
/// None while no picture is loaded or it does not decode.
async fn read_qr(pc: &Client) -> Option<String> {
    let pixels = pc
        .execute(
            "const img = document.getElementById('qr');
             if (!img || !img.complete || img.naturalWidth === 0) return null;
             const c = document.createElement('canvas');
             c.width = img.naturalWidth;
             c.height = img.naturalHeight;
             const g = c.getContext('2d');
             g.fillStyle = '#fff';
             g.fillRect(0, 0, c.width, c.height);
             g.drawImage(img, 0, 0);
             const rgba = g.getImageData(0, 0, c.width, c.height).data;
             const hex = new Array(c.width * c.height);
             for (let i = 0; i < hex.length; i++) {
               const y = (rgba[4 * i] * 299 + rgba[4 * i + 1] * 587 + rgba[4 * i + 2] * 114) / 1000;
               hex[i] = (y | 0).toString(16).padStart(2, '0');
             }
             return {w: c.width, h: c.height, grey: hex.join('')};",
            vec![],
        )
        .await
        .expect("reading #qr through a canvas");
    if pixels.is_null() {
        return None;
    }
    let (w, h) = (
        pixels["w"].as_u64()? as usize,
        pixels["h"].as_u64()? as usize,
    );
    let grey = hex::decode(pixels["grey"].as_str()?).ok()?;
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| grey[y * w + x]);
    let grids = prepared.detect_grids();
    let (_meta, content) = grids.first()?.decode().ok()?;
    Some(content)
}

/// The login code inside what the QR says (the bare code, or an address carrying it).
fn code_in(content: &str) -> String {
    let start = content
        .find("lq1_")
        .unwrap_or_else(|| panic!("no lq1_ login code in the QR content {content:?}"));
    content[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

async fn wait_for_qr(pc: &Client) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(content) = read_qr(pc).await {
                return content;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no readable QR code in #qr within {WAIT:?}"))
}

/// The PC opens the login page and shows a code; what its QR says.
async fn pc_shows_code(app: &TestApp, pc: &Client) -> String {
    pc.goto(&format!("{}/login", app.address))
        .await
        .expect("opening /login");
    wait_for_js(
        pc,
        "#qr to show a picture",
        WAIT,
        "const img = document.getElementById('qr');
         return img.complete && img.naturalWidth > 0;",
    )
    .await;
    wait_for_attr(pc, "#status", "data-state", "waiting", WAIT).await;
    wait_for_qr(pc).await
}

/// The phone app opens the confirm page for `code` with the test user's token and sees where the
/// login comes from.
async fn phone_scans(app: &TestApp, phone: &Client, code: &str) {
    // The token lives in the page's origin: visit it once to store the token.
    phone
        .goto(&format!("{}/app/qr", app.address))
        .await
        .expect("opening /app/qr");
    phone
        .execute(
            "localStorage.setItem('latch_app_token', arguments[0]);",
            vec![json!(app.user)],
        )
        .await
        .expect("storing the app token");
    phone
        .goto(&format!("{}/app/qr#code={code}", app.address))
        .await
        .expect("opening /app/qr with the code");
    wait_for_text(phone, "#origin-ip", "127.0.0.1", WAIT).await;
    let browser = wait_for_js(
        phone,
        "#origin-browser",
        WAIT,
        "return document.getElementById('origin-browser').textContent.trim();",
    )
    .await;
    assert_ne!(browser, json!("—"), "the phone page names no browser");
}

/// Whether the QR picture is hidden behind the cover: what is at its centre is not the picture.
async fn qr_is_covered(pc: &Client) -> bool {
    pc.execute(
        "const img = document.getElementById('qr');
         const r = img.getBoundingClientRect();
         const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
         return document.getElementById('qr-box').dataset.covered === 'true'
           && !document.getElementById('qr-cover').hidden
           && top !== img;",
        vec![],
    )
    .await
    .expect("looking at the QR cover")
        == json!(true)
}

/// How many times the page asked `/qr/login` (the polling fallback) since it loaded.
async fn polls(pc: &Client) -> u64 {
    pc.execute(
        "return performance.getEntriesByType('resource')
           .filter(e => new URL(e.name).pathname === '/qr/login').length;",
        vec![],
    )
    .await
    .expect("counting polls")
    .as_u64()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_and_console_without_session_offers_login() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let browser = driver.new_session().await;

    browser
        .goto(&format!("{}/console", app.address))
        .await
        .expect("opening /console");
    wait_for_js(
        &browser,
        "the console to offer a link to /login",
        WAIT,
        "const a = document.getElementById('login-link');
         return a && !document.getElementById('signed-out').hidden
           && new URL(a.href).pathname === '/login';",
    )
    .await;
    assert_eq!(
        browser
            .execute("return document.getElementById('me').textContent;", vec![])
            .await
            .expect("reading #me"),
        json!("")
    );

    // The phone page without a code says so instead of asking the server.
    browser
        .goto(&format!("{}/app/qr", app.address))
        .await
        .expect("opening /app/qr");
    wait_for_attr(&browser, "#result", "data-result", "error", WAIT).await;
    browser.close().await.expect("closing the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_confirms_and_the_pc_lands_logged_in() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session().await;
    let phone = driver.new_session().await;

    let code = code_in(&pc_shows_code(&app, &pc).await);
    phone_scans(&app, &phone, &code).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;
    assert!(
        qr_is_covered(&pc).await,
        "a scanned code stays covered on the PC"
    );

    // Both answers are offered with equal weight.
    let looks = phone
        .execute(
            "const look = id => {
               const e = document.getElementById(id);
               const r = e.getBoundingClientRect();
               const s = getComputedStyle(e);
               return [Math.round(r.width), Math.round(r.height), s.fontSize, s.fontWeight,
                       s.borderWidth, s.backgroundColor, s.color];
             };
             return [look('confirm'), look('decline')];",
            vec![],
        )
        .await
        .expect("measuring #confirm and #decline");
    assert_eq!(
        looks[0], looks[1],
        "#confirm and #decline must look equally prominent"
    );

    click(&phone, "#confirm").await;
    wait_for_attr(&phone, "#result", "data-result", "confirmed", WAIT).await;

    wait_for_js(
        &pc,
        "the PC to land on /console",
        WAIT,
        "return location.pathname === '/console';",
    )
    .await;
    wait_for_text(&pc, "#me", "test-user", WAIT).await;

    // "Log out" revokes the session on the server; a reload finds none.
    click(&pc, "#logout").await;
    let signed_out = "return !document.getElementById('signed-out').hidden;";
    wait_for_js(&pc, "the console to show signed out", WAIT, signed_out).await;
    pc.refresh().await.expect("reloading the console");
    wait_for_js(
        &pc,
        "the reloaded console to be signed out",
        WAIT,
        signed_out,
    )
    .await;
    let (revoked,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM events WHERE event_type = 'TokenRevoked'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(revoked, 1, "the logout is a fact");

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_declines_and_the_pc_covers_the_code() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session().await;
    let phone = driver.new_session().await;

    let first = pc_shows_code(&app, &pc).await;
    phone_scans(&app, &phone, &code_in(&first)).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;

    click(&phone, "#decline").await;
    wait_for_attr(&phone, "#result", "data-result", "declined", WAIT).await;
    wait_for_attr(&pc, "#status", "data-state", "cancelled", WAIT).await;
    assert_eq!(
        pc.execute(
            "return document.getElementById('status').textContent.trim();",
            vec![]
        )
        .await
        .expect("reading #status"),
        json!("Login was declined on the phone")
    );
    assert!(qr_is_covered(&pc).await, "a declined code must be covered");
    assert!(
        !pc.current_url()
            .await
            .expect("the PC's address")
            .as_str()
            .ends_with("/console"),
        "declined, yet the PC went on"
    );

    // "New code" brings a fresh, scannable code.
    click(&pc, "#new-code").await;
    wait_for_attr(&pc, "#status", "data-state", "waiting", WAIT).await;
    assert!(!qr_is_covered(&pc).await, "the new code is not covered");
    let second = wait_for_qr(&pc).await;
    assert_ne!(
        code_in(&second),
        code_in(&first),
        "New code showed the old code"
    );

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_replaced_without_reloading_the_page() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session().await;
    let phone = driver.new_session().await;

    let first = code_in(&pc_shows_code(&app, &pc).await);
    pc.execute("window.__latch_test_marker = 'first load';", vec![])
        .await
        .expect("marking the page");

    app.clock.advance(chrono::Duration::seconds(121));

    let second = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(content) = read_qr(&pc).await {
                if code_in(&content) != first {
                    return code_in(&content);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the PC page still shows code {first} {WAIT:?} after it expired"));
    wait_for_attr(&pc, "#status", "data-state", "waiting", WAIT).await;
    assert!(!qr_is_covered(&pc).await, "the new code is covered");

    let still = pc
        .execute(
            "return [window.__latch_test_marker || null,
                     performance.getEntriesByType('navigation').length];",
            vec![],
        )
        .await
        .expect("reading the marker");
    assert_eq!(
        still,
        json!(["first load", 1]),
        "the page reloaded to get its new code"
    );

    // The new code works, and the page follows it over its new WebSocket.
    phone_scans(&app, &phone, &second).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;
    assert_eq!(
        polls(&pc).await,
        0,
        "the page fell back to polling /qr/login: its WebSocket did not carry the updates"
    );

    let console = console_log(&pc).await;
    assert!(
        !console.contains("Content Security Policy"),
        "the page broke its own Content-Security-Policy:\n{console}"
    );

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_websocket_the_page_polls_and_still_logs_in() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session().await;
    let phone = driver.new_session().await;
    // As behind a proxy that refuses WebSockets.
    before_every_page(
        &pc,
        "window.WebSocket = function () { throw new DOMException('no WebSockets here', 'SecurityError'); };",
    )
    .await;

    let code = code_in(&pc_shows_code(&app, &pc).await);
    wait_for_js(
        &pc,
        "the page's first poll of /qr/login",
        WAIT,
        "return performance.getEntriesByType('resource')
           .some(e => new URL(e.name).pathname === '/qr/login');",
    )
    .await;

    // The server paces polls by its own clock, which stands still in tests: from here it runs
    // as time would (a poll that hears 429 waits as told; one that comes before the scan has
    // reached the server sees "waiting" and the next one, a pace later, sees the scan).
    let _time_passes = time_passes(&app.clock);
    phone_scans(&app, &phone, &code).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;

    click(&phone, "#confirm").await;
    wait_for_attr(&phone, "#result", "data-result", "confirmed", WAIT).await;
    wait_for_js(
        &pc,
        "the PC to land on /console",
        WAIT,
        "return location.pathname === '/console';",
    )
    .await;
    wait_for_text(&pc, "#me", "test-user", WAIT).await;

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_speaks_the_seeds_chinese_to_a_chinese_browser() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session_speaking("zh-CN,zh").await;
    let phone = driver.new_session().await;
    let status = "return document.getElementById('status').textContent.trim();";

    let first = pc_shows_code(&app, &pc).await;
    assert_eq!(
        pc.execute("return document.documentElement.lang;", vec![])
            .await
            .expect("reading lang"),
        json!("zh-CN")
    );
    assert_eq!(
        pc.execute(status, vec![]).await.expect("reading #status"),
        json!("请使用 Latch 应用扫描二维码")
    );
    phone_scans(&app, &phone, &code_in(&first)).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;
    assert_eq!(
        pc.execute(status, vec![]).await.expect("reading #status"),
        json!("二维码已被扫描,请在手机上确认")
    );

    // The same page, asked for in English, answers in English.
    let english = reqwest::Client::new()
        .get(format!("{}/login", app.address))
        .header("Accept-Language", "en-GB,en;q=0.9,zh;q=0.5")
        .send()
        .await
        .expect("GET /login");
    assert_eq!(english.headers()["vary"], "Accept-Language");
    assert!(english.text().await.unwrap().contains("<html lang=\"en\">"));

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_with_only_the_app_logs_in_on_the_phone_then_confirms() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/lockers/users",
            &app.operator,
            Some(json!({"user_number": "13455555555", "name": "李", "password": "secret-pass-1"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let driver = ChromeDriver::start().await;
    let pc = driver.new_session().await;
    let phone = driver.new_session().await;

    let code = code_in(&pc_shows_code(&app, &pc).await);
    // No token anywhere on this phone: the page asks the person to log in.
    phone
        .goto(&format!("{}/app/qr#code={code}", app.address))
        .await
        .expect("opening /app/qr with the code");
    let form_shown = "return !document.getElementById('login-form').hidden;";
    wait_for_js(&phone, "the login form", WAIT, form_shown).await;
    let fill = |number: &'static str, password: &'static str| {
        phone.execute(
            "document.getElementById('user-number').value = arguments[0];
             document.getElementById('password').value = arguments[1];",
            vec![json!(number), json!(password)],
        )
    };
    // A wrong password is refused on the page, and nothing is locked.
    fill("13455555555", "not-the-password").await.unwrap();
    click(&phone, "#log-in").await;
    wait_for_attr(&phone, "#result", "data-result", "error", WAIT).await;
    fill("13455555555", "secret-pass-1").await.unwrap();
    click(&phone, "#log-in").await;
    wait_for_text(&phone, "#origin-ip", "127.0.0.1", WAIT).await;
    wait_for_attr(&pc, "#status", "data-state", "scanned", WAIT).await;
    click(&phone, "#confirm").await;
    wait_for_attr(&phone, "#result", "data-result", "confirmed", WAIT).await;
    wait_for_js(
        &pc,
        "the PC to land on /console",
        WAIT,
        "return location.pathname === '/console';",
    )
    .await;
    wait_for_text(&pc, "#me", "locker:13455555555", WAIT).await;

    phone.close().await.expect("closing the phone's session");
    pc.close().await.expect("closing the PC's session");
}

/// Moves `clock` on with real time (in 250 ms steps) until dropped.
fn time_passes(clock: &latch_domain::clock::ManualClock) -> TimePasses {
    let clock = clock.clone();
    TimePasses(tokio::spawn(async move {
        let step = std::time::Duration::from_millis(250);
        loop {
            tokio::time::sleep(step).await;
            clock.advance(chrono::Duration::milliseconds(250));
        }
    }))
}

struct TimePasses(tokio::task::JoinHandle<()>);

impl Drop for TimePasses {
    fn drop(&mut self) {
        self.0.abort();
    }
}
