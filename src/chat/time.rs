//! Wall-clock formatting for events and HTTP views.
//!
//! Owns the conversion of [`Micros`] (µs since the Unix epoch) to RFC 3339 text and to Unix seconds as a
//! float. It never reads a clock: the reactor samples the time once per loop turn and passes it in, so every
//! rule here is testable with a fake `now`.

use super::Micros;

/// Microseconds in one second.
pub(crate) const MICROS_PER_SEC: u64 = 1_000_000;
const SECS_PER_DAY: u64 = 86_400;

/// The length of an RFC 3339 timestamp with microseconds: `2026-11-21T10:00:00.123456Z`.
pub(crate) const RFC3339_LEN: usize = 27;

/// The last instant with a four-digit year, 9999-12-31T23:59:59.999999Z: later times print as this one.
const LAST_FOUR_DIGIT_YEAR: Micros = 253_402_300_799_999_999;

/// RFC 3339 UTC with microseconds, e.g. `2026-11-21T10:00:00.123456Z` (SPEC §4.2 `timestamp`).
pub fn rfc3339_micros(t: Micros) -> String {
    let bytes = rfc3339_bytes(t);
    // Every byte is an ASCII digit or one of `-T:.Z`.
    String::from_utf8(bytes.to_vec()).expect("bug: timestamp is not ASCII")
}

/// [`rfc3339_micros`] as a fixed array of ASCII bytes, so an event encoder copies it without
/// allocating or going through `fmt`.
///
/// Computed with Howard Hinnant's civil-from-days algorithm rather than a date crate: it is twenty lines
/// and needs no time zone data, since the output is always UTC. Years past 9999 do not fit RFC 3339's
/// four digits; such times (which no clock of this era returns) print as the last one that does.
pub(crate) fn rfc3339_bytes(t: Micros) -> [u8; RFC3339_LEN] {
    let t = t.min(LAST_FOUR_DIGIT_YEAR);
    let secs = t / MICROS_PER_SEC;
    let (year, month, day) = civil_from_days(secs / SECS_PER_DAY);
    let of_day = secs % SECS_PER_DAY;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], of_day / 3600);
    put_digits(&mut out[14..16], of_day / 60 % 60);
    put_digits(&mut out[17..19], of_day % 60);
    put_digits(&mut out[20..26], t % MICROS_PER_SEC);
    out
}

/// The longest [`isoformat_bytes`]: `2026-11-21T10:00:00.123456+00:00`.
pub(crate) const ISOFORMAT_MAX_LEN: usize = 32;

/// What Python's `datetime.now(timezone.utc).isoformat()` writes for `t`, the form of the seed
/// rooms app's `now_iso()` (`--compat fastapi`): `2026-11-21T10:00:00.123456+00:00`, and, as Python
/// does, without the fraction when the microseconds are zero (`2026-11-21T10:00:00+00:00`).
/// Returns the bytes and how many of them are used.
pub(crate) fn isoformat_bytes(t: Micros) -> ([u8; ISOFORMAT_MAX_LEN], usize) {
    let rfc = rfc3339_bytes(t);
    let mut out = [0u8; ISOFORMAT_MAX_LEN];
    let head = if t.min(LAST_FOUR_DIGIT_YEAR).is_multiple_of(MICROS_PER_SEC) {
        19 // `YYYY-MM-DDTHH:MM:SS`
    } else {
        26 // and `.ffffff`
    };
    out[..head].copy_from_slice(&rfc[..head]);
    out[head..head + 6].copy_from_slice(b"+00:00");
    (out, head + 6)
}

/// Writes the low `out.len()` decimal digits of `n` into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `t` as Unix seconds with a fraction, the `timestamp` of `GET /messages` (SPEC §3).
///
/// Exact to the microsecond until the year 2255: an `f64` holds integers up to 2^53 µs.
pub(crate) fn unix_seconds(t: Micros) -> f64 {
    t as f64 / MICROS_PER_SEC as f64
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31) in the proleptic Gregorian calendar.
///
/// Hinnant's algorithm counts in 400-year eras starting on 0000-03-01, so that the leap day is the last
/// day of its (March-based) year. `days` is unsigned because [`Micros`] cannot go before 1970.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year, [0, 365]
    let mp = (5 * doy + 2) / 153; // month counted from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = MICROS_PER_SEC;

    #[test]
    fn known_instants() {
        // Reference values from `date -u -d @SECS`.
        let table = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (S - 1, "1970-01-01T00:00:00.999999Z"),
            (94_694_399 * S + 999_999, "1972-12-31T23:59:59.999999Z"),
            // 2000 is a leap year although divisible by 100 (it is divisible by 400).
            (951_782_400 * S, "2000-02-29T00:00:00.000000Z"),
            (1_709_210_096 * S + 42, "2024-02-29T12:34:56.000042Z"),
            (1_795_255_200 * S + 123_456, "2026-11-21T10:00:00.123456Z"),
            // 2100 is not a leap year: the day after 02-28 is 03-01.
            (4_107_542_400 * S, "2100-03-01T00:00:00.000000Z"),
            (4_107_542_400 * S - 1, "2100-02-28T23:59:59.999999Z"),
        ];
        for (t, want) in table {
            assert_eq!(rfc3339_micros(t), want, "t = {t}");
        }
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // Walk 800 years day by day: dates must be consecutive, which covers every leap rule.
        let mut prev = civil_from_days(0);
        for days in 1..(800 * 366) {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1);
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{prev:?} -> {:?}",
                (y, m, d)
            );
            if next_month {
                let leap = py % 4 == 0 && (py % 100 != 0 || py % 400 == 0);
                let len = match pm {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                assert_eq!(pd, len, "month {py}-{pm}");
            }
            prev = (y, m, d);
        }
    }

    #[test]
    fn python_isoformat() {
        let text = |t| {
            let (b, n) = isoformat_bytes(t);
            String::from_utf8(b[..n].to_vec()).unwrap()
        };
        assert_eq!(
            text(1_795_255_200 * S + 123_456),
            "2026-11-21T10:00:00.123456+00:00"
        );
        assert_eq!(
            text(1_795_255_200 * S + 42),
            "2026-11-21T10:00:00.000042+00:00"
        );
        // Python leaves the fraction out when it is zero.
        assert_eq!(text(1_795_255_200 * S), "2026-11-21T10:00:00+00:00");
    }

    #[test]
    fn unix_seconds_keeps_micros() {
        assert_eq!(
            unix_seconds(1_795_255_200 * S + 123_456),
            1_795_255_200.123456
        );
        assert_eq!(
            serde_json::to_string(&unix_seconds(1_795_255_200 * S + 500_000)).unwrap(),
            "1795255200.5"
        );
    }

    #[test]
    fn years_past_9999_saturate() {
        assert_eq!(
            rfc3339_micros(LAST_FOUR_DIGIT_YEAR),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(rfc3339_micros(u64::MAX), "9999-12-31T23:59:59.999999Z");
    }
}
