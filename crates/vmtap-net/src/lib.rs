//! vmtap's host side: link set-up over rtnetlink, and Ganeti's NIC modes
//! natively. Look up a link, bring it up, set its MTU and MAC, enslave it
//! to a bridge ([`configure`]); or join it to the host network as a
//! bridged, routed or Open vSwitch NIC ([`NicMode`]), with a record of
//! every change ([`LinkChanges`], [`StateDir`]) so that it can all be put
//! back, in this process or by [`ifdown`] in another. Works in the
//! caller's network namespace; spawns nothing but `ovs-vsctl` (for Open
//! vSwitch).

#![forbid(unsafe_code)]

mod bridge;
pub mod ganeti;
pub mod ovs;
mod record;
pub mod routed;
mod setup;
pub mod vlan;

pub use bridge::PortVlan;
pub use record::{DEFAULT_STATE_DIR, Owner, StateDir};
pub use setup::{
    Ifdown, LinkChanges, LinkOptions, NicMode, Stale, collect_stale, configure, ifdown, ifdown_nic,
    ifdown_owned,
};
pub use vlan::{VlanError, VlanKind, VlanSpec};

use std::fmt;
use std::io;
use std::str::FromStr;

use vmtap_sys::rtnl::netlink_packet_route::RouteNetlinkMessage;
use vmtap_sys::rtnl::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use vmtap_sys::rtnl::{LinkState, Netlink};

pub use vmtap_sys::rtnl::{LinkState as Link, TunLinkInfo};

/// The step of link set-up that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkStep {
    /// Opening a netlink socket.
    OpenSocket,
    /// Looking the link up.
    Lookup,
    /// Bringing it up.
    Up,
    /// Bringing it down (undoing).
    Down,
    /// Setting this MTU.
    SetMtu(u32),
    /// Setting this MAC address.
    SetMac(MacAddr),
    /// Enslaving it to this bridge.
    Enslave(String),
    /// Releasing it from its bridge (undoing).
    Release,
    /// Reading its bridge VLANs.
    ReadVlans,
    /// Adding (or changing) this bridge VLAN.
    AddVlan(u16),
    /// Removing this bridge VLAN (undoing).
    DelVlan(u16),
}

impl fmt::Display for LinkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OpenSocket => f.write_str("opening a netlink socket"),
            Self::Lookup => f.write_str("looking up the link"),
            Self::Up => f.write_str("bringing the link up"),
            Self::Down => f.write_str("bringing the link down"),
            Self::SetMtu(mtu) => write!(f, "setting MTU {mtu}"),
            Self::SetMac(mac) => write!(f, "setting MAC {mac}"),
            Self::Enslave(bridge) => write!(f, "adding it to bridge \"{bridge}\""),
            Self::Release => f.write_str("releasing it from its bridge"),
            Self::ReadVlans => f.write_str("reading its bridge VLANs"),
            Self::AddVlan(vid) => write!(f, "adding bridge VLAN {vid}"),
            Self::DelVlan(vid) => write!(f, "removing bridge VLAN {vid}"),
        }
    }
}

/// Errors of link set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A netlink request failed.
    #[error("{step} on \"{ifname}\": {source}")]
    Netlink {
        /// What was being done.
        step: LinkStep,
        /// The interface.
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// No such interface.
    #[error("no interface named \"{0}\"")]
    NoSuchInterface(String),
    /// The bridge named is not a bridge.
    #[error("\"{0}\" is not a bridge")]
    NotABridge(String),
    /// The bridge's MTU is more than a tap can take.
    #[error(
        "bridge \"{bridge}\" has MTU {mtu}, more than a tap can take ({TAP_MAX_MTU}): lower the bridge's MTU or give --mtu"
    )]
    BridgeMtu {
        /// The bridge.
        bridge: String,
        /// Its MTU.
        mtu: u32,
    },
    /// The interface is not a TUN/TAP device.
    #[error("\"{0}\" exists but is not a TAP device")]
    NotATap(String),
    /// The tap is a port of another bridge (or other master) already.
    #[error(
        "\"{ifname}\" is a port of \"{master}\" already: vmtap does not move it to \"{bridge}\" (its port settings could not be put back)"
    )]
    OtherMaster {
        /// The tap.
        ifname: String,
        /// Its master now.
        master: String,
        /// The bridge asked.
        bridge: String,
    },
    /// A MAC address was refused.
    #[error("invalid MAC address \"{mac}\": {problem}")]
    InvalidMac {
        /// The text given.
        mac: String,
        /// What is wrong with it.
        problem: MacProblem,
    },
    /// An MTU outside what a tap takes.
    #[error("invalid MTU {0}: a tap takes {TAP_MIN_MTU} to {TAP_MAX_MTU}")]
    InvalidMtu(u32),
    /// A NIC mode vmtap does not know.
    #[error("unknown NIC mode \"{0}\": vmtap does bridged, routed and openvswitch")]
    UnknownMode(String),
    /// A bridged or openvswitch NIC without its bridge or switch.
    #[error("a {mode} NIC needs a {}: give --link (LINK)", if *mode == "bridged" { "bridge" } else { "switch" })]
    MissingLink {
        /// The mode.
        mode: &'static str,
    },
    /// A bridge or switch name that is no interface name.
    #[error("\"{name}\" is not a valid {} name (1 to 15 bytes, no '/', ':', spaces or leading '-')", if *mode == "bridged" { "bridge" } else { "switch" })]
    InvalidLinkName {
        /// The mode.
        mode: &'static str,
        /// The name given.
        name: String,
    },
    /// A routed NIC without an address (Ganeti's words).
    #[error("Routed NIC but no IP address specified")]
    NoIp,
    /// An address that is no NIC's address.
    #[error(
        "invalid IP address \"{0}\" for a routed NIC (one unicast IPv4 or IPv6 address each, no prefix length, none twice)"
    )]
    InvalidIp(String),
    /// A routing table name that iproute2 could not take.
    #[error("\"{0}\" is not a routing table name or number")]
    InvalidTableName(String),
    /// A VLAN on a mode that has none.
    #[error(
        "a VLAN is given, but a {0} NIC has no VLANs (VLANs are for bridged and openvswitch NICs)"
    )]
    VlanInMode(&'static str),
    /// A VLAN spec Ganeti would refuse.
    #[error(transparent)]
    Vlan(#[from] VlanError),
    /// VLANs asked on a bridge that does not filter VLANs.
    #[error(
        "bridge \"{0}\" does not filter VLANs, so it cannot give a port VLANs: turn it on with `ip link set {0} type bridge vlan_filtering 1` (the kernel needs CONFIG_BRIDGE_VLAN_FILTERING)"
    )]
    NoVlanFiltering(String),
    /// A routed-mode step failed.
    #[error(transparent)]
    Routed(#[from] routed::RoutedError),
    /// An Open vSwitch step failed.
    #[error(transparent)]
    Ovs(#[from] ovs::OvsError),
    /// The record of a NIC's changes could not be read or written.
    #[error("NIC record {}: {source}", path.display())]
    State {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A record that is not one vmtap wrote.
    #[error("NIC record {} is unreadable ({problem}): remove it if the NIC's host set-up was cleaned up by hand", path.display())]
    BadRecord {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Ganeti's NIC script variables are missing or contradict.
    #[error("{0}")]
    InvalidEnv(String),
    /// The network namespace's cookie could not be read (Linux 5.14+).
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE): {0}")]
    Netns(#[source] io::Error),
    /// The state directory is not one vmtap can trust.
    #[error("NIC records at {}: {problem}; vmtap keeps them only in a directory of its own user that nobody else may write", path.display())]
    UnsafeStateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An IPv6 address for a tap without IPv6.
    #[error(
        "IPv6 is off on \"{0}\" (disable_ipv6, or no IPv6 on this host): it cannot route an IPv6 address"
    )]
    Ipv6Off(String),
    /// Undoing the set-up of this tap failed.
    #[error("undoing the host set-up of {ifname}: {source}")]
    Cleanup {
        /// The tap.
        ifname: String,
        /// What failed.
        #[source]
        source: Box<LinkError>,
    },
    /// An unrecorded set-up ([`LinkOptions::record`]) of a mode whose
    /// changes outlive the tap.
    #[error(
        "a {0} NIC's host set-up outlives the tap (routing rules, an Open vSwitch port): it needs a record, so it cannot be unrecorded (only a bridged one can)"
    )]
    NeedsRecord(&'static str),
    /// Another process holds the NIC's lock.
    #[error("another vmtap is setting up or tearing down this NIC (lock {} held for {seconds} s)", path.display())]
    Busy {
        /// The lock file.
        path: std::path::PathBuf,
        /// How long we waited.
        seconds: u64,
    },
}

impl LinkError {
    /// True for errors in the caller's input (nothing was touched).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Self::InvalidMac { .. }
            | Self::InvalidMtu(_)
            | Self::UnknownMode(_)
            | Self::MissingLink { .. }
            | Self::InvalidLinkName { .. }
            | Self::NoIp
            | Self::InvalidIp(_)
            | Self::InvalidTableName(_)
            | Self::VlanInMode(_)
            | Self::Vlan(_)
            | Self::NeedsRecord(_)
            | Self::InvalidEnv(_) => true,
            // Raised by a step, maybe after others changed the host (and
            // were put back): failures from the system, whatever the cause.
            // Their input errors are caught before (NicMode::parse).
            _ => false,
        }
    }
}

/// The smallest MTU a tap takes (`ETH_MIN_MTU`).
pub const TAP_MIN_MTU: u32 = 68;
/// The largest MTU a tap takes (65535 less the Ethernet header, as tun.c
/// sets `max_mtu`).
pub const TAP_MAX_MTU: u32 = 65521;

/// Checks an MTU against what a tap takes.
pub fn check_tap_mtu(mtu: u32) -> Result<u32, LinkError> {
    if (TAP_MIN_MTU..=TAP_MAX_MTU).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(LinkError::InvalidMtu(mtu))
    }
}

/// Why a MAC address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacProblem {
    /// Not six two-digit hex groups with one kind of separator.
    Syntax,
    /// The group bit is set (first byte odd): not a NIC's address.
    Multicast,
    /// All zero.
    Zero,
}

impl fmt::Display for MacProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => {
                "expected six two-digit hex bytes separated by ':' (or all by '-'), like 52:54:00:12:34:56"
            }
            Self::Multicast => {
                "it is a multicast address (the first byte is odd), which no NIC can have"
            }
            Self::Zero => "the all-zero address is not a NIC's address",
        })
    }
}

/// A NIC's MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = LinkError;
    /// Parses `52:54:00:12:34:56` (or with `-` throughout): exactly six
    /// groups of two hex digits. Multicast and all-zero addresses are
    /// refused: this is the address of a NIC.
    fn from_str(s: &str) -> Result<Self, LinkError> {
        let bad = |problem| LinkError::InvalidMac {
            mac: s.to_string(),
            problem,
        };
        let sep = if s.contains(':') { ':' } else { '-' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(bad(MacProblem::Syntax));
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(MacProblem::Syntax));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad(MacProblem::Syntax))?;
        }
        if mac[0] & 1 == 1 {
            return Err(bad(MacProblem::Multicast));
        }
        if mac == [0; 6] {
            return Err(bad(MacProblem::Zero));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&vmtap_sys::format_mac(&self.0))
    }
}

/// A route-netlink socket for link set-up, with errors that name the step
/// and the interface.
pub struct Rtnl(Netlink);

impl Rtnl {
    /// Opens a route-netlink socket (close-on-exec) in the caller's
    /// network namespace.
    pub fn open() -> io::Result<Self> {
        Netlink::open().map(Self)
    }

    /// [`Rtnl::open`], with the error naming the interface it was for.
    pub(crate) fn open_for(ifname: &str) -> Result<Self, LinkError> {
        Self::open().map_err(|source| LinkError::Netlink {
            step: LinkStep::OpenSocket,
            ifname: ifname.into(),
            source,
        })
    }

    fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.0.request(msg)
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkState>, LinkError> {
        self.0.link(name).map_err(|source| LinkError::Netlink {
            step: LinkStep::Lookup,
            ifname: name.into(),
            source,
        })
    }

    /// The link with interface index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkState>, LinkError> {
        self.0
            .link_by_index(index)
            .map_err(|source| LinkError::Netlink {
                step: LinkStep::Lookup,
                ifname: format!("index {index}"),
                source,
            })
    }

    /// The link named `name`; an error when there is none.
    pub fn require(&mut self, name: &str) -> Result<LinkState, LinkError> {
        self.link(name)?
            .ok_or_else(|| LinkError::NoSuchInterface(name.to_string()))
    }

    fn set(&mut self, link: &LinkState, step: LinkStep, msg: LinkMessage) -> Result<(), LinkError> {
        let mut msg = msg;
        msg.header.index = link.index;
        self.request(RouteNetlinkMessage::SetLink(msg))
            .map(|_| ())
            .map_err(|source| LinkError::Netlink {
                step,
                ifname: link.name.clone(),
                source,
            })
    }

    /// Sets the link administratively up or down.
    pub(crate) fn set_admin(&mut self, link: &LinkState, up: bool) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        msg.header.change_mask = LinkFlags::Up;
        let step = if up { LinkStep::Up } else { LinkStep::Down };
        self.set(link, step, msg)
    }

    /// Sets the MTU (no-op when it has it already).
    pub fn set_mtu(&mut self, link: &LinkState, mtu: u32) -> Result<(), LinkError> {
        if link.mtu == Some(mtu) {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set(link, LinkStep::SetMtu(mtu), msg)
    }

    /// Sets the MAC address (no-op when it has it already).
    pub fn set_mac(&mut self, link: &LinkState, mac: MacAddr) -> Result<(), LinkError> {
        if link.mac == Some(mac.0) {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set(link, LinkStep::SetMac(mac), msg)
    }

    /// Enslaves the link to `master` (no-op when it is already).
    pub fn set_master(&mut self, link: &LinkState, master: &LinkState) -> Result<(), LinkError> {
        if link.master == Some(master.index) {
            return Ok(());
        }
        self.set_master_index(link, master.index, &master.name)
    }

    pub(crate) fn set_master_index(
        &mut self,
        link: &LinkState,
        index: u32,
        name: &str,
    ) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Controller(index));
        let step = if index == 0 {
            LinkStep::Release
        } else {
            LinkStep::Enslave(name.to_string())
        };
        self.set(link, step, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "zz:54:00:ab:cd:0f",
            "5:54:00:ab:cd:0f",
            "+2:54:00:ab:cd:0f",
            "52:54-00:ab:cd:0f",
            "52-54-00-ab-cd:0f",
            "52:54:00:ab:cd:0f ",
            " 52:54:00:ab:cd:0f",
            "052:54:00:ab:cd:0",
            "52:54:00:ab:cd:0f:",
            "5254.00ab.cd0f",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("invalid MAC address"), "{bad}");
            assert!(err.is_invalid_input());
            assert!(
                matches!(
                    err,
                    LinkError::InvalidMac {
                        problem: MacProblem::Syntax,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            "52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(),
            "52:54:00:ab:cd:0f".parse().unwrap()
        );
    }

    #[test]
    fn multicast_broadcast_and_zero_macs_are_not_nic_addresses() {
        for (bad, problem) in [
            ("01:00:5e:00:00:01", MacProblem::Multicast),
            ("33:33:00:00:00:01", MacProblem::Multicast),
            ("ff:ff:ff:ff:ff:ff", MacProblem::Multicast),
            ("00:00:00:00:00:00", MacProblem::Zero),
        ] {
            match bad.parse::<MacAddr>() {
                Err(LinkError::InvalidMac { problem: p, .. }) => assert_eq!(p, problem, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        "02:00:00:00:00:01".parse::<MacAddr>().unwrap();
        "fe:54:00:12:34:56".parse::<MacAddr>().unwrap();
    }

    #[test]
    fn mtus_a_tap_takes() {
        for ok in [68, 1500, 9000, 65521] {
            assert_eq!(check_tap_mtu(ok).unwrap(), ok);
        }
        for bad in [0, 67, 65522, 65535, u32::MAX] {
            let err = check_tap_mtu(bad).unwrap_err();
            assert!(err.is_invalid_input());
            assert_eq!(
                err.to_string(),
                format!("invalid MTU {bad}: a tap takes 68 to 65521")
            );
        }
    }
}
