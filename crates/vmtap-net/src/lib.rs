//! vmtap's host side: link set-up over rtnetlink. Look up a link, bring
//! it up, set its MTU and MAC, enslave it to a bridge, and keep a record
//! ([`LinkChanges`]) to put it all back. Works in the caller's network
//! namespace; spawns nothing.

#![forbid(unsafe_code)]

pub mod ovs;
pub mod vlan;

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
}

impl LinkError {
    /// True for errors in the caller's input (nothing was touched).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Self::InvalidMac { .. } | Self::InvalidMtu(_))
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
    fn set_admin(&mut self, link: &LinkState, up: bool) -> Result<(), LinkError> {
        let mut msg = LinkMessage::default();
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        msg.header.change_mask = LinkFlags::Up;
        let step = if up { LinkStep::Up } else { LinkStep::Down };
        self.set(link, step, msg)
    }

    /// Brings the link up (no-op when it is up already).
    pub fn set_up(&mut self, link: &LinkState) -> Result<(), LinkError> {
        if link.up {
            return Ok(());
        }
        self.set_admin(link, true)
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

    fn set_master_index(
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

/// Options of [`configure`]: what to do to the host side of a tap. Build
/// it with the setters (more settings, such as link modes, will come).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkOptions {
    /// MTU to set (with a bridge: the bridge's, unless given).
    pub mtu: Option<u32>,
    /// MAC to set (with a bridge: the tap's own with its first byte set to
    /// 0xfe, unless given, so the bridge never takes the tap's address).
    pub mac: Option<MacAddr>,
    /// Bridge to enslave the tap to.
    pub bridge: Option<String>,
    /// Bring the link up (always done with a bridge).
    pub up: bool,
}

impl LinkOptions {
    /// Nothing to do.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets (or, with `None`, leaves alone) the MTU.
    pub fn mtu(mut self, mtu: impl Into<Option<u32>>) -> Self {
        self.mtu = mtu.into();
        self
    }
    /// Sets (or, with `None`, leaves alone) the MAC address.
    pub fn mac(mut self, mac: impl Into<Option<MacAddr>>) -> Self {
        self.mac = mac.into();
        self
    }
    /// Enslaves the tap to this bridge.
    pub fn bridge(mut self, bridge: impl Into<String>) -> Self {
        self.bridge = Some(bridge.into());
        self
    }
    /// Brings the link up.
    pub fn up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }

    /// True when nothing is to be done.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the options and the host before anything is created: the
    /// MTU is one a tap takes, and the bridge exists, is a Linux bridge and
    /// has an MTU a tap can take (unless an MTU is given).
    pub fn check(&self) -> Result<(), LinkError> {
        if let Some(mtu) = self.mtu {
            check_tap_mtu(mtu)?;
        }
        if let Some(br) = &self.bridge {
            let mut nl = Rtnl::open_for(br)?;
            let bridge = require_bridge(&mut nl, br)?;
            if self.mtu.is_none() {
                bridge_mtu(&bridge)?;
            }
        }
        Ok(())
    }
}

fn require_bridge(nl: &mut Rtnl, name: &str) -> Result<LinkState, LinkError> {
    let b = nl.require(name)?;
    if b.kind.as_deref() != Some("bridge") {
        return Err(LinkError::NotABridge(name.to_string()));
    }
    Ok(b)
}

fn bridge_mtu(bridge: &LinkState) -> Result<Option<u32>, LinkError> {
    match bridge.mtu {
        Some(mtu) if mtu > TAP_MAX_MTU => Err(LinkError::BridgeMtu {
            bridge: bridge.name.clone(),
            mtu,
        }),
        other => Ok(other),
    }
}

/// One change [`configure`] made, with the value to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Mtu(u32),
    Mac(MacAddr),
    Master(u32),
    Down,
}

/// What [`configure`] changed on a link, so that it can be put back when
/// a later step fails (for a tap that outlives the failure: a persistent
/// tap that was attached to). A new tap needs none of this: it goes away
/// with its fds.
#[derive(Debug)]
#[must_use = "call keep() when the changes are to stay, undo() when a later step failed"]
pub struct LinkChanges {
    ifname: String,
    index: u32,
    undo: Vec<Undo>,
}

impl LinkChanges {
    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// The changes stay.
    pub fn keep(self) {}

    /// Puts every changed setting back, last change first. Every step is
    /// tried; the first failure is returned.
    pub fn undo(self) -> Result<(), LinkError> {
        if self.undo.is_empty() {
            return Ok(());
        }
        let mut nl = Rtnl::open_for(&self.ifname)?;
        let link = LinkState {
            index: self.index,
            name: self.ifname.clone(),
            ..LinkState::default()
        };
        let mut first = None;
        for step in self.undo.iter().rev() {
            log::debug!("{}: undoing {step:?}", self.ifname);
            let r = match step {
                Undo::Mtu(mtu) => nl.set_mtu(&link, *mtu),
                Undo::Mac(mac) => nl.set_mac(&link, *mac),
                Undo::Master(index) => nl.set_master_index(&link, *index, ""),
                Undo::Down => nl.set_admin(&link, false),
            };
            if let Err(e) = r {
                log::warn!("could not undo a change on {}: {e}", self.ifname);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Configures the host side of `ifname` as Ganeti's bridged mode does:
/// MTU, MAC, bridge, then up. Each step is skipped when already done.
///
/// Returns what was changed. If a step fails, the steps before it are
/// undone before the error is returned.
pub fn configure(ifname: &str, opts: &LinkOptions) -> Result<LinkChanges, LinkError> {
    let mut changes = LinkChanges {
        ifname: ifname.to_string(),
        index: 0,
        undo: Vec::new(),
    };
    if opts.is_empty() {
        return Ok(changes);
    }
    if let Some(mtu) = opts.mtu {
        check_tap_mtu(mtu)?;
    }
    let mut nl = Rtnl::open_for(ifname)?;
    let bridge = match &opts.bridge {
        Some(br) => Some(require_bridge(&mut nl, br)?),
        None => None,
    };
    let tap = nl.require(ifname)?;
    changes.index = tap.index;
    let result = apply(&mut nl, &tap, bridge.as_ref(), opts, &mut changes.undo);
    match result {
        Ok(()) => Ok(changes),
        Err(e) => {
            let _ = changes.undo();
            Err(e)
        }
    }
}

fn apply(
    nl: &mut Rtnl,
    tap: &LinkState,
    bridge: Option<&LinkState>,
    opts: &LinkOptions,
    undo: &mut Vec<Undo>,
) -> Result<(), LinkError> {
    let ifname = &tap.name;
    // Checked before anything changes.
    if let (Some(b), Some(m)) = (bridge, tap.master)
        && m != b.index
    {
        let master = nl
            .link_by_index(m)?
            .map_or_else(|| format!("index {m}"), |l| l.name);
        return Err(LinkError::OtherMaster {
            ifname: ifname.clone(),
            master,
            bridge: b.name.clone(),
        });
    }
    let mtu = match opts.mtu {
        Some(mtu) => Some(mtu),
        None => bridge.map(bridge_mtu).transpose()?.flatten(),
    };
    if let Some(mtu) = mtu
        && tap.mtu != Some(mtu)
    {
        log::debug!("{ifname}: MTU {mtu}");
        nl.set_mtu(tap, mtu)?;
        undo.extend(tap.mtu.map(Undo::Mtu));
    }
    let mac = opts.mac.or_else(|| {
        bridge?;
        let mut m = tap.mac?;
        m[0] = 0xfe;
        Some(MacAddr(m))
    });
    if let Some(mac) = mac
        && tap.mac != Some(mac.0)
    {
        log::debug!("{ifname}: MAC {mac}");
        nl.set_mac(tap, mac)?;
        undo.extend(tap.mac.map(|m| Undo::Mac(MacAddr(m))));
    }
    if let Some(b) = bridge
        && tap.master != Some(b.index)
    {
        log::debug!("{ifname}: enslaving to {}", b.name);
        nl.set_master(tap, b)?;
        undo.push(Undo::Master(tap.master.unwrap_or(0)));
    }
    if (opts.up || bridge.is_some()) && !tap.up {
        log::debug!("{ifname}: up");
        nl.set_up(tap)?;
        undo.push(Undo::Down);
    }
    Ok(())
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
