//! What cabinets say over NATS, and what we say back.
//!
//! A device publishes on `latch.dev.<device_id>.<type>`; the payload is JSON with a per-device
//! message id. [`parse_telemetry`] turns raw bytes into a [`Telemetry`] value or a [`Rejection`]
//! whose `reason` is a stable code that goes on the dead-letter message.

use crate::device::{DeviceId, DoorState, FaultCode, Label};
use crate::vending::{RawReading, Weighing, WeighingPhase};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Larger payloads are refused before parsing: no legitimate device message comes close.
pub const MAX_TELEMETRY_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub device_id: DeviceId,
    /// The device's own id for this message; repeated ids are duplicates.
    pub msg_id: String,
    pub sent_at: DateTime<Utc>,
    pub body: TelemetryBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TelemetryBody {
    Heartbeat {
        uptime_s: u64,
        temperature_c: Option<f64>,
    },
    Door {
        state: DoorState,
        request_id: Option<Uuid>,
    },
    Fault {
        code: FaultCode,
        message: Label,
        active: bool,
    },
    /// The device's answer to an open command it could not carry out.
    OpenRefused { request_id: Uuid, reason: Label },
    /// Stable per-shelf weights: `before` just ahead of unlocking for a shopper's session,
    /// `after` once the door has closed again.
    Weights {
        session_id: Uuid,
        phase: WeighingPhase,
        weighing: Weighing,
    },
}

impl TelemetryBody {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Heartbeat { .. } => "heartbeat",
            Self::Door { .. } => "door",
            Self::Fault { .. } => "fault",
            Self::OpenRefused { .. } => "open_refused",
            Self::Weights { .. } => "weights",
        }
    }
}

/// Why a message was refused. `reason` is a stable code; `detail` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The wire shape, as loose as serde allows so that each problem gets its own reason.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WireTelemetry {
    pub v: u32,
    pub msg_id: String,
    pub device_id: String,
    pub sent_at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelves: Option<Vec<RawReading>>,
}

/// `subject_device` and `subject_kind` come from the subject the message arrived on; the server's
/// permissions tie a device to its own subject subtree, so a payload naming another device is
/// refused rather than believed.
pub fn parse_telemetry(
    subject_device: &str,
    subject_kind: &str,
    bytes: &[u8],
) -> Result<Telemetry, Rejection> {
    if bytes.len() > MAX_TELEMETRY_BYTES {
        return Err(Rejection::new(
            "oversized",
            format!("{} bytes, limit {MAX_TELEMETRY_BYTES}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Rejection::new("not_utf8", "payload is not UTF-8"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Rejection::new("malformed_json", e.to_string()))?;
    let wire: WireTelemetry =
        serde_json::from_value(value).map_err(|e| Rejection::new("schema", e.to_string()))?;
    if wire.v != 1 {
        return Err(Rejection::new(
            "schema",
            format!("unsupported version {}", wire.v),
        ));
    }
    if wire.msg_id.is_empty()
        || wire.msg_id.len() > 64
        || !wire
            .msg_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Rejection::new(
            "schema",
            "msg_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'",
        ));
    }
    let device_id = DeviceId::parse("device_id", &wire.device_id)
        .map_err(|e| Rejection::new("schema", e.to_string()))?;
    let subject_id = DeviceId::parse("subject", subject_device)
        .map_err(|_| Rejection::new("bad_subject", format!("device {subject_device:?}")))?;
    if device_id != subject_id {
        return Err(Rejection::new(
            "device_mismatch",
            format!("payload names {device_id}, subject belongs to {subject_id}"),
        ));
    }
    if wire.kind != subject_kind {
        return Err(Rejection::new(
            "type_mismatch",
            format!("payload type {:?} on a {subject_kind:?} subject", wire.kind),
        ));
    }
    let schema = |detail: String| Rejection::new("schema", detail);
    let body = match wire.kind.as_str() {
        "heartbeat" => {
            let uptime_s = match &wire.uptime_s {
                Some(n) => n.as_u64().ok_or_else(|| {
                    Rejection::new("out_of_range", "uptime_s must be a non-negative integer")
                })?,
                None => return Err(schema("uptime_s is required".into())),
            };
            let temperature_c = match &wire.temperature_c {
                Some(n) => {
                    let t = n.as_f64().filter(|t| t.is_finite()).ok_or_else(|| {
                        Rejection::new("out_of_range", "temperature_c must be a finite number")
                    })?;
                    if !(-50.0..=100.0).contains(&t) {
                        return Err(Rejection::new(
                            "out_of_range",
                            "temperature_c must be between -50 and 100",
                        ));
                    }
                    Some(t)
                }
                None => None,
            };
            TelemetryBody::Heartbeat {
                uptime_s,
                temperature_c,
            }
        }
        "door" => {
            let state = match wire.state.as_deref() {
                Some("open") => DoorState::Open,
                Some("closed") => DoorState::Closed,
                _ => return Err(schema("state must be \"open\" or \"closed\"".into())),
            };
            TelemetryBody::Door {
                state,
                request_id: wire.request_id,
            }
        }
        "fault" => {
            let code = FaultCode::parse("code", wire.code.as_deref().unwrap_or(""))
                .map_err(|e| schema(e.to_string()))?;
            let message = Label::parse("message", wire.message.as_deref().unwrap_or("-"), 200)
                .map_err(|e| schema(e.to_string()))?;
            let active = wire
                .active
                .ok_or_else(|| schema("active is required".into()))?;
            TelemetryBody::Fault {
                code,
                message,
                active,
            }
        }
        "open_refused" => {
            let request_id = wire
                .request_id
                .ok_or_else(|| schema("request_id is required".into()))?;
            let reason = Label::parse("message", wire.message.as_deref().unwrap_or(""), 200)
                .map_err(|e| schema(e.to_string()))?;
            TelemetryBody::OpenRefused { request_id, reason }
        }
        "weights" => {
            let session_id = wire
                .session_id
                .ok_or_else(|| schema("session_id is required".into()))?;
            let phase = match wire.phase.as_deref() {
                Some("before") => WeighingPhase::Before,
                Some("after") => WeighingPhase::After,
                _ => return Err(schema("phase must be \"before\" or \"after\"".into())),
            };
            let shelves = wire
                .shelves
                .as_deref()
                .ok_or_else(|| schema("shelves is required".into()))?;
            let weighing = Weighing::parse("shelves", shelves)
                .map_err(|e| Rejection::new("out_of_range", e.to_string()))?;
            TelemetryBody::Weights {
                session_id,
                phase,
                weighing,
            }
        }
        other => return Err(schema(format!("unknown type {other:?}"))),
    };
    Ok(Telemetry {
        device_id,
        msg_id: wire.msg_id,
        sent_at: wire.sent_at,
        body,
    })
}

/// Sent on `latch.cmd.<device_id>.open`. The device opens, then reports a door event carrying
/// `request_id`; a repeated command with the same id must not open twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenCommand {
    pub request_id: Uuid,
    pub deadline: DateTime<Utc>,
    /// For a shopper's opening: the session the cabinet must name in its `weights` reports
    /// (a `before` weighing is expected before the door unlocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
}

/// Sent as a request on `latch.cmd.<device_id>.holder` to the locker device that opens
/// `compartment_id`: who holds it now (`None`: nobody, it is free or holds a parcel), as of log
/// `position`. The device keeps it only if `position` is newer than what it has, so a
/// redelivered or overtaken update changes nothing, and answers with a [`CommandReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderCommand {
    pub compartment_id: String,
    pub holder: Option<String>,
    pub position: i64,
    pub at: DateTime<Utc>,
}

/// A device's answer to a command it acknowledges: `{"ok":true}` once recorded, else
/// `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "01930000-0000-7000-8000-000000000001";

    fn parse(kind: &str, body: &str) -> Result<Telemetry, Rejection> {
        parse_telemetry(DEV, kind, body.as_bytes())
    }

    #[test]
    fn a_heartbeat_parses() {
        let t = parse(
            "heartbeat",
            &format!(
                r#"{{"v":1,"msg_id":"m1","device_id":"{DEV}","sent_at":"2026-01-01T00:00:00Z","type":"heartbeat","uptime_s":5,"temperature_c":4.5}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            t.body,
            TelemetryBody::Heartbeat {
                uptime_s: 5,
                temperature_c: Some(4.5)
            }
        );
    }

    #[test]
    fn each_problem_has_its_reason() {
        let base = |extra: &str| {
            format!(
                r#"{{"v":1,"msg_id":"m1","device_id":"{DEV}","sent_at":"2026-01-01T00:00:00Z","type":"heartbeat"{extra}}}"#
            )
        };
        assert_eq!(
            parse("heartbeat", "\u{1}\u{2}garbage").unwrap_err().reason,
            "malformed_json"
        );
        assert_eq!(
            parse_telemetry(DEV, "heartbeat", &[0xff, 0xfe])
                .unwrap_err()
                .reason,
            "not_utf8"
        );
        assert_eq!(
            parse("heartbeat", r#"{"hello":1}"#).unwrap_err().reason,
            "schema"
        );
        assert_eq!(
            parse("heartbeat", &base(r#","uptime_s":-3"#))
                .unwrap_err()
                .reason,
            "out_of_range"
        );
        assert_eq!(
            parse("heartbeat", &base(r#","uptime_s":3,"temperature_c":1e400"#))
                .unwrap_err()
                .reason,
            "malformed_json"
        );
        assert_eq!(
            parse("heartbeat", &base(r#","uptime_s":3,"temperature_c":NaN"#))
                .unwrap_err()
                .reason,
            "malformed_json"
        );
        assert_eq!(
            parse("door", &base(r#","uptime_s":3"#)).unwrap_err().reason,
            "type_mismatch"
        );
        let other = base(r#","uptime_s":3"#).replace(DEV, "01930000-0000-7000-8000-000000000002");
        assert_eq!(
            parse("heartbeat", &other).unwrap_err().reason,
            "device_mismatch"
        );
        let weights = |extra: &str| {
            format!(
                r#"{{"v":1,"msg_id":"w1","device_id":"{DEV}","sent_at":"2026-01-01T00:00:00Z","type":"weights"{extra}}}"#
            )
        };
        let sid = r#","session_id":"01930000-0000-7000-8000-0000000000aa""#;
        let ok = weights(&format!(
            r#"{sid},"phase":"before","shelves":[{{"shelf":1,"grams":700,"stable":true}}]"#
        ));
        assert!(matches!(
            parse("weights", &ok).unwrap().body,
            TelemetryBody::Weights {
                phase: WeighingPhase::Before,
                ..
            }
        ));
        assert_eq!(
            parse("weights", &weights(r#","phase":"before","shelves":[]"#))
                .unwrap_err()
                .reason,
            "schema"
        );
        assert_eq!(
            parse(
                "weights",
                &weights(&format!(r#"{sid},"phase":"during","shelves":[]"#))
            )
            .unwrap_err()
            .reason,
            "schema"
        );
        let twice = format!(
            r#"{sid},"phase":"after","shelves":[{{"shelf":1,"grams":1,"stable":true}},{{"shelf":1,"grams":2,"stable":true}}]"#
        );
        assert_eq!(
            parse("weights", &weights(&twice)).unwrap_err().reason,
            "out_of_range"
        );
        let big = base(&format!(r#","uptime_s":3,"pad":"{}""#, "x".repeat(5000)));
        assert_eq!(parse("heartbeat", &big).unwrap_err().reason, "oversized");
    }
}
