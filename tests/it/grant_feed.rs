//! Authorizers that subscribe (issue 14): a courier company binds a durable consumer to its own
//! grant feed, goes offline, and on its return gets every request once, answers over NATS, and
//! hears how each ended.

use crate::common::*;
use crate::lockers::{created, reserve, token, world, SITE};
use async_nats::HeaderMap as NatsHeaders;
use futures::StreamExt;
use latch_domain::Clock;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn signed_accept(grant_id: &str, compartment: &str, now: i64) -> (NatsHeaders, String) {
    crate::lockers::signed_nats_answer(
        grant_id,
        compartment,
        &format!("msg_answer_{grant_id}"),
        now,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_offline_gets_every_request_once_on_its_return_and_answers_over_nats() {
    let app = spawn_app().await;
    world(&app, "http://127.0.0.1:9/grants").await;
    created(
        app.post(
            "/lockers/compartments",
            &app.operator,
            Some(json!({"site": SITE, "number": "03", "size": "large"})),
        )
        .await,
        "compartment 03",
    )
    .await;
    // Company A's feed consumer, made by Latch when A was registered; A binds it once and then
    // is offline.
    let consumer: async_nats::jetstream::consumer::PullConsumer = app
        .js
        .get_consumer_from_stream(
            latch_nats::streams::authorizer_feed_consumer("0001"),
            latch_nats::subjects::GRANTS_STREAM,
        )
        .await
        .expect("authorizer 0001's feed consumer");
    let mut requested = BTreeMap::new();
    for user in ["13455555555", "13499996666", "13488888888"] {
        let t = token(&app, user).await;
        let id = reserve(&app, &t).await;
        let number = id.split_once(':').unwrap().1.to_owned();
        let res = app
            .post(
                "/lockers/grants/via-authorizer",
                &t,
                Some(json!({"site": SITE, "compartment": number, "authorizer": "0001"})),
            )
            .await;
        assert_eq!(res.status(), 202);
        let grant: Value = res.json().await.unwrap();
        requested.insert(grant["grant_id"].as_str().unwrap().to_owned(), (number, t));
    }

    // Back online: everything that happened while away, each once.
    let fetch = || async {
        let mut got = Vec::new();
        let mut batch = consumer
            .fetch()
            .max_messages(50)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let body: Value = serde_json::from_slice(&m.payload).unwrap();
            got.push((
                body["type"].as_str().unwrap().to_owned(),
                body["grant_id"].as_str().unwrap().to_owned(),
                body,
            ));
            m.ack().await.unwrap();
        }
        got
    };
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while seen.len() < 3 {
            seen.extend(fetch().await);
        }
    })
    .await
    .expect("three requests within 15 s");
    seen.extend(fetch().await);
    assert_eq!(seen.len(), 3, "each request once: {seen:?}");
    let ids: BTreeSet<&String> = seen.iter().map(|(_, g, _)| g).collect();
    assert_eq!(ids, requested.keys().collect());
    for (kind, _, body) in &seen {
        assert_eq!(kind, "grant.requested");
        assert_eq!(body["data"]["authorizer"], "0001");
        assert_eq!(body["data"]["site"], SITE);
    }

    // It answers over NATS, signed like its callback; every grant completes.
    for (grant_id, (number, _)) in &requested {
        let (headers, body) = signed_accept(grant_id, number, app.clock.now().timestamp());
        let reply = app
            .nats
            .request_with_headers("latch.authorizers.0001.answers", headers, body.into())
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    for (grant_id, (_, t)) in &requested {
        eventually(Duration::from_secs(15), "the grant completed", || async {
            let g: Value = app
                .get(&format!("/lockers/grants/{grant_id}"), t)
                .await
                .json()
                .await
                .ok()?;
            (g["status"] == "completed").then_some(())
        })
        .await;
    }
    // And it hears how each ended, on its own subjects.
    let mut outcomes = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while outcomes.len() < 6 {
            outcomes.extend(fetch().await);
        }
    })
    .await
    .expect("accepted and completed for each");
    let kinds: BTreeMap<String, usize> =
        outcomes.iter().fold(BTreeMap::new(), |mut m, (k, _, _)| {
            *m.entry(k.clone()).or_default() += 1;
            m
        });
    assert_eq!(
        kinds,
        BTreeMap::from([("grant.accepted".into(), 3), ("grant.completed".into(), 3)])
    );
}
