//! The operator console (`/ops`) in headless Chromium at desktop size (1440x900), against the
//! running service: the token login (refused for a bad or a non-operator token; logout ends
//! it), and each screen kept current from the log without a reload: the fleet (a device going
//! faulted or offline), the review queue (resolve one order, refund another), lockers (sites,
//! compartments, holders, an open grant) and dead letters (with their reasons).

use crate::browser::{click, wait_for_attr, wait_for_js, ChromeDriver};
use crate::common::*;
use crate::lockers::{request_via_company_a, reserve, token, world, SITE};
use crate::revoke::paid_order;
use crate::vending::World;
use async_nats::jetstream::message::PublishMessage;
use fantoccini::{Client, Locator};
use latch::sim::SimDevice;
use latch_api::auth::{issue_token, Role};
use latch_nats::subjects;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

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

async fn wait_for_screen(client: &Client, screen: &str) {
    wait_for_attr(client, "body", "data-screen", screen, WAIT).await;
}

/// Waits until `script` (a function body) returns something truthy.
async fn wait_for(client: &Client, what: &str, script: &str) -> Value {
    wait_for_js(client, what, WAIT, script).await
}

/// The text of the first element matching `css`, or "" when there is none (as a JS expression).
fn text_js(css: &str) -> String {
    format!(
        "(document.querySelector({}) || {{textContent: ''}}).textContent.trim()",
        json!(css)
    )
}

/// A desktop-sized window on the console's login screen.
async fn console(driver: &ChromeDriver, app: &TestApp) -> Client {
    let client = driver.new_session().await;
    client.set_window_size(1440, 900).await.unwrap();
    client
        .goto(&format!("{}/ops", app.address))
        .await
        .expect("opening the console");
    wait_for_screen(&client, "login").await;
    client
}

async fn log_in(client: &Client, token: &str) {
    fill(client, "#token", token).await;
    click(client, "#login-submit").await;
}

/// Logged in as the test app's operator, on `screen`, with the push channel up. A marker set
/// now tells later whether the page was ever reloaded.
async fn logged_in_on(driver: &ChromeDriver, app: &TestApp, screen: &str) -> Client {
    let client = console(driver, app).await;
    log_in(&client, &app.operator).await;
    wait_for_screen(&client, "fleet").await;
    if screen != "fleet" {
        click(&client, &format!("#nav-{screen}")).await;
        wait_for_screen(&client, screen).await;
    }
    wait_for_attr(&client, "#live", "data-state", "live", WAIT).await;
    client
        .execute("window.sameDocument = true; return true;", vec![])
        .await
        .unwrap();
    client
}

/// The page was never reloaded, and its push channel is still up.
async fn assert_same_page_still_live(client: &Client) {
    let same = client
        .execute("return window.sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    wait_for_attr(client, "#live", "data-state", "live", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_non_operator_token_is_refused_and_logout_ends_the_session() {
    let app = spawn_app().await;
    let driver = ChromeDriver::start().await;
    let client = console(&driver, &app).await;

    log_in(&client, "lt_not-a-token").await;
    wait_for_attr(&client, "#error", "data-code", "unauthorized", WAIT).await;
    assert_eq!(
        client
            .execute("return document.body.dataset.screen;", vec![])
            .await
            .unwrap(),
        json!("login")
    );
    let shopper = issue_token(&app.pool, Role::User, "kazaya:ky_ops")
        .await
        .unwrap();
    log_in(&client, &shopper).await;
    wait_for_attr(&client, "#error", "data-code", "forbidden", WAIT).await;
    assert_eq!(
        client
            .execute("return document.body.dataset.screen;", vec![])
            .await
            .unwrap(),
        json!("login")
    );

    log_in(&client, &app.operator).await;
    wait_for_screen(&client, "fleet").await;
    wait_for(
        &client,
        "the operator named",
        &format!("return {};", text_js("#who")),
    )
    .await;
    // The session is a cookie page script cannot read; the token field was emptied.
    let seen = client
        .execute(
            "return [document.cookie, document.getElementById('token').value];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!(["", ""]),
        "the token stays out of script's reach"
    );
    // A reload keeps the session...
    client.refresh().await.unwrap();
    wait_for_screen(&client, "fleet").await;
    // ...logout ends it, for this page and the next.
    click(&client, "#logout").await;
    wait_for_screen(&client, "login").await;
    client.refresh().await.unwrap();
    wait_for_screen(&client, "login").await;
    client.close().await.unwrap();

    // Over plain HTTP: the login needs the client header; the console's endpoints are
    // operators' only.
    let res = app
        .http
        .post(format!("{}/ops/login", app.address))
        .json(&json!({"token": app.operator}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    for path in [
        "/dead-letters",
        "/lockers/sites",
        "/lockers/grants",
        "/ops/me",
    ] {
        assert_eq!(app.get(path, &shopper).await.status(), 403, "{path}");
        assert_eq!(app.get(path, &app.operator).await.status(), 200, "{path}");
    }
    // A shopper's token in the console's cookie counts for nothing, even for reads.
    let res = app
        .http
        .get(format!("{}/devices", app.address))
        .header("cookie", format!("latch_ops={shopper}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shows_devices_and_a_device_turning_faulted_or_offline_changes_its_row_live() {
    let app = spawn_app().await;
    let mut sims = Vec::new();
    for label in ["Cabinet A", "Cabinet B"] {
        let id = app.register_device("vending", "610091A01", label).await;
        let sim = SimDevice::new(id, app.js.clone());
        sim.door(false, None).await.unwrap();
        sim.heartbeat(1).await.unwrap();
        sims.push((id, sim));
    }
    eventually(WAIT, "both devices online", || async {
        for (id, _) in &sims {
            (app.device(*id).await?["online"] == true).then_some(())?;
        }
        Some(())
    })
    .await;
    let driver = ChromeDriver::start().await;
    let client = logged_in_on(&driver, &app, "fleet").await;
    let row = |id: Uuid| format!("#fleet-rows tr[data-device=\"{id}\"]");
    let (a, b) = (sims[0].0, sims[1].0);
    for id in [a, b] {
        wait_for_attr(&client, &row(id), "data-state", "online", WAIT).await;
    }
    let a_text = wait_for(&client, "A's row", &format!("return {};", text_js(&row(a)))).await;
    assert!(a_text.as_str().unwrap().contains("Cabinet A"), "{a_text}");
    assert!(a_text.as_str().unwrap().contains("closed"), "{a_text}");

    // A jams: its row turns faulted, with the fault's code, B's stays online.
    sims[0].1.fault(true, "scale_jam").await.unwrap();
    wait_for_attr(&client, &row(a), "data-state", "faulted", WAIT).await;
    let fault = wait_for(
        &client,
        "A's fault shown",
        &format!("return {};", text_js(&format!("{} .fault", row(a)))),
    )
    .await;
    assert!(fault.as_str().unwrap().contains("scale_jam"), "{fault}");
    assert_eq!(
        client
            .execute(
                "return document.querySelector(arguments[0]).dataset.state;",
                vec![json!(row(b))]
            )
            .await
            .unwrap(),
        json!("online")
    );
    // Then silence: B goes offline (A stays shown as faulted).
    app.clock.advance(chrono::Duration::seconds(31));
    wait_for_attr(&client, &row(b), "data-state", "offline", WAIT).await;
    wait_for(
        &client,
        "the summary counts",
        &format!(
            "return {}.startsWith('0 online · 1 offline · 1 faulted');",
            text_js("#fleet-summary")
        ),
    )
    .await;
    assert_same_page_still_live(&client).await;
    client.close().await.unwrap();
}

/// An order in review: 170 g off shelf 1 is half a cola (as in the vending tests).
async fn order_in_review(world: &World) -> Uuid {
    let cabinet = world.cabinet().await;
    let token = world.shopper("ky_ops_review").await;
    let serve = cabinet
        .serve_one(
            &world.app.nats,
            vec![(1, 1700), (2, 2100)],
            vec![(1, 1530), (2, 2100)],
        )
        .await;
    let opening: Value = world.open(cabinet.id, &token).await.json().await.unwrap();
    let session = Uuid::parse_str(opening["session_id"].as_str().unwrap()).unwrap();
    tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
    world.order_status(session, &token, "needs_review").await;
    session
}

async fn order_of(world: &World, session: Uuid) -> Value {
    world
        .app
        .get(&format!("/orders/{session}"), &world.app.operator)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_review_queue_an_operator_resolves_one_order_and_refunds_another() {
    let world = World::start().await;
    let (paid, _) = paid_order(&world, "13900139011").await;
    let driver = ChromeDriver::start().await;
    let client = logged_in_on(&driver, &world.app, "orders").await;
    let paid_row = format!("#paid-rows tr[data-session=\"{paid}\"]");
    wait_for(
        &client,
        "the paid order listed",
        &format!("return {}.includes('9.00');", text_js(&paid_row)),
    )
    .await;
    // An order goes to review while the page is open: it joins the queue without a reload.
    let review = order_in_review(&world).await;
    let card = format!("#review-rows li[data-session=\"{review}\"]");
    let reasons = wait_for(
        &client,
        "the order in the queue",
        &format!("return {};", text_js(&format!("{card} .reasons"))),
    )
    .await;
    assert!(
        reasons
            .as_str()
            .unwrap()
            .contains("out_of_tolerance: shelf 1"),
        "{reasons}"
    );

    // Resolve: one cola off shelf 1.
    let line = format!("{card} .review-lines li:first-child");
    fill(&client, &format!("{line} input[name=shelf]"), "1").await;
    fill(&client, &format!("{line} input[name=sku]"), "cola-330").await;
    fill(&client, &format!("{line} input[name=quantity]"), "1").await;
    click(&client, &format!("{card} button.resolve")).await;
    wait_for(
        &client,
        "the order gone from the queue",
        &format!("return !document.querySelector({});", json!(card)),
    )
    .await;
    let resolved = eventually(WAIT, "the order placed", || async {
        let o = order_of(&world, review).await;
        (o["status"] == "placed").then_some(o)
    })
    .await;
    assert_eq!(resolved["total_minor"], 350);

    // Refund ¥3.00 of the ¥9.00 paid.
    fill(&client, &format!("{paid_row} input[name=amount]"), "300").await;
    click(&client, &format!("{paid_row} button.refund")).await;
    wait_for(
        &client,
        "the refund confirmed",
        &format!(
            "return {}.startsWith('Refunded 3.00 CNY');",
            text_js("#notice")
        ),
    )
    .await;
    wait_for(
        &client,
        "the row showing the refund",
        &format!(
            "return {} === '3.00 CNY';",
            text_js(&format!("{paid_row} .refunded"))
        ),
    )
    .await;
    assert_eq!(order_of(&world, paid).await["refunded_minor"], 300);
    // More than is left is refused, named, and changes nothing.
    fill(&client, &format!("{paid_row} input[name=amount]"), "700").await;
    click(&client, &format!("{paid_row} button.refund")).await;
    wait_for_attr(
        &client,
        "#error",
        "data-code",
        "refund_exceeds_payment",
        WAIT,
    )
    .await;
    assert_eq!(order_of(&world, paid).await["refunded_minor"], 300);
    assert_same_page_still_live(&client).await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockers_screen_shows_sites_compartments_holders_and_an_open_grant() {
    let app = spawn_app().await;
    world(&app, NOWHERE).await;
    // Zheng reserves 01 and asks courier company A to hand it on (its endpoint never answers,
    // so the grant stays open).
    let grant = request_via_company_a(&app).await;
    let driver = ChromeDriver::start().await;
    let client = logged_in_on(&driver, &app, "lockers").await;
    let site = format!("#sites section[data-site=\"{SITE}\"]");
    let heading = wait_for(
        &client,
        "the site",
        &format!("return {};", text_js(&format!("{site} h3"))),
    )
    .await;
    assert!(heading.as_str().unwrap().contains("西湖驿站"), "{heading}");
    let one = format!("{site} tr[data-compartment=\"{SITE}:01\"]");
    let two = format!("{site} tr[data-compartment=\"{SITE}:02\"]");
    wait_for_attr(&client, &one, "data-status", "reserved", WAIT).await;
    let holder = wait_for(
        &client,
        "01's holder",
        &format!("return {};", text_js(&format!("{one} .holder"))),
    )
    .await;
    assert!(holder.as_str().unwrap().contains("13488888888"), "{holder}");
    wait_for_attr(&client, &two, "data-status", "free", WAIT).await;
    let grant_row = format!("#grant-rows tr[data-grant=\"{grant}\"]");
    wait_for_attr(&client, &grant_row, "data-status", "requested", WAIT).await;
    let text = wait_for(
        &client,
        "the grant's row",
        &format!("return {};", text_js(&grant_row)),
    )
    .await;
    assert!(
        text.as_str().unwrap().contains(&format!("{SITE}:01")),
        "{text}"
    );
    assert!(text.as_str().unwrap().contains("authorizer 0001"), "{text}");

    // Li reserves 02 while the page is open: its holder shows without a reload.
    let li = token(&app, "13455555555").await;
    assert_eq!(reserve(&app, &li).await, format!("{SITE}:02"));
    wait_for_attr(&client, &two, "data-status", "reserved", WAIT).await;
    let holder = wait_for(
        &client,
        "02's holder",
        &format!("return {};", text_js(&format!("{two} .holder"))),
    )
    .await;
    assert!(holder.as_str().unwrap().contains("13455555555"), "{holder}");
    assert_same_page_still_live(&client).await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_screen_shows_a_dead_letter_with_its_reason_as_it_is_kept() {
    let app = spawn_app().await;
    let device = app.register_device("vending", "S1", "A").await.to_string();
    let driver = ChromeDriver::start().await;
    let client = logged_in_on(&driver, &app, "dead_letters").await;
    wait_for(
        &client,
        "the empty list",
        "return !document.getElementById('dead-empty').hidden;",
    )
    .await;
    // A cabinet sends garbage: ingest gives up on it and keeps it with its reason.
    app.js
        .send_publish(
            subjects::telemetry(&device, "heartbeat"),
            PublishMessage::build().payload(b"{{not json".to_vec().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let row = "#dead-rows tr[data-reason=\"malformed_json\"]";
    let text = wait_for(
        &client,
        "the dead letter listed",
        &format!("return {};", text_js(row)),
    )
    .await;
    let text = text.as_str().unwrap();
    assert!(text.contains("telemetry"), "the consumer: {text}");
    assert!(
        text.contains(&format!("latch.dev.{device}.heartbeat")),
        "the subject: {text}"
    );
    assert!(text.contains("{{not json"), "the payload: {text}");
    let detail = wait_for(
        &client,
        "its detail",
        &format!("return {};", text_js(&format!("{row} .detail"))),
    )
    .await;
    assert!(!detail.as_str().unwrap().is_empty());
    assert_eq!(
        client
            .execute(
                "return document.querySelectorAll('#dead-rows tr').length;",
                vec![]
            )
            .await
            .unwrap(),
        json!(1)
    );
    assert_same_page_still_live(&client).await;
    client.close().await.unwrap();
}
