//! One locker compartment: one `locker_compartment` stream per `"{site}:{number}"`.
//!
//! A compartment is reserved by time window: a user books [start, end) and holds the right to
//! use the empty compartment only inside it. The compartment keeps every booked window
//! ([`Compartment::windows`]); two never overlap (half-open, so one may end exactly where the
//! next starts), and a reservation overlapping a booked window is refused
//! ([`CompartmentError::WindowTaken`]) instead of being queued or merged. Several users may so
//! book the same compartment for different future times.
//!
//! The holder may hand the right on ([`CompartmentCommand::Grant`]); only the holder of the
//! window the grant's moment falls in can, never to themselves, so of two grants racing for one
//! window the second finds the holder changed and is refused. A grant may hand on only part of
//! the window: the receiver holds that part, the granter keeps the rest. A window that lapses
//! unused is pruned by the sweeper's expiry at its end. The holder deposits a parcel once, inside
//! their window (the door opens for them and the parcel number is recorded), which uses that
//! window up; collecting the parcel frees the compartment for the windows still booked.
//!
//! A compartment's door is a device of kind `locker` at the same site ([`Compartment::door`]),
//! wired at installation or later. The door itself is not driven from here: a worker reacts to
//! `ParcelDeposited` / `ParcelCollected` by asking that device to open, so a crash between the
//! deposit and the opening is repaired by redelivery rather than lost.
//!
//! The pickup code is kept only as an HMAC-SHA256 under a server-side pepper
//! ([`PickupProof::mac`], computed by the caller): a short numeric code under a plain hash is
//! reversed by trying every code, so the log must hold nothing a code can be recovered from
//! without the pepper. Version 1 of `ParcelDeposited` held a plain SHA-256 of
//! `"{compartment}:{code}"`; its upcaster marks it [`LEGACY_SHA256`] and such a deposit is still
//! collected by comparing the old way.

use super::values::{AuthorizerNumber, CompartmentId, ParcelNumber, Size, UserNumber};
use crate::device::DeviceId;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How an upcast version-1 deposit's code digest starts: a plain SHA-256, hex, follows.
pub const LEGACY_SHA256: &str = "sha256:";

/// A collector's pickup code in both forms a deposit may have kept it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupProof {
    /// HMAC-SHA256 under the pickup pepper, hex (deposits of version 2).
    pub mac: String,
    /// Plain SHA-256, hex (deposits recorded as version 1).
    pub legacy_sha256: String,
}

impl PickupProof {
    /// Whether this proof opens a deposit that kept `stored`.
    pub fn opens(&self, stored: &str) -> bool {
        match stored.strip_prefix(LEGACY_SHA256) {
            Some(sha) => constant_time_eq(sha.as_bytes(), self.legacy_sha256.as_bytes()),
            None => constant_time_eq(stored.as_bytes(), self.mac.as_bytes()),
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the digest.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Free,
    Reserved,
    Occupied,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Reserved => "reserved",
            Self::Occupied => "occupied",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompartmentCommand {
    Install {
        id: CompartmentId,
        size: Size,
        /// The device (kind `locker`) that opens this compartment's door, if already fitted.
        door: Option<DeviceId>,
        at: DateTime<Utc>,
    },
    /// Fits or replaces the device that opens the door.
    WireDoor { door: DeviceId, at: DateTime<Utc> },
    /// Reserve for `user`, from `window_start` (default: now) until `expires_at`.
    Reserve {
        user: UserNumber,
        window_start: Option<DateTime<Utc>>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Prunes every booked window that ended by `at` unused; nothing if none did.
    Expire { at: DateTime<Utc> },
    /// Hands the empty-use right from `from` (who must hold it at `at`) to `to`: the part
    /// `window` (start, end) of `from`'s current window, or all of it.
    Grant {
        grant_id: Uuid,
        from: UserNumber,
        to: UserNumber,
        via: Option<AuthorizerNumber>,
        window: Option<(DateTime<Utc>, DateTime<Utc>)>,
        at: DateTime<Utc>,
    },
    /// The holder's one deposit: the parcel number is recorded and the recipient's pickup code
    /// is kept only as its keyed MAC.
    Deposit {
        user: UserNumber,
        parcel: ParcelNumber,
        pickup_code_mac: String,
        at: DateTime<Utc>,
    },
    /// The recipient collects with the pickup code (given as its digests).
    Collect {
        proof: PickupProof,
        at: DateTime<Utc>,
    },
}

impl CompartmentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Install { .. } => "InstallCompartment",
            Self::WireDoor { .. } => "WireCompartmentDoor",
            Self::Reserve { .. } => "ReserveCompartment",
            Self::Expire { .. } => "ExpireReservation",
            Self::Grant { .. } => "GrantCompartment",
            Self::Deposit { .. } => "DepositParcel",
            Self::Collect { .. } => "CollectParcel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompartmentEvent {
    CompartmentInstalled {
        id: CompartmentId,
        size: Size,
        /// Absent in events recorded before doors were wired: those compartments have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        door: Option<DeviceId>,
        at: DateTime<Utc>,
    },
    DoorWired {
        door: DeviceId,
        at: DateTime<Utc>,
    },
    CompartmentReserved {
        holder: UserNumber,
        window_start: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// One booked window lapsed unused. Events recorded before windows name none: they ended
    /// the holder's only reservation.
    ReservationExpired {
        holder: UserNumber,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_start: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_end: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// `to` now holds [`window_start`, `window_end`), cut from `from`'s window, which keeps the
    /// rest. Events recorded before windows name none: the whole reservation passed on.
    HolderChanged {
        grant_id: Uuid,
        from: UserNumber,
        to: UserNumber,
        via: Option<AuthorizerNumber>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_start: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_end: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    ParcelDeposited {
        depositor: UserNumber,
        parcel: ParcelNumber,
        /// HMAC-SHA256 of `"{compartment}:{code}"` under the pickup pepper, hex; or, read from
        /// a version-1 event, [`LEGACY_SHA256`] + its plain SHA-256.
        pickup_code_mac: String,
        at: DateTime<Utc>,
    },
    ParcelCollected {
        parcel: ParcelNumber,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CompartmentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CompartmentInstalled { .. } => "CompartmentInstalled",
            Self::DoorWired { .. } => "CompartmentDoorWired",
            Self::CompartmentReserved { .. } => "CompartmentReserved",
            Self::ReservationExpired { .. } => "ReservationExpired",
            Self::HolderChanged { .. } => "HolderChanged",
            Self::ParcelDeposited { .. } => "ParcelDeposited",
            Self::ParcelCollected { .. } => "ParcelCollected",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        match self {
            // 2: a keyed MAC of the pickup code instead of its plain SHA-256.
            Self::ParcelDeposited { .. } => "2",
            _ => "1",
        }
        .to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompartmentError {
    #[error("no such compartment")]
    NotInstalled,
    #[error("this compartment is already installed")]
    AlreadyInstalled,
    #[error("this compartment is not free")]
    NotFree,
    #[error("this compartment is not reserved")]
    NotReserved,
    #[error("you do not hold this compartment")]
    NotHolder,
    #[error("a compartment cannot be granted to its own holder")]
    GrantToSelf,
    #[error("the reservation has expired")]
    ReservationExpired,
    #[error("the reservation must end after it starts and after now")]
    BadWindow,
    #[error("the window from window_start to expires_at overlaps a window already booked on this compartment")]
    WindowTaken,
    #[error("you hold this compartment only inside your window, which has not begun")]
    OutsideWindow,
    #[error("window_start and window_end must lie inside your current window, start before they end and end after now")]
    BadGrantWindow,
    #[error("there is no parcel in this compartment")]
    Empty,
    #[error("the pickup code is wrong")]
    WrongPickupCode,
}

impl CompartmentError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotInstalled => "compartment_not_found",
            Self::AlreadyInstalled => "compartment_already_installed",
            Self::NotFree => "compartment_not_free",
            Self::NotReserved => "compartment_not_reserved",
            Self::NotHolder => "not_the_holder",
            Self::GrantToSelf => "grant_to_self",
            Self::ReservationExpired => "reservation_expired",
            Self::BadWindow => "invalid_window",
            Self::WindowTaken => "window_taken",
            Self::OutsideWindow => "outside_window",
            Self::BadGrantWindow => "invalid_grant_window",
            Self::Empty => "compartment_empty",
            Self::WrongPickupCode => "wrong_pickup_code",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotInstalled)
    }
}

/// One booked window: `holder` may use the empty compartment from `start` (inclusive) to `end`
/// (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub holder: UserNumber,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
    /// Whether [start, end) shares a moment with this window (touching ends do not).
    pub fn overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.start < end && start < self.end
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Compartment {
    pub id: Option<CompartmentId>,
    pub size: Option<Size>,
    pub door: Option<DeviceId>,
    /// `Occupied` while a parcel is in; else `Reserved` while any window is booked, else `Free`.
    pub status: Status,
    /// The booked windows, by start; none overlap.
    pub windows: Vec<Window>,
    pub depositor: Option<UserNumber>,
    pub parcel: Option<ParcelNumber>,
    pub pickup_code_mac: Option<String>,
}

impl Compartment {
    /// The window of `user` that `at` falls in.
    pub fn window_of(&self, user: &UserNumber, at: DateTime<Utc>) -> Option<&Window> {
        self.windows
            .iter()
            .find(|w| &w.holder == user && w.contains(at))
    }

    /// Whether `user` holds the empty-use right at `at`.
    pub fn held_by(&self, user: &UserNumber, at: DateTime<Utc>) -> bool {
        self.status != Status::Occupied && self.window_of(user, at).is_some()
    }

    /// Whether `user` has a window that begins after `at`.
    pub fn booked_later(&self, user: &UserNumber, at: DateTime<Utc>) -> bool {
        self.windows
            .iter()
            .any(|w| &w.holder == user && w.start > at)
    }

    /// Why `user` may not use the compartment at `at`, if they may not.
    fn check_use(&self, user: &UserNumber, at: DateTime<Utc>) -> Result<Window, CompartmentError> {
        if let Some(w) = self.window_of(user, at) {
            return Ok(w.clone());
        }
        if self.booked_later(user, at) {
            Err(CompartmentError::OutsideWindow)
        } else if self.windows.iter().any(|w| &w.holder == user) {
            Err(CompartmentError::ReservationExpired)
        } else {
            Err(CompartmentError::NotHolder)
        }
    }

    /// The index of the window of `user` that an event without window fields meant: the one
    /// `at` falls in, else the first not ended by `at`, else their first.
    fn legacy_window(&self, user: &UserNumber, at: DateTime<Utc>) -> Option<usize> {
        let mine = |w: &&Window| &w.holder == user;
        let pos = |target: &Window| self.windows.iter().position(|w| w == target);
        let found = self
            .windows
            .iter()
            .filter(mine)
            .find(|w| w.contains(at))
            .or_else(|| self.windows.iter().filter(mine).find(|w| w.end > at))
            .or_else(|| self.windows.iter().find(mine))?;
        pos(found)
    }

    fn settle(&mut self) {
        self.windows.sort_by_key(|w| w.start);
        self.status = if self.parcel.is_some() {
            Status::Occupied
        } else if self.windows.is_empty() {
            Status::Free
        } else {
            Status::Reserved
        };
    }

    pub fn decide(
        &self,
        command: CompartmentCommand,
    ) -> Result<Vec<CompartmentEvent>, CompartmentError> {
        use CompartmentCommand as C;
        use CompartmentEvent as E;
        if let C::Install { id, size, door, at } = command {
            if self.id.is_some() {
                return Err(CompartmentError::AlreadyInstalled);
            }
            return Ok(vec![E::CompartmentInstalled { id, size, door, at }]);
        }
        if self.id.is_none() {
            return Err(CompartmentError::NotInstalled);
        }
        match command {
            C::Install { .. } => unreachable!("handled above"),
            // Wiring the same device again is a retry, not a change.
            C::WireDoor { door, .. } if self.door == Some(door) => Ok(vec![]),
            C::WireDoor { door, at } => Ok(vec![E::DoorWired { door, at }]),
            C::Reserve {
                user,
                window_start,
                expires_at,
                at,
            } => {
                // A parcel stays until collected, whenever that is: no window is promised on top.
                if self.status == Status::Occupied {
                    return Err(CompartmentError::NotFree);
                }
                let window_start = window_start.unwrap_or(at);
                if expires_at <= window_start || expires_at <= at {
                    return Err(CompartmentError::BadWindow);
                }
                // A lapsed window not yet pruned no longer holds anything.
                if self
                    .windows
                    .iter()
                    .any(|w| w.end > at && w.overlaps(window_start, expires_at))
                {
                    return Err(CompartmentError::WindowTaken);
                }
                Ok(vec![E::CompartmentReserved {
                    holder: user,
                    window_start,
                    expires_at,
                    at,
                }])
            }
            C::Expire { at } => Ok(self
                .windows
                .iter()
                .filter(|w| w.end <= at)
                .map(|w| E::ReservationExpired {
                    holder: w.holder.clone(),
                    window_start: Some(w.start),
                    window_end: Some(w.end),
                    at,
                })
                .collect()),
            C::Grant {
                grant_id,
                from,
                to,
                via,
                window,
                at,
            } => {
                // Only a holder of a booked window may hand it on; to anyone else a free or
                // occupied compartment is simply not theirs.
                if self.status == Status::Occupied || !self.windows.iter().any(|w| w.holder == from)
                {
                    return Err(CompartmentError::NotHolder);
                }
                if from == to {
                    return Err(CompartmentError::GrantToSelf);
                }
                let current = self.check_use(&from, at)?;
                let (start, end) = window.unwrap_or((current.start, current.end));
                if start < current.start || end > current.end || start >= end || end <= at {
                    return Err(CompartmentError::BadGrantWindow);
                }
                Ok(vec![E::HolderChanged {
                    grant_id,
                    from,
                    to,
                    via,
                    window_start: Some(start),
                    window_end: Some(end),
                    at,
                }])
            }
            C::Deposit {
                user,
                parcel,
                pickup_code_mac,
                at,
            } => {
                if self.status != Status::Reserved {
                    return Err(CompartmentError::NotReserved);
                }
                self.check_use(&user, at)?;
                Ok(vec![E::ParcelDeposited {
                    depositor: user,
                    parcel,
                    pickup_code_mac,
                    at,
                }])
            }
            C::Collect { proof, at } => match (&self.status, &self.parcel) {
                (Status::Occupied, Some(parcel)) => {
                    if !self
                        .pickup_code_mac
                        .as_deref()
                        .is_some_and(|stored| proof.opens(stored))
                    {
                        return Err(CompartmentError::WrongPickupCode);
                    }
                    Ok(vec![E::ParcelCollected {
                        parcel: parcel.clone(),
                        at,
                    }])
                }
                _ => Err(CompartmentError::Empty),
            },
        }
    }
}

/// 2: booked windows instead of one holder and reservation.
impl crate::store::StateShape for Compartment {
    const SHAPE: u32 = 2;
}

impl Aggregate for Compartment {
    const TYPE: &'static str = "locker_compartment";
    type Command = CompartmentCommand;
    type Event = CompartmentEvent;
    type Error = CompartmentError;
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
        use CompartmentEvent as E;
        match event {
            E::CompartmentInstalled { id, size, door, .. } => {
                self.id = Some(id);
                self.size = Some(size);
                self.door = door;
            }
            E::DoorWired { door, .. } => self.door = Some(door),
            E::CompartmentReserved {
                holder,
                window_start,
                expires_at,
                ..
            } => self.windows.push(Window {
                holder,
                start: window_start,
                end: expires_at,
            }),
            E::ReservationExpired {
                holder,
                window_start,
                window_end,
                ..
            } => match (window_start, window_end) {
                (Some(start), Some(end)) => self
                    .windows
                    .retain(|w| !(w.holder == holder && w.start == start && w.end == end)),
                // Before windows, an expiry ended the holder's only reservation.
                _ => self.windows.retain(|w| w.holder != holder),
            },
            E::HolderChanged {
                from,
                to,
                window_start,
                window_end,
                at,
                ..
            } => {
                let index = match (window_start, window_end) {
                    (Some(start), Some(end)) => self
                        .windows
                        .iter()
                        .position(|w| w.holder == from && w.start <= start && end <= w.end),
                    _ => self.legacy_window(&from, at),
                };
                if let Some(index) = index {
                    let old = self.windows.remove(index);
                    let start = window_start.unwrap_or(old.start);
                    let end = window_end.unwrap_or(old.end);
                    let pieces = [
                        (from.clone(), old.start, start),
                        (to, start, end),
                        (from, end, old.end),
                    ];
                    self.windows.extend(
                        pieces
                            .into_iter()
                            .filter(|(_, s, e)| s < e)
                            .map(|(holder, start, end)| Window { holder, start, end }),
                    );
                }
            }
            E::ParcelDeposited {
                depositor,
                parcel,
                pickup_code_mac,
                at,
            } => {
                // The deposit uses the depositor's window up.
                if let Some(index) = self.legacy_window(&depositor, at) {
                    self.windows.remove(index);
                }
                self.depositor = Some(depositor);
                self.parcel = Some(parcel);
                self.pickup_code_mac = Some(pickup_code_mac);
            }
            E::ParcelCollected { .. } => {
                self.depositor = None;
                self.parcel = None;
                self.pickup_code_mac = None;
            }
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type CompartmentTest = TestFramework<Compartment>;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn user(n: &str) -> UserNumber {
        UserNumber::parse("user", n).unwrap()
    }
    fn li() -> UserNumber {
        user("13455555555")
    }
    fn receiver() -> UserNumber {
        user("13499996666")
    }
    fn id() -> CompartmentId {
        CompartmentId::parse("id", "610091A01:01").unwrap()
    }
    fn grant_id() -> Uuid {
        Uuid::from_u128(7)
    }
    fn installed() -> CompartmentEvent {
        CompartmentEvent::CompartmentInstalled {
            id: id(),
            size: Size::Large,
            door: None,
            at: t(0),
        }
    }
    fn reserved_by_li() -> Vec<CompartmentEvent> {
        vec![
            installed(),
            CompartmentEvent::CompartmentReserved {
                holder: li(),
                window_start: t(10),
                expires_at: t(100),
                at: t(10),
            },
        ]
    }
    fn grant(from: UserNumber, to: UserNumber, at: i64) -> CompartmentCommand {
        CompartmentCommand::Grant {
            grant_id: grant_id(),
            from,
            to,
            via: None,
            window: None,
            at: t(at),
        }
    }

    fn door(n: u128) -> DeviceId {
        DeviceId::parse("door", &Uuid::from_u128(n).to_string()).unwrap()
    }

    #[test]
    fn a_door_is_wired_at_installation_or_later() {
        let with_door = CompartmentEvent::CompartmentInstalled {
            id: id(),
            size: Size::Large,
            door: Some(door(1)),
            at: t(0),
        };
        CompartmentTest::with(())
            .given_no_previous_events()
            .when(CompartmentCommand::Install {
                id: id(),
                size: Size::Large,
                door: Some(door(1)),
                at: t(0),
            })
            .then_expect_events(vec![with_door.clone()]);
        CompartmentTest::with(())
            .given(vec![installed()])
            .when(CompartmentCommand::WireDoor {
                door: door(2),
                at: t(5),
            })
            .then_expect_events(vec![CompartmentEvent::DoorWired {
                door: door(2),
                at: t(5),
            }]);
        // The same device again: a retry, nothing new.
        CompartmentTest::with(())
            .given(vec![with_door])
            .when(CompartmentCommand::WireDoor {
                door: door(1),
                at: t(5),
            })
            .then_expect_events(vec![]);
        CompartmentTest::with(())
            .given_no_previous_events()
            .when(CompartmentCommand::WireDoor {
                door: door(1),
                at: t(5),
            })
            .then_expect_error(CompartmentError::NotInstalled);
    }

    #[test]
    fn an_installation_recorded_before_doors_reads_as_doorless() {
        let old = serde_json::json!({"CompartmentInstalled": {
            "id": {"site": "610091A01", "number": "01"},
            "size": "large",
            "at": "2026-11-01T00:00:00Z"}});
        let event: CompartmentEvent = serde_json::from_value(old).unwrap();
        assert!(matches!(
            event,
            CompartmentEvent::CompartmentInstalled { door: None, .. }
        ));
    }

    #[test]
    fn install_then_reserve() {
        CompartmentTest::with(())
            .given_no_previous_events()
            .when(CompartmentCommand::Install {
                id: id(),
                size: Size::Large,
                door: None,
                at: t(0),
            })
            .then_expect_events(vec![installed()]);
        CompartmentTest::with(())
            .given(vec![installed()])
            .when(CompartmentCommand::Reserve {
                user: li(),
                window_start: None,
                expires_at: t(100),
                at: t(10),
            })
            .then_expect_events(reserved_by_li()[1..].to_vec());
    }

    #[test]
    fn reserve_refusals() {
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(CompartmentCommand::Reserve {
                user: receiver(),
                window_start: None,
                expires_at: t(100),
                at: t(20),
            })
            .then_expect_error(CompartmentError::WindowTaken);
        CompartmentTest::with(())
            .given(vec![installed()])
            .when(CompartmentCommand::Reserve {
                user: li(),
                window_start: Some(t(50)),
                expires_at: t(40),
                at: t(10),
            })
            .then_expect_error(CompartmentError::BadWindow);
        CompartmentTest::with(())
            .given_no_previous_events()
            .when(CompartmentCommand::Reserve {
                user: li(),
                window_start: None,
                expires_at: t(40),
                at: t(10),
            })
            .then_expect_error(CompartmentError::NotInstalled);
    }

    #[test]
    fn the_holder_grants_directly_and_the_receiver_holds_it() {
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(grant(li(), receiver(), 20))
            .then_expect_events(vec![CompartmentEvent::HolderChanged {
                grant_id: grant_id(),
                from: li(),
                to: receiver(),
                via: None,
                window_start: Some(t(10)),
                window_end: Some(t(100)),
                at: t(20),
            }]);
    }

    #[test]
    fn grant_refusals() {
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(grant(li(), li(), 20))
            .then_expect_error(CompartmentError::GrantToSelf);
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(grant(receiver(), li(), 20))
            .then_expect_error(CompartmentError::NotHolder);
        CompartmentTest::with(())
            .given(vec![installed()])
            .when(grant(li(), receiver(), 20))
            .then_expect_error(CompartmentError::NotHolder);
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(grant(li(), receiver(), 100))
            .then_expect_error(CompartmentError::ReservationExpired);
        // The second of two racing grants finds the holder changed.
        let mut granted = reserved_by_li();
        granted.push(CompartmentEvent::HolderChanged {
            grant_id: grant_id(),
            from: li(),
            to: receiver(),
            via: None,
            window_start: Some(t(10)),
            window_end: Some(t(100)),
            at: t(20),
        });
        CompartmentTest::with(())
            .given(granted)
            .when(grant(li(), user("13466666666"), 21))
            .then_expect_error(CompartmentError::NotHolder);
    }

    #[test]
    fn an_unused_reservation_expires_only_after_its_end() {
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(CompartmentCommand::Expire { at: t(99) })
            .then_expect_events(vec![]);
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(CompartmentCommand::Expire { at: t(100) })
            .then_expect_events(vec![expired_li(10, 100, 100)]);
        let mut expired = reserved_by_li();
        expired.push(expired_li(10, 100, 100));
        CompartmentTest::with(())
            .given(expired)
            .when(CompartmentCommand::Expire { at: t(101) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn deposit_by_the_holder_then_collect_frees_it() {
        let parcel = ParcelNumber::parse("parcel", "SF1234567890").unwrap();
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(CompartmentCommand::Deposit {
                user: receiver(),
                parcel: parcel.clone(),
                pickup_code_mac: "h".into(),
                at: t(30),
            })
            .then_expect_error(CompartmentError::NotHolder);
        let deposited = CompartmentEvent::ParcelDeposited {
            depositor: li(),
            parcel: parcel.clone(),
            pickup_code_mac: "h".into(),
            at: t(30),
        };
        CompartmentTest::with(())
            .given(reserved_by_li())
            .when(CompartmentCommand::Deposit {
                user: li(),
                parcel: parcel.clone(),
                pickup_code_mac: "h".into(),
                at: t(30),
            })
            .then_expect_events(vec![deposited.clone()]);
        let mut occupied = reserved_by_li();
        occupied.push(deposited);
        CompartmentTest::with(())
            .given(occupied.clone())
            .when(CompartmentCommand::Collect {
                proof: proof("wrong", "h"),
                at: t(40),
            })
            .then_expect_error(CompartmentError::WrongPickupCode);
        CompartmentTest::with(())
            .given(occupied.clone())
            .when(CompartmentCommand::Collect {
                proof: proof("h", "x"),
                at: t(40),
            })
            .then_expect_events(vec![CompartmentEvent::ParcelCollected {
                parcel,
                at: t(40),
            }]);
        // Occupied: no expiry, no grant.
        CompartmentTest::with(())
            .given(occupied.clone())
            .when(CompartmentCommand::Expire { at: t(200) })
            .then_expect_events(vec![]);
        CompartmentTest::with(())
            .given(occupied)
            .when(grant(li(), receiver(), 41))
            .then_expect_error(CompartmentError::NotHolder);
    }

    fn proof(mac: &str, legacy: &str) -> PickupProof {
        PickupProof {
            mac: mac.into(),
            legacy_sha256: legacy.into(),
        }
    }

    #[test]
    fn a_legacy_deposit_compares_the_plain_digest_only() {
        let stored = format!("{LEGACY_SHA256}abc");
        assert!(proof("x", "abc").opens(&stored));
        assert!(!proof("abc", "x").opens(&stored));
        assert!(!proof(&stored, "x").opens(&stored));
        assert!(proof("def", "x").opens("def"));
        assert!(!proof("de", "def").opens("def"));
    }

    #[test]
    fn apply_folds_the_holder() {
        let mut c = Compartment::default();
        for e in reserved_by_li() {
            c.apply(e);
        }
        assert!(c.held_by(&li(), t(20)));
        // Recorded before windows: no window fields, the whole reservation passes on.
        c.apply(CompartmentEvent::HolderChanged {
            grant_id: grant_id(),
            from: li(),
            to: receiver(),
            via: None,
            window_start: None,
            window_end: None,
            at: t(20),
        });
        assert!(!c.held_by(&li(), t(20)));
        assert!(c.held_by(&receiver(), t(20)));
        assert_eq!(c.windows, vec![w(receiver(), 10, 100)]);
    }

    fn w(holder: UserNumber, start: i64, end: i64) -> Window {
        Window {
            holder,
            start: t(start),
            end: t(end),
        }
    }
    fn expired_li(start: i64, end: i64, at: i64) -> CompartmentEvent {
        CompartmentEvent::ReservationExpired {
            holder: li(),
            window_start: Some(t(start)),
            window_end: Some(t(end)),
            at: t(at),
        }
    }
    fn reserve(user: UserNumber, start: i64, end: i64, at: i64) -> CompartmentCommand {
        CompartmentCommand::Reserve {
            user,
            window_start: Some(t(start)),
            expires_at: t(end),
            at: t(at),
        }
    }
    fn reserved(holder: UserNumber, start: i64, end: i64, at: i64) -> CompartmentEvent {
        CompartmentEvent::CompartmentReserved {
            holder,
            window_start: t(start),
            expires_at: t(end),
            at: t(at),
        }
    }
    /// li books [100, 200) at t(0).
    fn li_books_100_to_200() -> Vec<CompartmentEvent> {
        vec![installed(), reserved(li(), 100, 200, 0)]
    }
    fn deposit(user: UserNumber, at: i64) -> CompartmentCommand {
        CompartmentCommand::Deposit {
            user,
            parcel: ParcelNumber::parse("parcel", "SF1234567890").unwrap(),
            pickup_code_mac: "h".into(),
            at: t(at),
        }
    }
    fn fold(events: Vec<CompartmentEvent>) -> Compartment {
        let mut c = Compartment::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    #[test]
    fn adjacent_windows_are_both_booked_and_an_overlap_by_one_second_is_refused() {
        // Ends where li's begins, and begins where li's ends: both touch, neither overlaps.
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(reserve(receiver(), 50, 100, 1))
            .then_expect_events(vec![reserved(receiver(), 50, 100, 1)]);
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(reserve(receiver(), 200, 300, 1))
            .then_expect_events(vec![reserved(receiver(), 200, 300, 1)]);
        for (start, end) in [(50, 101), (199, 300), (120, 130), (0, 400), (100, 200)] {
            CompartmentTest::with(())
                .given(li_books_100_to_200())
                .when(reserve(receiver(), start, end, 1))
                .then_expect_error(CompartmentError::WindowTaken);
        }
        assert_eq!(
            CompartmentError::WindowTaken.code(),
            "window_taken",
            "the API's 409 code"
        );
        let mut both = li_books_100_to_200();
        both.push(reserved(receiver(), 200, 300, 1));
        let c = fold(both);
        assert_eq!(c.status, Status::Reserved);
        assert_eq!(c.windows, vec![w(li(), 100, 200), w(receiver(), 200, 300)]);
    }

    #[test]
    fn a_lapsed_window_not_yet_pruned_does_not_block_a_new_one() {
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(reserve(receiver(), 150, 300, 200))
            .then_expect_events(vec![reserved(receiver(), 150, 300, 200)]);
    }

    #[test]
    fn deposit_and_grant_only_inside_the_holders_window() {
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(deposit(li(), 99))
            .then_expect_error(CompartmentError::OutsideWindow);
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(grant(li(), receiver(), 99))
            .then_expect_error(CompartmentError::OutsideWindow);
        // At the start exactly: inside.
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(deposit(li(), 100))
            .then_expect_events(vec![CompartmentEvent::ParcelDeposited {
                depositor: li(),
                parcel: ParcelNumber::parse("parcel", "SF1234567890").unwrap(),
                pickup_code_mac: "h".into(),
                at: t(100),
            }]);
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(grant(li(), receiver(), 100))
            .then_expect_events(vec![CompartmentEvent::HolderChanged {
                grant_id: grant_id(),
                from: li(),
                to: receiver(),
                via: None,
                window_start: Some(t(100)),
                window_end: Some(t(200)),
                at: t(100),
            }]);
        // At the end exactly: outside, and lapsed.
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(deposit(li(), 200))
            .then_expect_error(CompartmentError::ReservationExpired);
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(grant(li(), receiver(), 200))
            .then_expect_error(CompartmentError::ReservationExpired);
        // Someone with a later window may not use the compartment in li's.
        let mut both = li_books_100_to_200();
        both.push(reserved(receiver(), 200, 300, 1));
        CompartmentTest::with(())
            .given(both.clone())
            .when(deposit(receiver(), 150))
            .then_expect_error(CompartmentError::OutsideWindow);
        CompartmentTest::with(())
            .given(both)
            .when(deposit(receiver(), 200))
            .then_expect_events(vec![CompartmentEvent::ParcelDeposited {
                depositor: receiver(),
                parcel: ParcelNumber::parse("parcel", "SF1234567890").unwrap(),
                pickup_code_mac: "h".into(),
                at: t(200),
            }]);
    }

    #[test]
    fn a_deposit_uses_the_window_up_and_a_collection_leaves_later_windows_booked() {
        let mut events = li_books_100_to_200();
        events.push(reserved(receiver(), 200, 300, 1));
        events.push(CompartmentEvent::ParcelDeposited {
            depositor: li(),
            parcel: ParcelNumber::parse("parcel", "SF1234567890").unwrap(),
            pickup_code_mac: "h".into(),
            at: t(150),
        });
        let c = fold(events.clone());
        assert_eq!(c.status, Status::Occupied);
        assert_eq!(c.windows, vec![w(receiver(), 200, 300)]);
        // No new window on top of a parcel.
        CompartmentTest::with(())
            .given(events.clone())
            .when(reserve(user("13466666666"), 400, 500, 160))
            .then_expect_error(CompartmentError::NotFree);
        events.push(CompartmentEvent::ParcelCollected {
            parcel: ParcelNumber::parse("parcel", "SF1234567890").unwrap(),
            at: t(170),
        });
        let c = fold(events);
        assert_eq!(c.status, Status::Reserved);
        assert!(c.held_by(&receiver(), t(200)));
    }

    #[test]
    fn expiry_prunes_each_window_at_its_end_and_keeps_the_rest() {
        let mut both = li_books_100_to_200();
        both.push(reserved(receiver(), 200, 300, 1));
        CompartmentTest::with(())
            .given(both.clone())
            .when(CompartmentCommand::Expire { at: t(199) })
            .then_expect_events(vec![]);
        CompartmentTest::with(())
            .given(both.clone())
            .when(CompartmentCommand::Expire { at: t(200) })
            .then_expect_events(vec![expired_li(100, 200, 200)]);
        both.push(expired_li(100, 200, 200));
        let c = fold(both.clone());
        assert_eq!(c.windows, vec![w(receiver(), 200, 300)]);
        assert!(c.held_by(&receiver(), t(200)));
        // A late sweep prunes every window that ended by then, each with its own event.
        let mut two = li_books_100_to_200();
        two.push(reserved(receiver(), 200, 300, 1));
        CompartmentTest::with(())
            .given(two)
            .when(CompartmentCommand::Expire { at: t(400) })
            .then_expect_events(vec![
                expired_li(100, 200, 400),
                CompartmentEvent::ReservationExpired {
                    holder: receiver(),
                    window_start: Some(t(200)),
                    window_end: Some(t(300)),
                    at: t(400),
                },
            ]);
    }

    #[test]
    fn a_grant_may_hand_on_part_of_the_window_and_the_granter_keeps_the_rest() {
        let part = |start: i64, end: i64, at: i64| CompartmentCommand::Grant {
            grant_id: grant_id(),
            from: li(),
            to: receiver(),
            via: None,
            window: Some((t(start), t(end))),
            at: t(at),
        };
        let changed = |start: i64, end: i64, at: i64| CompartmentEvent::HolderChanged {
            grant_id: grant_id(),
            from: li(),
            to: receiver(),
            via: None,
            window_start: Some(t(start)),
            window_end: Some(t(end)),
            at: t(at),
        };
        CompartmentTest::with(())
            .given(li_books_100_to_200())
            .when(part(140, 160, 120))
            .then_expect_events(vec![changed(140, 160, 120)]);
        let mut events = li_books_100_to_200();
        events.push(changed(140, 160, 120));
        let c = fold(events.clone());
        assert_eq!(
            c.windows,
            vec![
                w(li(), 100, 140),
                w(receiver(), 140, 160),
                w(li(), 160, 200)
            ]
        );
        assert!(c.held_by(&li(), t(139)));
        assert!(!c.held_by(&li(), t(140)));
        assert!(c.held_by(&receiver(), t(140)));
        assert!(c.held_by(&li(), t(160)));
        // The receiver may not use their part before it begins.
        CompartmentTest::with(())
            .given(events)
            .when(deposit(receiver(), 139))
            .then_expect_error(CompartmentError::OutsideWindow);
        // A part reaching the window's end leaves no zero-length piece behind.
        let mut tail = li_books_100_to_200();
        tail.push(changed(150, 200, 120));
        assert_eq!(
            fold(tail).windows,
            vec![w(li(), 100, 150), w(receiver(), 150, 200)]
        );
        // Parts outside the current window, empty, backwards or already over are refused.
        for (start, end, at) in [
            (90, 150, 120),
            (150, 201, 120),
            (150, 150, 120),
            (160, 150, 120),
            (100, 110, 120),
        ] {
            CompartmentTest::with(())
                .given(li_books_100_to_200())
                .when(part(start, end, at))
                .then_expect_error(CompartmentError::BadGrantWindow);
        }
    }

    #[test]
    fn events_recorded_before_windows_still_load() {
        let old = serde_json::json!({"ReservationExpired": {
            "holder": "13455555555", "at": "2026-11-01T00:00:00Z"}});
        let event: CompartmentEvent = serde_json::from_value(old).unwrap();
        assert!(matches!(
            event,
            CompartmentEvent::ReservationExpired {
                window_start: None,
                window_end: None,
                ..
            }
        ));
        let mut c = fold(reserved_by_li());
        c.apply(event);
        assert_eq!(c.status, Status::Free);
        assert!(c.windows.is_empty());
        let old = serde_json::json!({"HolderChanged": {
            "grant_id": Uuid::from_u128(7), "from": "13455555555", "to": "13499996666",
            "via": null, "at": "2026-11-01T00:00:00Z"}});
        let event: CompartmentEvent = serde_json::from_value(old).unwrap();
        assert!(matches!(
            event,
            CompartmentEvent::HolderChanged {
                window_start: None,
                window_end: None,
                ..
            }
        ));
    }
}
