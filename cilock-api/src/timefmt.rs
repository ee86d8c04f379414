//! Time as people type and read it, the same on both sides of the socket:
//! durations in the daemon's configuration and the CLI's flags
//! ([`parse_duration`]: `"90"`, `"6h"`, `"1h 30m"`), and kept envelopes'
//! times ([`fmt_utc`]: `2025-12-03 16:25:36 UTC`).

use std::time::Duration;

/// Parses a humane duration: a number of seconds (`"90"`), or one or more
/// `<number><unit>` parts, optionally separated by spaces (`"6h"`,
/// `"1h 30m"`, `"2d"`, `"45s"`). Units: `s`/`sec`/`secs`/`second`/`seconds`,
/// `m`/`min`/`mins`/`minute`/`minutes`, `h`/`hr`/`hrs`/`hour`/`hours`,
/// `d`/`day`/`days`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "{text:?}: expected a number at {rest:?} (e.g. \"6h\", \"1h 30m\", \"90s\")"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = rest[digits..].trim_start();
        let ulen = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..ulen];
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            "" => return Err(format!("{text:?}: missing unit after {n}")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use s, m, h or d)"
                ))
            }
        };
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
        rest = rest[ulen..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1h30m15s").unwrap(),
            Duration::from_secs(5415)
        );
        assert_eq!(
            parse_duration("2 days").unwrap(),
            Duration::from_secs(172800)
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn utc() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_utc(1_764_779_136), "2025-12-03 16:25:36 UTC");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
