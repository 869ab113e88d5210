//! The device aggregate: one vending cabinet or parcel locker.
//!
//! Its stream holds transitions only (registration, online/offline, door, faults, remote opening);
//! heartbeats never reach it. `handle` decides, `apply` only records.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A value that failed to parse at the edge, naming the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

impl ParseError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(Uuid);

impl DeviceId {
    /// A fresh UUIDv7 id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ParseError::new(field, "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for DeviceId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Vending,
    Locker,
}

impl DeviceKind {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        match raw {
            "vending" => Ok(Self::Vending),
            "locker" => Ok(Self::Locker),
            _ => Err(ParseError::new(field, "must be \"vending\" or \"locker\"")),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Vending => "vending",
            Self::Locker => "locker",
        }
    }
}

/// Where a device stands: an outlet or site number such as `610091A01`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiteCode(String);

impl SiteCode {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let ok_len = (1..=32).contains(&raw.len());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                field,
                "must be 1-32 characters of A-Z, a-z, 0-9, '-' or '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text shown to people (UTF-8, any script), bounded and without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    pub fn parse(field: &str, raw: &str, max_chars: usize) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        let count = trimmed.chars().count();
        if count == 0 {
            return Err(ParseError::new(field, "must not be empty"));
        }
        if count > max_chars {
            return Err(ParseError::new(
                field,
                format!("must be at most {max_chars} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ParseError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A machine-readable fault code reported by a device, e.g. `door_jammed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FaultCode(String);

impl FaultCode {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new(
                field,
                "must be 1-32 characters of a-z, 0-9 or '_'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DoorState {
    #[default]
    Unknown,
    Open,
    Closed,
}

impl DoorState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// Why a remote opening did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenFailure {
    /// No door event arrived before the deadline.
    Timeout,
    /// The device answered that it could not open, with its reason.
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceCommand {
    Register {
        device_id: DeviceId,
        kind: DeviceKind,
        site: SiteCode,
        label: Label,
        at: DateTime<Utc>,
    },
    ReportOnline {
        at: DateTime<Utc>,
    },
    ReportOffline {
        last_seen: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    ReportDoor {
        state: DoorState,
        request_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    RaiseFault {
        code: FaultCode,
        message: Label,
        at: DateTime<Utc>,
    },
    ClearFault {
        at: DateTime<Utc>,
    },
    RequestOpen {
        request_id: Uuid,
        deadline: DateTime<Utc>,
        /// Set when a shopper asks: the cabinet is theirs until the session ends.
        shopper: Option<ShopperOpen>,
        at: DateTime<Utc>,
    },
    /// The shopping session begun by an opening has been settled (or abandoned): the cabinet
    /// is free for the next shopper.
    EndSession {
        session_id: Uuid,
        at: DateTime<Utc>,
    },
    FailOpen {
        request_id: Uuid,
        failure: OpenFailure,
        at: DateTime<Utc>,
    },
}

impl DeviceCommand {
    /// A stable name for logs and metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RegisterDevice",
            Self::ReportOnline { .. } => "ReportOnline",
            Self::ReportOffline { .. } => "ReportOffline",
            Self::ReportDoor { .. } => "ReportDoor",
            Self::RaiseFault { .. } => "RaiseFault",
            Self::ClearFault { .. } => "ClearFault",
            Self::RequestOpen { .. } => "RequestOpen",
            Self::EndSession { .. } => "EndShoppingSession",
            Self::FailOpen { .. } => "FailOpen",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceEvent {
    DeviceRegistered {
        device_id: DeviceId,
        kind: DeviceKind,
        site: SiteCode,
        label: Label,
        at: DateTime<Utc>,
    },
    DeviceCameOnline {
        at: DateTime<Utc>,
    },
    DeviceWentOffline {
        last_seen: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    DoorOpened {
        request_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    DoorClosed {
        at: DateTime<Utc>,
    },
    FaultRaised {
        code: FaultCode,
        message: Label,
        at: DateTime<Utc>,
    },
    FaultCleared {
        code: FaultCode,
        at: DateTime<Utc>,
    },
    DoorOpenRequested {
        request_id: Uuid,
        deadline: DateTime<Utc>,
        /// Absent in events written before vending, and for operators' openings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shopper: Option<ShopperOpen>,
        at: DateTime<Utc>,
    },
    ShoppingSessionEnded {
        session_id: Uuid,
        at: DateTime<Utc>,
    },
    DoorOpenConfirmed {
        request_id: Uuid,
        at: DateTime<Utc>,
    },
    DoorOpenFailed {
        request_id: Uuid,
        failure: OpenFailure,
        at: DateTime<Utc>,
    },
}

impl DeviceEvent {
    pub const VERSION: &'static str = "1";

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::DeviceRegistered { at, .. }
            | Self::DeviceCameOnline { at }
            | Self::DeviceWentOffline { at, .. }
            | Self::DoorOpened { at, .. }
            | Self::DoorClosed { at }
            | Self::FaultRaised { at, .. }
            | Self::FaultCleared { at, .. }
            | Self::DoorOpenRequested { at, .. }
            | Self::ShoppingSessionEnded { at, .. }
            | Self::DoorOpenConfirmed { at, .. }
            | Self::DoorOpenFailed { at, .. } => *at,
        }
    }
}

impl DomainEvent for DeviceEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DeviceRegistered { .. } => "DeviceRegistered",
            Self::DeviceCameOnline { .. } => "DeviceCameOnline",
            Self::DeviceWentOffline { .. } => "DeviceWentOffline",
            Self::DoorOpened { .. } => "DoorOpened",
            Self::DoorClosed { .. } => "DoorClosed",
            Self::FaultRaised { .. } => "FaultRaised",
            Self::FaultCleared { .. } => "FaultCleared",
            Self::DoorOpenRequested { .. } => "DoorOpenRequested",
            Self::ShoppingSessionEnded { .. } => "ShoppingSessionEnded",
            Self::DoorOpenConfirmed { .. } => "DoorOpenConfirmed",
            Self::DoorOpenFailed { .. } => "DoorOpenFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}

/// Why a device command was refused. Each has a stable code for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("device is not registered")]
    NotRegistered,
    #[error("device is already registered")]
    AlreadyRegistered,
    #[error("device is offline")]
    Offline,
    #[error("device has an active fault: {0}")]
    Faulted(String),
    #[error("door is already open")]
    DoorAlreadyOpen,
    #[error("an open request is already pending for this device")]
    OpenPending,
    #[error("no such pending open request")]
    UnknownOpenRequest,
    #[error("a shopping session is in progress at this cabinet")]
    SessionInProgress,
    #[error("this device is not a vending cabinet")]
    NotVending,
    #[error("no such shopping session at this cabinet")]
    UnknownSession,
}

impl DeviceError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotRegistered => "device_not_registered",
            Self::AlreadyRegistered => "device_already_registered",
            Self::Offline => "device_offline",
            Self::Faulted(_) => "device_faulted",
            Self::DoorAlreadyOpen => "door_already_open",
            Self::OpenPending => "open_already_pending",
            Self::UnknownOpenRequest => "unknown_open_request",
            Self::SessionInProgress => "cabinet_busy",
            Self::NotVending => "not_a_vending_cabinet",
            Self::UnknownSession => "unknown_session",
        }
    }

    /// Not-registered is "not found" to a client; everything else is a state conflict.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotRegistered)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingOpen {
    pub request_id: Uuid,
    pub deadline: DateTime<Utc>,
    pub shopper: Option<ShopperOpen>,
}

/// Who an opening is for, when a shopper asked: the session it begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopperOpen {
    pub session_id: Uuid,
    /// The shopper's Kazaya member id.
    pub user: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Device {
    pub registered: bool,
    pub online: bool,
    pub door: DoorState,
    pub fault: Option<FaultCode>,
    pub pending_open: Option<PendingOpen>,
    /// The last open request that was confirmed or failed, so a late duplicate is a no-op.
    pub last_resolved_open: Option<Uuid>,
    pub kind: Option<DeviceKind>,
    pub site: Option<SiteCode>,
    /// The shopping session holding the cabinet: from the shopper's open request until the
    /// session is settled, or until the opening fails. This is the lock that makes two phones
    /// pressing "open" at once start exactly one session.
    pub session: Option<ShopperOpen>,
}

impl crate::store::StateShape for Device {}

impl Aggregate for Device {
    const TYPE: &'static str = "device";
    type Command = DeviceCommand;
    type Event = DeviceEvent;
    type Error = DeviceError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            DeviceEvent::DeviceRegistered { kind, site, .. } => {
                self.registered = true;
                self.kind = Some(kind);
                self.site = Some(site);
            }
            DeviceEvent::DeviceCameOnline { .. } => self.online = true,
            DeviceEvent::DeviceWentOffline { .. } => self.online = false,
            DeviceEvent::DoorOpened { .. } => self.door = DoorState::Open,
            DeviceEvent::DoorClosed { .. } => self.door = DoorState::Closed,
            DeviceEvent::FaultRaised { code, .. } => self.fault = Some(code),
            DeviceEvent::FaultCleared { .. } => self.fault = None,
            DeviceEvent::DoorOpenRequested {
                request_id,
                deadline,
                shopper,
                ..
            } => {
                if shopper.is_some() {
                    self.session = shopper.clone();
                }
                self.pending_open = Some(PendingOpen {
                    request_id,
                    deadline,
                    shopper,
                })
            }
            DeviceEvent::DoorOpenConfirmed { request_id, .. } => {
                self.pending_open = None;
                self.last_resolved_open = Some(request_id);
            }
            DeviceEvent::DoorOpenFailed { request_id, .. } => {
                // The door never opened, so the session it was for never began.
                if let Some(p) = self.pending_open.take() {
                    if p.shopper.is_some() && self.session == p.shopper {
                        self.session = None;
                    }
                }
                self.last_resolved_open = Some(request_id);
            }
            DeviceEvent::ShoppingSessionEnded { session_id, .. } => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.session_id == session_id)
                {
                    self.session = None;
                }
            }
        }
    }
}

impl Device {
    /// The whole decision, synchronous and pure: the events a command produces, or why not.
    /// An empty list means the command is already satisfied (devices repeat themselves).
    pub fn decide(&self, command: DeviceCommand) -> Result<Vec<DeviceEvent>, DeviceError> {
        use DeviceCommand as C;
        use DeviceEvent as E;
        if let C::Register {
            device_id,
            kind,
            site,
            label,
            at,
        } = command
        {
            if self.registered {
                return Err(DeviceError::AlreadyRegistered);
            }
            return Ok(vec![E::DeviceRegistered {
                device_id,
                kind,
                site,
                label,
                at,
            }]);
        }
        if !self.registered {
            return Err(DeviceError::NotRegistered);
        }
        let events = match command {
            C::Register { .. } => unreachable!("handled above"),
            C::ReportOnline { at } if !self.online => vec![E::DeviceCameOnline { at }],
            C::ReportOffline { last_seen, at } if self.online => {
                vec![E::DeviceWentOffline { last_seen, at }]
            }
            C::ReportOnline { .. } | C::ReportOffline { .. } => vec![],
            C::ReportDoor {
                state: DoorState::Open,
                request_id,
                at,
            } => {
                let mut events = Vec::new();
                if self.door != DoorState::Open {
                    events.push(E::DoorOpened { request_id, at });
                }
                if let (Some(pending), Some(id)) = (&self.pending_open, request_id) {
                    if pending.request_id == id {
                        events.push(E::DoorOpenConfirmed { request_id: id, at });
                    }
                }
                events
            }
            C::ReportDoor {
                state: DoorState::Closed,
                at,
                ..
            } if self.door != DoorState::Closed => vec![E::DoorClosed { at }],
            C::ReportDoor { .. } => vec![],
            C::RaiseFault { code, message, at } => {
                if self.fault.as_ref() == Some(&code) {
                    vec![]
                } else {
                    vec![E::FaultRaised { code, message, at }]
                }
            }
            C::ClearFault { at } => match &self.fault {
                Some(code) => vec![E::FaultCleared {
                    code: code.clone(),
                    at,
                }],
                None => vec![],
            },
            C::RequestOpen {
                request_id,
                deadline,
                shopper,
                at,
            } => {
                if shopper.is_some() && self.kind != Some(DeviceKind::Vending) {
                    return Err(DeviceError::NotVending);
                }
                if !self.online {
                    return Err(DeviceError::Offline);
                }
                if let Some(code) = &self.fault {
                    return Err(DeviceError::Faulted(code.as_str().to_owned()));
                }
                if self.door == DoorState::Open {
                    return Err(DeviceError::DoorAlreadyOpen);
                }
                if self.pending_open.is_some() {
                    return Err(DeviceError::OpenPending);
                }
                // Operators may open a cabinet mid-session (to restock or help); shoppers wait.
                if shopper.is_some() && self.session.is_some() {
                    return Err(DeviceError::SessionInProgress);
                }
                vec![E::DoorOpenRequested {
                    request_id,
                    deadline,
                    shopper,
                    at,
                }]
            }
            C::EndSession { session_id, at } => match &self.session {
                Some(s) if s.session_id == session_id => {
                    vec![E::ShoppingSessionEnded { session_id, at }]
                }
                // Already ended (a redelivered settlement): nothing to do.
                _ => vec![],
            },
            C::FailOpen {
                request_id,
                failure,
                at,
            } => match &self.pending_open {
                Some(pending) if pending.request_id == request_id => vec![E::DoorOpenFailed {
                    request_id,
                    failure,
                    at,
                }],
                // A timeout racing a late confirmation, or a repeated refusal: already settled.
                _ if self.last_resolved_open == Some(request_id) => vec![],
                _ => return Err(DeviceError::UnknownOpenRequest),
            },
        };
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type DeviceTest = TestFramework<Device>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn id() -> DeviceId {
        DeviceId::from(Uuid::from_u128(7))
    }
    fn req(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }
    fn registered() -> DeviceEvent {
        DeviceEvent::DeviceRegistered {
            device_id: id(),
            kind: DeviceKind::Vending,
            site: SiteCode::parse("site", "610091A01").unwrap(),
            label: Label::parse("label", "一号柜", 80).unwrap(),
            at: t(0),
        }
    }
    fn online() -> DeviceEvent {
        DeviceEvent::DeviceCameOnline { at: t(1) }
    }
    fn closed() -> DeviceEvent {
        DeviceEvent::DoorClosed { at: t(2) }
    }
    fn requested(n: u128) -> DeviceEvent {
        DeviceEvent::DoorOpenRequested {
            request_id: req(n),
            deadline: t(20),
            shopper: None,
            at: t(10),
        }
    }
    fn ready() -> Vec<DeviceEvent> {
        vec![registered(), online(), closed()]
    }
    fn fault(code: &str) -> FaultCode {
        FaultCode::parse("code", code).unwrap()
    }

    #[test]
    fn register_a_new_device() {
        let DeviceEvent::DeviceRegistered {
            device_id,
            kind,
            site,
            label,
            at,
        } = registered()
        else {
            unreachable!()
        };
        DeviceTest::with(())
            .given_no_previous_events()
            .when(DeviceCommand::Register {
                device_id,
                kind,
                site,
                label,
                at,
            })
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn register_twice_is_refused() {
        let DeviceEvent::DeviceRegistered {
            device_id,
            kind,
            site,
            label,
            at,
        } = registered()
        else {
            unreachable!()
        };
        DeviceTest::with(())
            .given(vec![registered()])
            .when(DeviceCommand::Register {
                device_id,
                kind,
                site,
                label,
                at,
            })
            .then_expect_error(DeviceError::AlreadyRegistered);
    }

    #[test]
    fn every_other_command_needs_registration() {
        let commands = vec![
            DeviceCommand::ReportOnline { at: t(1) },
            DeviceCommand::ReportOffline {
                last_seen: t(0),
                at: t(1),
            },
            DeviceCommand::ReportDoor {
                state: DoorState::Open,
                request_id: None,
                at: t(1),
            },
            DeviceCommand::RaiseFault {
                code: fault("jam"),
                message: Label::parse("m", "jam", 10).unwrap(),
                at: t(1),
            },
            DeviceCommand::ClearFault { at: t(1) },
            DeviceCommand::RequestOpen {
                request_id: req(1),
                deadline: t(9),
                shopper: None,
                at: t(1),
            },
            DeviceCommand::FailOpen {
                request_id: req(1),
                failure: OpenFailure::Timeout,
                at: t(1),
            },
        ];
        for command in commands {
            DeviceTest::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(DeviceError::NotRegistered);
        }
    }

    #[test]
    fn online_and_offline_are_transitions_only() {
        DeviceTest::with(())
            .given(vec![registered()])
            .when(DeviceCommand::ReportOnline { at: t(1) })
            .then_expect_events(vec![online()]);
        DeviceTest::with(())
            .given(vec![registered(), online()])
            .when(DeviceCommand::ReportOnline { at: t(2) })
            .then_expect_events(vec![]);
        DeviceTest::with(())
            .given(vec![registered(), online()])
            .when(DeviceCommand::ReportOffline {
                last_seen: t(1),
                at: t(40),
            })
            .then_expect_events(vec![DeviceEvent::DeviceWentOffline {
                last_seen: t(1),
                at: t(40),
            }]);
        DeviceTest::with(())
            .given(vec![registered()])
            .when(DeviceCommand::ReportOffline {
                last_seen: t(1),
                at: t(40),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn door_reports_record_changes_and_ignore_repeats() {
        DeviceTest::with(())
            .given(ready())
            .when(DeviceCommand::ReportDoor {
                state: DoorState::Open,
                request_id: None,
                at: t(3),
            })
            .then_expect_events(vec![DeviceEvent::DoorOpened {
                request_id: None,
                at: t(3),
            }]);
        DeviceTest::with(())
            .given(ready())
            .when(DeviceCommand::ReportDoor {
                state: DoorState::Closed,
                request_id: None,
                at: t(3),
            })
            .then_expect_events(vec![]);
        let mut open = ready();
        open.push(DeviceEvent::DoorOpened {
            request_id: None,
            at: t(3),
        });
        DeviceTest::with(())
            .given(open)
            .when(DeviceCommand::ReportDoor {
                state: DoorState::Closed,
                request_id: None,
                at: t(4),
            })
            .then_expect_events(vec![DeviceEvent::DoorClosed { at: t(4) }]);
    }

    #[test]
    fn faults_are_raised_once_and_cleared() {
        let message = Label::parse("m", "motor stalled", 200).unwrap();
        DeviceTest::with(())
            .given(ready())
            .when(DeviceCommand::RaiseFault {
                code: fault("motor"),
                message: message.clone(),
                at: t(5),
            })
            .then_expect_events(vec![DeviceEvent::FaultRaised {
                code: fault("motor"),
                message: message.clone(),
                at: t(5),
            }]);
        let mut faulted = ready();
        faulted.push(DeviceEvent::FaultRaised {
            code: fault("motor"),
            message: message.clone(),
            at: t(5),
        });
        DeviceTest::with(())
            .given(faulted.clone())
            .when(DeviceCommand::RaiseFault {
                code: fault("motor"),
                message,
                at: t(6),
            })
            .then_expect_events(vec![]);
        DeviceTest::with(())
            .given(faulted)
            .when(DeviceCommand::ClearFault { at: t(7) })
            .then_expect_events(vec![DeviceEvent::FaultCleared {
                code: fault("motor"),
                at: t(7),
            }]);
        DeviceTest::with(())
            .given(ready())
            .when(DeviceCommand::ClearFault { at: t(7) })
            .then_expect_events(vec![]);
    }

    fn open_request(n: u128) -> DeviceCommand {
        DeviceCommand::RequestOpen {
            request_id: req(n),
            deadline: t(20),
            shopper: None,
            at: t(10),
        }
    }

    #[test]
    fn open_request_on_a_ready_device() {
        DeviceTest::with(())
            .given(ready())
            .when(open_request(1))
            .then_expect_events(vec![requested(1)]);
    }

    #[test]
    fn open_request_refusals() {
        DeviceTest::with(())
            .given(vec![registered(), closed()])
            .when(open_request(1))
            .then_expect_error(DeviceError::Offline);
        let mut faulted = ready();
        faulted.push(DeviceEvent::FaultRaised {
            code: fault("jam"),
            message: Label::parse("m", "jam", 10).unwrap(),
            at: t(3),
        });
        DeviceTest::with(())
            .given(faulted)
            .when(open_request(1))
            .then_expect_error(DeviceError::Faulted("jam".into()));
        let mut open = ready();
        open.push(DeviceEvent::DoorOpened {
            request_id: None,
            at: t(3),
        });
        DeviceTest::with(())
            .given(open)
            .when(open_request(1))
            .then_expect_error(DeviceError::DoorAlreadyOpen);
        let mut pending = ready();
        pending.push(requested(1));
        DeviceTest::with(())
            .given(pending)
            .when(open_request(2))
            .then_expect_error(DeviceError::OpenPending);
    }

    #[test]
    fn door_event_with_the_request_id_confirms_the_open() {
        let mut pending = ready();
        pending.push(requested(1));
        DeviceTest::with(())
            .given(pending.clone())
            .when(DeviceCommand::ReportDoor {
                state: DoorState::Open,
                request_id: Some(req(1)),
                at: t(11),
            })
            .then_expect_events(vec![
                DeviceEvent::DoorOpened {
                    request_id: Some(req(1)),
                    at: t(11),
                },
                DeviceEvent::DoorOpenConfirmed {
                    request_id: req(1),
                    at: t(11),
                },
            ]);
        // Someone opening by hand does not confirm a remote request.
        DeviceTest::with(())
            .given(pending)
            .when(DeviceCommand::ReportDoor {
                state: DoorState::Open,
                request_id: None,
                at: t(11),
            })
            .then_expect_events(vec![DeviceEvent::DoorOpened {
                request_id: None,
                at: t(11),
            }]);
    }

    #[test]
    fn open_failure_paths() {
        let mut pending = ready();
        pending.push(requested(1));
        DeviceTest::with(())
            .given(pending.clone())
            .when(DeviceCommand::FailOpen {
                request_id: req(1),
                failure: OpenFailure::Timeout,
                at: t(21),
            })
            .then_expect_events(vec![DeviceEvent::DoorOpenFailed {
                request_id: req(1),
                failure: OpenFailure::Timeout,
                at: t(21),
            }]);
        DeviceTest::with(())
            .given(pending.clone())
            .when(DeviceCommand::FailOpen {
                request_id: req(2),
                failure: OpenFailure::Timeout,
                at: t(21),
            })
            .then_expect_error(DeviceError::UnknownOpenRequest);
        // A timeout that loses the race against the confirmation changes nothing.
        let mut confirmed = pending;
        confirmed.push(DeviceEvent::DoorOpened {
            request_id: Some(req(1)),
            at: t(11),
        });
        confirmed.push(DeviceEvent::DoorOpenConfirmed {
            request_id: req(1),
            at: t(11),
        });
        DeviceTest::with(())
            .given(confirmed)
            .when(DeviceCommand::FailOpen {
                request_id: req(1),
                failure: OpenFailure::Timeout,
                at: t(21),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn parsing_names_the_field() {
        assert_eq!(
            DeviceKind::parse("kind", "fridge").unwrap_err().field,
            "kind"
        );
        assert!(SiteCode::parse("site", "610091A01").is_ok());
        assert!(SiteCode::parse("site", "a b").is_err());
        assert!(Label::parse("label", "  ", 80).is_err());
        assert!(Label::parse("label", "快递公司A", 80).is_ok());
        assert!(Label::parse("label", "a\u{7}b", 80).is_err());
        assert!(Label::parse("label", &"x".repeat(81), 80).is_err());
        assert!(FaultCode::parse("code", "Door").is_err());
        assert!(DeviceId::parse("device_id", "nope").is_err());
    }

    fn shopper(n: u128) -> ShopperOpen {
        ShopperOpen {
            session_id: Uuid::from_u128(5000 + n),
            user: format!("ky_{n}"),
        }
    }
    fn shopper_opens(n: u128) -> DeviceCommand {
        DeviceCommand::RequestOpen {
            request_id: req(n),
            deadline: t(20),
            shopper: Some(shopper(n)),
            at: t(10),
        }
    }
    fn shopper_requested(n: u128) -> DeviceEvent {
        DeviceEvent::DoorOpenRequested {
            request_id: req(n),
            deadline: t(20),
            shopper: Some(shopper(n)),
            at: t(10),
        }
    }

    #[test]
    fn a_shoppers_opening_holds_the_cabinet_until_the_session_ends() {
        DeviceTest::with(())
            .given(ready())
            .when(shopper_opens(1))
            .then_expect_events(vec![shopper_requested(1)]);
        // Confirmed: the door opened, the session still holds the cabinet.
        let mut held = ready();
        held.push(shopper_requested(1));
        held.push(DeviceEvent::DoorOpened {
            request_id: Some(req(1)),
            at: t(11),
        });
        held.push(DeviceEvent::DoorOpenConfirmed {
            request_id: req(1),
            at: t(11),
        });
        held.push(DeviceEvent::DoorClosed { at: t(12) });
        DeviceTest::with(())
            .given(held.clone())
            .when(shopper_opens(2))
            .then_expect_error(DeviceError::SessionInProgress);
        // An operator may still open it (to restock or help).
        DeviceTest::with(())
            .given(held.clone())
            .when(DeviceCommand::RequestOpen {
                request_id: req(3),
                deadline: t(30),
                shopper: None,
                at: t(13),
            })
            .then_expect_events(vec![DeviceEvent::DoorOpenRequested {
                request_id: req(3),
                deadline: t(30),
                shopper: None,
                at: t(13),
            }]);
        let end = |n: u128| DeviceCommand::EndSession {
            session_id: shopper(n).session_id,
            at: t(14),
        };
        let ended = DeviceEvent::ShoppingSessionEnded {
            session_id: shopper(1).session_id,
            at: t(14),
        };
        // Ending another session changes nothing; ending this one frees the cabinet, once.
        DeviceTest::with(())
            .given(held.clone())
            .when(end(9))
            .then_expect_events(vec![]);
        DeviceTest::with(())
            .given(held.clone())
            .when(end(1))
            .then_expect_events(vec![ended.clone()]);
        held.push(ended);
        DeviceTest::with(())
            .given(held.clone())
            .when(end(1))
            .then_expect_events(vec![]);
        DeviceTest::with(())
            .given(held)
            .when(shopper_opens(2))
            .then_expect_events(vec![shopper_requested(2)]);
    }

    #[test]
    fn a_failed_shopper_opening_frees_the_cabinet() {
        let mut given = ready();
        given.push(shopper_requested(1));
        given.push(DeviceEvent::DoorOpenFailed {
            request_id: req(1),
            failure: OpenFailure::Timeout,
            at: t(21),
        });
        DeviceTest::with(())
            .given(given)
            .when(shopper_opens(2))
            .then_expect_events(vec![shopper_requested(2)]);
    }

    #[test]
    fn shoppers_open_only_vending_cabinets() {
        let locker = DeviceEvent::DeviceRegistered {
            device_id: id(),
            kind: DeviceKind::Locker,
            site: SiteCode::parse("site", "610091A01").unwrap(),
            label: Label::parse("label", "柜", 80).unwrap(),
            at: t(0),
        };
        DeviceTest::with(())
            .given(vec![locker, online(), closed()])
            .when(shopper_opens(1))
            .then_expect_error(DeviceError::NotVending);
    }
}
