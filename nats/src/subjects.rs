//! The subject layout, in one place.

pub const EVENTS_STREAM: &str = "EVENTS";
pub const TELEMETRY_STREAM: &str = "TELEMETRY";
pub const GRANTS_STREAM: &str = "GRANTS";
pub const DEADLETTER_STREAM: &str = "DEADLETTER";

pub const EVENTS_ALL: &str = "latch.events.>";
pub const TELEMETRY_ALL: &str = "latch.dev.>";
pub const DEADLETTER_ALL: &str = "latch.dlq.>";
pub const GRANTS_ALL: &str = "latch.grants.>";

/// A device's own telemetry subject for one message type.
pub fn telemetry(device_id: &str, kind: &str) -> String {
    format!("latch.dev.{device_id}.{kind}")
}

/// Splits `latch.dev.<device>.<kind>` into (device, kind).
pub fn parse_telemetry_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("latch.dev.")?;
    let (device, kind) = rest.split_once('.')?;
    (!device.is_empty() && !kind.is_empty() && !kind.contains('.')).then_some((device, kind))
}

/// Where a device hears its commands (`open`, ...).
pub fn device_command(device_id: &str, command: &str) -> String {
    format!("latch.cmd.{device_id}.{command}")
}

/// The command that tells a locker device who holds one of its compartments (a request: the
/// device answers `{"ok":true}` once it has recorded it).
pub const HOLDER_COMMAND: &str = "holder";

/// Where a locker device hears holder changes of the compartments it opens.
pub fn device_holder(device_id: &str) -> String {
    device_command(device_id, HOLDER_COMMAND)
}

pub fn device_commands_all(device_id: &str) -> String {
    format!("latch.cmd.{device_id}.>")
}

/// One subject per context, event type and aggregate, so subscribers can filter to exactly what
/// they may see. Tokens that NATS would misread are replaced.
pub fn event(aggregate_type: &str, event_type: &str, aggregate_id: &str) -> String {
    format!(
        "latch.events.{}.{}.{}",
        token(aggregate_type),
        token(event_type),
        token(aggregate_id)
    )
}

pub fn events_of_type(aggregate_type: &str, event_type: &str) -> String {
    format!(
        "latch.events.{}.{}.*",
        token(aggregate_type),
        token(event_type)
    )
}

/// Every event of one aggregate type.
/// Every event of one aggregate: what a page following one order listens to.
pub fn events_of_one(aggregate_type: &str, aggregate_id: &str) -> String {
    format!(
        "latch.events.{}.*.{}",
        token(aggregate_type),
        token(aggregate_id)
    )
}

pub fn events_of_aggregate(aggregate_type: &str) -> String {
    format!("latch.events.{}.>", token(aggregate_type))
}

pub fn deadletter(source: &str) -> String {
    format!("latch.dlq.{}", token(source))
}

/// The inbox prefix a device uses for request replies, so its permissions can be this narrow.
pub fn device_inbox_prefix(device_id: &str) -> String {
    format!("_INBOX.{device_id}")
}

/// Where an authorizer answers grant requests over NATS (its signed callback's body).
pub fn authorizer_answers(authorizer: &str) -> String {
    format!("latch.authorizers.{}.answers", token(authorizer))
}

/// Every authorizer's answers, for the one listener.
pub const AUTHORIZER_ANSWERS_ALL: &str = "latch.authorizers.*.answers";

/// The authorizer number in `latch.authorizers.<number>.answers`.
pub fn parse_authorizer_answers_subject(subject: &str) -> Option<&str> {
    let number = subject
        .strip_prefix("latch.authorizers.")?
        .strip_suffix(".answers")?;
    (!number.is_empty() && !number.contains('.')).then_some(number)
}

/// Where an authorizer that subscribes hears its grant requests (signed like the webhook).
pub fn authorizer_grants(authorizer: &str) -> String {
    format!("latch.authorizers.{}.grants", token(authorizer))
}

/// An authorizer's durable feed of its grants: `latch.grants.<number>.<kind>`, kind one of
/// `requested`, `accepted`, `declined`, `completed`, `failed`, `expired` (the GRANTS stream).
pub fn grant_feed(authorizer: &str, kind: &str) -> String {
    format!("latch.grants.{}.{}", token(authorizer), token(kind))
}

/// Everything in one authorizer's feed: the filter of its durable consumer.
pub fn grant_feed_all(authorizer: &str) -> String {
    format!("latch.grants.{}.>", token(authorizer))
}

/// Where an authorizer hears that a grant it accepted was completed.
pub fn authorizer_confirmations(authorizer: &str) -> String {
    format!("latch.authorizers.{}.confirmations", token(authorizer))
}

/// A locker user's notices (come and use, grant confirmed).
pub fn locker_notifications(user_number: &str) -> String {
    format!("latch.lockers.notifications.{}", token(user_number))
}

/// The development simulator's control switch `what` (`fault`, `shopper`, `restock`) for one
/// simulated cabinet.
pub fn sim_control(device_id: &str, what: &str) -> String {
    format!("latch.sim.{}.{}", token(device_id), token(what))
}

/// Where a simulated locker answers with its whole holder table (request/reply).
pub fn sim_holders(device_id: &str) -> String {
    sim_control(device_id, "holders")
}

/// Every control switch of one simulated cabinet.
pub fn sim_controls_all(device_id: &str) -> String {
    format!("latch.sim.{}.*", token(device_id))
}

pub fn token(raw: &str) -> String {
    if raw.is_empty() {
        return "_".to_owned();
    }
    raw.chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        assert_eq!(
            parse_telemetry_subject(&telemetry("abc", "door")),
            Some(("abc", "door"))
        );
        assert_eq!(parse_telemetry_subject("latch.dev.abc"), None);
        assert_eq!(parse_telemetry_subject("latch.dev.abc.door.x"), None);
        assert_eq!(
            event("device", "DoorOpened", "a.b*"),
            "latch.events.device.DoorOpened.a_b_"
        );
        assert_eq!(
            parse_authorizer_answers_subject(&authorizer_answers("0001")),
            Some("0001")
        );
        assert_eq!(
            parse_authorizer_answers_subject("latch.authorizers.a.b.answers"),
            None
        );
    }
}
