//! Validation of `on.cron`: a standard five-field cron expression
//! (minute, hour, day of month, month, day of week).

/// One field of a cron expression: its name, range and optional symbolic names.
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names for the values starting at `min` (months) or at 0 (days).
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [CronField; 5] = [
    CronField {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    CronField {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    CronField {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    CronField {
        name: "day of week",
        min: 0,
        max: 7,
        names: DAYS,
    },
];

/// Checks that `expr` is a five-field cron expression such as `5 4 * * *`.
///
/// Each field is a comma-separated list of `*`, `N`, `N-M`, optionally followed by `/STEP`;
/// months and days of week may also be written as three-letter English names.
/// Returns the rule that was broken.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    if parts.len() != FIELDS.len() {
        return Err(format!(
            "must be a cron expression with exactly 5 whitespace-separated fields \
             (minute hour day-of-month month day-of-week), got {} in {expr:?}",
            parts.len()
        ));
    }
    for (part, field) in parts.iter().zip(FIELDS.iter()) {
        check_field(part, field).map_err(|why| {
            format!(
                "invalid {} field {part:?} in cron expression {expr:?}: {why}",
                field.name
            )
        })?;
    }
    Ok(())
}

fn check_field(part: &str, field: &CronField) -> Result<(), String> {
    for item in part.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            let step = number(step).ok_or_else(|| format!("step {step:?} is not a number"))?;
            if step == 0 {
                return Err("step must be at least 1".to_owned());
            }
        }
        if range == "*" {
            continue;
        }
        let (low, high) = match range.split_once('-') {
            Some((low, high)) => (value(low, field)?, value(high, field)?),
            None => {
                let v = value(range, field)?;
                (v, v)
            }
        };
        if low > high {
            return Err(format!("range {range:?} goes backwards"));
        }
    }
    Ok(())
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn value(s: &str, field: &CronField) -> Result<u32, String> {
    let v = match number(s) {
        Some(v) => v,
        None => {
            let offset = if field.names.len() == 12 { 1 } else { 0 };
            let position = field
                .names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(s))
                .ok_or_else(|| format!("{s:?} is not a number or a known name"))?;
            // `position` is below 12, so the conversion cannot fail.
            u32::try_from(position)
                .unwrap_or(u32::MAX)
                .saturating_add(offset)
        }
    };
    if v < field.min || v > field.max {
        return Err(format!("{v} is outside {}..={}", field.min, field.max));
    }
    Ok(v)
}
