//! Byte sizes in configuration files: `4096`, `"4KiB"`, `"64MiB"`, `"1GiB"`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written in the configuration as a number or with a binary unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512"`, `"4KiB"`, `"64MiB"`, `"1GiB"`, `"2TiB"` (also `K`, `KB`, `M`... as the same
    /// binary units).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(format!("{text:?}: unknown unit (use KiB, MiB, GiB or TiB)")),
        };
        number
            .checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl ByteSize {
    /// A short human-readable form with one decimal: `959.9 MiB`.
    pub fn human(self) -> String {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, unit) in units {
            if self.0 >= 1 << shift {
                return format!("{:.1} {unit}", self.0 as f64 / (1u64 << shift) as f64);
            }
        }
        format!("{} bytes", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, unit) in units {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(number) => Ok(Self(number)),
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("4KiB"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("64 MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("1g"), Ok(ByteSize(1 << 30)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999TiB").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(1_006_583_808).human(), "960.0 MiB");
        assert_eq!(ByteSize(1_500_000).human(), "1.4 MiB");
    }
}
