//! UTC calendar arithmetic on epoch milliseconds (RFC 3339 rendering, day and month starts), clock-free.

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31). Howard Hinnant's civil_from_days.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: i64 = 86_400_000;

/// Renders epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The UTC day of `ms` as `YYYY-MM-DD`.
pub fn utc_day(ms: i64) -> String {
    rfc3339(ms).chars().take(10).collect()
}

/// Days in `month` (1..=12) of `year`, February 29 in Gregorian leap years.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses the RFC 3339 forms clients send (`2026-11-22`, `2026-11-22T10:00:00Z`, with optional
/// fraction and numeric offset) into epoch milliseconds. A date or time that is not on the calendar
/// or clock (`2026-02-30`, `24:00:00`, an offset of `+25:00`) is `None`, never carried over into
/// the next day or month.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=days_in_month(y, mo)).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, mo as u32, d as u32) * DAY_MS;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b.len() < 19
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10_i64.pow(3 - digits.len() as u32);
    }
    let offset_ms = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && (tz.starts_with('+') || tz.starts_with('-'))
            && tz.as_bytes()[3] == b':' =>
        {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3_600_000 + om * 60_000)
        }
        _ => return None,
    };
    Some(day_ms + h * 3_600_000 + mi * 60_000 + sec * 1000 + frac_ms - offset_ms)
}

/// Start of the UTC day containing `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// Start of the UTC calendar month containing `ms`, and the start of the next one.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    let start = days_from_civil(y, m, 1) * DAY_MS;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (start, days_from_civil(ny, nm, 1) * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_305_600_123), "2026-11-22T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parse_round_trips_and_offsets() {
        for ms in [0, 1_795_305_600_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-11-22"), Some(1_795_305_600_000));
        assert_eq!(
            parse_rfc3339("2026-11-22T01:00:00+01:00"),
            Some(1_795_305_600_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T00:00:00.5Z"),
            Some(1_795_305_600_500)
        );
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-11-22T",
            "2026-11-22T00:00:00",
            "x026-11-22",
            "2026-11-22T00:00:00+1",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_and_times_off_the_calendar_are_refused() {
        for bad in [
            "2026-02-30",
            "2026-02-29",
            "2100-02-29",
            "2026-04-31",
            "2026-06-31",
            "2026-09-31",
            "2026-11-31",
            "2026-00-10",
            "2026-13-01",
            "2026-01-00",
            "2026-01-32",
            "2026-02-30T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T23:60:00Z",
            "2026-11-22T23:59:60Z",
            "2026-11-22T23:59:99Z",
            "2026-11-22T10:00:00+25:00",
            "2026-11-22T10:00:00+24:00",
            "2026-11-22T10:00:00-24:00",
            "2026-11-22T10:00:00+23:60",
            "2026-11-22T10:00:00-00:99",
            "2026-11-22T10:00:00+1a:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        // The last day of every month, leap days of leap years, and the widest offsets still parse.
        for (y, m, last) in [
            (2026, 1, 31),
            (2026, 2, 28),
            (2024, 2, 29),
            (2000, 2, 29),
            (2026, 4, 30),
            (2026, 6, 30),
            (2026, 9, 30),
            (2026, 11, 30),
            (2026, 12, 31),
        ] {
            let day = format!("{y:04}-{m:02}-{last:02}");
            let ms = parse_rfc3339(&day).unwrap_or_else(|| panic!("{day}"));
            assert_eq!(utc_day(ms), day);
            assert_eq!(
                parse_rfc3339(&format!("{y:04}-{m:02}-{:02}", last + 1)),
                None,
                "{day} + 1"
            );
        }
        let noon = parse_rfc3339("2026-11-22T12:00:00Z").unwrap();
        assert_eq!(
            parse_rfc3339("2026-11-22T12:00:00+23:59"),
            Some(noon - (23 * 60 + 59) * 60_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T12:00:00-23:59"),
            Some(noon + (23 * 60 + 59) * 60_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T23:59:59.999Z"),
            Some(noon + 12 * 3_600_000 - 1)
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let start = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2300, 1, 1);
        for days in start..end {
            let day = utc_day(days * DAY_MS);
            assert_eq!(parse_rfc3339(&day), Some(days * DAY_MS), "{day}");
        }
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn month_bounds_cross_years_and_leap_days() {
        let ms = parse_rfc3339("2024-02-29T23:59:59Z").unwrap();
        let (s, e) = month_bounds(ms);
        assert_eq!(rfc3339(s), "2024-02-01T00:00:00.000Z");
        assert_eq!(rfc3339(e), "2024-03-01T00:00:00.000Z");
        let (s, e) = month_bounds(parse_rfc3339("2026-12-31T12:00:00Z").unwrap());
        assert_eq!(rfc3339(s), "2026-12-01T00:00:00.000Z");
        assert_eq!(rfc3339(e), "2027-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(day_start(parse_rfc3339("2026-11-22T23:00:00Z").unwrap())),
            "2026-11-22T00:00:00.000Z"
        );
    }
}
