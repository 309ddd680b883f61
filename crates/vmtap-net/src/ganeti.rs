//! Ganeti's NIC script environment: `vmtap ifup`/`ifdown` read it so that
//! a Ganeti node can point its NIC script at vmtap.
//!
//! Used: `INTERFACE` (or the argument), `MODE`, `LINK` (`BRIDGE` in
//! bridged mode), `IP`, `VLAN`, `MAC` (checked, not used: the tap's MAC is
//! its own with the first byte 0xfe), `ACTION` (when set, it must match).
//! Informational and ignored: `INSTANCE`, `INTERFACE_INDEX`,
//! `INTERFACE_UUID`, `INTERFACE_NAME`, `TAGS`, `NETWORK_*`,
//! `MIGRATION_PHASE`.

use crate::{LinkError, MacAddr, NicMode};

/// Whether the script was called to set a NIC up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `ifup`.
    Up,
    /// `ifdown`.
    Down,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// A NIC as Ganeti's environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GanetiNic {
    /// The tap.
    pub ifname: String,
    /// How it joins the host network (`None` for [`Action::Down`], which
    /// undoes what the record says).
    pub mode: Option<NicMode>,
    /// The guest's MAC address, when given.
    pub mac: Option<MacAddr>,
    /// What identifies the NIC beyond the tap's name: `INSTANCE`,
    /// `INTERFACE_UUID` and `MAC` as given (see `LinkOptions::nic`).
    pub nic: Option<String>,
}

/// Reads a NIC from Ganeti's variables (`var` looks one up: an unset
/// variable is `None`). `arg` is the interface named on the command line.
/// Errors are the caller's (exit 2): missing or contradictory variables,
/// values that make no NIC.
pub fn from_env(
    action: Action,
    arg: Option<&str>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<GanetiNic, LinkError> {
    let invalid = |what: String| LinkError::InvalidEnv(what);
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(a) = set("ACTION")
        && a != action.word()
    {
        return Err(invalid(format!(
            "ACTION={a} given to if{} (expected {})",
            action.word(),
            action.word()
        )));
    }
    let ifname = match (arg.filter(|a| !a.is_empty()), set("INTERFACE")) {
        (Some(a), Some(e)) if a != e => {
            return Err(invalid(format!(
                "the interface argument \"{a}\" and INTERFACE=\"{e}\" differ"
            )));
        }
        (Some(a), _) => a.to_string(),
        (None, Some(e)) => e,
        (None, None) => {
            return Err(invalid(
                "no interface: give it as the argument or in INTERFACE".into(),
            ));
        }
    };
    check_ifname(&ifname)?;
    let nic = {
        let parts: Vec<String> = [
            ("instance", "INSTANCE"),
            ("uuid", "INTERFACE_UUID"),
            ("mac", "MAC"),
        ]
        .iter()
        .filter_map(|(k, v)| set(v).map(|val| format!("{k}={}", val.to_ascii_lowercase())))
        .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    };
    if action == Action::Down {
        // Down undoes what is on record: the other variables do not
        // matter, and a bad one must not keep a NIC from being undone.
        return Ok(GanetiNic {
            ifname,
            mode: None,
            mac: None,
            nic,
        });
    }
    let mac = set("MAC").map(|m| m.parse::<MacAddr>()).transpose()?;
    let mode = set("MODE").ok_or_else(|| invalid("MODE is not set".into()))?;
    let mut link = set("LINK");
    if mode == "bridged"
        && let Some(b) = set("BRIDGE")
    {
        match &link {
            Some(l) if *l != b => {
                return Err(invalid(format!("LINK=\"{l}\" and BRIDGE=\"{b}\" differ")));
            }
            _ => link = Some(b),
        }
    }
    let ip = set("IP");
    let ips: Vec<&str> = ip.as_deref().into_iter().collect();
    let mode = NicMode::parse(&mode, link.as_deref(), set("VLAN").as_deref(), &ips)?;
    Ok(GanetiNic {
        ifname,
        mode: Some(mode),
        mac,
        nic,
    })
}

/// An interface name as the kernel takes it.
pub(crate) fn check_ifname(name: &str) -> Result<(), LinkError> {
    match crate::routed::ifname_problem(name) {
        None => Ok(()),
        Some(problem) => Err(LinkError::InvalidEnv(format!(
            "\"{}\" is not an interface name: {problem}",
            name.escape_debug()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VlanSpec;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn up(pairs: &[(&str, &str)]) -> Result<GanetiNic, LinkError> {
        from_env(Action::Up, None, env(pairs))
    }

    #[test]
    fn every_mode_and_vlan_form_reads() {
        let vlan = |s: &str| Some(s.parse::<VlanSpec>().unwrap());
        let base = [("INTERFACE", "tap0"), ("INSTANCE", "vm1"), ("TAGS", "a b")];
        for (extra, mode) in [
            (
                vec![("MODE", "bridged"), ("LINK", "br0")],
                NicMode::bridged("br0"),
            ),
            (
                vec![("MODE", "bridged"), ("BRIDGE", "br0")],
                NicMode::bridged("br0"),
            ),
            (
                vec![("MODE", "bridged"), ("LINK", "br0"), ("BRIDGE", "br0")],
                NicMode::bridged("br0"),
            ),
            (
                vec![("MODE", "bridged"), ("LINK", "br0"), ("VLAN", "100")],
                NicMode::Bridged {
                    bridge: "br0".into(),
                    vlan: vlan(".100"),
                },
            ),
            (
                vec![("MODE", "bridged"), ("LINK", "br0"), ("VLAN", ".100:200")],
                NicMode::Bridged {
                    bridge: "br0".into(),
                    vlan: vlan(".100:200"),
                },
            ),
            // Ganeti's OVS script fails for all of these; vmtap does not.
            (
                vec![("MODE", "openvswitch"), ("LINK", "sw0")],
                NicMode::Openvswitch {
                    switch: "sw0".into(),
                    vlan: None,
                },
            ),
            (
                vec![("MODE", "openvswitch"), ("LINK", "sw0"), ("VLAN", "")],
                NicMode::Openvswitch {
                    switch: "sw0".into(),
                    vlan: None,
                },
            ),
            (
                vec![("MODE", "openvswitch"), ("LINK", "sw0"), ("VLAN", ".100")],
                NicMode::Openvswitch {
                    switch: "sw0".into(),
                    vlan: vlan(".100"),
                },
            ),
            (
                vec![
                    ("MODE", "openvswitch"),
                    ("LINK", "sw0"),
                    ("VLAN", ":100:200"),
                ],
                NicMode::Openvswitch {
                    switch: "sw0".into(),
                    vlan: vlan(":100:200"),
                },
            ),
            (
                vec![
                    ("MODE", "openvswitch"),
                    ("LINK", "sw0"),
                    ("VLAN", ".100:200"),
                ],
                NicMode::Openvswitch {
                    switch: "sw0".into(),
                    vlan: vlan(".100:200"),
                },
            ),
            (
                vec![("MODE", "routed"), ("IP", "10.0.0.2")],
                NicMode::Routed {
                    ips: vec!["10.0.0.2".parse().unwrap()],
                    table: None,
                },
            ),
            (
                vec![("MODE", "routed"), ("IP", "2001:db8::2"), ("LINK", "100")],
                NicMode::Routed {
                    ips: vec!["2001:db8::2".parse().unwrap()],
                    table: Some("100".into()),
                },
            ),
            (
                vec![
                    ("MODE", "routed"),
                    ("IP", "10.0.0.2"),
                    ("LINK", "vms"),
                    ("NETWORK_SUBNET", "10.0.0.0/24"),
                    ("NETWORK_GATEWAY", "10.0.0.1"),
                    ("MIGRATION_PHASE", "post"),
                    ("ACTION", "up"),
                    ("MAC", "aa:00:00:12:34:56"),
                ],
                NicMode::Routed {
                    ips: vec!["10.0.0.2".parse().unwrap()],
                    table: Some("vms".into()),
                },
            ),
        ] {
            let mut all = base.to_vec();
            all.extend(extra.iter().copied());
            let nic = up(&all).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
            assert_eq!(nic.ifname, "tap0");
            assert_eq!(nic.mode, Some(mode), "{extra:?}");
        }
    }

    #[test]
    fn missing_or_contradictory_variables_are_refused() {
        for (vars, arg, want) in [
            (
                vec![("MODE", "bridged"), ("LINK", "br0")],
                None,
                "no interface",
            ),
            (vec![("INTERFACE", "tap0")], None, "MODE is not set"),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "")],
                None,
                "MODE is not set",
            ),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "pool")],
                None,
                "unknown NIC mode \"pool\"",
            ),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "bridged")],
                None,
                "needs a bridge",
            ),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "routed"), ("LINK", "100")],
                None,
                "Routed NIC but no IP address specified",
            ),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "routed"), ("IP", "")],
                None,
                "Routed NIC but no IP address specified",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "routed"),
                    ("IP", "10.0.0.2/24"),
                ],
                None,
                "invalid IP address",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "routed"),
                    ("IP", "10.0.0.2"),
                    ("VLAN", ".100"),
                ],
                None,
                "no VLANs",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "openvswitch"),
                    ("LINK", "s"),
                    ("VLAN", "x"),
                ],
                None,
                "not a VLAN spec",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "bridged"),
                    ("LINK", "br0"),
                    ("BRIDGE", "br1"),
                ],
                None,
                "differ",
            ),
            (
                vec![("INTERFACE", "tap0"), ("MODE", "bridged"), ("LINK", "br0")],
                Some("tap1"),
                "differ",
            ),
            (
                vec![("INTERFACE", "tap 0"), ("MODE", "bridged"), ("LINK", "br0")],
                None,
                "not an interface name",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "bridged"),
                    ("LINK", "br0"),
                    ("ACTION", "down"),
                ],
                None,
                "ACTION=down given to ifup",
            ),
            (
                vec![
                    ("INTERFACE", "tap0"),
                    ("MODE", "bridged"),
                    ("LINK", "br0"),
                    ("MAC", "zz"),
                ],
                None,
                "invalid MAC address",
            ),
        ] {
            let err = from_env(Action::Up, arg, env(&vars)).unwrap_err();
            assert!(err.is_invalid_input(), "{vars:?}: {err}");
            assert!(err.to_string().contains(want), "{vars:?}: {err}");
        }
    }

    #[test]
    fn ifdown_needs_only_the_interface() {
        let nic = from_env(Action::Down, Some("tap0"), env(&[])).unwrap();
        assert_eq!(nic.ifname, "tap0");
        assert_eq!(nic.mode, None);
        let nic = from_env(
            Action::Down,
            None,
            env(&[("INTERFACE", "tap0"), ("MODE", "nonsense"), ("MAC", "zz")]),
        )
        .unwrap();
        assert_eq!(nic.ifname, "tap0");
        assert!(
            from_env(
                Action::Down,
                None,
                env(&[("ACTION", "up"), ("INTERFACE", "t")])
            )
            .is_err()
        );
    }
}
