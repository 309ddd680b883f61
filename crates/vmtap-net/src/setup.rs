//! Setting up the host side of a tap in one of Ganeti's NIC modes, and
//! undoing it: [`configure`] (and [`LinkChanges`]) in one process,
//! [`ifdown`] from another, through the record kept on disk.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bridge::PortVlan;
use crate::ovs::Ovs;
use crate::record::{Journal, Owner, Record, StateDir};
use crate::routed::{self, Family, IifRule, MAIN_TABLE, Sysctl};
use crate::vlan::VlanSpec;
use crate::{LinkError, LinkState, MacAddr, Rtnl, TAP_MAX_MTU, check_tap_mtu};

/// How a tap joins the host network: Ganeti's NIC modes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NicMode {
    /// A port of a Linux bridge: MAC first byte 0xfe, the bridge's MTU,
    /// enslaved, up; with a VLAN spec, the port's VLANs (the bridge must
    /// filter VLANs).
    Bridged {
        /// The bridge.
        bridge: String,
        /// The port's VLANs.
        vlan: Option<VlanSpec>,
    },
    /// Routed: up, a host route to each address through the tap (in
    /// `table`, with a rule `iif TAP lookup TABLE`, else in main), proxy
    /// ARP/NDP and forwarding on the tap.
    Routed {
        /// The NIC's addresses (at least one).
        ips: Vec<IpAddr>,
        /// The routing table, by name or number, as given.
        table: Option<String>,
    },
    /// A port of an Open vSwitch switch, with its VLANs.
    Openvswitch {
        /// The switch.
        switch: String,
        /// The port's VLANs.
        vlan: Option<VlanSpec>,
    },
}

impl NicMode {
    /// Bridged on `bridge`, no VLAN.
    pub fn bridged(bridge: impl Into<String>) -> Self {
        Self::Bridged {
            bridge: bridge.into(),
            vlan: None,
        }
    }

    /// Builds a mode from Ganeti's words: `mode` (`bridged`, `routed`,
    /// `openvswitch`), `link` (the bridge, the switch, or the routing
    /// table), a VLAN spec, and the NIC's addresses. Refuses what does not
    /// make a NIC: an unknown mode, no bridge or switch, a routed NIC
    /// without an address, a VLAN on a routed NIC, a bad name or address.
    pub fn parse(
        mode: &str,
        link: Option<&str>,
        vlan: Option<&str>,
        ips: &[&str],
    ) -> Result<Self, LinkError> {
        let link = link.filter(|l| !l.is_empty());
        let vlan = vlan
            .filter(|v| !v.is_empty())
            .map(str::parse::<VlanSpec>)
            .transpose()?;
        let named = |what: &'static str| -> Result<String, LinkError> {
            let name = link.ok_or(LinkError::MissingLink { mode: what })?;
            check_link_name(what, name)?;
            Ok(name.to_string())
        };
        match mode {
            "bridged" => Ok(Self::Bridged {
                bridge: named("bridged")?,
                vlan,
            }),
            "openvswitch" => Ok(Self::Openvswitch {
                switch: named("openvswitch")?,
                vlan,
            }),
            "routed" => {
                if vlan.is_some() {
                    return Err(LinkError::VlanInMode("routed"));
                }
                let ips = ips
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| LinkError::InvalidIp(s.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if ips.is_empty() {
                    return Err(LinkError::NoIp);
                }
                for (i, ip) in ips.iter().enumerate() {
                    if ip.is_unspecified() || ip.is_multicast() || ips[..i].contains(ip) {
                        return Err(LinkError::InvalidIp(ip.to_string()));
                    }
                }
                if let Some(t) = link {
                    check_table_syntax(t)?;
                }
                Ok(Self::Routed {
                    ips,
                    table: link.map(str::to_string),
                })
            }
            other => Err(LinkError::UnknownMode(other.to_string())),
        }
    }

    /// The bridge or switch; the routing table, as given.
    pub fn link(&self) -> Option<&str> {
        match self {
            Self::Bridged { bridge: l, .. } | Self::Openvswitch { switch: l, .. } => Some(l),
            Self::Routed { table, .. } => table.as_deref(),
        }
    }

    /// `bridged`, `routed` or `openvswitch`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Bridged { .. } => "bridged",
            Self::Routed { .. } => "routed",
            Self::Openvswitch { .. } => "openvswitch",
        }
    }
}

impl fmt::Display for NicMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bridged { bridge: l, vlan } | Self::Openvswitch { switch: l, vlan } => {
                write!(f, "{} on \"{l}\"", self.name())?;
                if let Some(v) = vlan {
                    write!(f, " VLAN {v}")?;
                }
                Ok(())
            }
            Self::Routed { ips, table } => {
                write!(f, "routed")?;
                for ip in ips {
                    write!(f, " {ip}")?;
                }
                if let Some(t) = table {
                    write!(f, " table {t}")?;
                }
                Ok(())
            }
        }
    }
}

/// A bridge's or switch's name must be an interface name.
fn check_link_name(mode: &'static str, name: &str) -> Result<(), LinkError> {
    // A leading '-' would read as an option to ovs-vsctl.
    if name.starts_with('-') || crate::routed::ifname_problem(name).is_some() {
        return Err(LinkError::InvalidLinkName {
            mode,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A routing table's name or number: what iproute2 could take.
fn check_table_syntax(table: &str) -> Result<(), LinkError> {
    let ok = !table.is_empty()
        && table.len() <= 64
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LinkError::InvalidTableName(table.to_string()))
    }
}

/// One change to the host, with what it takes to undo it. Each is put on
/// record *before* it is made (write-ahead), so a set-up killed at any
/// point can be undone; undoing a change that was never made, or that
/// someone changed since, does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// MTU `before` → `after`; put back only while it is `after`.
    Mtu { before: u32, after: u32 },
    /// MAC `before` → `after`; put back only while it is `after`.
    Mac { before: [u8; 6], after: [u8; 6] },
    /// Enslaved to the bridge of index `bridge`; released only while it is
    /// a port of that bridge.
    Master { bridge: u32 },
    /// Brought up.
    Up,
    /// A VLAN of the port on bridge `bridge` (its flags `before`, none when
    /// it had none); put back only while it is a port of that bridge.
    PortVlan {
        bridge: u32,
        vid: u16,
        before: Option<PortVlan>,
    },
    /// A rule `iif IFNAME lookup TABLE` about to be added (the kernel picks
    /// its priority): undone by removing such plain rules.
    RulePending { family: Family, table: u32 },
    /// That rule, added.
    Rule { rule: IifRule },
    /// A host route through the device.
    Route { ip: IpAddr, table: u32 },
    /// A sysctl of the device turned on.
    Sysctl { sysctl: Sysctl },
    /// An Open vSwitch port added.
    OvsPort { bridge: String },
}

impl Step {
    /// Whether the change outlives the interface (a rule naming it, a
    /// port in the OVS database): everything else goes with the device.
    fn outlives_link(&self) -> bool {
        matches!(
            self,
            Self::Rule { .. } | Self::RulePending { .. } | Self::OvsPort { .. }
        )
    }

    /// In a few words, for a report.
    fn describe(&self) -> String {
        match self {
            Self::Rule { rule } => format!("rule: {rule}"),
            Self::RulePending { family, table } => {
                format!("rule: {family} iif ... lookup {table} (maybe added)")
            }
            Self::OvsPort { bridge } => format!("ovs port on {bridge}"),
            other => format!("{other:?}"),
        }
    }
}

/// Options of [`configure`]: what to do to the host side of a tap. Build
/// it with the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkOptions {
    /// MTU to set (bridged: the bridge's, unless given).
    pub mtu: Option<u32>,
    /// MAC to set (bridged: the tap's own with its first byte set to
    /// 0xfe, unless given, so the bridge never takes the tap's address).
    pub mac: Option<MacAddr>,
    /// How the tap joins the host network.
    pub mode: Option<NicMode>,
    /// Bring the link up (always done in a mode).
    pub up: bool,
    /// Where the record of the changes is kept (default:
    /// [`StateDir::from_env`]). Only a mode keeps a record, and only when
    /// [`LinkOptions::record`] is on.
    pub state_dir: Option<StateDir>,
    /// Who set the NIC up (a hot-plug), saved in the record.
    pub owner: Option<Owner>,
    /// What identifies the NIC beyond its tap's name (Ganeti's instance,
    /// MAC, UUID), saved in the record: an ifdown that names another NIC
    /// leaves this one alone.
    pub nic: Option<String>,
    /// Keep a record of a mode's changes on disk, for [`ifdown`] (default
    /// true). See [`LinkOptions::record`].
    pub record: bool,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            mtu: None,
            mac: None,
            mode: None,
            up: false,
            state_dir: None,
            owner: None,
            nic: None,
            record: true,
        }
    }
}

impl LinkOptions {
    /// Nothing to do.
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether a mode's changes are kept on record (default: true).
    ///
    /// `record(false)` is for a tap that lives only as long as its fds and
    /// whose changes all go with it, such as a bridged tap handed to QEMU
    /// by a bridge helper: the changes are made and, if a later step
    /// fails, undone in this process ([`LinkChanges::undo`]) as usual, but
    /// nothing is written to (or read from) the state directory, whose
    /// location is then never asked ([`StateDir::from_env`] is not read).
    /// Only bridged mode (or no mode) can be unrecorded: routing rules and
    /// Open vSwitch ports outlive the tap, and only a record lets
    /// [`ifdown`] remove them ([`LinkError::NeedsRecord`] otherwise).
    pub fn record(mut self, on: bool) -> Self {
        self.record = on;
        self
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
    /// Bridged mode on this bridge, no VLAN.
    pub fn bridge(self, bridge: impl Into<String>) -> Self {
        self.mode(NicMode::bridged(bridge))
    }
    /// Sets (or, with `None`, leaves alone) the NIC mode.
    pub fn mode(mut self, mode: impl Into<Option<NicMode>>) -> Self {
        self.mode = mode.into();
        self
    }
    /// Brings the link up.
    pub fn up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }
    /// Keeps the record of the changes in this directory.
    pub fn state_dir(mut self, dir: StateDir) -> Self {
        self.state_dir = Some(dir);
        self
    }
    /// Records what identifies the NIC.
    pub fn nic(mut self, nic: impl Into<Option<String>>) -> Self {
        self.nic = nic.into();
        self
    }
    /// Records who set the NIC up.
    pub fn owner(mut self, owner: impl Into<Option<Owner>>) -> Self {
        self.owner = owner.into();
        self
    }

    /// True when nothing is to be done.
    pub fn is_empty(&self) -> bool {
        self.mtu.is_none() && self.mac.is_none() && self.mode.is_none() && !self.up
    }

    /// Checks the options and the host before anything is created: the
    /// MTU is one a tap takes; a bridge exists, is a Linux bridge, has an
    /// MTU a tap can take (unless an MTU is given) and filters VLANs if a
    /// VLAN is asked; a routing table is known; an Open vSwitch switch
    /// exists.
    pub fn check(&self) -> Result<(), LinkError> {
        if let Some(mtu) = self.mtu {
            check_tap_mtu(mtu)?;
        }
        self.check_record()?;
        let Some(mode) = &self.mode else {
            return Ok(());
        };
        let mut nl = Rtnl::open_for(mode.link().unwrap_or(""))?;
        let needs = look_up(&mut nl, Some(mode))?;
        if let Some(b) = &needs.bridge
            && self.mtu.is_none()
        {
            bridge_mtu(b)?;
        }
        if let (Some(ovs), NicMode::Openvswitch { switch, .. }) = (&needs.ovs, mode)
            && !ovs.bridge_exists(switch)?
        {
            return Err(crate::ovs::OvsError::NoSuchBridge(switch.clone()).into());
        }
        Ok(())
    }
}

impl LinkOptions {
    /// An unrecorded set-up only of a mode whose changes go with the tap.
    fn check_record(&self) -> Result<(), LinkError> {
        match &self.mode {
            Some(m @ (NicMode::Routed { .. } | NicMode::Openvswitch { .. })) if !self.record => {
                Err(LinkError::NeedsRecord(m.name()))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn require_bridge(
    nl: &mut Rtnl,
    name: &str,
    vlan: Option<&VlanSpec>,
) -> Result<LinkState, LinkError> {
    let b = nl.require(name)?;
    if b.kind.as_deref() != Some("bridge") {
        return Err(LinkError::NotABridge(name.to_string()));
    }
    if vlan.is_some() && b.vlan_filtering != Some(true) {
        return Err(LinkError::NoVlanFiltering(name.to_string()));
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

/// What [`configure`] changed on the host, so that it can be put back
/// when a later step fails (a tap that outlives the failure, or a change
/// that outlives the tap). In a mode, the changes are also on record for
/// [`ifdown`].
#[derive(Debug)]
#[must_use = "call keep() when the changes are to stay, undo() when a later step failed"]
pub struct LinkChanges {
    ifname: String,
    index: u32,
    done: Vec<Step>,
    journal: Option<Journal>,
}

impl LinkChanges {
    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// The changes stay (and stay on record).
    pub fn keep(self) {}

    /// Puts back every change this set-up made, last first. Every step is
    /// tried; the first failure is returned (and what could not be undone
    /// stays on record).
    pub fn undo(mut self) -> Result<(), LinkError> {
        if self.done.is_empty() {
            return Ok(());
        }
        let mut nl = Rtnl::open_for(&self.ifname)?;
        let link = nl.link(&self.ifname)?.filter(|l| l.index == self.index);
        let ovs = ovs_for(self.journal.as_ref().and_then(|j| j.record.as_ref()));
        let done = std::mem::take(&mut self.done);
        let failed = undo_steps(&mut nl, &self.ifname, link.as_ref(), ovs, &done);
        if let Some(j) = &mut self.journal {
            for step in done.iter().rev() {
                if !failed.iter().any(|(s, _)| s == step) {
                    j.replace_unsaved(step, Vec::new());
                }
            }
            j.save()?;
        }
        failed.into_iter().next().map_or(Ok(()), |(_, e)| Err(e))
    }
}

/// Replaces the last `old` in `steps` by `new` (nothing when absent).
pub(crate) fn replace_step(steps: &mut Vec<Step>, old: &Step, new: Vec<Step>) {
    if let Some(i) = steps.iter().rposition(|s| s == old) {
        steps.splice(i..=i, new);
    }
}

/// The Open vSwitch a record's port was added through.
fn ovs_for(record: Option<&Record>) -> Option<PathBuf> {
    record.and_then(|r| r.ovs_db.clone())
}

/// Undoes `steps`, last first, on `ifname` (`link`: the same device, when
/// it still exists). Changes that went with the device are skipped, and so
/// are changes that are not (or no longer) as the step left them. Returns
/// the steps that failed, with their errors.
fn undo_steps(
    nl: &mut Rtnl,
    ifname: &str,
    link: Option<&LinkState>,
    ovs_db: Option<PathBuf>,
    steps: &[Step],
) -> Vec<(Step, LinkError)> {
    let ovs = || match &ovs_db {
        Some(db) => Ovs::from_env().db(db.clone()),
        None => Ovs::from_env(),
    };
    // The link as it is now (each undo may change it).
    let mut now = link.cloned();
    let mut failed = Vec::new();
    for step in steps.iter().rev() {
        if now.is_none() && !step.outlives_link() {
            // Gone with the device.
            continue;
        }
        log::debug!("{ifname}: undoing {step:?}");
        let r = match (step, now.as_mut()) {
            (Step::Rule { rule }, _) => nl.del_rule(rule).map(drop).map_err(LinkError::from),
            (Step::RulePending { family, table }, _) => {
                undo_pending_rule(nl, ifname, *family, *table)
            }
            (Step::OvsPort { bridge }, _) => ovs()
                .del_port(bridge, ifname)
                .map(drop)
                .or_else(|e| match e {
                    // The switch is gone, and the port with it.
                    crate::ovs::OvsError::NoSuchBridge(_) => Ok(()),
                    e => Err(e),
                })
                .map_err(LinkError::from),
            (_, None) => Ok(()),
            (Step::Mtu { before, after }, Some(l)) => {
                if l.mtu == Some(*after) {
                    nl.set_mtu(l, *before).map(|()| l.mtu = Some(*before))
                } else {
                    Ok(())
                }
            }
            (Step::Mac { before, after }, Some(l)) => {
                if l.mac == Some(*after) {
                    nl.set_mac(l, MacAddr(*before))
                        .map(|()| l.mac = Some(*before))
                } else {
                    Ok(())
                }
            }
            (Step::Master { bridge }, Some(l)) => {
                if l.master == Some(*bridge) {
                    nl.set_master_index(l, 0, "").map(|()| l.master = None)
                } else {
                    Ok(())
                }
            }
            (Step::Up, Some(l)) => {
                if l.up {
                    nl.set_admin(l, false).map(|()| l.up = false)
                } else {
                    Ok(())
                }
            }
            (
                Step::PortVlan {
                    bridge,
                    vid,
                    before,
                },
                Some(l),
            ) => {
                if l.master != Some(*bridge) {
                    Ok(())
                } else {
                    match before {
                        None => nl.del_port_vlan(l, *vid).map(drop),
                        Some(v) => nl.set_port_vlan(l, *v),
                    }
                }
            }
            (Step::Route { ip, table }, Some(l)) => nl
                .del_host_route(*ip, *table, l.index)
                .map(drop)
                .map_err(LinkError::from),
            (Step::Sysctl { sysctl }, Some(_)) => {
                routed::write_sysctl(ifname, *sysctl, false).map_err(LinkError::from)
            }
        };
        match r {
            Ok(()) => {}
            // The device went while this ran (QEMU exited): its changes
            // went with it.
            Err(e) if !step.outlives_link() && device_gone(&e) => {
                log::debug!("{ifname}: gone while undoing: {e}");
            }
            Err(e) => {
                log::warn!("could not undo a change on {ifname}: {e}");
                failed.push((step.clone(), e));
            }
        }
    }
    failed
}

/// Whether an error says the device is gone (ENODEV, or ENOENT of its
/// /proc/sys files).
fn device_gone(e: &LinkError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT))
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Removes the plain rules `iif IFNAME lookup TABLE` of `family`: what an
/// add that was not seen through may have left.
fn undo_pending_rule(
    nl: &mut Rtnl,
    ifname: &str,
    family: Family,
    table: u32,
) -> Result<(), LinkError> {
    for rule in nl.iif_rules(ifname)? {
        if rule.family == family && rule.table == table && rule.details.is_plain() {
            nl.del_rule(&rule)?;
        }
    }
    Ok(())
}

/// The state of a set-up in progress.
struct Setup<'a> {
    nl: &'a mut Rtnl,
    tap: LinkState,
    done: Vec<Step>,
    journal: Option<Journal>,
}

impl Setup<'_> {
    /// Puts a change on record before it is made (write-ahead).
    fn intend(&mut self, step: Step) -> Result<(), LinkError> {
        log::debug!("{}: {step:?}", self.tap.name);
        self.done.push(step.clone());
        if let Some(j) = &mut self.journal
            && let Some(r) = &mut j.record
        {
            r.steps.push(step);
            j.save()?;
        }
        Ok(())
    }

    /// Replaces a recorded step by what it turned out to be.
    fn settle(&mut self, old: &Step, new: Vec<Step>) -> Result<(), LinkError> {
        replace_step(&mut self.done, old, new.clone());
        self.journal
            .as_mut()
            .map_or(Ok(()), |j| j.replace(old, new))
    }

    fn recorded(&self, step: &Step) -> bool {
        self.journal
            .as_ref()
            .and_then(|j| j.record.as_ref())
            .is_some_and(|r| r.steps.contains(step))
    }

    /// Forgets a recorded change that is no more (a rule removed).
    fn forget(&mut self, step: &Step) -> Result<(), LinkError> {
        self.journal
            .as_mut()
            .map_or(Ok(()), |j| j.replace(step, Vec::new()))
    }

    fn up(&mut self) -> Result<(), LinkError> {
        if !self.tap.up {
            self.intend(Step::Up)?;
            self.nl.set_admin(&self.tap, true)?;
            self.tap.up = true;
        }
        Ok(())
    }

    fn base(&mut self, opts: &LinkOptions, bridge: Option<&LinkState>) -> Result<(), LinkError> {
        let ifname = self.tap.name.clone();
        if let (Some(b), Some(m)) = (bridge, self.tap.master)
            && m != b.index
        {
            let master = self
                .nl
                .link_by_index(m)?
                .map_or_else(|| format!("index {m}"), |l| l.name);
            return Err(LinkError::OtherMaster {
                ifname,
                master,
                bridge: b.name.clone(),
            });
        }
        let mtu = match opts.mtu {
            Some(mtu) => Some(mtu),
            None => bridge.map(bridge_mtu).transpose()?.flatten(),
        };
        if let Some(mtu) = mtu
            && let Some(before) = self.tap.mtu
            && before != mtu
        {
            self.intend(Step::Mtu { before, after: mtu })?;
            self.nl.set_mtu(&self.tap, mtu)?;
            self.tap.mtu = Some(mtu);
        }
        let mac = opts.mac.or_else(|| {
            bridge?;
            let mut m = self.tap.mac?;
            m[0] = 0xfe;
            Some(MacAddr(m))
        });
        if let Some(mac) = mac
            && let Some(before) = self.tap.mac
            && before != mac.0
        {
            self.intend(Step::Mac {
                before,
                after: mac.0,
            })?;
            self.nl.set_mac(&self.tap, mac)?;
            self.tap.mac = Some(mac.0);
        }
        if let Some(b) = bridge
            && self.tap.master != Some(b.index)
        {
            self.intend(Step::Master { bridge: b.index })?;
            self.nl.set_master(&self.tap, b)?;
            self.tap.master = Some(b.index);
        }
        if opts.up || opts.mode.is_some() {
            self.up()?;
        }
        Ok(())
    }

    /// The port's VLANs on a VLAN-filtering bridge, as Ganeti sets them:
    /// the untagged VLAN as PVID and egress untagged, the others tagged.
    /// VLANs the port has besides are left alone.
    fn bridge_vlans(&mut self, bridge: &LinkState, spec: &VlanSpec) -> Result<(), LinkError> {
        let before = self.nl.port_vlans(&self.tap)?;
        let find = |vid: u16| before.iter().find(|v| v.vid == vid).copied();
        if let Some(native) = spec.untagged
            && find(native) != Some(PortVlan::native(native))
            && let Some(old) = before.iter().find(|v| v.pvid && v.vid != native)
        {
            // Making `native` the PVID takes the flag from `old`; its
            // undo gives it back (undone after `native`'s own).
            self.intend(Step::PortVlan {
                bridge: bridge.index,
                vid: old.vid,
                before: Some(*old),
            })?;
        }
        for vid in spec.vids() {
            let want = if Some(vid) == spec.untagged {
                PortVlan::native(vid)
            } else {
                PortVlan::tagged(vid)
            };
            let had = find(vid);
            if had != Some(want) {
                self.intend(Step::PortVlan {
                    bridge: bridge.index,
                    vid,
                    before: had,
                })?;
                self.nl.set_port_vlan(&self.tap, want)?;
            }
        }
        Ok(())
    }

    fn routed(&mut self, ips: &[IpAddr], table: Option<u32>) -> Result<(), LinkError> {
        let ifname = self.tap.name.clone();
        let mut families: Vec<Family> = Vec::new();
        for ip in ips {
            let f = Family::of(*ip);
            if !families.contains(&f) {
                families.push(f);
            }
        }
        if let Some(table) = table {
            // Plain `iif TAP lookup N` rules are the NIC script's; rules
            // with other selectors (a fwmark, a source) are someone else's.
            let rules: Vec<IifRule> = self
                .nl
                .iif_rules(&ifname)?
                .into_iter()
                .filter(|r| r.details.is_plain())
                .collect();
            let exact = rules.len() == families.len()
                && families
                    .iter()
                    .all(|f| rules.iter().any(|r| r.family == *f && r.table == table));
            if !exact {
                // Stale rules for this name (a tap of an earlier life, or
                // another table) go, as Ganeti's script does; they are
                // not put back.
                for rule in &rules {
                    self.nl.del_rule(rule)?;
                    self.forget(&Step::Rule { rule: rule.clone() })?;
                }
                for f in &families {
                    let pending = Step::RulePending { family: *f, table };
                    self.intend(pending.clone())?;
                    self.nl.add_iif_rule(*f, &ifname, table)?;
                    let added = self
                        .nl
                        .iif_rules(&ifname)?
                        .into_iter()
                        .filter(|r| r.family == *f && r.table == table)
                        .map(|rule| Step::Rule { rule })
                        .collect::<Vec<_>>();
                    // Not seen (an inconsistent dump): stays pending, so
                    // its undo still finds it.
                    if !added.is_empty() {
                        self.settle(&pending, added)?;
                    }
                }
            }
        }
        let table = table.unwrap_or(MAIN_TABLE);
        for ip in ips {
            if !self.nl.host_route(*ip, table, self.tap.index)? {
                self.intend(Step::Route { ip: *ip, table })?;
                self.nl.replace_host_route(*ip, table, self.tap.index)?;
            }
        }
        for s in Sysctl::ALL
            .into_iter()
            .filter(|s| families.contains(&s.family()))
        {
            if !routed::read_sysctl(&ifname, s)? {
                self.intend(Step::Sysctl { sysctl: s })?;
                routed::write_sysctl(&ifname, s, true)?;
            }
        }
        Ok(())
    }

    fn openvswitch(
        &mut self,
        ovs: &Ovs,
        switch: &str,
        vlan: Option<&VlanSpec>,
    ) -> Result<(), LinkError> {
        let ifname = self.tap.name.clone();
        let now = ovs.port(&ifname)?;
        let right = now.as_ref().is_some_and(|p| p.is(switch, vlan));
        if right {
            return Ok(());
        }
        let step = Step::OvsPort {
            bridge: switch.to_string(),
        };
        // A port that was on this switch before vmtap came is changed,
        // not taken over: ifdown leaves it.
        let ours = now.as_ref().is_none_or(|p| p.bridge != switch) || self.recorded(&step);
        if ours && !self.recorded(&step) {
            self.intend(step)?;
        }
        ovs.add_port(switch, &ifname, vlan)?;
        Ok(())
    }
}

/// Checks what a mode needs of the tap itself before anything changes
/// (an IPv6 address needs IPv6 on the tap).
fn preflight(mode: &NicMode, tap: &LinkState) -> Result<(), LinkError> {
    if let NicMode::Routed { ips, .. } = mode
        && ips.iter().any(IpAddr::is_ipv6)
    {
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.name);
        let off = match std::fs::read_to_string(&path) {
            Ok(v) => v.trim() != "0",
            Err(_) => true,
        };
        if off {
            return Err(LinkError::Ipv6Off(tap.name.clone()));
        }
    }
    Ok(())
}

/// What a mode needs from the host, looked up before anything changes.
struct Needs {
    bridge: Option<LinkState>,
    table: Option<u32>,
    ovs: Option<Ovs>,
}

fn look_up(nl: &mut Rtnl, mode: Option<&NicMode>) -> Result<Needs, LinkError> {
    let mut needs = Needs {
        bridge: None,
        table: None,
        ovs: None,
    };
    match mode {
        None => {}
        Some(NicMode::Bridged { bridge, vlan }) => {
            needs.bridge = Some(require_bridge(nl, bridge, vlan.as_ref())?);
        }
        Some(NicMode::Routed { table, .. }) => {
            needs.table = table.as_deref().map(routed::resolve_table).transpose()?;
        }
        Some(NicMode::Openvswitch { .. }) => needs.ovs = Some(Ovs::from_env()),
    }
    Ok(needs)
}

/// Sets up the host side of `ifname`: MTU, MAC and up as asked, then the
/// NIC mode (bridged, routed, openvswitch) as Ganeti's NIC scripts do,
/// natively and idempotently: each step is skipped when already done, so
/// a second call changes nothing. In a mode, every change is put on
/// record (see [`StateDir`]) before it is made, for [`ifdown`], and a
/// record of an earlier tap of the same name (or of another mode) is
/// undone first: its rules and OVS port outlive the tap. With
/// [`LinkOptions::record`]`(false)` (bridged only) nothing is recorded
/// and no record is read: the changes live and die with the tap.
///
/// Returns what was changed. If a step fails, the steps before it are
/// undone before the error is returned.
pub fn configure(ifname: &str, opts: &LinkOptions) -> Result<LinkChanges, LinkError> {
    let mut changes = LinkChanges {
        ifname: ifname.to_string(),
        index: 0,
        done: Vec::new(),
        journal: None,
    };
    if opts.is_empty() {
        return Ok(changes);
    }
    if let Some(mtu) = opts.mtu {
        check_tap_mtu(mtu)?;
    }
    opts.check_record()?;
    let mut nl = Rtnl::open_for(ifname)?;
    // What the mode needs, and the tap, are looked up first (nothing is
    // made for a NIC that cannot be), then the NIC's lock is taken and the
    // tap read again: from then on no other vmtap changes it.
    let needs = look_up(&mut nl, opts.mode.as_ref())?;
    let mut tap = nl.require(ifname)?;
    if let Some(mode) = &opts.mode {
        preflight(mode, &tap)?;
    }
    let mut journal = match &opts.mode {
        Some(_) if opts.record => {
            let dir = opts.state_dir.clone().unwrap_or_else(StateDir::from_env);
            let j = Journal::open(&dir, ifname, true)?;
            tap = nl.require(ifname)?;
            Some(j)
        }
        _ => None,
    };
    changes.index = tap.index;
    if let Some(j) = &mut journal {
        let same = j
            .record
            .as_ref()
            .is_some_and(|r| r.index == tap.index && r.mode == opts.mode && r.nic == opts.nic);
        if !same && let Some(old) = j.record.take() {
            // An earlier tap of this name, or another set-up of this one:
            // undo that first, once the new mode is known to be possible.
            if let (Some(NicMode::Openvswitch { switch, .. }), Some(ovs)) = (&opts.mode, &needs.ovs)
                && !ovs.bridge_exists(switch)?
            {
                j.record = Some(old);
                return Err(crate::ovs::OvsError::NoSuchBridge(switch.clone()).into());
            }
            log::debug!("{ifname}: undoing the record of an earlier set-up first");
            let live = (old.index == tap.index).then_some(&tap);
            let failed = undo_steps(&mut nl, ifname, live, ovs_for(Some(&old)), &old.steps);
            if let Some((_, e)) = failed.into_iter().next() {
                if live.is_some() {
                    j.record = Some(old);
                    return Err(e);
                }
                // What an earlier tap of this name left must not keep
                // this one from being set up: said, and dropped.
                log::warn!(
                    "{ifname}: could not undo what an earlier tap of this name left ({}): {e}; \
                     it stays on the host",
                    old.mode
                        .as_ref()
                        .map_or("no mode".into(), |m| m.to_string())
                );
            }
            j.save()?;
            tap = nl.require(ifname)?;
            changes.index = tap.index;
        }
        let record = j.record.get_or_insert_with(|| Record {
            version: 1,
            ifname: ifname.to_string(),
            index: tap.index,
            mode: opts.mode.clone(),
            nic: opts.nic.clone(),
            ovs_db: None,
            owner: None,
            steps: Vec::new(),
        });
        if let Some(o) = &opts.owner {
            record.owner = Some(o.clone());
        }
        if let Some(ovs) = &needs.ovs {
            record.ovs_db = Some(PathBuf::from(ovs.db_path()));
        }
    }
    let mut setup = Setup {
        nl: &mut nl,
        tap,
        done: Vec::new(),
        journal,
    };
    let result = (|| {
        setup.base(opts, needs.bridge.as_ref())?;
        match &opts.mode {
            Some(NicMode::Bridged {
                vlan: Some(spec), ..
            }) => setup.bridge_vlans(needs.bridge.as_ref().expect("looked up"), spec),
            Some(NicMode::Routed { ips, .. }) => setup.routed(ips, needs.table),
            Some(NicMode::Openvswitch { switch, vlan }) => {
                let ovs = needs.ovs.as_ref().expect("looked up");
                setup.openvswitch(ovs, switch, vlan.as_ref())
            }
            _ => Ok(()),
        }
    })();
    changes.done = std::mem::take(&mut setup.done);
    changes.journal = setup.journal.take();
    match result {
        Ok(()) => Ok(changes),
        Err(e) => {
            if let Err(u) = changes.undo() {
                log::warn!("{u}");
            }
            // The host was touched (and put back): whatever the cause,
            // this is no longer a plain input error.
            Err(e)
        }
    }
}

/// What [`ifdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ifdown {
    /// The recorded changes were undone (`changes` of them; those that
    /// went with the device count too).
    Undone {
        /// How many changes were on record.
        changes: usize,
    },
    /// There was no record for the interface: nothing to undo.
    NoRecord,
    /// The record under that name is another NIC's (the name was reused):
    /// left alone.
    OtherNic,
}

/// Undoes what [`configure`] recorded for `ifname` in this network
/// namespace, and nothing else: the rules, routes, sysctls, bridge VLANs,
/// OVS port, up state, bridge port, MAC and MTU it changed, each only
/// while it is as vmtap left it. Works when the tap is gone (then only
/// what outlives it is left to undo: rules and the OVS port). What fails
/// stays on record, so running it again finishes the job.
pub fn ifdown(ifname: &str, dir: &StateDir) -> Result<Ifdown, LinkError> {
    ifdown_if(ifname, dir, |_| true)
}

/// [`ifdown`] of the NIC `nic` (see [`LinkOptions::nic`]): a record of
/// another NIC under that tap name (the name was reused) is left alone,
/// as [`Ifdown::OtherNic`].
pub fn ifdown_nic(ifname: &str, nic: &str, dir: &StateDir) -> Result<Ifdown, LinkError> {
    let mut other = false;
    let r = ifdown_if(ifname, dir, |r| match &r.nic {
        Some(n) if n != nic => {
            other = true;
            false
        }
        _ => true,
    })?;
    Ok(if other { Ifdown::OtherNic } else { r })
}

fn ifdown_if(
    ifname: &str,
    dir: &StateDir,
    mut ours: impl FnMut(&Record) -> bool,
) -> Result<Ifdown, LinkError> {
    let Some(mut journal) = Journal::open_existing(dir, ifname)? else {
        return Ok(Ifdown::NoRecord);
    };
    let Some(record) = journal.record.take_if(|r| ours(r)) else {
        return Ok(Ifdown::NoRecord);
    };
    let mut nl = Rtnl::open_for(ifname)?;
    let link = nl.link(ifname)?.filter(|l| l.index == record.index);
    let failed = undo_steps(
        &mut nl,
        ifname,
        link.as_ref(),
        ovs_for(Some(&record)),
        &record.steps,
    );
    let changes = record.steps.len();
    if failed.is_empty() {
        journal.finish()?;
        return Ok(Ifdown::Undone { changes });
    }
    let mut left = record;
    left.steps.retain(|s| failed.iter().any(|(f, _)| f == s));
    journal.record = Some(left);
    journal.save()?;
    Err(failed.into_iter().next().expect("not empty").1)
}

/// A NIC whose interface is gone but whose set-up left changes behind
/// (routing rules `iif TAP`, an Open vSwitch port): found by
/// [`collect_stale`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Stale {
    /// The interface the record is about.
    pub ifname: String,
    /// The changes on record that outlive the interface, described
    /// (`rule: iif tap3 lookup 100`...).
    pub leftovers: Vec<String>,
    /// What undoing them gave (`Ok` too for a dry run).
    pub result: Result<(), LinkError>,
}

/// Finds the records of this network namespace whose interface no longer
/// exists (no link with the recorded index) and, unless `dry_run`, undoes
/// what they left behind (the rules of routed mode, an OVS port), as
/// [`ifdown`] does. A record whose interface still exists is never
/// touched; each is checked again under its lock.
pub fn collect_stale(dir: &StateDir, dry_run: bool) -> Result<Vec<Stale>, LinkError> {
    const LIMIT: usize = 1 << 20;
    let mut nl = Rtnl::open_for("the records' interfaces")?;
    let mut gone = |r: &Record| -> bool { matches!(nl.link_by_index(r.index), Ok(None)) };
    let records =
        crate::record::find_records(dir, LIMIT, |r| r.steps.iter().any(Step::outlives_link))?;
    let mut out = Vec::new();
    for (ifname, record) in records {
        if !gone(&record) {
            continue;
        }
        let leftovers = record
            .steps
            .iter()
            .filter(|s| s.outlives_link())
            .map(Step::describe)
            .collect();
        let result = if dry_run {
            Ok(())
        } else {
            let index = record.index;
            ifdown_if(&ifname, dir, |r| r.index == index && gone(r)).map(drop)
        };
        out.push(Stale {
            ifname,
            leftovers,
            result,
        });
    }
    Ok(out)
}

/// Undoes the records that `owner` (a hot-plug) made in this network
/// namespace (each checked again under its lock): the interfaces undone.
pub fn ifdown_owned(owner: &Owner, dir: &StateDir) -> Result<Vec<String>, LinkError> {
    // More records than this in one directory is not a host vmtap serves.
    const LIMIT: usize = 1 << 20;
    let mut undone = Vec::new();
    let mut first = None;
    for ifname in crate::record::find_owned(dir, owner, LIMIT)? {
        match ifdown_if(&ifname, dir, |r| r.owner.as_ref() == Some(owner)) {
            Ok(Ifdown::Undone { .. }) => undone.push(ifname),
            Ok(_) => {}
            Err(e) => {
                log::warn!("{ifname}: {e}");
                first.get_or_insert(LinkError::Cleanup {
                    ifname,
                    source: Box::new(e),
                });
            }
        }
    }
    first.map_or(Ok(undone), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_ganeti_words() {
        assert_eq!(
            NicMode::parse("bridged", Some("br0"), None, &[]).unwrap(),
            NicMode::bridged("br0")
        );
        assert_eq!(
            NicMode::parse("bridged", Some("br0"), Some(""), &[]).unwrap(),
            NicMode::bridged("br0")
        );
        assert_eq!(
            NicMode::parse("openvswitch", Some("ovs0"), Some("100"), &[]).unwrap(),
            NicMode::Openvswitch {
                switch: "ovs0".into(),
                vlan: Some(VlanSpec::access(100).unwrap())
            }
        );
        assert_eq!(
            NicMode::parse("routed", Some("100"), None, &["10.0.0.2", "2001:db8::2"]).unwrap(),
            NicMode::Routed {
                ips: vec!["10.0.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                table: Some("100".into())
            }
        );
        assert_eq!(
            NicMode::parse("routed", Some(""), None, &["10.0.0.2"]).unwrap(),
            NicMode::Routed {
                ips: vec!["10.0.0.2".parse().unwrap()],
                table: None
            }
        );
    }

    #[test]
    fn what_makes_no_nic_is_refused() {
        for (mode, link, vlan, ips, want) in [
            ("pool", Some("x"), None, vec![], "unknown NIC mode \"pool\""),
            ("", None, None, vec![], "unknown NIC mode \"\""),
            ("bridged", None, None, vec![], "bridged NIC needs a bridge"),
            (
                "bridged",
                Some(""),
                None,
                vec![],
                "bridged NIC needs a bridge",
            ),
            (
                "openvswitch",
                None,
                None,
                vec![],
                "openvswitch NIC needs a switch",
            ),
            ("routed", None, None, vec![], "Routed NIC but no IP address"),
            (
                "routed",
                None,
                None,
                vec![""],
                "Routed NIC but no IP address",
            ),
            (
                "routed",
                None,
                None,
                vec!["10.0.0.300"],
                "invalid IP address",
            ),
            ("routed", None, None, vec!["0.0.0.0"], "invalid IP address"),
            (
                "routed",
                None,
                None,
                vec!["224.0.0.1"],
                "invalid IP address",
            ),
            (
                "routed",
                None,
                None,
                vec!["10.0.0.1", "10.0.0.1"],
                "invalid IP address",
            ),
            ("routed", None, Some(".100"), vec!["10.0.0.1"], "VLAN"),
            (
                "routed",
                Some("a b"),
                None,
                vec!["10.0.0.1"],
                "routing table",
            ),
            ("bridged", Some("br0"), Some(".0"), vec![], "out of range"),
            (
                "bridged",
                Some("br0"),
                Some(".100:"),
                vec![],
                "not a VLAN spec",
            ),
            (
                "bridged",
                Some("br/0"),
                None,
                vec![],
                "not a valid bridge name",
            ),
            (
                "bridged",
                Some("-br0"),
                None,
                vec![],
                "not a valid bridge name",
            ),
            (
                "openvswitch",
                Some("0123456789abcdef"),
                None,
                vec![],
                "not a valid switch name",
            ),
        ] {
            let err = NicMode::parse(mode, link, vlan, &ips).unwrap_err();
            assert!(err.is_invalid_input(), "{mode} {link:?}: {err}");
            assert!(err.to_string().contains(want), "{mode} {link:?}: {err}");
        }
    }

    #[test]
    fn steps_keep_their_record_form() {
        // The on-disk form is read by later versions (and by an ifdown of
        // a newer vmtap): every step's form is pinned here.
        let rule = IifRule {
            family: Family::V4,
            iif: "t0".into(),
            table: 100,
            priority: Some(32765),
            detached: false,
            details: crate::routed::RuleDetails::plain(),
        };
        let rule_json = serde_json::to_string(&rule).unwrap();
        for (step, want) in [
            (
                Step::Mtu {
                    before: 1500,
                    after: 1400,
                },
                r#"{"step":"mtu","before":1500,"after":1400}"#.to_string(),
            ),
            (
                Step::Mac {
                    before: [2, 0, 0, 0, 0, 1],
                    after: [0xfe, 0, 0, 0, 0, 1],
                },
                r#"{"step":"mac","before":[2,0,0,0,0,1],"after":[254,0,0,0,0,1]}"#.to_string(),
            ),
            (
                Step::Master { bridge: 7 },
                r#"{"step":"master","bridge":7}"#.to_string(),
            ),
            (Step::Up, r#"{"step":"up"}"#.to_string()),
            (
                Step::PortVlan {
                    bridge: 7,
                    vid: 100,
                    before: Some(PortVlan::native(1)),
                },
                r#"{"step":"port_vlan","bridge":7,"vid":100,"before":{"vid":1,"pvid":true,"untagged":true}}"#
                    .to_string(),
            ),
            (
                Step::RulePending {
                    family: Family::V6,
                    table: 100,
                },
                r#"{"step":"rule_pending","family":"V6","table":100}"#.to_string(),
            ),
            (
                Step::Rule { rule: rule.clone() },
                format!(r#"{{"step":"rule","rule":{rule_json}}}"#),
            ),
            (
                Step::Route {
                    ip: "10.0.0.2".parse().unwrap(),
                    table: 100,
                },
                r#"{"step":"route","ip":"10.0.0.2","table":100}"#.to_string(),
            ),
            (
                Step::Sysctl {
                    sysctl: Sysctl::ProxyArp,
                },
                r#"{"step":"sysctl","sysctl":"ProxyArp"}"#.to_string(),
            ),
            (
                Step::OvsPort { bridge: "s".into() },
                r#"{"step":"ovs_port","bridge":"s"}"#.to_string(),
            ),
        ] {
            assert_eq!(serde_json::to_string(&step).unwrap(), want);
            assert_eq!(serde_json::from_str::<Step>(&want).unwrap(), step);
        }
        assert!(rule_json.contains(r#""family":"V4","iif":"t0","table":100,"priority":32765"#));
        assert!(Step::OvsPort { bridge: "s".into() }.outlives_link());
        assert!(!Step::Up.outlives_link());
    }
}
