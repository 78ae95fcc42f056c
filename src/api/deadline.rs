//! The client's deadline, from the `grpc-timeout` header ("<digits><unit>", unit H M S m u n).

use std::time::Duration;

pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // Bytes, not chars: a non-ASCII value must be refused, not split inside a character.
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("83m"), Some(Duration::from_millis(83)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        // "\u{d5}\u{3d2}": found by the validate_request fuzzer (a split inside a character).
        for bad in ["", "S", "10", "10x", "-1S", "+1S", "1234567890S", "1.5S", "\u{d5}\u{3d2}", "1\u{3d2}", "\u{3d2}S"]
        {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
