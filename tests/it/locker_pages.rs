//! The compartment holder's phone pages (`/lockers/app`) in headless Chromium at 390x844,
//! against the running service: issue 5's two worked examples driven through the pages (the
//! second with the courier company's authorizer sandbox over real HTTP), the login refusals,
//! and the cookie session the pages run on.

use crate::browser::{click, wait_for_attr, wait_for_js, ChromeDriver};
use crate::common::*;
use crate::lockers::{created, holder_of, reserve, token, user, world, PASSWORD, SECRET_A, SITE};
use fantoccini::{Client, Locator};
use latch::authorizer_sandbox::{parse_couriers, AuthorizerSandbox, AuthorizerSandboxSettings};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(25);
const NOWHERE: &str = "http://127.0.0.1:9/grants";

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("finding {css}: {e}"));
    field.clear().await.ok();
    field.send_keys(text).await.expect("typing");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("finding {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until the page shows `screen` (login, home, grant-user, pick-authorizer, confirm,
/// status).
async fn wait_for_screen(client: &Client, screen: &str) {
    wait_for_attr(client, "body", "data-screen", screen, WAIT).await;
}

/// Waits until some element matching `css` contains `text`.
async fn wait_for_contains(client: &Client, css: &str, text: &str) {
    wait_for_js(
        client,
        &format!("{css} to contain {text:?}"),
        WAIT,
        &format!(
            "return [...document.querySelectorAll({})].some((e) => e.textContent.includes({}));",
            json!(css),
            json!(text)
        ),
    )
    .await;
}

async fn phone(driver: &ChromeDriver, app: &TestApp) -> Client {
    let phone = driver.new_session().await;
    phone
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    phone
        .goto(&format!("{}/lockers/app", app.address))
        .await
        .expect("opening the locker page");
    wait_for_screen(&phone, "login").await;
    phone
}

async fn log_in(phone: &Client, number: &str, password: &str) {
    fill(phone, "#user-number", number).await;
    fill(phone, "#password", password).await;
    click(phone, "#login-submit").await;
}

async fn fits_the_phone(phone: &Client) {
    let fits = phone
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "the page fits a phone's width");
}

async fn compartments_of(app: &TestApp, token: &str) -> Vec<Value> {
    app.get("/lockers/me/compartments", token)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn worked_example_1_on_the_phone_li_grants_large_compartment_01_to_13499996666() {
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    let driver = ChromeDriver::start().await;

    // Li logs in, reserves a large compartment at 610091A01 and gets 01.
    let li = phone(&driver, &app).await;
    log_in(&li, "13455555555", PASSWORD).await;
    wait_for_screen(&li, "home").await;
    assert!(text_of(&li, "#who").await.contains("李 · 13455555555"));
    fill(&li, "#reserve-site", SITE).await;
    li.find(Locator::Css("#reserve-size"))
        .await
        .unwrap()
        .select_by_value("large")
        .await
        .unwrap();
    click(&li, "#reserve-submit").await;
    let row = "#compartments li[data-compartment=\"610091A01:01\"]";
    wait_for_js(
        &li,
        "compartment 01 listed",
        WAIT,
        &format!("return !!document.querySelector({});", json!(row)),
    )
    .await;
    let listed = text_of(&li, row).await;
    for part in [
        "610091A01 西湖驿站",
        "格口 01",
        "大 · large",
        "已预约 · reserved",
    ] {
        assert!(listed.contains(part), "{part} in {listed}");
    }
    fits_the_phone(&li).await;

    // Grant to a user: the receiver's number, the confirm screen, the result.
    click(&li, &format!("{row} button.grant-user")).await;
    wait_for_screen(&li, "grant-user").await;
    fill(&li, "#receiver", "13499996666").await;
    click(&li, "#receiver-next").await;
    wait_for_screen(&li, "confirm").await;
    assert!(text_of(&li, "#confirm-to").await.contains("13499996666"));
    assert!(text_of(&li, "#confirm-compartment")
        .await
        .contains("格口 01"));
    fits_the_phone(&li).await;
    click(&li, "#confirm-yes").await;
    wait_for_screen(&li, "status").await;
    wait_for_attr(&li, "#grant-status", "data-status", "completed", WAIT).await;
    wait_for_attr(&li, "#grant-holder", "data-holder", "13499996666", WAIT).await;

    // The read model and the API agree: 13499996666 holds it.
    eventually(WAIT, "13499996666 holds 01 in the read model", || async {
        (holder_of(&app, "610091A01:01").await.as_deref() == Some("13499996666")).then_some(())
    })
    .await;
    let receiver = token(&app, "13499996666").await;
    let held = compartments_of(&app, &receiver).await;
    assert_eq!(held[0]["compartment_id"], "610091A01:01", "{held:?}");

    // The receiver's phone: the compartment is theirs and the inbox says to come.
    let zhang = phone(&driver, &app).await;
    log_in(&zhang, "13499996666", PASSWORD).await;
    wait_for_screen(&zhang, "home").await;
    wait_for_contains(&zhang, row, "格口 01").await;
    wait_for_contains(
        &zhang,
        "#inbox li[data-kind=come_use]",
        "13455555555 已将格口 610091A01:01 的使用权授予您，请前往投递",
    )
    .await;

    // Li's phone: back home, 01 is gone and the inbox has the confirmation.
    click(&li, "#status-home").await;
    wait_for_screen(&li, "home").await;
    wait_for_contains(
        &li,
        "#inbox li[data-kind=grant_confirmed]",
        "格口 610091A01:01 已授予 13499996666",
    )
    .await;
    wait_for_js(
        &li,
        "01 gone from Li's list",
        WAIT,
        "return !document.getElementById('no-compartments').hidden;",
    )
    .await;
    li.close().await.ok();
    zhang.close().await.ok();
}

#[tokio::test]
async fn worked_example_2_on_the_phone_zheng_grants_via_company_a_whose_sandbox_picks_wang() {
    let app = spawn_app().await;
    // Company A's system, over real HTTP: Zhao is on its roster but off duty, Wang is on duty.
    let mut settings = AuthorizerSandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        "0001",
        SECRET_A,
        &app.address,
    );
    settings.roster = parse_couriers(&["13477777777=赵".into(), "13466666666=王".into()]).unwrap();
    settings.roster[0].on_duty = false;
    settings.clock = std::sync::Arc::new(app.clock.clone());
    let sandbox = AuthorizerSandbox::build(settings).await.unwrap();
    let endpoint = sandbox.endpoint();
    let sandbox_url = sandbox.base_url().to_owned();
    let stop = app.shutdown.clone();
    tokio::spawn(sandbox.run_until_stopped(async move { stop.cancelled().await }));
    world(&app, &endpoint).await;
    let zheng_token = token(&app, "13488888888").await;
    assert_eq!(reserve(&app, &zheng_token).await, "610091A01:01");

    let driver = ChromeDriver::start().await;
    let zheng = phone(&driver, &app).await;
    log_in(&zheng, "13488888888", PASSWORD).await;
    wait_for_screen(&zheng, "home").await;
    let row = "#compartments li[data-compartment=\"610091A01:01\"]";
    wait_for_contains(&zheng, row, "格口 01").await;

    // Both active authorizers are listed with their Chinese names; Zheng picks company A.
    click(&zheng, &format!("{row} button.grant-authorizer")).await;
    wait_for_screen(&zheng, "pick-authorizer").await;
    wait_for_contains(
        &zheng,
        "#authorizers li[data-authorizer=\"0001\"]",
        "快递公司A",
    )
    .await;
    wait_for_contains(
        &zheng,
        "#authorizers li[data-authorizer=\"0002\"]",
        "快递公司B",
    )
    .await;
    fits_the_phone(&zheng).await;
    click(&zheng, "#authorizers li[data-authorizer=\"0001\"] button").await;
    wait_for_screen(&zheng, "confirm").await;
    assert!(text_of(&zheng, "#confirm-to").await.contains("快递公司A"));
    click(&zheng, "#confirm-yes").await;

    // The status screen follows the request until company A's callback makes Wang the holder.
    wait_for_screen(&zheng, "status").await;
    wait_for_attr(&zheng, "#grant-status", "data-status", "completed", WAIT).await;
    wait_for_attr(&zheng, "#grant-holder", "data-holder", "13466666666", WAIT).await;
    assert!(text_of(&zheng, "#status-via").await.contains("0001"));
    assert!(text_of(&zheng, "#grant-status").await.contains("转让成功"));
    let grant_id = text_of(&zheng, "#status-grant").await;

    // The read model, the API and the sandbox's own record agree.
    eventually(WAIT, "Wang holds 01 in the read model", || async {
        (holder_of(&app, "610091A01:01").await.as_deref() == Some("13466666666")).then_some(())
    })
    .await;
    let wang = token(&app, "13466666666").await;
    assert_eq!(
        compartments_of(&app, &wang).await[0]["compartment_id"],
        "610091A01:01"
    );
    let handled: Value = app
        .http
        .get(format!("{sandbox_url}/sandbox/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(handled[0]["request_id"], grant_id.as_str(), "{handled}");
    assert_eq!(handled[0]["courier"], "13466666666");

    // Zheng's inbox has the confirmation.
    click(&zheng, "#status-home").await;
    wait_for_screen(&zheng, "home").await;
    wait_for_contains(
        &zheng,
        "#inbox li[data-kind=grant_confirmed]",
        "格口 610091A01:01 已授予 13466666666",
    )
    .await;
    zheng.close().await.ok();
}

#[tokio::test]
async fn the_login_page_shows_why_it_refused_and_a_retry_succeeds() {
    let app = spawn_app().await;
    user(&app, "13455555555", "李").await;
    user(&app, "13477777777", "赵").await;
    let res = app
        .post("/lockers/users/13477777777/disable", &app.operator, None)
        .await;
    created(res, "disable").await;
    let driver = ChromeDriver::start().await;
    let phone = phone(&driver, &app).await;

    // A wrong password: the message, still on the login page.
    log_in(&phone, "13455555555", "not-the-password").await;
    wait_for_attr(
        &phone,
        "#login-error",
        "data-code",
        "invalid_credentials",
        WAIT,
    )
    .await;
    let shown = text_of(&phone, "#login-error").await;
    assert!(shown.contains("用户号或密码错误"), "{shown}");
    assert!(
        shown.contains("the user number or password is wrong"),
        "{shown}"
    );
    assert_eq!(
        phone
            .execute("return document.body.dataset.screen;", vec![])
            .await
            .unwrap(),
        json!("login")
    );

    // A disabled user is told so.
    log_in(&phone, "13477777777", PASSWORD).await;
    wait_for_attr(&phone, "#login-error", "data-code", "user_disabled", WAIT).await;
    assert!(text_of(&phone, "#login-error").await.contains("已停用"));

    // Repeated failures for one number are rate limited (5 a minute), and the page says so.
    for _ in 0..5 {
        log_in(&phone, "13411112222", "whatever-1").await;
        wait_for_js(
            &phone,
            "the login answered",
            WAIT,
            "return !document.getElementById('login-submit').disabled;",
        )
        .await;
    }
    log_in(&phone, "13411112222", "whatever-1").await;
    wait_for_attr(
        &phone,
        "#login-error",
        "data-code",
        "too_many_login_attempts",
        WAIT,
    )
    .await;
    assert!(text_of(&phone, "#login-error")
        .await
        .contains("尝试次数过多"));

    // The retry with the right password gets in.
    log_in(&phone, "13455555555", PASSWORD).await;
    wait_for_screen(&phone, "home").await;
    assert!(text_of(&phone, "#who").await.contains("13455555555"));
    phone.close().await.ok();
}

fn session_cookie(res: &reqwest::Response) -> (String, String) {
    let set = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("latch_locker="))
        .expect("a latch_locker cookie");
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

#[tokio::test]
async fn the_pages_session_is_an_httponly_strict_cookie_and_cookie_changes_need_the_client_header()
{
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    let url = |path: &str| format!("{}{path}", app.address);
    let credentials = json!({"user_number": "13455555555", "password": PASSWORD});

    // The page itself: not framed, nothing inline.
    let page = app.http.get(url("/lockers/app")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));

    // Logging in from a page needs the client header too (no cross-site login).
    let res = app
        .http
        .post(url("/lockers/page/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
    let res = app
        .http
        .post(url("/lockers/page/login"))
        .header("X-Latch-Client", "test")
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (cookie, attributes) = session_cookie(&res);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/lockers", "Max-Age="] {
        assert!(
            attributes.contains(attribute),
            "{attribute} in {attributes}"
        );
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user_number"], "13455555555");
    assert_eq!(body["name"], "李");
    assert!(body.get("token").is_none(), "the token stays in the cookie");

    let me: Value = app
        .http
        .get(url("/lockers/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user_number"], "13455555555");

    // A change riding on the cookie alone is refused and writes nothing.
    let before = app.event_count().await;
    let reserve_body = json!({"site": SITE, "size": "large"});
    let res = app
        .http
        .post(url("/lockers/reservations"))
        .header("cookie", &cookie)
        .json(&reserve_body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"]["code"], "forbidden");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-latch-client"));
    assert_eq!(app.event_count().await, before);
    let res = app
        .http
        .post(url("/lockers/reservations"))
        .header("cookie", &cookie)
        .header("X-Latch-Client", "test")
        .json(&reserve_body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Another kind of session in the locker cookie is not a locker user.
    let res = app
        .http
        .get(url("/lockers/me"))
        .header("cookie", format!("latch_locker={}", app.user))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // API clients keep their Bearer tokens.
    let bearer = token(&app, "13455555555").await;
    let me: Value = app.get("/lockers/me", &bearer).await.json().await.unwrap();
    assert_eq!(me["user_number"], "13455555555");

    // Logging out ends the session at once.
    let res = app
        .http
        .post(url("/lockers/page/logout"))
        .header("cookie", &cookie)
        .header("X-Latch-Client", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .http
        .get(url("/lockers/me/compartments"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
