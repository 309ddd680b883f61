//! Ganeti's VLAN syntax for a NIC: `.N` or `N` (access), `:N[:M...]`
//! (trunk), `.N:M[:...]` (hybrid).

use std::fmt;
use std::str::FromStr;

/// The lowest VLAN id a port can carry.
pub const VLAN_MIN: u16 = 1;
/// The highest VLAN id a port can carry (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;

/// A NIC's VLANs, as Ganeti writes them.
///
/// - `.N` or `N`: an access port in VLAN N (frames untagged);
/// - `:N[:M...]`: a trunk port carrying N, M... tagged;
/// - `.N:M[:...]`: a hybrid port, N untagged (native), M... tagged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VlanSpec {
    /// The untagged (native, PVID) VLAN: set for access and hybrid ports.
    pub untagged: Option<u16>,
    /// The tagged VLANs, in the order given: set for trunk and hybrid
    /// ports. Never holds `untagged`, never holds one twice.
    pub tagged: Vec<u16>,
}

/// The kind of port a [`VlanSpec`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanKind {
    /// One VLAN, untagged.
    Access,
    /// Only tagged VLANs.
    Trunk,
    /// One untagged VLAN and tagged ones.
    Hybrid,
}

impl VlanSpec {
    /// An access port in `vid`.
    pub fn access(vid: u16) -> Result<Self, VlanError> {
        Self::build(Some(vid), &[])
    }

    /// A trunk port carrying `vids` tagged.
    pub fn trunk(vids: &[u16]) -> Result<Self, VlanError> {
        Self::build(None, vids)
    }

    /// A hybrid port: `native` untagged, `tagged` tagged.
    pub fn hybrid(native: u16, tagged: &[u16]) -> Result<Self, VlanError> {
        Self::build(Some(native), tagged)
    }

    fn build(untagged: Option<u16>, tagged: &[u16]) -> Result<Self, VlanError> {
        let mut seen = Vec::with_capacity(tagged.len() + 1);
        for vid in untagged.iter().chain(tagged) {
            if !(VLAN_MIN..=VLAN_MAX).contains(vid) {
                return Err(VlanError::OutOfRange(u32::from(*vid)));
            }
            if seen.contains(vid) {
                return Err(VlanError::Repeated(*vid));
            }
            seen.push(*vid);
        }
        if untagged.is_none() && tagged.is_empty() {
            return Err(VlanError::Empty);
        }
        Ok(Self {
            untagged,
            tagged: tagged.to_vec(),
        })
    }

    /// Access, trunk or hybrid.
    pub fn kind(&self) -> VlanKind {
        match (self.untagged, self.tagged.is_empty()) {
            (Some(_), true) => VlanKind::Access,
            (None, _) => VlanKind::Trunk,
            (Some(_), false) => VlanKind::Hybrid,
        }
    }

    /// Every VLAN of the port, the untagged one first.
    pub fn vids(&self) -> impl Iterator<Item = u16> + '_ {
        self.untagged.iter().chain(&self.tagged).copied()
    }
}

/// Why a VLAN spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VlanError {
    /// Not Ganeti's syntax.
    #[error(
        "\"{0}\" is not a VLAN spec: expected .N or N (access), :N[:M...] (trunk) or .N:M[:...] (hybrid), with decimal VLAN ids"
    )]
    Syntax(String),
    /// A VLAN id outside 1..4094.
    #[error("VLAN {0} is out of range: VLAN ids are {VLAN_MIN} to {VLAN_MAX}")]
    OutOfRange(u32),
    /// The same VLAN twice.
    #[error("VLAN {0} is listed twice")]
    Repeated(u16),
    /// No VLAN at all.
    #[error("a VLAN spec needs at least one VLAN")]
    Empty,
}

impl FromStr for VlanSpec {
    type Err = VlanError;

    /// Parses Ganeti's syntax. Refuses what Ganeti refuses (anything but
    /// `:`-separated decimal numbers after the first character), and
    /// more: ids outside 1..4094, an id given twice, signs, spaces and
    /// non-ASCII digits.
    fn from_str(s: &str) -> Result<Self, VlanError> {
        let syntax = || VlanError::Syntax(s.to_string());
        let number = |t: &str| -> Result<u16, VlanError> {
            if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let v: u32 = t.parse().map_err(|_| syntax())?;
            u16::try_from(v)
                .ok()
                .filter(|v| (VLAN_MIN..=VLAN_MAX).contains(v))
                .ok_or(VlanError::OutOfRange(v))
        };
        let list = |t: &str| -> Result<Vec<u16>, VlanError> { t.split(':').map(number).collect() };
        if let Some(rest) = s.strip_prefix('.') {
            let vids = list(rest)?;
            Self::build(Some(vids[0]), &vids[1..])
        } else if let Some(rest) = s.strip_prefix(':') {
            Self::build(None, &list(rest)?)
        } else {
            Self::build(Some(number(s)?), &[])
        }
    }
}

impl fmt::Display for VlanSpec {
    /// Ganeti's stored form: `.N`, `:N:M`, `.N:M`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = self.untagged {
            write!(f, ".{u}")?;
        }
        for t in &self.tagged {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ganeti_forms_parse() {
        for (text, untagged, tagged, kind, stored) in [
            ("100", Some(100), vec![], VlanKind::Access, ".100"),
            (".100", Some(100), vec![], VlanKind::Access, ".100"),
            (":100", None, vec![100], VlanKind::Trunk, ":100"),
            (
                ":100:200",
                None,
                vec![100, 200],
                VlanKind::Trunk,
                ":100:200",
            ),
            (
                ".100:200",
                Some(100),
                vec![200],
                VlanKind::Hybrid,
                ".100:200",
            ),
            (
                ".1:2:4094",
                Some(1),
                vec![2, 4094],
                VlanKind::Hybrid,
                ".1:2:4094",
            ),
            ("0100", Some(100), vec![], VlanKind::Access, ".100"),
        ] {
            let v: VlanSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(v.untagged, untagged, "{text}");
            assert_eq!(v.tagged, tagged, "{text}");
            assert_eq!(v.kind(), kind, "{text}");
            assert_eq!(v.to_string(), stored, "{text}");
            assert_eq!(v.to_string().parse::<VlanSpec>().unwrap(), v);
        }
    }

    #[test]
    fn what_ganeti_refuses_is_refused() {
        for bad in [
            "",
            ".",
            ":",
            "..100",
            ".100.",
            ".100:",
            ":100:",
            "::100",
            ":100::200",
            "a",
            ".a",
            ":1a",
            "+100",
            ".+100",
            "-1",
            ". 100",
            "100 ",
            " 100",
            "1.5",
            "100:200",
            ".100;200",
            "١٠٠",
            "100000000000000000000",
        ] {
            match bad.parse::<VlanSpec>() {
                Err(VlanError::Syntax(t)) => assert_eq!(t, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn ids_outside_the_range_or_twice_are_refused() {
        for (bad, err) in [
            ("0", VlanError::OutOfRange(0)),
            (".4095", VlanError::OutOfRange(4095)),
            (":1:65536", VlanError::OutOfRange(65536)),
            (".99999", VlanError::OutOfRange(99999)),
            (":100:100", VlanError::Repeated(100)),
            (".100:100", VlanError::Repeated(100)),
            (".100:200:200", VlanError::Repeated(200)),
        ] {
            assert_eq!(bad.parse::<VlanSpec>(), Err(err), "{bad}");
        }
        assert_eq!(VlanSpec::trunk(&[]), Err(VlanError::Empty));
        assert_eq!(VlanSpec::access(0), Err(VlanError::OutOfRange(0)));
    }
}
