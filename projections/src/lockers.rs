//! Shared parcel lockers: sites, compartment ownership (current holder, every booked window, per-user
//! listing and the full holder history, so the holder at any past moment is a query), users,
//! authorizers, each grant request's state, and the notification inbox.
//!
//! `locker_windows` holds every compartment's booked windows; `locker_compartments` shows the
//! earliest of them (the current or next holder) beside the status, recomputed from the windows
//! after each change to them ([`Change::CurrentWindow`]), so the two never disagree.
//!
//! [`evolve`] is the whole projection as a pure function of one event: it names the changes,
//! and [`LockersProjection`] writes them in the projector's transaction, beside the checkpoint.

use crate::log::LoggedEvent;
use crate::projector::{Projection, ProjectionError};
use batch::{HolderRun, Inbox};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use latch_domain::locker::{
    Authorizer, AuthorizerEvent, Compartment, CompartmentEvent, Grant, GrantEvent, GrantTarget,
    LockerUser, Site, SiteEvent, UserEvent,
};
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use uuid::Uuid;
use write::write;

mod batch;
pub mod queries;
pub mod windows;
mod write;

pub const NAME: &str = "lockers";

/// Every table this projection writes (a rebuild replaces them together).
pub const TABLES: &[&str] = &[
    "locker_sites",
    "locker_compartments",
    "compartment_holders",
    "locker_windows",
    "locker_users",
    "locker_authorizers",
    "grant_requests",
    "locker_inbox",
];

/// Which of a holder's open holdings a [`Change::HoldingEnded`] ends, by when they began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Began {
    /// Any (events recorded before windows: the holder had one).
    Any,
    /// At or before this moment (the holding in use then; later windows begin after it).
    By(DateTime<Utc>),
    /// Before this moment (a lapsed window's end).
    Before(DateTime<Utc>),
}

/// One change to the lockers read models.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Site {
        site: String,
        name: String,
        at: DateTime<Utc>,
    },
    CompartmentInstalled {
        id: String,
        site: String,
        number: String,
        size: String,
        door: Option<Uuid>,
        at: DateTime<Utc>,
    },
    DoorWired {
        id: String,
        door: Uuid,
        at: DateTime<Utc>,
    },
    /// `holder` booked [starts_at, ends_at).
    WindowBooked {
        id: String,
        holder: String,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// `to` now holds [starts_at, ends_at) of `from`'s window, `from` the rest. Without a
    /// range (events recorded before windows) the window [`windows::pick`] finds passes whole.
    WindowHandedOn {
        id: String,
        from: String,
        to: String,
        range: Option<(DateTime<Utc>, DateTime<Utc>)>,
        at: DateTime<Utc>,
    },
    /// `holder`'s window [starts_at, ends_at) lapsed; without a range (recorded before
    /// windows) all of `holder`'s windows did.
    WindowLapsed {
        id: String,
        holder: String,
        range: Option<(DateTime<Utc>, DateTime<Utc>)>,
        at: DateTime<Utc>,
    },
    /// A deposit used `holder`'s window (the one [`windows::pick`] finds) up.
    WindowUsed {
        id: String,
        holder: String,
        at: DateTime<Utc>,
    },
    /// The compartment row shows its earliest window again (unless a parcel is in).
    CurrentWindow {
        id: String,
        at: DateTime<Utc>,
    },
    Deposited {
        id: String,
        depositor: String,
        parcel: String,
        at: DateTime<Utc>,
    },
    Freed {
        id: String,
        at: DateTime<Utc>,
    },
    /// Ends `holder`'s open holdings of `id` that began by `began_by` (inclusive) or, for a
    /// lapsed window, before `began_before`: at `at`, or earlier if one was to end earlier.
    HoldingEnded {
        id: String,
        holder: String,
        began: Began,
        ended_by: &'static str,
        at: DateTime<Utc>,
    },
    /// After a grant of part of a window: `holder` holds again from `from`, if a window of
    /// theirs starts there (the rest of the window they granted from).
    HoldingResumed {
        id: String,
        holder: String,
        grant_id: Uuid,
        from: DateTime<Utc>,
    },
    HoldingBegan {
        id: String,
        holder: String,
        grant_id: Option<Uuid>,
        authorizer: Option<String>,
        at: DateTime<Utc>,
    },
    User {
        number: String,
        name: String,
        at: DateTime<Utc>,
    },
    UserStatus {
        number: String,
        status: &'static str,
        at: DateTime<Utc>,
    },
    Authorizer {
        number: String,
        name: String,
        endpoint: String,
        at: DateTime<Utc>,
    },
    AuthorizerStatus {
        number: String,
        status: &'static str,
        at: DateTime<Utc>,
    },
    AuthorizerEndpoint {
        number: String,
        endpoint: String,
        at: DateTime<Utc>,
    },
    GrantRequested {
        grant_id: Uuid,
        compartment: String,
        size: String,
        requester: String,
        kind: &'static str,
        authorizer: Option<String>,
        receiver: Option<String>,
        deadline: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A direct grant: one `HolderChanged` without an authorizer is the whole grant, so its row
    /// is born completed (size from the compartment's row).
    DirectGrant {
        grant_id: Uuid,
        compartment: String,
        requester: String,
        receiver: String,
        at: DateTime<Utc>,
    },
    GrantStatus {
        grant_id: Uuid,
        status: &'static str,
        receiver: Option<String>,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    Notify {
        recipient: String,
        kind: &'static str,
        grant_id: Option<Uuid>,
        compartment: String,
        message: String,
        at: DateTime<Utc>,
    },
}

fn parse<E: DeserializeOwned>(event: &LoggedEvent) -> Result<E, ProjectionError> {
    serde_json::from_value::<E>(event.payload.clone()).map_err(|e| {
        if event.event_version == "1" {
            ProjectionError::BadPayload {
                position: event.position,
                detail: e.to_string(),
            }
        } else {
            ProjectionError::UnknownEvent {
                position: event.position,
                aggregate_type: event.aggregate_type.clone(),
                event_type: event.event_type.clone(),
                version: event.event_version.clone(),
            }
        }
    })
}

/// The aggregate types this projection reads.
pub const AGGREGATE_TYPES: &[&str] = &[
    Site::TYPE,
    Compartment::TYPE,
    LockerUser::TYPE,
    Authorizer::TYPE,
    Grant::TYPE,
];

/// Whether this projection reads events of `aggregate_type`.
pub fn is_mine(aggregate_type: &str) -> bool {
    AGGREGATE_TYPES.contains(&aggregate_type)
}

/// The changes one event makes (none for events of other aggregates).
pub fn evolve(event: &LoggedEvent) -> Result<Vec<Change>, ProjectionError> {
    // Older shapes (a secret-bearing authorizer or user event, a deposit's plain digest) read
    // as the current one.
    let event = &*event.upcast();
    let id = event.aggregate_id.clone();
    Ok(match event.aggregate_type.as_str() {
        t if t == Site::TYPE => match parse::<SiteEvent>(event)? {
            SiteEvent::SiteRegistered { site, name, at } => vec![Change::Site {
                site: site.as_str().to_owned(),
                name: name.as_str().to_owned(),
                at,
            }],
            SiteEvent::SiteRenamed { name, at } => vec![Change::Site {
                site: id,
                name: name.as_str().to_owned(),
                at,
            }],
        },
        t if t == Compartment::TYPE => compartment(id, parse(event)?),
        t if t == LockerUser::TYPE => match parse::<UserEvent>(event)? {
            UserEvent::LockerUserRegistered {
                number, name, at, ..
            } => vec![Change::User {
                number: number.as_str().to_owned(),
                name: name.as_str().to_owned(),
                at,
            }],
            UserEvent::LockerUserPasswordChanged { .. } => vec![],
            UserEvent::LockerUserDisabled { at } => vec![Change::UserStatus {
                number: id,
                status: "disabled",
                at,
            }],
            UserEvent::LockerUserEnabled { at } => vec![Change::UserStatus {
                number: id,
                status: "active",
                at,
            }],
        },
        t if t == Authorizer::TYPE => match parse::<AuthorizerEvent>(event)? {
            AuthorizerEvent::AuthorizerRegistered {
                number,
                name,
                endpoint,
                at,
                ..
            } => vec![Change::Authorizer {
                number: number.as_str().to_owned(),
                name: name.as_str().to_owned(),
                endpoint: endpoint.as_str().to_owned(),
                at,
            }],
            AuthorizerEvent::AuthorizerDeactivated { at } => vec![Change::AuthorizerStatus {
                number: id,
                status: "inactive",
                at,
            }],
            AuthorizerEvent::AuthorizerActivated { at } => vec![Change::AuthorizerStatus {
                number: id,
                status: "active",
                at,
            }],
            AuthorizerEvent::AuthorizerReconfigured { endpoint, at, .. } => {
                vec![Change::AuthorizerEndpoint {
                    number: id,
                    endpoint: endpoint.as_str().to_owned(),
                    at,
                }]
            }
        },
        t if t == Grant::TYPE => grant(event, parse(event)?)?,
        _ => vec![],
    })
}

fn compartment(id: String, event: CompartmentEvent) -> Vec<Change> {
    use CompartmentEvent as E;
    match event {
        E::CompartmentInstalled {
            id: cid,
            size,
            door,
            at,
        } => vec![Change::CompartmentInstalled {
            id,
            site: cid.site.as_str().to_owned(),
            number: cid.number.as_str().to_owned(),
            size: size.as_str().to_owned(),
            door: door.map(|d| d.as_uuid()),
            at,
        }],
        E::DoorWired { door, at } => vec![Change::DoorWired {
            id,
            door: door.as_uuid(),
            at,
        }],
        E::CompartmentReserved {
            holder,
            window_start,
            expires_at,
            at,
        } => vec![
            Change::WindowBooked {
                id: id.clone(),
                holder: holder.to_string(),
                starts_at: window_start,
                ends_at: expires_at,
                at,
            },
            Change::CurrentWindow { id: id.clone(), at },
            // A future window's holding begins with it.
            Change::HoldingBegan {
                id: id.clone(),
                holder: holder.to_string(),
                grant_id: None,
                authorizer: None,
                at: window_start.max(at),
            },
            Change::Notify {
                recipient: format!("user:{holder}"),
                kind: "reserved",
                grant_id: None,
                message: reserved_message(&id, window_start, expires_at),
                compartment: id,
                at,
            },
        ],
        E::ReservationExpired {
            holder,
            window_start,
            window_end,
            at,
        } => {
            let range = window_start.zip(window_end);
            vec![
                Change::WindowLapsed {
                    id: id.clone(),
                    holder: holder.to_string(),
                    range,
                    at,
                },
                Change::CurrentWindow { id: id.clone(), at },
                Change::HoldingEnded {
                    id: id.clone(),
                    holder: holder.to_string(),
                    began: range.map_or(Began::Any, |(_, end)| Began::Before(end)),
                    ended_by: "expired",
                    // A window's holding ends at the window's end, not at the sweep.
                    at: range.map_or(at, |(_, end)| end.min(at)),
                },
                Change::Notify {
                    recipient: format!("user:{holder}"),
                    kind: "reservation_expired",
                    grant_id: None,
                    compartment: id.clone(),
                    message: match range {
                        Some((start, end)) => format!(
                            "您预约的格口 {id}（{} 至 {}）已过期，已释放",
                            start.format("%Y-%m-%d %H:%M"),
                            end.format("%Y-%m-%d %H:%M UTC")
                        ),
                        None => format!("您预约的格口 {id} 已过期，已释放"),
                    },
                    at,
                },
            ]
        }
        E::HolderChanged {
            grant_id,
            from,
            to,
            via,
            window_start,
            window_end,
            at,
        } => {
            let range = window_start.zip(window_end);
            // The hand-over moment: now, or the start of a later part handed on.
            let handover = range.map_or(at, |(start, _)| start.max(at));
            let mut changes = vec![
                Change::WindowHandedOn {
                    id: id.clone(),
                    from: from.to_string(),
                    to: to.to_string(),
                    range,
                    at,
                },
                Change::CurrentWindow { id: id.clone(), at },
                Change::HoldingEnded {
                    id: id.clone(),
                    holder: from.to_string(),
                    began: Began::By(at),
                    ended_by: "granted",
                    at: handover,
                },
                Change::HoldingBegan {
                    id: id.clone(),
                    holder: to.to_string(),
                    grant_id: Some(grant_id),
                    authorizer: via.as_ref().map(|a| a.to_string()),
                    at: handover,
                },
            ];
            if let Some((_, end)) = range {
                changes.push(Change::HoldingResumed {
                    id: id.clone(),
                    holder: from.to_string(),
                    grant_id,
                    from: end,
                });
            }
            // The worked examples' texts stay as they were; the part handed on is in the
            // NATS notice and the windows.
            changes.push(Change::Notify {
                recipient: format!("user:{to}"),
                kind: "come_use",
                grant_id: Some(grant_id),
                compartment: id.clone(),
                message: format!("{from} 已将格口 {id} 的使用权授予您，请前往投递"),
                at,
            });
            changes.push(Change::Notify {
                recipient: format!("user:{from}"),
                kind: "grant_confirmed",
                grant_id: Some(grant_id),
                compartment: id.clone(),
                message: format!("格口 {id} 已授予 {to}"),
                at,
            });
            if via.is_none() {
                changes.push(Change::DirectGrant {
                    grant_id,
                    compartment: id.clone(),
                    requester: from.to_string(),
                    receiver: to.to_string(),
                    at,
                });
            }
            if let Some(a) = via {
                changes.push(Change::Notify {
                    recipient: format!("authorizer:{a}"),
                    kind: "grant_confirmed",
                    grant_id: Some(grant_id),
                    compartment: id.clone(),
                    message: format!("格口 {id} 已授予 {to}"),
                    at,
                });
            }
            changes
        }
        E::ParcelDeposited {
            depositor,
            parcel,
            at,
            ..
        } => vec![
            Change::Deposited {
                id: id.clone(),
                depositor: depositor.to_string(),
                parcel: parcel.as_str().to_owned(),
                at,
            },
            Change::WindowUsed {
                id: id.clone(),
                holder: depositor.to_string(),
                at,
            },
            Change::HoldingEnded {
                id,
                holder: depositor.to_string(),
                began: Began::By(at),
                ended_by: "deposited",
                at,
            },
        ],
        E::ParcelCollected { at, .. } => vec![
            Change::Freed { id: id.clone(), at },
            Change::CurrentWindow { id, at },
        ],
    }
}

/// What a reservation's holder is told: the window they booked.
pub fn reserved_message(id: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> String {
    format!(
        "您已成功预约格口 {id}，使用时段 {} 至 {}",
        start.format("%Y-%m-%d %H:%M"),
        end.format("%Y-%m-%d %H:%M UTC")
    )
}

fn grant(event: &LoggedEvent, parsed: GrantEvent) -> Result<Vec<Change>, ProjectionError> {
    use GrantEvent as E;
    let grant_id =
        Uuid::parse_str(&event.aggregate_id).map_err(|e| ProjectionError::BadPayload {
            position: event.position,
            detail: format!("grant aggregate id: {e}"),
        })?;
    let status = |status: &'static str, receiver: Option<String>, reason: Option<String>, at| {
        vec![Change::GrantStatus {
            grant_id,
            status,
            receiver,
            reason,
            at,
        }]
    };
    Ok(match parsed {
        E::GrantRequested {
            compartment,
            size,
            requester,
            target,
            deadline,
            at,
            ..
        } => {
            let (kind, authorizer, receiver) = match target {
                GrantTarget::Direct { receiver } => ("direct", None, Some(receiver.to_string())),
                GrantTarget::Authorizer { authorizer } => {
                    ("authorizer", Some(authorizer.to_string()), None)
                }
            };
            vec![Change::GrantRequested {
                grant_id,
                compartment: compartment.to_string(),
                size: size.as_str().to_owned(),
                requester: requester.to_string(),
                kind,
                authorizer,
                receiver,
                deadline,
                at,
            }]
        }
        E::GrantAccepted { receiver, at, .. } => {
            status("accepted", Some(receiver.to_string()), None, at)
        }
        E::GrantDeclined { reason, at, .. } => status("declined", None, Some(reason), at),
        E::GrantCompleted { receiver, at } => {
            status("completed", Some(receiver.to_string()), None, at)
        }
        E::GrantFailed { reason, at } => status("failed", None, Some(reason), at),
        E::GrantExpired { at } => status("expired", None, None, at),
    })
}

#[derive(Debug, Clone, Default)]
pub struct LockersProjection;

impl Projection for LockersProjection {
    fn name(&self) -> &str {
        NAME
    }

    fn wants(&self, aggregate_type: &str) -> bool {
        is_mine(aggregate_type)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[LoggedEvent],
    ) -> Result<(), ProjectionError> {
        // Inbox rows only ever insert, keyed by position, and a run of holder changes on
        // distinct compartments touches distinct rows: each goes in as one statement per kind
        // and batch instead of six round trips for every grant.
        let mut inbox = Inbox::default();
        let mut run = HolderRun::default();
        for event in events.iter().filter(|e| is_mine(&e.aggregate_type)) {
            let mut rest = Vec::new();
            for change in evolve(event)? {
                match change {
                    Change::Notify {
                        recipient,
                        kind,
                        grant_id,
                        compartment,
                        message,
                        at,
                    } => inbox.push(
                        recipient,
                        event.position,
                        kind,
                        grant_id,
                        compartment,
                        message,
                        at,
                    ),
                    change => rest.push(change),
                }
            }
            if run.takes(&rest) {
                run.push(event.position, rest);
                continue;
            }
            // Whatever comes next must see the run written first.
            run.write(&mut *conn).await?;
            if run.takes(&rest) {
                run.push(event.position, rest);
                continue;
            }
            for change in rest {
                write(&mut *conn, &change, event.position).await?;
            }
        }
        run.write(&mut *conn).await?;
        inbox.write(conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use latch_domain::locker::{CompartmentId, UserNumber};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn logged<E: serde::Serialize + cqrs_es::DomainEvent>(ty: &str, id: &str, e: E) -> LoggedEvent {
        LoggedEvent {
            position: 7,
            event_id: Uuid::from_u128(1),
            aggregate_type: ty.into(),
            aggregate_id: id.into(),
            sequence: 1,
            event_type: e.event_type(),
            event_version: e.event_version(),
            payload: serde_json::to_value(&e).unwrap(),
            metadata: serde_json::json!({}),
            recorded_at: t(0),
            hash: String::new(),
        }
    }

    #[test]
    fn a_grant_moves_the_holder_closes_the_old_holding_and_notifies_both() {
        let from = UserNumber::parse("u", "13455555555").unwrap();
        let to = UserNumber::parse("u", "13499996666").unwrap();
        let e = logged(
            Compartment::TYPE,
            "610091A01:01",
            CompartmentEvent::HolderChanged {
                grant_id: Uuid::from_u128(9),
                from,
                to,
                via: None,
                window_start: None,
                window_end: None,
                at: t(5),
            },
        );
        let changes = evolve(&e).unwrap();
        assert!(changes.contains(&Change::WindowHandedOn {
            id: "610091A01:01".into(),
            from: "13455555555".into(),
            to: "13499996666".into(),
            range: None,
            at: t(5),
        }));
        assert!(
            changes.iter().any(|c| matches!(c,
            Change::Notify { recipient, kind: "come_use", .. } if recipient == "user:13499996666"))
        );
        assert!(changes.iter().any(|c| matches!(c,
            Change::Notify { recipient, kind: "grant_confirmed", .. } if recipient == "user:13455555555")));
        // Without an authorizer the holder change is the whole grant: its row is born completed.
        assert!(changes.contains(&Change::DirectGrant {
            grant_id: Uuid::from_u128(9),
            compartment: "610091A01:01".into(),
            requester: "13455555555".into(),
            receiver: "13499996666".into(),
            at: t(5),
        }));
    }

    #[test]
    fn other_aggregates_and_installs_map_plainly() {
        let e = logged(
            Compartment::TYPE,
            "610091A01:01",
            CompartmentEvent::CompartmentInstalled {
                id: CompartmentId::parse("c", "610091A01:01").unwrap(),
                size: latch_domain::locker::Size::Large,
                door: None,
                at: t(0),
            },
        );
        assert_eq!(
            evolve(&e).unwrap(),
            vec![Change::CompartmentInstalled {
                id: "610091A01:01".into(),
                site: "610091A01".into(),
                number: "01".into(),
                size: "large".into(),
                door: None,
                at: t(0),
            }]
        );
        let mut other = e.clone();
        other.aggregate_type = "device".into();
        assert!(evolve(&other).unwrap().is_empty());
        assert!(!is_mine("device"));
    }
}
