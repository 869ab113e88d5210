//! The shopper's whole journey in headless Chromium on a phone-sized viewport, against the
//! running service, the cabinet simulator and the Kazaya sandbox: scan the sticker's link,
//! register at Kazaya, open, take two items from one shelf and one from another, close, see
//! the order, pay on Kazaya's page and see the receipt.

use crate::browser::{click, wait_for_attr, wait_for_js, ChromeDriver};
use crate::vending::World;
use fantoccini::{Client, Locator};
use latch::sim::{self, SimConfig};
use latch_domain::store::Store;
use latch_workers::CancellationToken;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(25);

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

/// Waits until the current page's address contains `part`.
async fn wait_for_url(client: &Client, part: &str) {
    let part = part.to_owned();
    wait_for_js(
        client,
        &format!("the address to contain {part}"),
        WAIT,
        &format!("return location.href.includes({});", json!(part)),
    )
    .await;
}

#[tokio::test]
async fn a_shopper_scans_registers_opens_takes_three_items_pays_and_sees_the_receipt() {
    let world = World::start().await;
    let cabinet = world.cabinet().await;
    // The real simulator plays the cabinet: load cells, door, and the scripted shopper.
    let stop = CancellationToken::new();
    let store = Arc::new(Store::new(world.app.pool.clone()));
    let sim_task = tokio::spawn(sim::run(
        world.app.nats.clone(),
        SimConfig {
            devices: vec![cabinet.id],
            heartbeat: Duration::from_secs(2),
            hold_open: Duration::from_millis(300),
            store: Some(store),
            ..SimConfig::default()
        },
        stop.clone(),
    ));
    // What the shopper's hands will do once the door is open.
    let script =
        json!({"take": [{"shelf": 1, "count": 2}, {"shelf": 2, "count": 1}], "hold_ms": 300});
    let armed = tokio::time::timeout(WAIT, async {
        loop {
            let reply = world
                .app
                .nats
                .request(
                    format!("latch.sim.{}.shopper", cabinet.id),
                    script.to_string().into(),
                )
                .await;
            if let Ok(reply) = reply {
                return serde_json::from_slice::<Value>(&reply.payload).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the simulator takes the shopper's script");
    assert_eq!(armed["ok"], true, "{armed}");

    let link = world
        .app
        .get(
            &format!("/devices/{}/sticker", cabinet.id),
            &world.app.operator,
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();

    let driver = ChromeDriver::start().await;
    let phone = driver.new_session().await;
    phone
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");

    // Scan: the sticker's link leads to Kazaya, where a newcomer registers.
    phone.goto(&link).await.expect("opening the sticker's link");
    wait_for_url(&phone, &world.kazaya_url).await;
    fill(&phone, "#phone", "13455555555").await;
    click(&phone, "button[type=submit]").await;
    wait_for_js(
        &phone,
        "the registration form",
        WAIT,
        "return !!document.getElementById('nickname');",
    )
    .await;
    fill(&phone, "#nickname", "小李").await;
    click(&phone, "button[type=submit]").await;
    wait_for_js(
        &phone,
        "the consent page",
        WAIT,
        "return !!document.querySelector('button[value=allow]');",
    )
    .await;
    click(&phone, "button[value=allow]").await;

    // Back at Latch: the cabinet, its products, and an enabled "open".
    wait_for_url(&phone, &format!("/m/cabinet/{}", cabinet.id)).await;
    wait_for_js(&phone, "#open enabled", WAIT, "const b = document.getElementById('open'); return !!b && !b.disabled && !document.getElementById('cabinet').hidden;").await;
    assert!(text_of(&phone, "#who").await.contains("小李"));
    assert!(text_of(&phone, "#products").await.contains("可乐 330ml"));
    let fits = phone
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "the page fits a phone's width");
    // From here the order page may not poll: the order must arrive over its push channel.
    phone
        .execute("localStorage.setItem('latch_no_poll', '1');", vec![])
        .await
        .unwrap();
    click(&phone, "#open").await;

    // The door opens, the simulated shopper takes 2 colas and 1 water, the door closes.
    wait_for_url(&phone, "/m/orders/").await;
    wait_for_attr(&phone, "#status", "data-status", "placed", WAIT).await;
    assert_eq!(
        phone
            .execute(
                "return document.getElementById('status').dataset.via;",
                vec![]
            )
            .await
            .unwrap(),
        json!("push"),
        "the order was pushed, not polled"
    );
    // How long after the after-weights were recorded the page showed the order (both clocks
    // are this machine's).
    let shown_ms: i64 = phone
        .execute(
            "return Number(document.getElementById('status').dataset.shownAt);",
            vec![],
        )
        .await
        .unwrap()
        .as_i64()
        .unwrap();
    let (weighed,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT max(recorded_at) FROM events WHERE event_type = 'WeighingRecorded'")
            .fetch_one(&world.app.pool)
            .await
            .unwrap();
    let after_ms = shown_ms - weighed.timestamp_millis();
    tracing::info!(after_ms, "order shown after the after-weights");
    assert!(
        after_ms < 1000,
        "the order showed {after_ms} ms after the after-weights (want < 1 s)"
    );
    let lines = text_of(&phone, "#lines").await;
    assert!(lines.contains("可乐 330ml × 2"), "{lines}");
    assert!(lines.contains("Water 550ml × 1"), "{lines}");
    assert_eq!(text_of(&phone, "#total").await, "¥9.00");

    // Pay at Kazaya's hosted page and come back to the receipt.
    click(&phone, "#pay").await;
    wait_for_url(&phone, "/pay/").await;
    click(&phone, "button[value=pay]").await;
    wait_for_url(&phone, "/m/orders/").await;
    wait_for_attr(&phone, "#status", "data-status", "paid", WAIT).await;
    wait_for_js(
        &phone,
        "the receipt",
        WAIT,
        "return !document.getElementById('receipt').hidden;",
    )
    .await;
    assert_eq!(text_of(&phone, "#receipt-amount").await, "¥9.00");
    assert!(!text_of(&phone, "#receipt-ref").await.is_empty());

    assert_eq!(world.events_of_type("PaymentSucceeded").await, 1);
    assert_eq!(world.events_of_type("OrderPlaced").await, 1);
    phone.close().await.ok();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim_task).await;
}
