//! The locker's own screen (`/lockers/kiosk/{site}`) in headless Chromium at a kiosk's size,
//! and the phone pages' deposit and collect screens at 390x844, against the running service:
//! a holder logs in at the kiosk, sees their compartment and deposits (the door is told to
//! open); a recipient collects at the kiosk with the kiosk's token (a wrong code is refused
//! clearly, the right one frees the compartment); the screen starts over when left idle.

use crate::browser::{click, wait_for_attr, wait_for_js, ChromeDriver};
use crate::common::*;
use crate::lockers::{created, door_requests, locker_door, reserve, token, world, PASSWORD, SITE};
use fantoccini::{Client, Locator};
use latch_api::auth::Role;
use serde_json::json;
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

async fn wait_for_screen(client: &Client, screen: &str) {
    wait_for_attr(client, "body", "data-screen", screen, WAIT).await;
}

async fn wait_for(client: &Client, what: &str, script: &str) {
    wait_for_js(client, what, WAIT, script).await;
}

/// Both compartments get a door device, so whichever the reservation picks can open.
async fn wire_doors(app: &TestApp) -> Vec<(String, uuid::Uuid, latch::sim::SimDevice)> {
    let mut doors = Vec::new();
    for number in ["01", "02"] {
        let (door, sim) = locker_door(app, &format!("{SITE}-{number}")).await;
        let res = app
            .post(
                &format!("/lockers/compartments/{SITE}:{number}/door"),
                &app.operator,
                Some(json!({"door_device": door.to_string()})),
            )
            .await;
        created(res, "wire door").await;
        doors.push((format!("{SITE}:{number}"), door, sim));
    }
    doors
}

/// A kiosk-sized window on the site's kiosk page, set up with the kiosk's token.
async fn kiosk(driver: &ChromeDriver, app: &TestApp, query: &str) -> Client {
    let kiosk_token =
        latch_api::auth::issue_token(&app.pool, Role::Kiosk, &format!("kiosk:{SITE}"))
            .await
            .unwrap();
    let screen = driver.new_session().await;
    screen.set_window_size(1080, 1200).await.unwrap();
    screen
        .goto(&format!(
            "{}/lockers/kiosk/{SITE}{query}#kiosk={kiosk_token}",
            app.address
        ))
        .await
        .expect("opening the kiosk page");
    wait_for_screen(&screen, "start").await;
    // The token left the address bar.
    let url = screen.current_url().await.unwrap();
    assert!(!url.as_str().contains("kiosk="), "{url}");
    screen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_kiosk_li_logs_in_sees_his_compartment_and_the_door_opens_for_his_deposit() {
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    let doors = wire_doors(&app).await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let (_, door, _) = doors.iter().find(|(c, _, _)| *c == id).unwrap();
    let driver = ChromeDriver::start().await;
    let screen = kiosk(&driver, &app, "").await;

    click(&screen, "#start-login").await;
    wait_for_screen(&screen, "login").await;
    fill(&screen, "#user-number", "13455555555").await;
    fill(&screen, "#password", "wrong-password").await;
    click(&screen, "#login-submit").await;
    wait_for_attr(&screen, "#error", "data-code", "invalid_credentials", WAIT).await;
    fill(&screen, "#password", PASSWORD).await;
    click(&screen, "#login-submit").await;
    wait_for_screen(&screen, "mine").await;
    assert!(text_of(&screen, "#who").await.contains("13455555555"));
    let row = format!("#compartments li[data-compartment=\"{id}\"]");
    wait_for(
        &screen,
        "Li's compartment listed",
        &format!("return !!document.querySelector({});", json!(row)),
    )
    .await;
    assert!(text_of(&screen, &row).await.contains("已预约 · reserved"));

    assert_eq!(door_requests(&app, *door).await, 0);
    fill(
        &screen,
        &format!("{row} input[name=parcel]"),
        "SF1234567890",
    )
    .await;
    click(&screen, &format!("{row} button.open-door")).await;
    wait_for_screen(&screen, "deposited").await;
    let code = text_of(&screen, "#pickup-code").await;
    assert_eq!(code.len(), 12, "{code}");
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    // The deposit reached the door: the worker asked the compartment's door to open.
    eventually(WAIT, "the door asked to open", || async {
        (door_requests(&app, *door).await == 1).then_some(())
    })
    .await;

    // Back to the list (the code is gone from the screen), then done: the screen starts over
    // and Li's token is revoked.
    click(&screen, "#deposited-back").await;
    wait_for_screen(&screen, "mine").await;
    click(&screen, "#done").await;
    wait_for_screen(&screen, "start").await;
    eventually(WAIT, "the kiosk session revoked", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'TokenRevoked'",
        )
        .await;
        (n >= 1).then_some(())
    })
    .await;
    screen.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_kiosk_a_recipient_collects_with_the_code_and_a_wrong_code_is_refused_clearly() {
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    let li = token(&app, "13455555555").await;
    let id = reserve(&app, &li).await;
    let body = created(
        app.post(
            &format!("/lockers/compartments/{id}/deposit"),
            &li,
            Some(json!({"parcel": "SF1234567890"})),
        )
        .await,
        "deposit",
    )
    .await;
    let code = body["pickup_code"].as_str().unwrap().to_owned();
    let number = id.split(':').nth(1).unwrap().to_owned();
    let driver = ChromeDriver::start().await;
    // A short idle time: the screen starts over on its own.
    let screen = kiosk(&driver, &app, "?idle=5").await;

    click(&screen, "#start-collect").await;
    wait_for_screen(&screen, "collect").await;
    fill(&screen, "#collect-number", &number).await;
    fill(&screen, "#collect-code", "000000000000").await;
    click(&screen, "#collect-submit").await;
    wait_for_attr(&screen, "#error", "data-code", "wrong_pickup_code", WAIT).await;
    assert!(text_of(&screen, "#error").await.contains("取件码错误"));
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'ParcelCollected'"
        )
        .await,
        0
    );

    fill(&screen, "#collect-code", &code).await;
    click(&screen, "#collect-submit").await;
    wait_for_screen(&screen, "collected").await;
    assert!(text_of(&screen, "#collected-compartment")
        .await
        .contains(&number));
    eventually(WAIT, "the parcel collected", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'ParcelCollected'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;

    // Left alone, the screen goes back to the start.
    wait_for_screen(&screen, "start").await;

    // The kiosk's token collects at its own site only, and does nothing else.
    let kiosk_token = latch_api::auth::issue_token(&app.pool, Role::Kiosk, "kiosk:OTHERSITE")
        .await
        .unwrap();
    let res = app
        .post(
            &format!("/lockers/compartments/{id}/collect"),
            &kiosk_token,
            Some(json!({"pickup_code": code})),
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = app.get("/lockers/me/compartments", &kiosk_token).await;
    assert_eq!(res.status(), 403);
    screen.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_phone_li_deposits_and_zhang_collects_with_the_code() {
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    let li_token = token(&app, "13455555555").await;
    let id = reserve(&app, &li_token).await;
    let number = id.split(':').nth(1).unwrap().to_owned();
    let driver = ChromeDriver::start().await;

    let li = driver.new_session().await;
    li.set_window_size(390, 844).await.unwrap();
    li.goto(&format!("{}/lockers/app", app.address))
        .await
        .unwrap();
    wait_for_screen(&li, "login").await;
    fill(&li, "#user-number", "13455555555").await;
    fill(&li, "#password", PASSWORD).await;
    click(&li, "#login-submit").await;
    wait_for_screen(&li, "home").await;
    let row = format!("#compartments li[data-compartment=\"{id}\"]");
    wait_for(
        &li,
        "the compartment listed",
        &format!("return !!document.querySelector({});", json!(row)),
    )
    .await;
    click(&li, &format!("{row} button.deposit")).await;
    wait_for_screen(&li, "deposit").await;
    fill(&li, "#parcel", "SF1234567890").await;
    click(&li, "#deposit-submit").await;
    wait_for_screen(&li, "deposited").await;
    let code = text_of(&li, "#pickup-code").await;
    assert_eq!(code.len(), 12, "{code}");
    let fits = li
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "the page fits a phone's width");
    li.close().await.ok();

    // Zhang collects on his phone: a wrong code first, then the right one.
    let zhang = driver.new_session().await;
    zhang.set_window_size(390, 844).await.unwrap();
    zhang
        .goto(&format!("{}/lockers/app", app.address))
        .await
        .unwrap();
    wait_for_screen(&zhang, "login").await;
    fill(&zhang, "#user-number", "13499996666").await;
    fill(&zhang, "#password", PASSWORD).await;
    click(&zhang, "#login-submit").await;
    wait_for_screen(&zhang, "home").await;
    click(&zhang, "#start-collect").await;
    wait_for_screen(&zhang, "collect").await;
    fill(&zhang, "#collect-site", SITE).await;
    fill(&zhang, "#collect-number", &number).await;
    fill(&zhang, "#collect-code", "123456789012").await;
    click(&zhang, "#collect-submit").await;
    wait_for_attr(&zhang, "#error", "data-code", "wrong_pickup_code", WAIT).await;
    fill(&zhang, "#collect-code", &code).await;
    click(&zhang, "#collect-submit").await;
    wait_for_attr(&zhang, "#collected", "data-compartment", &id, WAIT).await;
    eventually(WAIT, "the parcel collected", || async {
        let n = count(
            &app.pool,
            "SELECT count(*) FROM events WHERE event_type = 'ParcelCollected'",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    zhang.close().await.ok();
}
