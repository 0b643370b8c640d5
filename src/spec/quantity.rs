//! Resource quantities written the Kubernetes way (`4Gi`, `512M`, `500m`, `2`), so one spec means
//! the same thing to Docker and to a cluster.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Bytes of memory, kept with the text the user wrote so the resolved spec prints it back as-is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    text: String,
}

/// CPU in thousandths of a core (`500m` = half a core).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub millis: u64,
    text: String,
}

impl Memory {
    pub fn parse(text: &str) -> Result<Memory, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid memory quantity {text:?}"))?;
        let mult: f64 = match suffix {
            "" => 1.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(format!("invalid memory quantity {text:?}")),
        };
        let bytes = (value * mult).round();
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(format!("memory quantity {text:?} is out of range"));
        }
        Ok(Memory {
            bytes: bytes as u64,
            text: t.to_string(),
        })
    }
}

impl Cpu {
    pub fn parse(text: &str) -> Result<Cpu, String> {
        let t = text.trim();
        let millis = if let Some(m) = t.strip_suffix('m') {
            m.parse::<u64>()
                .map_err(|_| format!("invalid cpu quantity {text:?}"))?
        } else {
            let cores: f64 = t
                .parse()
                .map_err(|_| format!("invalid cpu quantity {text:?}"))?;
            if !cores.is_finite() || !(0.0..=1e6).contains(&cores) {
                return Err(format!("cpu quantity {text:?} is out of range"));
            }
            (cores * 1000.0).round() as u64
        };
        if millis == 0 {
            return Err(format!("cpu quantity {text:?} must be more than zero"));
        }
        Ok(Cpu {
            millis,
            text: t.to_string(),
        })
    }

    /// Docker's `NanoCpus`.
    pub fn nanos(&self) -> i64 {
        (self.millis as i64).saturating_mul(1_000_000)
    }
}

/// The hint shown for a quantity we could not read.
pub fn memory_hint(text: &str) -> String {
    let t = text.trim();
    let digits: String = t
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let n = if digits.is_empty() { "4" } else { &digits };
    format!(
        "write memory as a number with a unit and no space: {n}Gi (gibibytes), {n}G (gigabytes), 512Mi; units are k, M, G, T, Ki, Mi, Gi, Ti"
    )
}

pub const CPU_HINT: &str = "write cpu as cores (2, 0.5) or millicores (500m)";

macro_rules! quantity_serde {
    ($ty:ident, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

quantity_serde!(Memory, "a memory quantity such as 4Gi or 512Mi");
quantity_serde!(Cpu, "a cpu quantity such as 2, 0.5 or 500m");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(Memory::parse("4Gi").unwrap().bytes, 4 << 30);
        assert_eq!(Memory::parse("512Mi").unwrap().bytes, 512 << 20);
        assert_eq!(Memory::parse("4G").unwrap().bytes, 4_000_000_000);
        assert_eq!(Memory::parse("1.5Gi").unwrap().bytes, 3 << 29);
        assert_eq!(Memory::parse("1048576").unwrap().bytes, 1 << 20);
    }

    #[test]
    fn memory_rejects_what_docker_and_kubernetes_would_misread() {
        for bad in ["4 Gb", "4GB", "4gi", "Gi", "", "-1Gi", "0"] {
            assert!(Memory::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(memory_hint("4 Gb").contains("4Gi"));
    }

    #[test]
    fn cpu_units() {
        assert_eq!(Cpu::parse("2").unwrap().millis, 2000);
        assert_eq!(Cpu::parse("0.5").unwrap().millis, 500);
        assert_eq!(Cpu::parse("250m").unwrap().millis, 250);
        assert_eq!(Cpu::parse("250m").unwrap().nanos(), 250_000_000);
        for bad in ["0", "two", "1.5m", "-1", "0m"] {
            assert!(Cpu::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
