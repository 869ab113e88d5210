//! One locker compartment: one `locker_compartment` stream per `"{site}:{number}"`.
//!
//! A free compartment is reserved by a user, who then holds the right to use it while it is
//! empty. The holder may hand that right on ([`CompartmentCommand::Grant`]); only the current
//! holder can, never to themselves, and only while the reservation stands, so of two grants
//! racing for one compartment the second finds the holder changed and is refused. An unused
//! reservation expires and frees the compartment. The holder deposits a parcel once (the door
//! opens for them and the parcel number is recorded); collecting it frees the compartment.
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
    /// Frees the compartment if its reservation went unused past its expiry; otherwise nothing.
    Expire { at: DateTime<Utc> },
    /// Hands the empty-use right from `from` (who must hold it) to `to`.
    Grant {
        grant_id: Uuid,
        from: UserNumber,
        to: UserNumber,
        via: Option<AuthorizerNumber>,
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
    ReservationExpired {
        holder: UserNumber,
        at: DateTime<Utc>,
    },
    HolderChanged {
        grant_id: Uuid,
        from: UserNumber,
        to: UserNumber,
        via: Option<AuthorizerNumber>,
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
            Self::Empty => "compartment_empty",
            Self::WrongPickupCode => "wrong_pickup_code",
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotInstalled)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Compartment {
    pub id: Option<CompartmentId>,
    pub size: Option<Size>,
    pub door: Option<DeviceId>,
    pub status: Status,
    pub holder: Option<UserNumber>,
    pub window_start: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub depositor: Option<UserNumber>,
    pub parcel: Option<ParcelNumber>,
    pub pickup_code_mac: Option<String>,
}

impl Compartment {
    /// Whether `user` holds the empty-use right now.
    pub fn held_by(&self, user: &UserNumber) -> bool {
        self.status == Status::Reserved && self.holder.as_ref() == Some(user)
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
                if self.status != Status::Free {
                    return Err(CompartmentError::NotFree);
                }
                let window_start = window_start.unwrap_or(at);
                if expires_at <= window_start || expires_at <= at {
                    return Err(CompartmentError::BadWindow);
                }
                Ok(vec![E::CompartmentReserved {
                    holder: user,
                    window_start,
                    expires_at,
                    at,
                }])
            }
            C::Expire { at } => match (&self.status, &self.holder, self.expires_at) {
                (Status::Reserved, Some(holder), Some(expires)) if at >= expires => {
                    Ok(vec![E::ReservationExpired {
                        holder: holder.clone(),
                        at,
                    }])
                }
                _ => Ok(vec![]),
            },
            C::Grant {
                grant_id,
                from,
                to,
                via,
                at,
            } => {
                // Only a holder of a live reservation may hand it on; to anyone else a free or
                // occupied compartment is simply not theirs.
                if !self.held_by(&from) {
                    return Err(CompartmentError::NotHolder);
                }
                if from == to {
                    return Err(CompartmentError::GrantToSelf);
                }
                if self.expires_at.is_some_and(|e| at >= e) {
                    return Err(CompartmentError::ReservationExpired);
                }
                Ok(vec![E::HolderChanged {
                    grant_id,
                    from,
                    to,
                    via,
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
                if self.holder.as_ref() != Some(&user) {
                    return Err(CompartmentError::NotHolder);
                }
                if self.expires_at.is_some_and(|e| at >= e) {
                    return Err(CompartmentError::ReservationExpired);
                }
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

impl crate::store::StateShape for Compartment {}

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
            } => {
                self.status = Status::Reserved;
                self.holder = Some(holder);
                self.window_start = Some(window_start);
                self.expires_at = Some(expires_at);
            }
            E::ReservationExpired { .. } | E::ParcelCollected { .. } => {
                self.status = Status::Free;
                self.holder = None;
                self.window_start = None;
                self.expires_at = None;
                self.depositor = None;
                self.parcel = None;
                self.pickup_code_mac = None;
            }
            E::HolderChanged { to, .. } => self.holder = Some(to),
            E::ParcelDeposited {
                depositor,
                parcel,
                pickup_code_mac,
                ..
            } => {
                self.status = Status::Occupied;
                self.holder = None;
                self.depositor = Some(depositor);
                self.parcel = Some(parcel);
                self.pickup_code_mac = Some(pickup_code_mac);
            }
        }
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
            .then_expect_error(CompartmentError::NotFree);
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
            .then_expect_events(vec![CompartmentEvent::ReservationExpired {
                holder: li(),
                at: t(100),
            }]);
        let mut expired = reserved_by_li();
        expired.push(CompartmentEvent::ReservationExpired {
            holder: li(),
            at: t(100),
        });
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
        assert!(c.held_by(&li()));
        c.apply(CompartmentEvent::HolderChanged {
            grant_id: grant_id(),
            from: li(),
            to: receiver(),
            via: None,
            at: t(20),
        });
        assert!(!c.held_by(&li()));
        assert!(c.held_by(&receiver()));
    }
}
