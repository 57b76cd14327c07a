//! Durations on the command line: `10s`, `500ms`, `2m`, or a bare number of seconds.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Parses `10s`, `500ms`, `2m`, `1h` or `10` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        bail!("`{text}` is not a duration (write e.g. 10s, 500ms, 2m)");
    }
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration"))?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .with_context(|| format!("`{text}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        other => bail!("`{text}`: unknown unit `{other}` (use ms, s, m or h)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn mistakes_are_explained() {
        let err = |t: &str| format!("{:#}", parse_duration(t).unwrap_err());
        assert!(err("s").contains("not a duration"), "{}", err("s"));
        assert!(err("").contains("not a duration"));
        assert!(
            err("10 days").contains("unknown unit"),
            "{}",
            err("10 days")
        );
        assert!(err("-1s").contains("not a duration"));
        assert!(err("99999999999999999999s").contains("not a duration"));
        assert!(err("18446744073709551615h").contains("too long"));
    }
}
