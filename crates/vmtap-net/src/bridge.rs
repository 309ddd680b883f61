//! VLANs of a bridge port over netlink (`AF_BRIDGE`,
//! `IFLA_BRIDGE_VLAN_INFO`), as `bridge vlan add/del/show` does.

use vmtap_sys::rtnl::NLM_F_DUMP;
use vmtap_sys::rtnl::netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfo, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask, LinkMessage,
};
use vmtap_sys::rtnl::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{LinkError, LinkState, LinkStep, Rtnl};

/// A VLAN of a bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortVlan {
    /// The VLAN id.
    pub vid: u16,
    /// Untagged frames that come in are put in this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN go out untagged.
    pub untagged: bool,
}

impl PortVlan {
    /// A VLAN a port carries tagged.
    pub fn tagged(vid: u16) -> Self {
        Self {
            vid,
            pvid: false,
            untagged: false,
        }
    }

    /// The port's native VLAN: PVID, egress untagged.
    pub fn native(vid: u16) -> Self {
        Self {
            vid,
            pvid: true,
            untagged: true,
        }
    }

    fn flags(&self) -> BridgeVlanInfoFlags {
        let mut f = BridgeVlanInfoFlags::empty();
        if self.pvid {
            f |= BridgeVlanInfoFlags::Pvid;
        }
        if self.untagged {
            f |= BridgeVlanInfoFlags::Untagged;
        }
        f
    }
}

fn vlan_message(port: &LinkState, vlan: &PortVlan) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = port.index;
    msg.attributes
        .push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(
            BridgeVlanInfo {
                flags: vlan.flags(),
                vid: vlan.vid,
            },
        )]));
    msg
}

impl Rtnl {
    /// The VLANs of bridge port `port` (empty when it is no port, or its
    /// bridge does not filter VLANs). Ranges are expanded.
    pub fn port_vlans(&mut self, port: &LinkState) -> Result<Vec<PortVlan>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let replies = self
            .0
            .request_flags(RouteNetlinkMessage::GetLink(msg), NLM_F_DUMP)
            .map_err(|source| LinkError::Netlink {
                step: LinkStep::ReadVlans,
                ifname: port.name.clone(),
                source,
            })?;
        let mut vlans = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewLink(m) = reply else {
                continue;
            };
            if m.header.index != port.index {
                continue;
            }
            let mut range_start = None;
            for attr in &m.attributes {
                let LinkAttribute::AfSpecBridge(specs) = attr else {
                    continue;
                };
                for spec in specs {
                    let AfSpecBridge::VlanInfo(info) = spec else {
                        continue;
                    };
                    let one = |vid| PortVlan {
                        vid,
                        pvid: info.flags.contains(BridgeVlanInfoFlags::Pvid),
                        untagged: info.flags.contains(BridgeVlanInfoFlags::Untagged),
                    };
                    if info.flags.contains(BridgeVlanInfoFlags::RangeBegin) {
                        range_start = Some(info.vid);
                    } else if info.flags.contains(BridgeVlanInfoFlags::RangeEnd) {
                        let start = range_start.take().unwrap_or(info.vid);
                        vlans.extend((start..=info.vid).map(one));
                    } else {
                        vlans.push(one(info.vid));
                    }
                }
            }
        }
        Ok(vlans)
    }

    /// Adds (or changes the flags of) a VLAN of bridge port `port`.
    pub fn set_port_vlan(&mut self, port: &LinkState, vlan: PortVlan) -> Result<(), LinkError> {
        self.0
            .request(RouteNetlinkMessage::SetLink(vlan_message(port, &vlan)))
            .map(|_| ())
            .map_err(|source| LinkError::Netlink {
                step: LinkStep::AddVlan(vlan.vid),
                ifname: port.name.clone(),
                source,
            })
    }

    /// Removes a VLAN from bridge port `port`; `Ok(false)` when it had
    /// none such.
    pub fn del_port_vlan(&mut self, port: &LinkState, vid: u16) -> Result<bool, LinkError> {
        // RTM_DELLINK with AF_BRIDGE is handled by the bridge (a VLAN
        // goes); the family is what keeps this from deleting the link.
        let msg = vlan_message(port, &PortVlan::tagged(vid));
        debug_assert_eq!(msg.header.interface_family, AddressFamily::Bridge);
        match self.0.request(RouteNetlinkMessage::DelLink(msg)) {
            Ok(_) => Ok(true),
            // Not a port (any more): its VLANs went with that.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                Ok(false)
            }
            Err(source) => Err(LinkError::Netlink {
                step: LinkStep::DelVlan(vid),
                ifname: port.name.clone(),
                source,
            }),
        }
    }
}
