//! Host-side link set-up over rtnetlink: look up a link (including the tun
//! driver's own attributes), bring it up, set its MTU and MAC, enslave it to
//! a bridge. Works in the caller's network namespace; spawns nothing.

use std::fmt;
use std::io;
use std::str::FromStr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Errors of link set-up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A netlink request failed.
    #[error("{step} on \"{ifname}\": {source}")]
    Netlink {
        /// What was being done.
        step: String,
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
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the tun driver reports about a tap over netlink (`IFLA_TUN_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunLinkInfo {
    /// Owner uid, when set.
    pub owner: Option<u32>,
    /// Group gid, when set.
    pub group: Option<u32>,
    /// A TAP (layer 2) device.
    pub tap: bool,
    /// Packets carry packet information.
    pub pi: bool,
    /// Packets carry a virtio-net header.
    pub vnet_hdr: bool,
    /// Persistent.
    pub persist: bool,
    /// Multi-queue.
    pub multi_queue: bool,
    /// Queues attached now.
    pub queues: u32,
    /// Queues detached (`TUNSETQUEUE`) but still open.
    pub disabled_queues: u32,
}

/// The state of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Carrier on. A tap has carrier while a queue is attached (unless its
    /// user turned it off with `IFF_NO_CARRIER`/`TUNSETCARRIER`).
    pub carrier: bool,
    /// Index of its bridge (or other controller).
    pub master: Option<u32>,
    /// Link kind (`bridge`, `tun`, `veth`...).
    pub kind: Option<String>,
    /// The tun driver's attributes, for a TUN/TAP device.
    pub tun: Option<TunLinkInfo>,
}

/// A route-netlink socket in the caller's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn nla_u32(v: &[u8]) -> u32 {
    v.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn parse_tun(nlas: &[InfoTun]) -> TunLinkInfo {
    // IFLA_TUN_* from include/uapi/linux/if_link.h.
    const OWNER: u16 = 1;
    const GROUP: u16 = 2;
    const TYPE: u16 = 3;
    const PI: u16 = 4;
    const VNET_HDR: u16 = 5;
    const PERSIST: u16 = 6;
    const MULTI_QUEUE: u16 = 7;
    const NUM_QUEUES: u16 = 8;
    const NUM_DISABLED_QUEUES: u16 = 9;
    let mut info = TunLinkInfo::default();
    for nla in nlas {
        let InfoTun::Other(nla) = nla else { continue };
        let mut v = vec![0u8; nla.value_len()];
        nla.emit_value(&mut v);
        let flag = v.first().is_some_and(|b| *b != 0);
        match nla.kind() {
            OWNER => info.owner = Some(nla_u32(&v)),
            GROUP => info.group = Some(nla_u32(&v)),
            TYPE => info.tap = v.first() == Some(&(libc::IFF_TAP as u8)),
            PI => info.pi = flag,
            VNET_HDR => info.vnet_hdr = flag,
            PERSIST => info.persist = flag,
            MULTI_QUEUE => info.multi_queue = flag,
            NUM_QUEUES => info.queues = nla_u32(&v),
            NUM_DISABLED_QUEUES => info.disabled_queues = nla_u32(&v),
            _ => {}
        }
    }
    info
}

fn parse_link(msg: &LinkMessage) -> LinkState {
    let mut st = LinkState {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => st.name = n.clone(),
            LinkAttribute::Mtu(m) => st.mtu = Some(*m),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(a);
                st.mac = Some(MacAddr(m));
            }
            LinkAttribute::Controller(c) => st.master = Some(*c),
            LinkAttribute::Carrier(c) => st.carrier = *c != 0,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Other(k)) => st.kind = Some(k.clone()),
                        LinkInfo::Kind(k) => st.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Tun(nlas)) => st.tun = Some(parse_tun(nlas)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if st.kind.as_deref() == Some("tun") && st.tun.is_none() {
        st.tun = Some(TunLinkInfo::default());
    }
    st
}

impl Netlink {
    /// Opens a route-netlink socket (close-on-exec).
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// [`Netlink::open`], with the error naming the interface it was for.
    pub(crate) fn open_for(ifname: &str) -> Result<Self, LinkError> {
        Self::open().map_err(|source| LinkError::Netlink {
            step: "opening a netlink socket".into(),
            ifname: ifname.into(),
            source,
        })
    }

    /// Sends one request with `NLM_F_ACK` and collects the messages that
    /// come back until the acknowledgement (or the error).
    fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(_) => Err(e.to_io()),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkState>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Netlink {
                step: "looking up the link".into(),
                ifname: name.into(),
                source,
            }),
        }
    }

    /// The link with interface index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkState>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Netlink {
                step: "looking up the link".into(),
                ifname: format!("index {index}"),
                source,
            }),
        }
    }

    /// The link named `name`; an error when there is none.
    pub fn require(&mut self, name: &str) -> Result<LinkState, LinkError> {
        self.link(name)?
            .ok_or_else(|| LinkError::NoSuchInterface(name.to_string()))
    }

    fn set(&mut self, link: &LinkState, step: String, msg: LinkMessage) -> Result<(), LinkError> {
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
        let step = if up {
            "bringing the link up"
        } else {
            "bringing the link down"
        };
        self.set(link, step.into(), msg)
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
        self.set(link, format!("setting MTU {mtu}"), msg)
    }

    /// Sets the MAC address (no-op when it has it already).
    pub fn set_mac(&mut self, link: &LinkState, mac: MacAddr) -> Result<(), LinkError> {
        if link.mac == Some(mac) {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set(link, format!("setting MAC {mac}"), msg)
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
            "releasing it from its bridge".to_string()
        } else {
            format!("adding it to bridge \"{name}\"")
        };
        self.set(link, step, msg)
    }

    /// Deletes the link with this index (`RTM_DELLINK` by index, so a link
    /// that was replaced under the same name in the meantime is left
    /// alone). `ENODEV` when it is gone already.
    pub fn delete_index(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg)).map(|_| ())
    }
}

/// Options of [`configure`]: what to do to the host side of a tap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
            let mut nl = Netlink::open_for(br)?;
            let bridge = require_bridge(&mut nl, br)?;
            if self.mtu.is_none() {
                bridge_mtu(&bridge)?;
            }
        }
        Ok(())
    }
}

fn require_bridge(nl: &mut Netlink, name: &str) -> Result<LinkState, LinkError> {
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
        let mut nl = Netlink::open_for(&self.ifname)?;
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
    let mut nl = Netlink::open_for(ifname)?;
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
    nl: &mut Netlink,
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
        m.0[0] = 0xfe;
        Some(m)
    });
    if let Some(mac) = mac
        && tap.mac != Some(mac)
    {
        log::debug!("{ifname}: MAC {mac}");
        nl.set_mac(tap, mac)?;
        undo.extend(tap.mac.map(Undo::Mac));
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

/// The tun driver's view of tap `name` (owner, group, queues...).
pub fn tun_info(name: &str) -> Result<TunLinkInfo, LinkError> {
    let mut nl = Netlink::open_for(name)?;
    let link = nl.require(name)?;
    match link.tun {
        Some(t) if t.tap => Ok(t),
        _ => Err(LinkError::NotATap(name.to_string())),
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
