//! Kubernetes resource quantities (`100m`, `1294Mi`, `60M`, `1e3`) as exact
//! numbers, so that requests and limits can be summed and compared the way
//! Kubernetes does when it gives a pod its QoS class.

/// A quantity in billionths of its unit (nano-cores, nano-bytes): every
/// suffix Kubernetes accepts, down to `n`, is a whole number of these, and
/// an `i128` holds `8Ei` with room to sum thousands of them.
pub type Nanos = i128;

/// Parses `s` with the grammar of apimachinery's `resource.ParseQuantity`:
/// an optionally signed decimal number, then a binary suffix (`Ki` … `Ei`),
/// a decimal one (`n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`) or an
/// exponent (`e3`, `E-2`). `None` when it is not one or does not fit.
/// Digits below a nano-unit round up, as Kubernetes rounds up to its
/// smallest scale.
pub fn parse(s: &str) -> Option<Nanos> {
    let (negative, unsigned) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let (binary_shift, decimal_exponent) = suffix_scale(suffix)?;
    // The number is digits × 10^exponent nano-units.
    let digits = [whole, fraction].concat();
    let exponent = decimal_exponent + 9 - i32::try_from(fraction.len()).ok()?;
    let dropped = usize::try_from(-exponent).unwrap_or(0).min(digits.len());
    let (kept, below_a_nano) = digits.split_at(digits.len() - dropped);
    let mut value: Nanos = 0;
    for d in kept.bytes() {
        value = value.checked_mul(10)?.checked_add(Nanos::from(d - b'0'))?;
    }
    for _ in 0..exponent.max(0) {
        value = value.checked_mul(10)?;
    }
    if below_a_nano.bytes().any(|d| d != b'0') {
        value = value.checked_add(1)?;
    }
    value = value.checked_mul(Nanos::from(2u8).checked_pow(binary_shift)?)?;
    Some(if negative { -value } else { value })
}

/// `(power of two, power of ten)` of a suffix.
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    const DECIMAL: [(&str, i32); 10] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    if let Some(i) = BINARY.iter().position(|b| *b == suffix) {
        return Some((10 * (u32::try_from(i).ok()? + 1), 0));
    }
    if let Some((_, e)) = DECIMAL.iter().find(|(name, _)| *name == suffix) {
        return Some((0, *e));
    }
    let exponent = suffix.strip_prefix(['e', 'E'])?;
    let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    // Kubernetes refuses exponents beyond ±10^18 anyway; three digits keep
    // the loops above short.
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((0, exponent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: Nanos = 1 << 30;

    #[test]
    fn the_forms_kubernetes_writes_and_people_type() {
        let cases: [(&str, Nanos); 16] = [
            ("100m", 100_000_000),
            ("0.1", 100_000_000),
            (".1", 100_000_000),
            ("1", 1_000_000_000),
            ("2", 2_000_000_000),
            ("15m", 15_000_000),
            ("60M", 60_000_000 * 1_000_000_000),
            ("1294Mi", 1294 * (1 << 20) * 1_000_000_000),
            ("1Gi", GIB * 1_000_000_000),
            ("0.5Gi", GIB / 2 * 1_000_000_000),
            ("4555014145", 4_555_014_145 * 1_000_000_000),
            ("1e3", 1000 * 1_000_000_000),
            ("1E-3", 1_000_000),
            ("5n", 5),
            ("+7u", 7_000),
            ("-1", -1_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse(text), Some(nanos), "{text}");
        }
        // The same amount written differently compares equal.
        assert_eq!(parse("1000m"), parse("1"));
        assert_eq!(parse("1024Ki"), parse("1Mi"));
        assert_eq!(parse("1k"), parse("1e3"));
    }

    #[test]
    fn below_a_nano_rounds_up() {
        assert_eq!(parse("0.1n"), Some(1));
        assert_eq!(parse("1.0000000001"), Some(1_000_000_001));
        assert_eq!(parse("1.0000000000"), Some(1_000_000_000));
    }

    #[test]
    fn malformed_or_too_large_is_refused() {
        for bad in [
            "", "-", "m", ".", "1..2", "1.2.3", "5 m", "5mb", "1mi", "1KB", "e3", "1e", "1e+", "1e1000",
            "1Ei1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&"9".repeat(60)), None);
    }
}
