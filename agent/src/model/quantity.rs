//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as exact integers.

use std::fmt;

/// Nano-units per unit: quantities are kept in billionths so `100m == 0.1` exactly.
const NANO: i128 = 1_000_000_000;

/// A parsed quantity, in nano-units of its base unit (cores, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: i128,
}

/// A string that is not a Kubernetes quantity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid quantity {0:?}: expected a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, ...)"
)]
pub struct QuantityError(pub String);

impl std::ops::Add for Quantity {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl Quantity {
    /// Zero of any unit.
    pub const ZERO: Self = Self { nanos: 0 };

    /// Parses the quantity grammar of `k8s.io/apimachinery/pkg/api/resource`.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError(text.to_string());
        let s = text.trim();
        let (sign, s) = match s.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, s.strip_prefix('+').unwrap_or(s)),
        };
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{int_part}{frac_part}");
        if digits.len() > 30 {
            return Err(err());
        }
        let mantissa: i128 = digits.parse().map_err(|_| err())?;
        // value = mantissa * 10^-frac_len * multiplier; kept as nanos.
        let mut decimal_exp: i32 = -(frac_part.len() as i32);
        let mut binary_mult: i128 = 1;
        match suffix {
            "" => {}
            "n" => decimal_exp -= 9,
            "u" => decimal_exp -= 6,
            "m" => decimal_exp -= 3,
            "k" => decimal_exp += 3,
            "M" => decimal_exp += 6,
            "G" => decimal_exp += 9,
            "T" => decimal_exp += 12,
            "P" => decimal_exp += 15,
            "E" => decimal_exp += 18,
            "Ki" => binary_mult = 1 << 10,
            "Mi" => binary_mult = 1 << 20,
            "Gi" => binary_mult = 1 << 30,
            "Ti" => binary_mult = 1 << 40,
            "Pi" => binary_mult = 1 << 50,
            "Ei" => binary_mult = 1 << 60,
            other => {
                let exp = other
                    .strip_prefix(['e', 'E'])
                    .ok_or_else(err)?
                    .parse::<i32>()
                    .map_err(|_| err())?;
                if !(-30..=30).contains(&exp) {
                    return Err(err());
                }
                decimal_exp += exp;
            }
        }
        let mut nanos = mantissa.checked_mul(binary_mult).ok_or_else(err)?;
        let exp = decimal_exp + 9;
        if exp >= 0 {
            nanos = nanos
                .checked_mul(10i128.checked_pow(exp as u32).ok_or_else(err)?)
                .ok_or_else(err)?;
        } else {
            // Below a nano-unit Kubernetes rounds up; so do we.
            let div = 10i128.checked_pow((-exp) as u32).ok_or_else(err)?;
            nanos = (nanos + div - 1) / div;
        }
        Ok(Self {
            nanos: sign * nanos,
        })
    }

    /// The value in thousandths (millicores for CPU), rounded up like `MilliValue()`.
    pub fn milli(self) -> i128 {
        (self.nanos + 999_999).div_euclid(1_000_000)
    }

    /// The value in whole units (bytes for memory), rounded up like `Value()`.
    pub fn value(self) -> i128 {
        (self.nanos + NANO - 1).div_euclid(NANO)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else {
            write!(f, "{}m", self.milli())
        }
    }
}

/// `n` as Go's `resource.NewQuantity(n, BinarySI).String()` writes it: below 1024
/// plainly, else with the largest binary suffix that keeps it whole (`31268Ki`,
/// `40Mi`, `1536`... `1025`).
pub fn binary_si(n: u64) -> String {
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n;
    let mut e = 0;
    while e < 6 && v.is_multiple_of(1024) {
        v /= 1024;
        e += 1;
    }
    let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][e];
    format!("{v}{suffix}")
}

/// The amount `key` of a resource list (requests or limits): millicores for `cpu`,
/// the value (bytes, count) for anything else; `None` when the list does not name it.
pub fn amount(
    m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
    key: &str,
) -> Result<Option<u64>, QuantityError> {
    let Some(q) = m.as_ref().and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    let q = Quantity::parse(&q.0)?;
    Ok(Some(if key == "cpu" {
        u64::try_from(q.milli()).unwrap_or(0)
    } else {
        u64::try_from(q.value()).unwrap_or(0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn binary_si_as_go_writes_it() {
        assert_eq!(binary_si(0), "0");
        assert_eq!(binary_si(1000), "1000");
        assert_eq!(binary_si(1536), "1536");
        assert_eq!(binary_si(40 << 20), "40Mi");
        assert_eq!(binary_si(31268 << 10), "31268Ki");
        assert_eq!(binary_si(3 << 30), "3Gi");
    }

    #[test]
    fn decimal_and_binary_suffixes() {
        assert_eq!(q("100m"), q("0.1"));
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("16Mi").value(), 16 * 1024 * 1024);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("2k").value(), 2000);
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("50m").milli(), 50);
        assert_eq!(q("2").milli(), 2000);
        assert_eq!(q("1n").milli(), 1, "sub-milli rounds up");
    }

    #[test]
    fn garbage_is_refused_with_the_text_named() {
        for bad in ["", "abc", "1.2.3", "12Q", "1e99", "."] {
            let err = Quantity::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
