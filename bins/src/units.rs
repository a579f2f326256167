//! Values flags take with their unit (`10s`, `8MiB/s`), parsed and shown the same way, so
//! `--help` prints core's defaults as a person would type them.

use std::fmt;
use std::time::Duration;

/// A duration as flags take it (`3s`, `500ms`, `1day`) and `--help` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A duration of more than zero: `3s`, `500ms`, `2m`.
pub fn span(s: &str) -> Result<Span, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 3s or 500ms: {e}"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(Span(d))
}

/// A duration, or 0.
pub fn span_or_zero(s: &str) -> Result<Span, String> {
    if s.trim() == "0" {
        return Ok(Span(Duration::ZERO));
    }
    humantime::parse_duration(s).map(Span).map_err(|e| format!("{s:?} is not a duration like 1d, 12h or 0: {e}"))
}

/// Bytes per second, as flags take it (`8MiB/s`, `500KB/s`, `1048576`) and `--help` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Exact: a default shown must parse back to itself.
        for (unit, bytes) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= bytes && self.0.is_multiple_of(bytes) {
                return write!(f, "{}{unit}/s", self.0 / bytes);
            }
        }
        write!(f, "{}/s", self.0)
    }
}

/// Bytes per second, more than zero.
pub fn rate(s: &str) -> Result<Rate, String> {
    let bytes = s.trim().trim_end_matches("/s");
    let rate: bytesize::ByteSize = bytes.parse().map_err(|e| format!("{s:?} is not a rate like 8MiB/s: {e}"))?;
    if rate.as_u64() == 0 {
        return Err("must be more than zero".into());
    }
    Ok(Rate(rate.as_u64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--help` shows as a default must parse back to the same value.
    #[test]
    fn shown_values_parse_back() {
        for d in [Duration::from_secs(10), Duration::from_millis(500), Duration::from_secs(86_400), Duration::from_secs(90)] {
            assert_eq!(span(&Span(d).to_string()), Ok(Span(d)), "{}", Span(d));
        }
        assert_eq!(span_or_zero(&Span(Duration::ZERO).to_string()), Ok(Span(Duration::ZERO)));
        for r in [8 << 20, 500_000, 1, 3 << 30] {
            assert_eq!(rate(&Rate(r).to_string()), Ok(Rate(r)), "{}", Rate(r));
        }
        assert!(span("0").is_err() && span("soon").is_err() && rate("0/s").is_err() && rate("fast").is_err());
    }
}
