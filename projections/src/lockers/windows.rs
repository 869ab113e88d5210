//! A compartment's booked windows as the read model keeps them (`locker_windows`), and the same
//! changes applied in memory, for answers folded from the log (`audit::as_of`). The SQL in
//! `write` and [`apply`] here make the same choices: which window an event without a range
//! meant ([`pick`]) and which pieces a grant of part of a window leaves ([`cut`]).

use super::Change;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One booked window: `holder` may use the compartment from `starts_at` until `ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WindowRow {
    pub holder: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// `holder`'s window an event without a range meant, among `windows`: the one `at` falls in,
/// else the first not over by `at`, else their first. (The SQL orders by the same keys.)
pub fn pick(windows: &[WindowRow], holder: &str, at: DateTime<Utc>) -> Option<usize> {
    windows
        .iter()
        .enumerate()
        .filter(|(_, w)| w.holder == holder)
        .min_by_key(|(_, w)| {
            (
                !(w.starts_at <= at && at < w.ends_at),
                w.ends_at <= at,
                w.starts_at,
            )
        })
        .map(|(i, _)| i)
}

/// The windows a grant of `range` (default: all) of `old` leaves: the granter's piece before,
/// the receiver's part, the granter's piece after; pieces of no length dropped.
pub fn cut(
    old: &WindowRow,
    to: &str,
    range: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Vec<WindowRow> {
    let (start, end) = range.unwrap_or((old.starts_at, old.ends_at));
    [
        (old.holder.as_str(), old.starts_at, start),
        (to, start, end),
        (old.holder.as_str(), end, old.ends_at),
    ]
    .into_iter()
    .filter(|(_, s, e)| s < e)
    .map(|(holder, starts_at, ends_at)| WindowRow {
        holder: holder.to_owned(),
        starts_at,
        ends_at,
    })
    .collect()
}

/// The window of `from` that a grant of `range` cuts: the one containing the range, or (no
/// range) the one [`pick`] finds.
pub fn granted(
    windows: &[WindowRow],
    from: &str,
    range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    at: DateTime<Utc>,
) -> Option<usize> {
    match range {
        Some((start, end)) => windows
            .iter()
            .position(|w| w.holder == from && w.starts_at <= start && end <= w.ends_at),
        None => pick(windows, from, at),
    }
}

/// Applies one change to one compartment's windows in memory (changes of other kinds or other
/// compartments are the caller's to skip).
pub fn apply(windows: &mut Vec<WindowRow>, change: &Change) {
    match change {
        Change::WindowBooked {
            holder,
            starts_at,
            ends_at,
            ..
        } => windows.push(WindowRow {
            holder: holder.clone(),
            starts_at: *starts_at,
            ends_at: *ends_at,
        }),
        Change::WindowHandedOn {
            from,
            to,
            range,
            at,
            ..
        } => {
            if let Some(i) = granted(windows, from, *range, *at) {
                let old = windows.remove(i);
                windows.extend(cut(&old, to, *range));
            }
        }
        Change::WindowLapsed { holder, range, .. } => match range {
            Some((start, end)) => windows
                .retain(|w| !(&w.holder == holder && w.starts_at == *start && w.ends_at == *end)),
            None => windows.retain(|w| &w.holder != holder),
        },
        Change::WindowUsed { holder, at, .. } => {
            if let Some(i) = pick(windows, holder, *at) {
                windows.remove(i);
            }
        }
        _ => return,
    }
    windows.sort_by_key(|w| w.starts_at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }
    fn w(holder: &str, s: i64, e: i64) -> WindowRow {
        WindowRow {
            holder: holder.into(),
            starts_at: t(s),
            ends_at: t(e),
        }
    }

    #[test]
    fn a_part_granted_leaves_the_granter_the_rest_without_empty_pieces() {
        let old = w("a", 100, 200);
        assert_eq!(
            cut(&old, "b", Some((t(140), t(160)))),
            vec![w("a", 100, 140), w("b", 140, 160), w("a", 160, 200)]
        );
        assert_eq!(cut(&old, "b", None), vec![w("b", 100, 200)]);
        assert_eq!(
            cut(&old, "b", Some((t(100), t(150)))),
            vec![w("b", 100, 150), w("a", 150, 200)]
        );
    }

    #[test]
    fn an_event_without_a_range_means_the_window_in_use_then_or_the_next() {
        let ws = vec![w("a", 100, 200), w("b", 200, 300), w("a", 300, 400)];
        assert_eq!(pick(&ws, "a", t(150)), Some(0));
        assert_eq!(pick(&ws, "a", t(250)), Some(2));
        assert_eq!(pick(&ws, "a", t(50)), Some(0));
        assert_eq!(pick(&ws, "a", t(500)), Some(0));
        assert_eq!(pick(&ws, "c", t(150)), None);
        let mut ws = ws;
        apply(
            &mut ws,
            &Change::WindowUsed {
                id: "x".into(),
                holder: "a".into(),
                at: t(250),
            },
        );
        assert_eq!(ws, vec![w("a", 100, 200), w("b", 200, 300)]);
    }
}
