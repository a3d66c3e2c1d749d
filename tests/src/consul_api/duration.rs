//! Go's `time.ParseDuration`, which Consul uses for `wait=`, session `TTL` and `LockDelay`:
//! a sign, then one or more decimal numbers each with a unit (`ns us µs ms s m h`), or "0".

use std::time::Duration;

/// Parses `text` into signed nanoseconds; the error reads like Go's.
pub(crate) fn parse(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {text:?}")),
        };
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        // Nanosecond precision is all Go keeps; more fraction digits cannot matter.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_ns = if fraction.is_empty() {
            0
        } else {
            let digits: i128 = fraction.parse().map_err(|_| invalid())?;
            digits * scale / 10i128.pow(fraction.len() as u32)
        };
        total = whole
            .checked_mul(scale)
            .and_then(|ns| ns.checked_add(fraction_ns))
            .and_then(|ns| total.checked_add(ns))
            .filter(|ns| *ns <= i128::from(i64::MAX))
            .ok_or_else(invalid)?;
        rest = next;
    }
    Ok(if negative { -total } else { total })
}

/// Signed nanoseconds as a `Duration`, with everything not positive as zero.
pub(crate) fn to_std(nanos: i128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        assert_eq!(parse("5s"), Ok(5_000_000_000));
        assert_eq!(parse("100ms"), Ok(100_000_000));
        assert_eq!(parse("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse(".5s"), Ok(500_000_000));
        assert_eq!(parse("-2s"), Ok(-2_000_000_000));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("300µs"), Ok(300_000));
        assert!(parse("10").unwrap_err().contains("missing unit"));
        assert!(parse("").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
    }
}
