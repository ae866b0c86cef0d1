//! When a cron program's ticks fall: the five-field expression of `on.cron` (validated by
//! [`crate::message::validate_cron`]) evaluated in UTC by the `croner` crate, with Vixie-cron
//! semantics (day of month and day of week are alternatives when both are restricted; 0 and
//! 7 are Sunday; `N/STEP` starts at `N`).

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed `on.cron` schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

fn to_datetime(t: f64) -> Option<DateTime<Utc>> {
    if !t.is_finite() {
        return None;
    }
    let secs = t.floor();
    let nanos = ((t - secs) * 1e9).clamp(0.0, 999_999_999.0) as u32;
    DateTime::from_timestamp(secs as i64, nanos)
}

fn to_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

impl Schedule {
    /// Parses a five-field cron expression; the error says why it is refused.
    pub fn parse(expr: &str) -> Result<Self, String> {
        crate::message::validate_cron(expr)?;
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .sloppy_ranges(true)
            .build();
        let cron = parser
            .parse(expr)
            .map_err(|e| format!("cron expression {expr:?}: {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first occurrence strictly after `t` (seconds since the epoch), if there is one.
    pub fn next_after(&self, t: f64) -> Option<f64> {
        let from = to_datetime(t)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        let next = to_seconds(next);
        // Occurrences fall on whole minutes; a fractional `t` inside one must not return it.
        if next > t {
            Some(next)
        } else {
            self.next_after(next)
        }
    }

    /// The last occurrence at or before `t`, if there is one.
    pub fn last_at_or_before(&self, t: f64) -> Option<f64> {
        let at = to_datetime(t)?;
        let last = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(to_seconds(last)).filter(|&l| l <= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2030-01-01T00:00:00Z, a Tuesday.
    const T0: f64 = 1_893_456_000.0;

    #[test]
    fn every_minute_falls_on_whole_minutes() {
        let s = Schedule::parse("* * * * *").unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 60.0));
        assert_eq!(s.next_after(T0 + 0.5), Some(T0 + 60.0));
        assert_eq!(s.next_after(T0 - 0.5), Some(T0));
        assert_eq!(s.last_at_or_before(T0 + 59.9), Some(T0));
        assert_eq!(s.last_at_or_before(T0 + 60.0), Some(T0 + 60.0));
    }

    #[test]
    fn fields_steps_and_names_follow_vixie_cron() {
        let s = Schedule::parse("5 4 * * *").unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 4.0 * 3600.0 + 300.0));
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(s.next_after(T0 + 1.0), Some(T0 + 900.0));
        // Sundays, by number (0 and 7) and by name: the first after Tuesday 2030-01-01 is the 6th.
        for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"] {
            let s = Schedule::parse(expr).unwrap();
            assert_eq!(s.next_after(T0), Some(T0 + 5.0 * 86_400.0), "{expr}");
        }
        // Day of month or day of week: the 3rd (Thursday) comes before the next Sunday.
        let s = Schedule::parse("0 0 3 * 0").unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 2.0 * 86_400.0));
        let s = Schedule::parse("10/20 * * * *").unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 600.0));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for expr in ["", "* * * *", "61 * * * *", "* * * * * *", "x * * * *"] {
            assert!(Schedule::parse(expr).is_err(), "{expr:?} was accepted");
        }
    }
}
