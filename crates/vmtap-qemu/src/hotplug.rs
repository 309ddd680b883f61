//! NIC hot-plug into a running QEMU over QMP, as Ganeti does it, with
//! rollback: `getfd` for each fd (named `ID-0..`, `ID-vhost-0..`), then
//! `netdev_add`, then `device_add`.
//!
//! Before the first `getfd`, the id is checked to be free in QEMU (no
//! netdev, no device by that name), so a rollback only ever deletes what
//! this add created. QEMU serves one QMP client at a time and runs a
//! client's commands in order, so while the add's connection stays open
//! nobody else can act on QEMU.
//!
//! If a step fails and the connection is still in step (QEMU refused the
//! step, or did not answer in time: replies are matched by id and a late
//! one is dropped), the steps done are undone on the same connection,
//! within [`Monitor::rollback_timeout`]: first a late command finishes,
//! then the undo runs, and nobody gets in between. If `device_add` turns
//! out to have been executed after all, the NIC is plugged and the add
//! succeeds. Only when the connection is out of step (QEMU hung up, sent
//! garbage or a line too long) is it closed and the undo done on a new
//! connection; another client may have been served in between and added
//! the same id, so there vmtap deletes a netdev only when no NIC is
//! attached to it, never a device, and closes the fd names; what it cannot
//! show is its own is reported as possibly remaining.
//!
//! If the rollback cannot finish, the error names what may remain in QEMU
//! ([`HotplugError::remaining`]), and the host tap: our fds are closed in
//! every case, but QEMU's copies keep a tap alive while anything of the
//! add remains in QEMU.
//!
//! QEMU facts this relies on (checked against QEMU 7.2): `getfd` names live
//! in the monitor, not the connection, so a new connection can `closefd`
//! them; on disconnect QEMU drops the commands it had queued but not
//! started, and a command already executing completes before any command of
//! a new connection; `netdev_add` consumes the fd names it uses (also when
//! it fails); `netdev_del`/`device_del` of a missing id answer
//! `DeviceNotFound`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

use crate::helper::{HelperError, HelperOptions, open_with_helper};
use crate::qmp::{Deadline, Event, Limits, Qmp, QmpError, later};
use vmtap::open::OpenOptions;
use vmtap::tap::Tap;
use vmtap::tun::Tun;
use vmtap_net::{self as link, LinkError, LinkOptions, MacAddr};

/// The shortest rollback deadline [`Monitor::new`] sets: undoing needs a
/// connection and a few commands, even when the add had a tiny timeout.
pub const MIN_ROLLBACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How often `del` checks whether the device is gone, besides watching for
/// `DEVICE_DELETED` (which may have been sent before it connected).
const UNPLUG_POLL: Duration = Duration::from_millis(150);

/// The only event hot-plug waits for.
const DEVICE_DELETED: &str = "DEVICE_DELETED";

/// A running QEMU's QMP socket, and the time allowed for operations on it.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// QEMU's QMP unix socket (`-qmp unix:PATH,server=on,wait=off`).
    pub path: PathBuf,
    /// The deadline for a whole operation: connect, greeting, every command
    /// and every wait.
    pub timeout: Duration,
    /// The deadline for undoing a failed add, counted from when the
    /// rollback starts.
    pub rollback_timeout: Duration,
    /// Bounds on what is read from QEMU.
    pub limits: Limits,
}

impl Monitor {
    /// The monitor at `path`, with `timeout` per operation, the same for a
    /// rollback (but at least [`MIN_ROLLBACK_TIMEOUT`]) and default limits.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Monitor {
            path: path.into(),
            timeout,
            rollback_timeout: timeout.max(MIN_ROLLBACK_TIMEOUT),
            limits: Limits::default(),
        }
    }

    /// Connects, with the deadline `timeout` from now.
    pub fn connect(&self) -> Result<Qmp, QmpError> {
        self.connect_until(Deadline::after(self.timeout))
    }

    fn connect_until(&self, deadline: Deadline) -> Result<Qmp, QmpError> {
        Qmp::connect_until(&self.path, deadline, self.limits)
    }
}

/// Something a failed operation may have left in QEMU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leftover {
    /// A device (`device_del ID`).
    Device(String),
    /// A netdev (`netdev_del ID`).
    Netdev(String),
    /// An fd name given with `getfd` (`closefd NAME`).
    FdName(String),
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Device(id) => write!(f, "device {id}"),
            Self::Netdev(id) => write!(f, "netdev {id}"),
            Self::FdName(name) => write!(f, "fd name {name}"),
        }
    }
}

/// Which operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`add`] / [`plug`].
    Add,
    /// [`del`].
    Del,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Add => "hot-plug",
            Self::Del => "hot-unplug",
        })
    }
}

/// The QMP step of a hot-plug that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Connecting to the monitor (and its greeting).
    Connect,
    /// Checking that the id is free (add).
    CheckFree,
    /// Checking that the id is a NIC (del).
    CheckNic,
    /// `getfd` of this fd name.
    Getfd(String),
    /// `netdev_add`.
    NetdevAdd,
    /// `device_add`.
    DeviceAdd,
    /// `device_del`.
    DeviceDel,
    /// Waiting for the guest to release the device (`DEVICE_DELETED`).
    WaitRelease,
    /// `netdev_del`.
    NetdevDel,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect => f.write_str("connect"),
            Self::CheckFree => f.write_str("checking that the id is free"),
            Self::CheckNic => f.write_str("checking that the id is a NIC"),
            Self::Getfd(name) => write!(f, "getfd {name}"),
            Self::NetdevAdd => f.write_str("netdev_add"),
            Self::DeviceAdd => f.write_str("device_add"),
            Self::DeviceDel => f.write_str("device_del"),
            Self::WaitRelease => f.write_str(
                "waiting for the guest to release the device (DEVICE_DELETED); run del again to finish",
            ),
            Self::NetdevDel => f.write_str("netdev_del"),
        }
    }
}

/// Errors of hot-plug.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotplugError {
    /// Opening the tap failed.
    #[error(transparent)]
    Open(#[from] vmtap::Error),
    /// No tap came from the bridge helper.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// Host-side link set-up failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The NIC is out of QEMU, but undoing its host-side set-up failed.
    #[error(
        "NIC \"{id}\" is removed from QEMU, but undoing its host set-up failed: {source} (run this `vmtap hotplug del` again to finish)"
    )]
    HostCleanup {
        /// The NIC's id.
        id: String,
        /// What failed.
        #[source]
        source: Box<LinkError>,
    },
    /// A QMP step failed. For an add, the steps before it were undone,
    /// except what `remaining` lists.
    #[error(
        "{op} of \"{id}\"{} failed at {step}: {source}{}",
        with_tap(ifname.as_deref()),
        leftovers_note(remaining, rollback.as_deref(), *left_alone, ifname.as_deref())
    )]
    Step {
        /// Add or del.
        op: Op,
        /// The device id.
        id: String,
        /// The host tap, when one was opened.
        ifname: Option<String>,
        /// The step.
        step: Step,
        /// Why it failed.
        #[source]
        source: Box<QmpError>,
        /// What may remain in QEMU (empty when everything was undone).
        remaining: Vec<Leftover>,
        /// Why the rollback could not finish, if it could not.
        rollback: Option<Box<QmpError>>,
        /// The rollback, on a new connection, left alone something named
        /// like ours that it could not show is ours (another client may
        /// have added the same id in between).
        left_alone: bool,
    },
    /// QEMU already has a netdev or a device with this id: nothing was
    /// touched.
    #[error(
        "cannot hot-plug \"{id}\": QEMU already has {} with this id, so netdev_add/device_add would clash; nothing was changed",
        in_use(*netdev, *device)
    )]
    IdInUse {
        /// The id.
        id: String,
        /// A netdev has it.
        netdev: bool,
        /// A device has it.
        device: bool,
    },
    /// `del` found neither a device nor a netdev with this id.
    #[error("device_del \"{0}\": QEMU has no NIC with id \"{0}\" (no such device, no such netdev)")]
    NoSuchNic(String),
    /// `del` found a device with this id that is not a NIC: nothing was
    /// touched.
    #[error(
        "cannot hot-unplug \"{0}\": QEMU's device \"{0}\" is not a NIC (\"info network\" lists no NIC by that name), so vmtap does not device_del it; nothing was changed"
    )]
    NotANic(String),
    /// `del` found no device with this id, but a netdev with this id that
    /// a NIC of another id uses: nothing was touched.
    #[error(
        "cannot hot-unplug \"{id}\": there is no device \"{id}\", and netdev \"{id}\" is attached to NIC \"{nic}\"; remove that NIC instead; nothing was changed"
    )]
    NetdevInUse {
        /// The id.
        id: String,
        /// The NIC the netdev is attached to.
        nic: String,
    },
    /// The id is unusable as a QEMU id.
    #[error("invalid id \"{0}\": use letters, digits, '-', '.', '_', starting with a letter")]
    InvalidId(String),
}

fn in_use(netdev: bool, device: bool) -> &'static str {
    match (netdev, device) {
        (true, true) => "a netdev and a device",
        (true, false) => "a netdev",
        _ => "a device",
    }
}

fn with_tap(ifname: Option<&str>) -> String {
    ifname.map_or_else(String::new, |n| format!(" (host tap {n})"))
}

/// "; may remain in QEMU: ..." for a message, with runs of fd names
/// (`ID-0`..`ID-255`) shortened, and what that means for the host tap.
fn leftovers_note(
    remaining: &[Leftover],
    rollback: Option<&QmpError>,
    left_alone: bool,
    ifname: Option<&str>,
) -> String {
    let mut note = String::new();
    if let Some(e) = rollback {
        note.push_str(&format!("; rollback incomplete: {e}"));
    }
    if left_alone {
        note.push_str(
            "; on a new connection the rollback left alone what it could not show is this add's \
             (another client may have added the same id meanwhile)",
        );
    }
    if remaining.is_empty() {
        return note;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < remaining.len() {
        // A run of fd names PREFIX0, PREFIX1, ...
        let run_end = match &remaining[i] {
            Leftover::FdName(first) => {
                let mut j = i + 1;
                while let (Some(Leftover::FdName(a)), Some(Leftover::FdName(b))) =
                    (remaining.get(j - 1), remaining.get(j))
                {
                    if !consecutive(a, b) {
                        break;
                    }
                    j += 1;
                }
                if j - i >= 3 {
                    let Leftover::FdName(last) = &remaining[j - 1] else {
                        unreachable!()
                    };
                    parts.push(format!("fd names {first} to {last}"));
                    Some(j)
                } else {
                    None
                }
            }
            _ => None,
        };
        match run_end {
            Some(j) => i = j,
            None => {
                parts.push(remaining[i].to_string());
                i += 1;
            }
        }
    }
    note.push_str(&format!("; may remain in QEMU: {}", parts.join(", ")));
    if let Some(name) = ifname {
        note.push_str(&format!(
            "; the tap {name} stays on the host while QEMU holds its fds"
        ));
    }
    note
}
/// Whether `b` is `a` with its trailing number plus one (`x-3`, `x-4`).
fn consecutive(a: &str, b: &str) -> bool {
    let split = |s: &str| {
        let digits = s.len() - s.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (p, n) = s.split_at(digits);
        n.parse::<u64>().ok().map(|n| (p.to_string(), n))
    };
    matches!((split(a), split(b)), (Some((p, n)), Some((q, m))) if p == q && m == n + 1)
}

impl HotplugError {
    /// True for invalid input (nothing was touched).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Self::Open(e) => e.is_invalid_input(),
            Self::Link(e) => e.is_invalid_input(),
            Self::InvalidId(_) => true,
            Self::Helper(e) => e.is_invalid_input(),
            _ => false,
        }
    }

    /// What may remain in QEMU after this error (empty when nothing does).
    pub fn remaining(&self) -> &[Leftover] {
        match self {
            Self::Step { remaining, .. } => remaining,
            _ => &[],
        }
    }

    fn step(op: Op, id: &str, step: Step, source: QmpError) -> Self {
        Self::Step {
            op,
            id: id.to_string(),
            ifname: None,
            step,
            source: Box::new(source),
            remaining: Vec::new(),
            rollback: None,
            left_alone: false,
        }
    }
}

/// What to hot-plug.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HotplugOptions {
    /// QEMU id of the netdev and of the device.
    pub id: String,
    /// How to open the tap.
    pub open: OpenOptions,
    /// Host-side link set-up.
    pub link: LinkOptions,
    /// Device driver (default `virtio-net-pci`).
    pub driver: String,
    /// Guest MAC address.
    pub mac: Option<MacAddr>,
}

impl HotplugOptions {
    /// A NIC `id` on a new 1-queue tap, `virtio-net-pci`, no MAC given, no
    /// link set-up.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            open: OpenOptions::new(),
            link: LinkOptions::new(),
            driver: "virtio-net-pci".into(),
            mac: None,
        }
    }
    /// How to open the tap.
    pub fn open(mut self, open: OpenOptions) -> Self {
        self.open = open;
        self
    }
    /// Host-side link set-up.
    pub fn link(mut self, link: LinkOptions) -> Self {
        self.link = link;
        self
    }
    /// The device driver.
    pub fn driver(mut self, driver: impl Into<String>) -> Self {
        self.driver = driver.into();
        self
    }
    /// The guest MAC address (`None`: QEMU picks one).
    pub fn mac(mut self, mac: impl Into<Option<MacAddr>>) -> Self {
        self.mac = mac.into();
        self
    }
}

/// Checks a QEMU id ([`crate::args::validate_id`], the one rule of
/// `vmtap open --id` and hot-plug).
pub fn validate_id(id: &str) -> Result<(), HotplugError> {
    crate::args::validate_id(id).map_err(|e| HotplugError::InvalidId(e.0))
}

/// What QEMU has under an id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// A netdev (a non-NIC network client) with this id.
    pub netdev: bool,
    /// A device with this id (`qom-list /machine/peripheral`).
    pub device: bool,
    /// A NIC (a network client of type `nic`) with this id.
    pub nic: bool,
    /// The NIC that the netdev with this id is attached to, if any.
    pub attached_to: Option<String>,
}

impl Presence {
    /// Nothing has this id.
    pub fn is_free(&self) -> bool {
        !self.netdev && !self.device && !self.nic
    }
}

/// A network client in `info network` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetClient<'a> {
    /// Its name (a NIC's is its device id, a netdev's its id).
    pub name: &'a str,
    /// Its type (`nic`, `tap`, `hubport`...).
    pub ty: &'a str,
    /// For a client listed under a NIC (` \ NAME: ...`, the netdev
    /// attached to that NIC): the NIC's name.
    pub nic: Option<&'a str>,
}

/// The network clients in `info network` output: lines
/// `NAME: index=N,type=TYPE,...`, and under a NIC the netdev attached to it
/// as ` \ NAME: index=N,type=TYPE,...`.
pub fn network_clients(info: &str) -> impl Iterator<Item = NetClient<'_>> {
    let mut last_nic: Option<&str> = None;
    info.lines().filter_map(move |line| {
        let line = line.trim_start();
        let (under, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let parsed = line.split_once(": ").and_then(|(name, rest)| {
            let rest = rest.strip_prefix("index=")?;
            let ty = rest.split(',').find_map(|kv| kv.strip_prefix("type="))?;
            Some((name, ty.trim_end()))
        });
        let Some((name, ty)) = parsed else {
            if !under {
                last_nic = None;
            }
            return None;
        };
        if under {
            return Some(NetClient {
                name,
                ty,
                nic: last_nic,
            });
        }
        last_nic = (ty == "nic").then_some(name);
        Some(NetClient {
            name,
            ty,
            nic: None,
        })
    })
}

/// A property in `qom-list`.
#[derive(Deserialize)]
struct QomProperty {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// Whether QEMU has a device `id` (`qom-list /machine/peripheral`).
pub fn device_exists(qmp: &mut Qmp, id: &str) -> Result<bool, QmpError> {
    let list: Vec<QomProperty> =
        qmp.execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))?;
    Ok(list
        .iter()
        .any(|p| p.name == id && p.ty.starts_with("child<")))
}

/// What QEMU has under `id` (QEMU 7.2 has no `query-netdev`: this reads
/// `info network` and `qom-list /machine/peripheral`).
pub fn presence(qmp: &mut Qmp, id: &str) -> Result<Presence, QmpError> {
    let text: String = qmp.execute(
        "human-monitor-command",
        Some(json!({ "command-line": "info network" })),
    )?;
    let mut p = Presence::default();
    for c in network_clients(&text).filter(|c| c.name == id) {
        if c.ty == "nic" {
            p.nic = true;
        } else {
            p.netdev = true;
            if let Some(nic) = c.nic {
                p.attached_to = Some(nic.to_string());
            }
        }
    }
    p.device = device_exists(qmp, id)?;
    Ok(p)
}

/// `open` with QEMU (the process at the other end of the QMP socket) as
/// the owner recorded on the tap, unless the caller chose one; the tag the
/// caller gave is kept. Without a pid (the kernel always has one for a
/// Unix socket) no owner is recorded.
fn with_qemu_as_owner(open: &OpenOptions, qmp: &Qmp) -> OpenOptions {
    let mut own = open.ownership.clone().unwrap_or_default();
    if own.owner.is_none() {
        let owner = match qmp.peer_pid() {
            Ok(Some(pid)) => vmtap::Owner::of_pid(pid).map_err(|e| e.to_string()),
            Ok(None) => Err("it runs in another pid namespace".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match owner {
            Ok(owner) => own.owner = Some(owner),
            Err(e) => log::warn!("cannot tell QEMU's pid to record it as the tap's owner: {e}"),
        }
    }
    open.clone().ownership(own)
}

/// Hot-adds a NIC: connects, checks that `opts.id` is free in QEMU, opens
/// the tap, sets up its host side, then plugs it (see [`plug`]). Returns
/// the host interface name. On failure our fds are closed, link settings
/// made on an existing tap ([`OpenOptions::attach_existing`]) are put
/// back, and nothing is left in QEMU unless [`HotplugError::remaining`]
/// says so (then QEMU's copies of the fds keep the tap, which the error
/// names). The tap is opened in `tun` (`Tun::system()` for the real
/// kernel).
pub fn add(tun: &Tun, mon: &Monitor, opts: &HotplugOptions) -> Result<String, HotplugError> {
    validate_id(&opts.id)?;
    opts.open.validate()?;
    // The bridge (and MTU) are checked before a tap exists.
    opts.link.check()?;
    let id = opts.id.as_str();
    let mut qmp = mon
        .connect()
        .map_err(|e| HotplugError::step(Op::Add, id, Step::Connect, e))?;
    ensure_free(&mut qmp, id)?;
    let tap = tun.open(&with_qemu_as_owner(&opts.open, &qmp))?;
    // A failed step undoes the ones before it inside configure(). A mode's
    // record names this NIC, so that `del` finds it.
    let mut link_opts = opts.link.clone();
    if link_opts.mode.is_some() {
        link_opts = link_opts.owner(owner(mon, id));
    }
    let changes = link::configure(tap.name(), &link_opts)?;
    match plug_on(mon, qmp, id, &tap, &opts.driver, opts.mac) {
        Ok(()) => {
            changes.keep();
            // QEMU holds its own copies now; ours close when `tap` drops.
            Ok(tap.name().to_string())
        }
        Err(e) => {
            // A new tap goes with its fds, settings and all (or stays with
            // QEMU's copies, as the error says); a tap that was attached
            // to outlives this, so its settings are put back.
            // Changes that outlive a tap (rules, an OVS port) are undone
            // unless QEMU may still hold the tap.
            if opts.open.attach_existing || e.remaining().is_empty() {
                if let Err(u) = changes.undo() {
                    log::warn!("{u}");
                }
            } else {
                changes.keep();
            }
            Err(e)
        }
    }
}

/// Hot-adds a bridged NIC whose tap comes from a bridge helper (for a
/// user without `CAP_NET_ADMIN`; see [`open_with_helper`]): connects,
/// checks that `id` is free in QEMU, runs the helper, then plugs the tap
/// (see [`plug`]). The helper set up the tap's host side, which goes with
/// the tap: nothing is recorded. Returns the host interface name. On
/// failure our fds are closed, and nothing is left in QEMU unless
/// [`HotplugError::remaining`] says so.
pub fn add_with_helper(
    tun: &Tun,
    mon: &Monitor,
    id: &str,
    helper: &HelperOptions,
    driver: &str,
    mac: Option<MacAddr>,
) -> Result<String, HotplugError> {
    validate_id(id)?;
    helper.validate()?;
    let mut qmp = mon
        .connect()
        .map_err(|e| HotplugError::step(Op::Add, id, Step::Connect, e))?;
    ensure_free(&mut qmp, id)?;
    let tap = open_with_helper(tun, helper)?;
    plug_on(mon, qmp, id, &tap, driver, mac)?;
    // QEMU holds its own copies now; ours close when `tap` drops.
    Ok(tap.name().to_string())
}

/// The record owner of NIC `id` of this QEMU.
fn owner(mon: &Monitor, id: &str) -> link::Owner {
    link::Owner {
        qmp: std::fs::canonicalize(&mon.path).unwrap_or_else(|_| mon.path.clone()),
        id: id.to_string(),
    }
}

/// The QMP part of [`add`], for a tap opened already: connect, check that
/// `id` is free, `getfd` for each fd (`ID-0..`, `ID-vhost-0..`),
/// `netdev_add`, `device_add`, all before [`Monitor::timeout`]. On failure
/// the steps done are undone (see the module documentation).
pub fn plug(
    mon: &Monitor,
    id: &str,
    tap: &Tap,
    driver: &str,
    mac: Option<MacAddr>,
) -> Result<(), HotplugError> {
    validate_id(id)?;
    let mut qmp = mon
        .connect()
        .map_err(|e| HotplugError::step(Op::Add, id, Step::Connect, e))?;
    ensure_free(&mut qmp, id)?;
    plug_on(mon, qmp, id, tap, driver, mac)
}

fn ensure_free(qmp: &mut Qmp, id: &str) -> Result<(), HotplugError> {
    let p = presence(qmp, id).map_err(|e| HotplugError::step(Op::Add, id, Step::CheckFree, e))?;
    if !p.is_free() {
        return Err(HotplugError::IdInUse {
            id: id.to_string(),
            netdev: p.netdev,
            device: p.device || p.nic,
        });
    }
    Ok(())
}

/// What an add may have created in QEMU so far.
#[derive(Debug, Default)]
struct Undo {
    /// `device_add` was sent and not refused, without an answer.
    device: bool,
    /// `netdev_add` was sent and not refused.
    netdev: bool,
    /// Fd names sent with `getfd` and not consumed by a `netdev_add` that
    /// succeeded.
    names: Vec<String>,
}

impl Undo {
    fn remaining(&self, id: &str) -> Vec<Leftover> {
        let mut r = Vec::new();
        if self.device {
            r.push(Leftover::Device(id.to_string()));
        }
        if self.netdev {
            r.push(Leftover::Netdev(id.to_string()));
        }
        r.extend(self.names.iter().cloned().map(Leftover::FdName));
        r
    }
}

/// How a rollback ended.
enum Undone {
    /// Nothing of ours is left.
    Clean,
    /// `device_add` was executed after all: the NIC is plugged.
    Plugged,
    /// On a new connection, something named like ours could not be shown
    /// to be ours, and was left alone (still listed in the [`Undo`]).
    LeftAlone,
}

fn plug_on(
    mon: &Monitor,
    mut qmp: Qmp,
    id: &str,
    tap: &Tap,
    driver: &str,
    mac: Option<MacAddr>,
) -> Result<(), HotplugError> {
    let queues = tap.queues().len();
    let ifname = tap.name();
    let mut undo = Undo::default();
    let failed = |step: Step, cause: QmpError| Failed {
        id,
        ifname,
        step,
        cause,
    };

    let fds = tap
        .queues()
        .iter()
        .map(|q| q.as_fd())
        .enumerate()
        .map(|(i, fd)| (format!("{id}-{i}"), fd))
        .chain(
            tap.vhost_fds()
                .iter()
                .enumerate()
                .map(|(i, fd)| (format!("{id}-vhost-{i}"), fd.as_fd())),
        );
    for (name, fd) in fds {
        undo.names.push(name.clone());
        let args = Some(json!({ "fdname": name }));
        if let Err(e) = qmp.execute_with_fds::<IgnoredAny>("getfd", args, &[fd]) {
            return rollback(mon, qmp, failed(Step::Getfd(name.clone()), e), undo);
        }
    }
    let (tap_names, vhost_names) = undo.names.split_at(queues);
    let mut netdev = json!({ "type": "tap", "id": id });
    if queues == 1 {
        netdev["fd"] = json!(tap_names[0]);
    } else {
        netdev["fds"] = json!(tap_names.join(":"));
    }
    if !vhost_names.is_empty() {
        netdev["vhost"] = json!(true);
        if queues == 1 {
            netdev["vhostfd"] = json!(vhost_names[0]);
        } else {
            netdev["vhostfds"] = json!(vhost_names.join(":"));
        }
    }
    undo.netdev = true;
    if let Err(e) = qmp.execute::<IgnoredAny>("netdev_add", Some(netdev)) {
        // Refused: there is no netdev of ours (and the id was free).
        undo.netdev = !e.is_refusal();
        return rollback(mon, qmp, failed(Step::NetdevAdd, e), undo);
    }
    // The netdev consumed every name.
    undo.names.clear();

    let mut device = json!({ "driver": driver, "netdev": id, "id": id });
    if queues > 1 {
        device["mq"] = json!(true);
        device["vectors"] = json!(crate::args::vectors(queues));
    }
    if let Some(mac) = mac {
        device["mac"] = json!(mac.to_string());
    }
    undo.device = true;
    if let Err(e) = qmp.execute::<IgnoredAny>("device_add", Some(device)) {
        undo.device = !e.is_refusal();
        return rollback(mon, qmp, failed(Step::DeviceAdd, e), undo);
    }
    Ok(())
}

/// The step of an add that failed.
struct Failed<'a> {
    id: &'a str,
    ifname: &'a str,
    step: Step,
    cause: QmpError,
}

impl Failed<'_> {
    fn error(self, undo: &Undo, rollback: Option<QmpError>, left_alone: bool) -> HotplugError {
        HotplugError::Step {
            op: Op::Add,
            id: self.id.to_string(),
            ifname: Some(self.ifname.to_string()),
            step: self.step,
            source: Box::new(self.cause),
            remaining: undo.remaining(self.id),
            rollback: rollback.map(Box::new),
            left_alone,
        }
    }
}

/// Undoes a failed add within [`Monitor::rollback_timeout`]: on the same
/// connection while it is in step (after a refusal or a timeout: QEMU runs
/// its commands in order and serves nobody else meanwhile), otherwise (or
/// once it falls out of step) on a new connection, after closing the old
/// one, with the care a new connection needs (see [`undo_on`]).
fn rollback(
    mon: &Monitor,
    qmp: Qmp,
    failed: Failed<'_>,
    mut undo: Undo,
) -> Result<(), HotplugError> {
    let id = failed.id;
    let deadline = Deadline::after(mon.rollback_timeout);
    log::debug!("rollback of {id} after {}: {}", failed.step, failed.cause);
    // Close a connection out of step before connecting again: QEMU serves
    // one client at a time, and drops what it had queued but not started.
    let mut same = qmp.is_in_step().then_some(qmp);
    let mut fresh = false;
    loop {
        let mut c = match same.take() {
            Some(mut c) => {
                c.set_deadline(deadline);
                c
            }
            None => {
                fresh = true;
                match mon.connect_until(deadline) {
                    Ok(c) => c,
                    Err(e) => return Err(failed.error(&undo, Some(e), false)),
                }
            }
        };
        match undo_on(&mut c, id, &mut undo, fresh) {
            Ok(Undone::Clean) => return Err(failed.error(&undo, None, false)),
            Ok(Undone::LeftAlone) => return Err(failed.error(&undo, None, true)),
            Ok(Undone::Plugged) => {
                log::warn!(
                    "hot-plug of \"{id}\": {} had no answer in time, but QEMU did it: the NIC is plugged",
                    failed.step
                );
                return Ok(());
            }
            Err(e) if fresh || c.is_in_step() => {
                return Err(failed.error(&undo, Some(e), false));
            }
            Err(e) => log::debug!("rollback of {id}: {e}; going on on a new connection"),
        }
    }
}

/// Undoes what `undo` lists, on `qmp`, forgetting each thing once undone
/// (so a retry on another connection does only the rest).
///
/// On the add's own connection (`fresh` false) nobody was served since the
/// id was found free, so whatever has the id is this add's: a device means
/// the NIC is plugged, and the netdev is deleted. On a new connection
/// another client may have added the same id in between: a device is
/// never taken for ours (nor deleted), a netdev is deleted only when no NIC
/// is attached to it, and what is left alone stays listed.
fn undo_on(qmp: &mut Qmp, id: &str, undo: &mut Undo, fresh: bool) -> Result<Undone, QmpError> {
    if !fresh {
        if undo.device {
            if device_exists(qmp, id)? {
                return Ok(Undone::Plugged);
            }
            undo.device = false;
        }
        if undo.netdev {
            netdev_del_if_any(qmp, id)?;
            undo.netdev = false;
        }
    } else if undo.device || undo.netdev {
        let p = presence(qmp, id)?;
        if undo.device && !p.device && !p.nic {
            undo.device = false;
        }
        if undo.netdev && !p.netdev {
            undo.netdev = false;
        }
        if undo.netdev && p.attached_to.is_none() {
            netdev_del_if_any(qmp, id)?;
            undo.netdev = false;
        }
    }
    while let Some(name) = undo.names.last() {
        match qmp.execute::<IgnoredAny>("closefd", Some(json!({ "fdname": name }))) {
            Ok(_) => log::debug!("rollback: closefd {name}"),
            // A name QEMU never got, or that a netdev_add consumed.
            Err(e) if e.is_refusal() => log::debug!("rollback: closefd {name}: {e}"),
            Err(e) => return Err(e),
        }
        undo.names.pop();
    }
    Ok(if undo.device || undo.netdev {
        Undone::LeftAlone
    } else {
        Undone::Clean
    })
}

/// `netdev_del id`; a missing one is fine.
fn netdev_del_if_any(qmp: &mut Qmp, id: &str) -> Result<(), QmpError> {
    match qmp.execute::<IgnoredAny>("netdev_del", Some(json!({ "id": id }))) {
        Ok(_) => log::debug!("rollback: netdev_del {id}"),
        Err(e) if e.class() == Some("DeviceNotFound") => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Whether QEMU refused `device_del` because an unplug is under way
/// (the guest has not released the device yet).
fn unplug_pending(e: &QmpError) -> bool {
    e.desc().is_some_and(|d| {
        d.contains("already in the process of unplug") || d.contains("guest is busy")
    })
}

/// Hot-removes the NIC `id` within [`Monitor::timeout`]: checks that `id`
/// is a NIC, `device_del`, waits until the device is gone
/// (`DEVICE_DELETED`, or it no longer being listed), then `netdev_del`.
///
/// Idempotent: a device already being unplugged is waited for, and a
/// device already gone with its netdev left has the netdev removed, so a
/// `del` that timed out waiting for the guest can be run again to finish.
/// Neither a device nor a netdev by that name is
/// [`HotplugError::NoSuchNic`]; a device that is not a NIC is
/// [`HotplugError::NotANic`] (nothing touched).
pub fn del(mon: &Monitor, id: &str) -> Result<(), HotplugError> {
    del_in(mon, id, None)
}

/// [`del`], with the NIC records in `state_dir` (default:
/// [`link::StateDir::from_env`]).
pub fn del_in(
    mon: &Monitor,
    id: &str,
    state_dir: Option<&link::StateDir>,
) -> Result<(), HotplugError> {
    validate_id(id)?;
    let fail = |step: Step, e: QmpError, remaining: Vec<Leftover>| HotplugError::Step {
        op: Op::Del,
        id: id.to_string(),
        ifname: None,
        step,
        source: Box::new(e),
        remaining,
        rollback: None,
        left_alone: false,
    };
    let both = || vec![Leftover::Device(id.into()), Leftover::Netdev(id.into())];
    let mut qmp = mon
        .connect()
        .map_err(|e| fail(Step::Connect, e, Vec::new()))?;
    qmp.keep_events(&[DEVICE_DELETED]);
    let p = presence(&mut qmp, id).map_err(|e| fail(Step::CheckNic, e, Vec::new()))?;
    if p.device {
        if !p.nic {
            return Err(HotplugError::NotANic(id.to_string()));
        }
        match qmp.execute::<IgnoredAny>("device_del", Some(json!({ "id": id }))) {
            Ok(_) => {}
            Err(e) if unplug_pending(&e) => log::debug!("device_del {id}: {e}; waiting"),
            Err(e) => return Err(fail(Step::DeviceDel, e, both())),
        }
        wait_gone(&mut qmp, id).map_err(|e| fail(Step::WaitRelease, e, both()))?;
    } else if let Some(nic) = p.attached_to {
        return Err(HotplugError::NetdevInUse {
            id: id.to_string(),
            nic,
        });
    } else if !p.netdev {
        // Gone from QEMU already: a del that failed at the host clean-up
        // finishes it when run again.
        if host_cleanup(mon, id, state_dir)? {
            return Ok(());
        }
        return Err(HotplugError::NoSuchNic(id.to_string()));
    }
    match qmp.execute::<IgnoredAny>("netdev_del", Some(json!({ "id": id }))) {
        Ok(_) => {}
        // The device used a netdev of another name.
        Err(e) if e.class() == Some("DeviceNotFound") && p.device => {}
        Err(e) => return Err(fail(Step::NetdevDel, e, vec![Leftover::Netdev(id.into())])),
    }
    host_cleanup(mon, id, state_dir).map(drop)
}

/// Undoes what `add` set up on the host for NIC `id` in a NIC mode (on
/// record): whether there was a record.
fn host_cleanup(
    mon: &Monitor,
    id: &str,
    state_dir: Option<&link::StateDir>,
) -> Result<bool, HotplugError> {
    let dir = state_dir.cloned().unwrap_or_else(link::StateDir::from_env);
    match link::ifdown_owned(&owner(mon, id), &dir) {
        Ok(undone) => {
            for ifname in &undone {
                log::debug!("undid the host set-up of {ifname}");
            }
            Ok(!undone.is_empty())
        }
        Err(source) => Err(HotplugError::HostCleanup {
            id: id.to_string(),
            source: Box::new(source),
        }),
    }
}

/// `data` of `DEVICE_DELETED`.
#[derive(Deserialize)]
struct DeviceDeleted {
    device: Option<String>,
}

/// Waits until device `id` is gone: its `DEVICE_DELETED` event, or not
/// listed any more (the event may have gone to an earlier connection).
fn wait_gone(qmp: &mut Qmp, id: &str) -> Result<(), QmpError> {
    let ours = |e: &Event| e.data::<DeviceDeleted>().and_then(|d| d.device).as_deref() == Some(id);
    loop {
        let next_check = later(Instant::now(), UNPLUG_POLL);
        if qmp
            .wait_event_until(DEVICE_DELETED, ours, next_check)?
            .is_some()
        {
            return Ok(());
        }
        if !device_exists(qmp, id)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
