//! Route netlink, as much as the tap core needs: look a link up (with the
//! tun driver's `IFLA_TUN_*` attributes), delete one by index, and send a
//! request and collect its answer (the host-side set-up in `vmtap-net`
//! builds on this). Safe code; it lives here because it is part of the
//! kernel interface the core reads before it binds to a tap.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
pub use {netlink_packet_core, netlink_packet_route};

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
    pub mac: Option<[u8; 6]>,
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
    /// For a bridge: whether it filters VLANs (`IFLA_BR_VLAN_FILTERING`).
    pub vlan_filtering: Option<bool>,
    /// Its alias (`IFLA_IFALIAS`, `ip link set ... alias`), when it has one.
    pub alias: Option<String>,
    /// Its link group (`IFLA_GROUP`; 0 is the default group).
    pub link_group: u32,
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
                st.mac = Some(m);
            }
            LinkAttribute::Controller(c) => st.master = Some(*c),
            LinkAttribute::Carrier(c) => st.carrier = *c != 0,
            LinkAttribute::IfAlias(a) if !a.is_empty() => st.alias = Some(a.clone()),
            LinkAttribute::Group(g) => st.link_group = *g,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Other(k)) => st.kind = Some(k.clone()),
                        LinkInfo::Kind(k) => st.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Tun(nlas)) => st.tun = Some(parse_tun(nlas)),
                        LinkInfo::Data(InfoData::Bridge(nlas)) => {
                            st.vlan_filtering = nlas.iter().find_map(|n| match n {
                                InfoBridge::VlanFiltering(on) => Some(*on),
                                _ => None,
                            });
                        }
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

    /// Sends one request with `NLM_F_ACK` and collects the messages that
    /// come back until the acknowledgement (or the error).
    pub fn request(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request_flags(msg, 0)
    }

    /// [`Netlink::request`] with more header flags: `NLM_F_DUMP` for a
    /// dump, `NLM_F_CREATE | NLM_F_EXCL` or `NLM_F_CREATE | NLM_F_REPLACE`
    /// for a new object. A dump's parts are collected until `NLMSG_DONE`;
    /// a dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`: the table
    /// changed while it was read) is `ErrorKind::Interrupted`.
    pub fn request_flags(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
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
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(_) => Err(e.to_io()),
                            };
                        }
                        // A dump that failed part-way (or at its start)
                        // ends with its error in NLMSG_DONE.
                        NetlinkPayload::Done(d) if d.code < 0 => {
                            return Err(io::Error::from_raw_os_error(-d.code));
                        }
                        NetlinkPayload::Done(_) if interrupted => {
                            return Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                "the dump was interrupted by a change (NLM_F_DUMP_INTR)",
                            ));
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

    /// Turns the kernel's strict checking of requests
    /// (`NETLINK_GET_STRICT_CHK`, Linux 4.20) on or off for this socket.
    /// With it on, dumps honour the filters given in the request (route
    /// dumps by table, protocol and output device, for example) and the
    /// kernel refuses requests with unexpected header fields or attributes.
    pub fn set_strict_check(&mut self, on: bool) -> io::Result<()> {
        self.socket.set_netlink_get_strict_chk(on)
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg)
    }

    /// The link with interface index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg)
    }

    fn get_link(&mut self, msg: LinkMessage) -> io::Result<Option<LinkState>> {
        match self.request(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the network namespace (one `RTM_GETLINK` dump), in the
    /// kernel's order. A dump interrupted by a change is read again (up to
    /// 8 times).
    pub fn links(&mut self) -> io::Result<Vec<LinkState>> {
        let mut tries = 0;
        let replies = loop {
            match self.request_flags(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            ) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted && tries < 8 => tries += 1,
                r => break r?,
            }
        };
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_link(m)),
                _ => None,
            })
            .collect())
    }

    /// Sets attributes of the link with this index (`RTM_SETLINK`).
    fn set_link(&mut self, index: u32, attr: LinkAttribute) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(attr);
        self.request(RouteNetlinkMessage::SetLink(msg)).map(|_| ())
    }

    /// Sets the alias of the link with this index (`ip link set dev X alias
    /// TEXT`; an empty text removes it).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        self.set_link(index, LinkAttribute::IfAlias(alias.to_string()))
    }

    /// Sets the alias of the link named `ifname` (the kernel looks the name
    /// up: one request).
    pub fn set_alias_by_name(&mut self, ifname: &str, alias: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_string()));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(msg)).map(|_| ())
    }

    /// Puts the link with this index in link group `group`.
    pub fn set_group(&mut self, index: u32, group: u32) -> io::Result<()> {
        self.set_link(index, LinkAttribute::Group(group))
    }

    /// Deletes every link of link group `group` at once (`ip link delete
    /// group G`: one `RTM_DELLINK`, one batch for the kernel). `ENODEV`
    /// when the group has no link; the kernel refuses group 0 (`EPERM`).
    pub fn delete_group(&mut self, group: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        self.request(RouteNetlinkMessage::DelLink(msg)).map(|_| ())
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
