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
    /// The interface is not a TUN/TAP device.
    #[error("\"{0}\" exists but is not a TAP device")]
    NotATap(String),
    /// A MAC address did not parse.
    #[error("invalid MAC address \"{0}\": expected six hex bytes like 52:54:00:12:34:56")]
    InvalidMac(String),
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, LinkError> {
        let bad = || LinkError::InvalidMac(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
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
    fn open_for(ifname: &str) -> Result<Self, LinkError> {
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

    /// Brings the link up (no-op when it is up already).
    pub fn set_up(&mut self, link: &LinkState) -> Result<(), LinkError> {
        if link.up {
            return Ok(());
        }
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set(link, "bringing the link up".into(), msg)
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
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Controller(master.index));
        self.set(
            link,
            format!("adding it to bridge \"{}\"", master.name),
            msg,
        )
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
}

/// Configures the host side of `ifname` as Ganeti's bridged mode does:
/// MTU, MAC, bridge, then up. Each step is skipped when already done.
pub fn configure(ifname: &str, opts: &LinkOptions) -> Result<(), LinkError> {
    if opts.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::open_for(ifname)?;
    let bridge = match &opts.bridge {
        Some(br) => {
            let b = nl.require(br)?;
            if b.kind.as_deref() != Some("bridge") {
                return Err(LinkError::NotABridge(br.clone()));
            }
            Some(b)
        }
        None => None,
    };
    let tap = nl.require(ifname)?;
    let mtu = opts.mtu.or(bridge.as_ref().and_then(|b| b.mtu));
    if let Some(mtu) = mtu {
        log::debug!("{ifname}: MTU {mtu}");
        nl.set_mtu(&tap, mtu)?;
    }
    let mac = opts.mac.or_else(|| {
        bridge.as_ref()?;
        let mut m = tap.mac?;
        m.0[0] = 0xfe;
        Some(m)
    });
    if let Some(mac) = mac {
        log::debug!("{ifname}: MAC {mac}");
        nl.set_mac(&tap, mac)?;
    }
    if let Some(b) = &bridge {
        log::debug!("{ifname}: enslaving to {}", b.name);
        nl.set_master(&tap, b)?;
    }
    if opts.up || bridge.is_some() {
        log::debug!("{ifname}: up");
        nl.set_up(&tap)?;
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
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("invalid MAC address"), "{bad}");
        }
    }
}
