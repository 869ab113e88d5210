//! The vending steps that follow from what a cabinet reports: its baseline starts the shopping
//! session, its weights after closing settle it and free the cabinet, and a failed opening
//! abandons the session it was for.
//!
//! Each step is a command with the device's message id as idempotency key (or derived from
//! it), and the message is acknowledged only after every step ran, so a crash in between is
//! repaired by redelivery: the steps already done answer from their first outcome.

use latch_domain::device::{Device, DeviceCommand, DeviceId, Label, OpenFailure};
use latch_domain::store::{CommandContext, CommandError, IdempotencyKey, Loaded, Store};
use latch_domain::vending::{
    KazayaUserId, SessionId, SessionStage, ShoppingCommand, ShoppingSession, Weighing,
    WeighingPhase,
};
use uuid::Uuid;

/// What became of a step, in the ingest worker's terms.
#[derive(Debug)]
pub enum Step {
    Done,
    /// The message asks for something that cannot be: dead-letter it with this reason.
    Refused(&'static str, String),
    /// A passing failure (Postgres away): try the message again later.
    Retry(String),
}

fn retry(e: impl std::fmt::Display) -> Step {
    Step::Retry(e.to_string())
}

fn from_command<E: std::error::Error + 'static>(
    e: CommandError<E>,
    code: impl Fn(&E) -> &'static str,
) -> Step {
    match e {
        CommandError::Rejected(r) => Step::Refused(code(&r), r.to_string()),
        CommandError::IdempotencyMismatch => Step::Refused(
            "duplicate_msg_id",
            "msg_id was already used for another message".into(),
        ),
        other => retry(other),
    }
}

fn device_ctx(device: &DeviceId, msg_id: &str, step: &str) -> CommandContext {
    let id = device.to_string();
    let key = IdempotencyKey::new(&format!("device:{id}:{step}"), msg_id, step.as_bytes());
    CommandContext::new(format!("device:{id}"))
        .with_device(id)
        .with_idempotency(key)
}

/// A `weights` report from `device` for `session_id`.
pub async fn weights(
    store: &Store,
    device: &DeviceId,
    msg_id: &str,
    session_id: Uuid,
    phase: WeighingPhase,
    weighing: Weighing,
    at: chrono::DateTime<chrono::Utc>,
) -> Step {
    let sid = session_id.to_string();
    // Read once: the command chosen from this state is decided on it too (`execute_on`).
    let loaded = match store.shopping_sessions.load_with_position(&sid).await {
        Ok(l) => l,
        Err(e) => return retry(e),
    };
    let session = (loaded.sequence > 0).then_some(&loaded.aggregate);
    if let Some(session) = session {
        if session.device_id.as_ref() != Some(device) {
            return Step::Refused(
                "session_of_another_cabinet",
                format!("session {sid} belongs to another cabinet"),
            );
        }
    }
    let ctx = device_ctx(device, msg_id, "weights");
    let stage = session.map(|s| s.stage);
    match (phase, stage) {
        (WeighingPhase::Before, None) => {
            start(store, loaded, device, session_id, weighing, at, ctx).await
        }
        (WeighingPhase::Before, Some(_)) => {
            let command = ShoppingCommand::RecordWeighing {
                weighing,
                phase,
                at,
            };
            run_session(store, loaded, &sid, command, &ctx).await
        }
        (WeighingPhase::After, None) => Step::Refused(
            "unknown_session",
            format!("no shopping session {sid} at this cabinet"),
        ),
        (WeighingPhase::After, Some(stage)) => {
            let step = if stage == SessionStage::Open {
                let command = ShoppingCommand::Close {
                    weighing_after: weighing,
                    at,
                };
                run_session(store, loaded, &sid, command, &ctx).await
            } else {
                Step::Done
            };
            if !matches!(step, Step::Done) {
                return step;
            }
            // Settled: the cabinet is free for the next shopper.
            end_session(
                store,
                device,
                session_id,
                at,
                device_ctx(device, msg_id, "end"),
            )
            .await
        }
    }
}

/// Starts the session `empty` (read just now, and found empty) for the opening pending at the
/// cabinet.
async fn start(
    store: &Store,
    empty: Loaded<ShoppingSession>,
    device: &DeviceId,
    session_id: Uuid,
    weighing: Weighing,
    at: chrono::DateTime<chrono::Utc>,
    ctx: CommandContext,
) -> Step {
    let did = device.to_string();
    let cabinet: Device = match store.devices.load(&did).await {
        Ok(Some(d)) => d,
        Ok(None) => return Step::Refused("unknown_device", format!("device {did}")),
        Err(e) => return retry(e),
    };
    let Some(pending) = cabinet.pending_open.as_ref().filter(|p| {
        p.shopper
            .as_ref()
            .is_some_and(|s| s.session_id == session_id)
    }) else {
        return Step::Refused(
            "unknown_session",
            format!("no opening for shopping session {session_id} is pending at this cabinet"),
        );
    };
    let shopper = pending.shopper.clone().expect("filtered above");
    let planogram = match store.planograms.load(&did).await {
        Ok(Some(p)) => p.current,
        Ok(None) => None,
        Err(e) => return retry(e),
    };
    let Some(planogram) = planogram else {
        return Step::Refused("no_planogram", format!("cabinet {did} has no planogram"));
    };
    let (Ok(user), Some(site)) = (
        KazayaUserId::parse("user", &shopper.user),
        cabinet.site.clone(),
    ) else {
        return Step::Refused(
            "invalid_session",
            "the opening names no valid shopper".into(),
        );
    };
    let command = ShoppingCommand::Start {
        session_id: SessionId::from(session_id),
        device_id: *device,
        site,
        user,
        open_request_id: pending.request_id,
        planogram,
        weighing_before: weighing,
        at,
    };
    run_session(store, empty, &session_id.to_string(), command, &ctx).await
}

/// Runs `command` on the session, deciding first on `loaded`, the state it was chosen from.
async fn run_session(
    store: &Store,
    loaded: Loaded<ShoppingSession>,
    sid: &str,
    command: ShoppingCommand,
    ctx: &CommandContext,
) -> Step {
    let name = command.name();
    match store
        .shopping_sessions
        .execute_on(loaded, sid, name, command, ctx)
        .await
    {
        Ok(_) => Step::Done,
        Err(e) => from_command(e, |r| r.code()),
    }
}

async fn end_session(
    store: &Store,
    device: &DeviceId,
    session_id: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    ctx: CommandContext,
) -> Step {
    let command = DeviceCommand::EndSession { session_id, at };
    let name = command.name();
    match store
        .devices
        .execute(&device.to_string(), name, command, &ctx)
        .await
    {
        Ok(_) => Step::Done,
        Err(e) => from_command(e, |r| r.code()),
    }
}

/// Records that an opening failed and, if it was a shopper's, abandons the session its
/// baseline may already have started (the door never opened, so nothing is owed).
pub async fn fail_open(
    store: &Store,
    device: &DeviceId,
    request_id: Uuid,
    failure: OpenFailure,
    at: chrono::DateTime<chrono::Utc>,
    ctx: &CommandContext,
) -> Step {
    let did = device.to_string();
    let cabinet = match store.devices.load_with_position(&did).await {
        Ok(l) if l.sequence > 0 => l,
        Ok(_) => return Step::Refused("unknown_device", did),
        Err(e) => return retry(e),
    };
    let shopper = cabinet
        .aggregate
        .pending_open
        .as_ref()
        .filter(|p| p.request_id == request_id)
        .and_then(|p| p.shopper.clone());
    let reason = match &failure {
        OpenFailure::Timeout => "the cabinet did not open in time".to_owned(),
        OpenFailure::Refused { reason } => format!("the cabinet refused to open: {reason}"),
    };
    let command = DeviceCommand::FailOpen {
        request_id,
        failure,
        at,
    };
    let name = command.name();
    if let Err(e) = store
        .devices
        .execute_on(cabinet, &did, name, command, ctx)
        .await
    {
        return from_command(e, |r| r.code());
    }
    let Some(shopper) = shopper else {
        return Step::Done;
    };
    let sid = shopper.session_id.to_string();
    let session = match store.shopping_sessions.load_with_position(&sid).await {
        Ok(l) if l.sequence > 0 && l.aggregate.stage == SessionStage::Open => l,
        Ok(_) => return Step::Done,
        Err(e) => return retry(e),
    };
    let reason = Label::parse("reason", &reason, 200)
        .unwrap_or_else(|_| Label::parse("reason", "open failed", 200).expect("valid label"));
    let mut abandon_ctx = CommandContext::new(ctx.actor.clone());
    abandon_ctx.correlation_id = ctx.correlation_id;
    abandon_ctx.causation_id = ctx.request_id;
    if let Some(d) = &ctx.device {
        abandon_ctx = abandon_ctx.with_device(d.clone());
    }
    run_session(
        store,
        session,
        &sid,
        ShoppingCommand::Abandon { reason, at },
        &abandon_ctx,
    )
    .await
}
