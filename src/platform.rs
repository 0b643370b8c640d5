//! Platforms: the operating system and CPU architecture an image is made for, written as OCI
//! writes them (`linux/amd64`, `linux/arm64`). One type for the spec's `platform:`, the Docker
//! engine's and the cluster nodes' architectures, the wheels resolved for an image and the
//! serving image's parts, so they are compared in one place and named in one way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CPU architecture ferry builds images for, by its Go name (what image configs, image
/// indexes and the `kubernetes.io/arch` node label say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The Go name: `amd64`, `arm64`.
    pub fn go_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel's and Rust's name: `x86_64`, `aarch64`.
    pub fn machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// Debian's architecture name (debootstrap `--arch`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The GNU triple of Debian's multiarch library directories.
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The ELF `e_machine` of this architecture's 64-bit objects.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,  // EM_X86_64
            Arch::Arm64 => 183, // EM_AARCH64
        }
    }

    /// The architecture of an ELF `e_machine`, if ferry builds for it.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }

    /// Parses any of the names an architecture goes by: the Go name, the kernel's (`uname -m`,
    /// the Docker engine's `Architecture`), and `arm64/v8`.
    pub fn parse(name: &str) -> Option<Arch> {
        match name.trim().to_ascii_lowercase().as_str() {
            "amd64" | "x86_64" | "x86-64" | "x64" => Some(Arch::Amd64),
            "arm64" | "aarch64" | "arm64/v8" | "arm64v8" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// This process's architecture.
    pub fn host() -> Option<Arch> {
        Arch::parse(std::env::consts::ARCH)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.go_name())
    }
}

/// `os/arch`. Only Linux images are built, so `os` is implied and kept for the written form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub arch: Arch,
}

impl Platform {
    pub const LINUX_AMD64: Platform = Platform { arch: Arch::Amd64 };
    pub const LINUX_ARM64: Platform = Platform { arch: Arch::Arm64 };

    pub fn linux(arch: Arch) -> Platform {
        Platform { arch }
    }

    pub fn os(self) -> &'static str {
        "linux"
    }

    /// This process's platform, if it is one ferry builds for.
    pub fn host() -> Option<Platform> {
        (std::env::consts::OS == "linux")
            .then(Arch::host)
            .flatten()
            .map(Platform::linux)
    }

    /// The wheel platform tag of a manylinux wheel for this platform and glibc version
    /// (`manylinux_2_36_x86_64`), as pip's `--platform` and the wheels' file names write it.
    pub fn manylinux_tag(self, glibc: (u32, u32)) -> String {
        format!("manylinux_{}_{}_{}", glibc.0, glibc.1, self.arch.machine())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os(), self.arch)
    }
}

/// A platform that is not `linux/amd64` or `linux/arm64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown platform {given:?}\n  hint: ferry builds images for linux/amd64 and linux/arm64 (written `os/arch`, e.g. platform: linux/arm64)"
)]
pub struct PlatformError {
    pub given: String,
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// `linux/amd64`, `linux/arm64`, `linux/arm64/v8`; a bare architecture (`arm64`,
    /// `x86_64`) means Linux.
    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let err = || PlatformError {
            given: s.to_string(),
        };
        let t = s.trim();
        let arch = match t.split_once('/') {
            Some((os, rest)) => {
                if !os.eq_ignore_ascii_case("linux") {
                    return Err(err());
                }
                rest
            }
            None => t,
        };
        Arch::parse(arch).map(Platform::linux).ok_or_else(err)
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Platform, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_from_every_common_spelling() {
        for (given, want) in [
            ("linux/amd64", Platform::LINUX_AMD64),
            ("linux/arm64", Platform::LINUX_ARM64),
            ("linux/arm64/v8", Platform::LINUX_ARM64),
            ("arm64", Platform::LINUX_ARM64),
            ("aarch64", Platform::LINUX_ARM64),
            ("x86_64", Platform::LINUX_AMD64),
            (" Linux/AMD64 ", Platform::LINUX_AMD64),
        ] {
            assert_eq!(given.parse::<Platform>(), Ok(want), "{given}");
        }
        for bad in [
            "windows/amd64",
            "linux/riscv64",
            "",
            "linux/",
            "amd64/linux",
        ] {
            let e = bad.parse::<Platform>().unwrap_err();
            assert!(e.to_string().contains("linux/arm64"), "{e}");
        }
    }

    #[test]
    fn platforms_are_written_as_oci_writes_them() {
        assert_eq!(Platform::LINUX_ARM64.to_string(), "linux/arm64");
        assert_eq!(
            serde_json::to_string(&Platform::LINUX_AMD64).unwrap(),
            "\"linux/amd64\""
        );
        let p: Platform = serde_json::from_str("\"linux/arm64\"").unwrap();
        assert_eq!(p, Platform::LINUX_ARM64);
        assert_eq!(
            Platform::LINUX_ARM64.manylinux_tag((2, 28)),
            "manylinux_2_28_aarch64"
        );
    }

    #[test]
    fn elf_machines_map_to_architectures() {
        assert_eq!(Arch::from_elf_machine(62), Some(Arch::Amd64));
        assert_eq!(Arch::from_elf_machine(183), Some(Arch::Arm64));
        assert_eq!(Arch::from_elf_machine(3), None);
    }
}
