//! The one clock. Every timestamp Veil records comes from [`now`], so tests can pin time.
//!
//! Set `VEIL_CLOCK` to an RFC 3339 instant (e.g. `2026-11-23T10:00:00Z`) to pin the clock for a
//! whole process, which is how end-to-end tests drive the `veil` binary on a fixed date; inside
//! one process, [`pin`] does the same.

use std::sync::Mutex;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};

static PINNED: Mutex<Option<DateTime<Utc>>> = Mutex::new(None);

/// Environment variable that pins the clock of a `veil` process.
pub const CLOCK_ENV: &str = "VEIL_CLOCK";

/// China Standard Time, the bureau's civil time: budget periods and grant terms are in it.
pub fn bureau_offset() -> FixedOffset {
    // 8 hours east of UTC is always a valid offset.
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"))
}

/// The current instant.
pub fn now() -> DateTime<Utc> {
    if let Ok(guard) = PINNED.lock()
        && let Some(pinned) = *guard
    {
        return pinned;
    }
    if let Ok(text) = std::env::var(CLOCK_ENV)
        && let Ok(pinned) = DateTime::parse_from_rfc3339(&text)
    {
        return pinned.with_timezone(&Utc);
    }
    Utc::now()
}

/// Today's date in the bureau's time zone.
pub fn today() -> NaiveDate {
    now().with_timezone(&bureau_offset()).date_naive()
}

/// The budget period (calendar month in the bureau's time zone) an instant falls in, as `YYYY-MM`.
pub fn period_of(instant: DateTime<Utc>) -> String {
    instant
        .with_timezone(&bureau_offset())
        .format("%Y-%m")
        .to_string()
}

/// Pins the clock of this process (tests only; `None` releases it).
pub fn pin(instant: Option<DateTime<Utc>>) {
    if let Ok(mut guard) = PINNED.lock() {
        *guard = instant;
    }
}

/// RFC 3339 text of an instant, in UTC with second precision.
pub fn format(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
