//! Devices authenticate to NATS with their own credentials and may publish only under their own
//! subject subtree: shown against a nats-server running the configuration we generate.

use futures::StreamExt;
use latch_nats::auth::{authorization_config, DeviceCredentials};
use latch_nats::server::NatsServer;
use latch_nats::subjects;
use std::time::Duration;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_can_publish_only_under_its_own_subjects() {
    let a = DeviceCredentials {
        device_id: "0193a000-0000-7000-8000-00000000000a".into(),
        password: "pa-secret".into(),
    };
    let b = DeviceCredentials {
        device_id: "0193a000-0000-7000-8000-00000000000b".into(),
        password: "pb-secret".into(),
    };
    let config = authorization_config("latch", "svc-secret", &[a.clone(), b.clone()]);
    let server = NatsServer::start_with_config(Some(&config)).await.unwrap();
    let url = server.url();

    let service =
        async_nats::ConnectOptions::with_user_and_password("latch".into(), "svc-secret".into())
            .connect(&url)
            .await
            .unwrap();
    let mut everything = service.subscribe("latch.dev.>").await.unwrap();
    service.flush().await.unwrap();

    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    let device = async_nats::ConnectOptions::with_user_and_password(a.user(), a.password.clone())
        .custom_inbox_prefix(subjects::device_inbox_prefix(&a.device_id))
        .event_callback(move |event| {
            let tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(&url)
        .await
        .unwrap();

    // Its own subject: delivered.
    device
        .publish(
            subjects::telemetry(&a.device_id, "heartbeat"),
            "mine".into(),
        )
        .await
        .unwrap();
    // Another device's subject: refused by the server.
    device
        .publish(
            subjects::telemetry(&b.device_id, "heartbeat"),
            "forged".into(),
        )
        .await
        .unwrap();
    device.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), everything.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.subject.as_str(),
        subjects::telemetry(&a.device_id, "heartbeat")
    );
    let violation = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("the server reports the violation")
        .unwrap();
    assert!(
        violation.to_lowercase().contains("permission"),
        "{violation}"
    );
    // The forged message never arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), everything.next())
            .await
            .is_err(),
        "nothing published under another device's subject gets through"
    );

    // Nor may it listen to another device's commands.
    let _sub = device
        .subscribe(subjects::device_commands_all(&b.device_id))
        .await
        .unwrap();
    device.flush().await.unwrap();
    let violation = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("subscription refused")
        .unwrap();
    assert!(
        violation.to_lowercase().contains("permission"),
        "{violation}"
    );

    // And a wrong password does not connect at all.
    let wrong = async_nats::ConnectOptions::with_user_and_password(a.user(), "guess".into())
        .connect(&url)
        .await;
    assert!(wrong.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_answers_a_request_on_its_command_subject_but_publishes_nowhere_else() {
    let a = DeviceCredentials {
        device_id: "0193a000-0000-7000-8000-00000000000a".into(),
        password: "pa-secret".into(),
    };
    let config = authorization_config("latch", "svc-secret", std::slice::from_ref(&a));
    let server = NatsServer::start_with_config(Some(&config)).await.unwrap();
    let url = server.url();
    let service =
        async_nats::ConnectOptions::with_user_and_password("latch".into(), "svc-secret".into())
            .connect(&url)
            .await
            .unwrap();
    let device = async_nats::ConnectOptions::with_user_and_password(a.user(), a.password.clone())
        .custom_inbox_prefix(subjects::device_inbox_prefix(&a.device_id))
        .connect(&url)
        .await
        .unwrap();
    let mut commands = device
        .subscribe(subjects::device_holder(&a.device_id))
        .await
        .unwrap();
    device.flush().await.unwrap();
    let answering = device.clone();
    let responder = tokio::spawn(async move {
        let msg = commands.next().await.unwrap();
        let reply = msg.reply.clone().expect("a request has a reply subject");
        answering
            .publish(reply.clone(), "{\"ok\":true}".into())
            .await
            .unwrap();
        answering.flush().await.unwrap();
        reply
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        // The device's subscription reaches the server a moment after its flush: retry
        // while nobody listens yet.
        async {
            loop {
                match service
                    .request(subjects::device_holder(&a.device_id), "{}".into())
                    .await
                {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        },
    )
    .await
    .expect("answered in time")
    .expect("the device may answer the request");
    assert_eq!(&answer.payload[..], b"{\"ok\":true}");
    let reply = responder.await.unwrap();

    // The reply subject was good for that one answer; other inboxes stay closed to it.
    let mut other_inbox = service.subscribe("_INBOX.someone-else.x").await.unwrap();
    service.flush().await.unwrap();
    device
        .publish("_INBOX.someone-else.x", "forged".into())
        .await
        .unwrap();
    device.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other_inbox.next())
            .await
            .is_err(),
        "a device may not publish to an inbox that did not ask it anything (reply was {reply})"
    );
}
