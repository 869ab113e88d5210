//! One scan of a cabinet sticker: a `sticker_scan` stream of exactly one event, under a fresh
//! UUIDv7 per scan.
//!
//! Anyone can open a sticker link, forged or not, so scans never go into a long-lived stream
//! (the cabinet's own would grow without bound from anonymous traffic); each is its own short
//! stream, and how many a client may have recorded is limited at the edge.
//!
//! A scan is classified by the link's signature (an HMAC of the cabinet id, see the API's
//! `vending::sticker`):
//! - `StickerScanned`: genuine for the cabinet in the link;
//! - `SwappedStickerScanned`: genuine, but for another known cabinet (a real sticker moved, or
//!   a link edited to point elsewhere);
//! - `ForgedStickerScanned`: anything else (no signature, a bad one, or a cabinet id that is
//!   not one at all, in which case `cabinet` is empty).
//!
//! The signature itself is not recorded: it adds nothing an auditor needs.

use super::values::KazayaUserId;
use crate::device::DeviceId;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// What the signature check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanVerdict {
    Genuine,
    /// The signature is genuine for this other cabinet.
    Swapped {
        genuine_for: DeviceId,
    },
    Forged,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScanCommand {
    Record {
        /// `None` when the link's cabinet id does not parse.
        cabinet: Option<DeviceId>,
        verdict: ScanVerdict,
        /// The shopper, when the scan came with a shopper's session.
        shopper: Option<KazayaUserId>,
        at: DateTime<Utc>,
    },
}

impl ScanCommand {
    pub fn name(&self) -> &'static str {
        "RecordStickerScan"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScanEvent {
    StickerScanned {
        cabinet: DeviceId,
        shopper: Option<KazayaUserId>,
        at: DateTime<Utc>,
    },
    SwappedStickerScanned {
        cabinet: DeviceId,
        genuine_for: DeviceId,
        shopper: Option<KazayaUserId>,
        at: DateTime<Utc>,
    },
    ForgedStickerScanned {
        cabinet: Option<DeviceId>,
        shopper: Option<KazayaUserId>,
        at: DateTime<Utc>,
    },
}

impl ScanEvent {
    pub const VERSION: &'static str = "1";
}

impl DomainEvent for ScanEvent {
    fn event_type(&self) -> String {
        match self {
            Self::StickerScanned { .. } => "StickerScanned",
            Self::SwappedStickerScanned { .. } => "SwappedStickerScanned",
            Self::ForgedStickerScanned { .. } => "ForgedStickerScanned",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("this scan has already been recorded")]
    AlreadyRecorded,
    #[error("a genuine signature needs the cabinet it was made for")]
    NoCabinet,
}

impl ScanError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRecorded => "scan_already_recorded",
            Self::NoCabinet => "scan_without_cabinet",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StickerScan {
    pub recorded: bool,
}

impl StickerScan {
    pub fn decide(&self, command: ScanCommand) -> Result<Vec<ScanEvent>, ScanError> {
        if self.recorded {
            return Err(ScanError::AlreadyRecorded);
        }
        let ScanCommand::Record {
            cabinet,
            verdict,
            shopper,
            at,
        } = command;
        Ok(vec![match (verdict, cabinet) {
            (ScanVerdict::Genuine, Some(cabinet)) => ScanEvent::StickerScanned {
                cabinet,
                shopper,
                at,
            },
            (ScanVerdict::Swapped { genuine_for }, Some(cabinet)) => {
                ScanEvent::SwappedStickerScanned {
                    cabinet,
                    genuine_for,
                    shopper,
                    at,
                }
            }
            (ScanVerdict::Genuine | ScanVerdict::Swapped { .. }, None) => {
                return Err(ScanError::NoCabinet)
            }
            (ScanVerdict::Forged, cabinet) => ScanEvent::ForgedStickerScanned {
                cabinet,
                shopper,
                at,
            },
        }])
    }
}

impl crate::store::StateShape for StickerScan {}

impl Aggregate for StickerScan {
    const TYPE: &'static str = "sticker_scan";
    type Command = ScanCommand;
    type Event = ScanEvent;
    type Error = ScanError;
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
            ScanEvent::StickerScanned { .. }
            | ScanEvent::SwappedStickerScanned { .. }
            | ScanEvent::ForgedStickerScanned { .. } => self.recorded = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    fn at() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }
    fn cabinet(n: u128) -> DeviceId {
        DeviceId::from(Uuid::from_u128(n))
    }
    fn shopper() -> KazayaUserId {
        KazayaUserId::parse("user", "kz-1").unwrap()
    }
    fn record(cabinet: Option<DeviceId>, verdict: ScanVerdict) -> ScanCommand {
        ScanCommand::Record {
            cabinet,
            verdict,
            shopper: Some(shopper()),
            at: at(),
        }
    }

    #[test]
    fn a_genuine_scan() {
        TestFramework::<StickerScan>::with(())
            .given_no_previous_events()
            .when(record(Some(cabinet(1)), ScanVerdict::Genuine))
            .then_expect_events(vec![ScanEvent::StickerScanned {
                cabinet: cabinet(1),
                shopper: Some(shopper()),
                at: at(),
            }]);
    }

    #[test]
    fn a_swapped_sticker_names_the_cabinet_it_belongs_to() {
        TestFramework::<StickerScan>::with(())
            .given_no_previous_events()
            .when(record(
                Some(cabinet(1)),
                ScanVerdict::Swapped {
                    genuine_for: cabinet(2),
                },
            ))
            .then_expect_events(vec![ScanEvent::SwappedStickerScanned {
                cabinet: cabinet(1),
                genuine_for: cabinet(2),
                shopper: Some(shopper()),
                at: at(),
            }]);
    }

    #[test]
    fn a_forged_scan_with_or_without_a_cabinet() {
        for c in [Some(cabinet(1)), None] {
            TestFramework::<StickerScan>::with(())
                .given_no_previous_events()
                .when(ScanCommand::Record {
                    cabinet: c,
                    verdict: ScanVerdict::Forged,
                    shopper: None,
                    at: at(),
                })
                .then_expect_events(vec![ScanEvent::ForgedStickerScanned {
                    cabinet: c,
                    shopper: None,
                    at: at(),
                }]);
        }
    }

    #[test]
    fn refusals() {
        TestFramework::<StickerScan>::with(())
            .given_no_previous_events()
            .when(record(None, ScanVerdict::Genuine))
            .then_expect_error(ScanError::NoCabinet);
        TestFramework::<StickerScan>::with(())
            .given(vec![ScanEvent::ForgedStickerScanned {
                cabinet: None,
                shopper: None,
                at: at(),
            }])
            .when(record(Some(cabinet(1)), ScanVerdict::Genuine))
            .then_expect_error(ScanError::AlreadyRecorded);
    }

    #[test]
    fn events_read_back_at_version_1() {
        let e = ScanEvent::SwappedStickerScanned {
            cabinet: cabinet(1),
            genuine_for: cabinet(2),
            shopper: None,
            at: at(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(serde_json::from_value::<ScanEvent>(json).unwrap(), e);
        assert_eq!(e.event_version(), "1");
        assert_eq!(e.event_type(), "SwappedStickerScanned");
    }
}
