//! NIC hot-plug into a running QEMU over QMP, as Ganeti does it, with
//! rollback: `getfd` for each fd (named `ID-0..`, `ID-vhost-0..`), then
//! `netdev_add`, then `device_add`.
//!
//! Before the first `getfd`, the id is checked to be free in QEMU (no
//! netdev, no device by that name), so a rollback only ever deletes what
//! this add created. If QEMU refuses a step, the steps before it are undone
//! on the same connection. If a step times out, or QEMU hangs up or sends
//! garbage, the connection is out of step: it is closed, and the state is
//! inspected and undone on a fresh connection, within its own deadline
//! ([`Monitor::rollback_timeout`]). If `device_add` turns out to have been
//! executed after all, the NIC is plugged and the add succeeds. If the
//! rollback cannot finish, the error names what may remain in QEMU
//! ([`HotplugError::remaining`]). Our fds are closed in every case, so no
//! tap stays on the host.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::link::{self, LinkError, LinkOptions, MacAddr};
use crate::open::{OpenOptions, open_tap_with};
use crate::qmp::{Limits, Qmp, QmpError};
use crate::syscalls::{Kernel, Syscalls};
use crate::tap::Tap;

/// The shortest rollback deadline [`Monitor::new`] sets: undoing needs a
/// connection and a few commands, even when the add had a tiny timeout.
pub const MIN_ROLLBACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How often `del` checks whether the device is gone, besides watching for
/// `DEVICE_DELETED` (which may have been sent before it connected).
const UNPLUG_POLL: Duration = Duration::from_millis(150);

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
        self.connect_until(Instant::now() + self.timeout)
    }

    fn connect_until(&self, deadline: Instant) -> Result<Qmp, QmpError> {
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

/// Errors of hot-plug.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Opening the tap failed.
    #[error(transparent)]
    Open(#[from] crate::Error),
    /// Host-side link set-up failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A QMP step failed. For an add, the steps before it were undone,
    /// except what `remaining` lists.
    #[error("{op} of \"{id}\" failed at {step}: {source}{}", leftovers_note(remaining, rollback.as_deref()))]
    Step {
        /// Add or del.
        op: Op,
        /// The device id.
        id: String,
        /// The step (`getfd ID-1`, `netdev_add`, `device_add`...).
        step: String,
        /// Why it failed.
        #[source]
        source: Box<QmpError>,
        /// What may remain in QEMU (empty when everything was undone).
        remaining: Vec<Leftover>,
        /// Why the rollback could not finish, if it could not.
        rollback: Option<Box<QmpError>>,
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

/// "; may remain in QEMU: ..." for a message, with runs of fd names
/// (`ID-0`..`ID-255`) shortened.
fn leftovers_note(remaining: &[Leftover], rollback: Option<&QmpError>) -> String {
    let mut note = String::new();
    if let Some(e) = rollback {
        note.push_str(&format!("; rollback incomplete: {e}"));
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

    fn step(op: Op, id: &str, step: impl Into<String>, source: QmpError) -> Self {
        Self::Step {
            op,
            id: id.to_string(),
            step: step.into(),
            source: Box::new(source),
            remaining: Vec::new(),
            rollback: None,
        }
    }
}

/// What to hot-plug.
#[derive(Debug, Clone)]
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

/// Checks a QEMU id (QEMU wants a letter first, then letters, digits, `-._`).
pub fn validate_id(id: &str) -> Result<(), HotplugError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(HotplugError::InvalidId(id.to_string()))
    }
}

/// What QEMU has under an id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// A netdev (a non-NIC network client) with this id.
    pub netdev: bool,
    /// A device with this id (or a NIC client by that name).
    pub device: bool,
}

/// The network clients in `info network` output, as (name, type): lines
/// `NAME: index=N,type=TYPE,...`, possibly indented with ` \ ` (a netdev
/// under its NIC).
pub fn network_clients(info: &str) -> impl Iterator<Item = (&str, &str)> {
    info.lines().filter_map(|line| {
        let line = line.trim_start();
        let line = line.strip_prefix('\\').map_or(line, str::trim_start);
        let (name, rest) = line.split_once(": ")?;
        let rest = rest.strip_prefix("index=")?;
        let ty = rest.split(',').find_map(|kv| kv.strip_prefix("type="))?;
        Some((name, ty.trim_end()))
    })
}

/// Whether QEMU has a device `id` (`qom-list /machine/peripheral`).
pub fn device_exists(qmp: &mut Qmp, id: &str) -> Result<bool, QmpError> {
    let command = "qom-list";
    let list = qmp.execute(command, Some(json!({ "path": "/machine/peripheral" })))?;
    let entries = list.as_array().ok_or_else(|| QmpError::Unexpected {
        command: command.into(),
        reply: short(&list),
    })?;
    Ok(entries.iter().any(|p| {
        p["name"].as_str() == Some(id)
            && p["type"].as_str().is_some_and(|t| t.starts_with("child<"))
    }))
}

/// Whether QEMU has a netdev or a device named `id` (QEMU 7.2 has no
/// `query-netdev`: this reads `info network` and `qom-list
/// /machine/peripheral`).
pub fn presence(qmp: &mut Qmp, id: &str) -> Result<Presence, QmpError> {
    let command = "human-monitor-command";
    let info = qmp.execute(command, Some(json!({ "command-line": "info network" })))?;
    let text = info.as_str().ok_or_else(|| QmpError::Unexpected {
        command: command.into(),
        reply: short(&info),
    })?;
    let mut p = Presence::default();
    for (_, ty) in network_clients(text).filter(|(name, _)| *name == id) {
        if ty == "nic" {
            p.device = true;
        } else {
            p.netdev = true;
        }
    }
    p.device |= device_exists(qmp, id)?;
    Ok(p)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Hot-adds a NIC: connects, checks that `opts.id` is free in QEMU, opens
/// the tap, sets up its host side, then plugs it (see [`plug`]). Returns
/// the host interface name. On failure no tap is left on the host, and
/// nothing in QEMU unless [`HotplugError::remaining`] says so.
pub fn add(mon: &Monitor, opts: &HotplugOptions) -> Result<String, HotplugError> {
    add_with(Arc::new(Kernel), mon, opts)
}

/// [`add`] over any [`Syscalls`].
pub fn add_with(
    sys: Arc<dyn Syscalls>,
    mon: &Monitor,
    opts: &HotplugOptions,
) -> Result<String, HotplugError> {
    validate_id(&opts.id)?;
    opts.open.validate()?;
    // The bridge (and MTU) are checked before a tap exists.
    opts.link.check()?;
    let id = opts.id.as_str();
    let mut qmp = mon
        .connect()
        .map_err(|e| HotplugError::step(Op::Add, id, "connect", e))?;
    ensure_free(&mut qmp, id)?;
    let tap = open_tap_with(sys, &opts.open)?;
    // A new tap: on failure it goes with its fds, settings and all.
    link::configure(tap.name(), &opts.link)?.keep();
    plug_on(mon, qmp, id, &tap, &opts.driver, opts.mac)?;
    // QEMU holds its own copies now; ours close when `tap` drops.
    Ok(tap.name().to_string())
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
        .map_err(|e| HotplugError::step(Op::Add, id, "connect", e))?;
    ensure_free(&mut qmp, id)?;
    plug_on(mon, qmp, id, tap, driver, mac)
}

fn ensure_free(qmp: &mut Qmp, id: &str) -> Result<(), HotplugError> {
    let p = presence(qmp, id)
        .map_err(|e| HotplugError::step(Op::Add, id, "checking that the id is free", e))?;
    if p.netdev || p.device {
        return Err(HotplugError::IdInUse {
            id: id.to_string(),
            netdev: p.netdev,
            device: p.device,
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
    let mut undo = Undo::default();

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
        if let Err(e) = qmp.execute_with_fds("getfd", Some(json!({ "fdname": name })), &[fd]) {
            return rollback(mon, qmp, id, format!("getfd {name}"), e, undo);
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
    if let Err(e) = qmp.execute("netdev_add", Some(netdev)) {
        // Refused: there is no netdev of ours (and the id was free).
        undo.netdev = !e.is_refusal();
        return rollback(mon, qmp, id, "netdev_add".into(), e, undo);
    }
    // The netdev consumed every name.
    undo.names.clear();

    let mut device = json!({ "driver": driver, "netdev": id, "id": id });
    if queues > 1 {
        device["mq"] = json!(true);
        device["vectors"] = json!(crate::qemu::vectors(queues));
    }
    if let Some(mac) = mac {
        device["mac"] = json!(mac.to_string());
    }
    undo.device = true;
    if let Err(e) = qmp.execute("device_add", Some(device)) {
        undo.device = !e.is_refusal();
        return rollback(mon, qmp, id, "device_add".into(), e, undo);
    }
    Ok(())
}

/// Undoes a failed add within [`Monitor::rollback_timeout`]: on the same
/// connection after a refusal (it is in step), otherwise (or if that
/// fails) on a fresh connection, after closing the old one.
fn rollback(
    mon: &Monitor,
    mut qmp: Qmp,
    id: &str,
    step: String,
    cause: QmpError,
    mut undo: Undo,
) -> Result<(), HotplugError> {
    let deadline = Instant::now() + mon.rollback_timeout;
    log::debug!("rollback of {id} after {step}: {cause}");
    let mut fresh = true;
    if cause.is_refusal() {
        qmp.set_deadline(deadline);
        match undo_on(&mut qmp, id, &mut undo) {
            Ok(_) => fresh = false,
            Err(e) if e.is_refusal() => {
                return Err(gave_up(id, step, cause, undo, e));
            }
            Err(e) => log::debug!("rollback of {id}: {e}; retrying on a new connection"),
        }
    }
    // Close the old connection first: QEMU serves one client at a time,
    // and drops what it had queued but not started.
    drop(qmp);
    if !fresh {
        return Err(HotplugError::step(Op::Add, id, step, cause));
    }
    let result = mon
        .connect_until(deadline)
        .and_then(|mut c| undo_on(&mut c, id, &mut undo));
    match result {
        Ok(Undone::Clean) => Err(HotplugError::step(Op::Add, id, step, cause)),
        Ok(Undone::Plugged) => {
            log::warn!(
                "hot-plug of \"{id}\": {step} had no answer in time, but QEMU did it: the NIC is plugged"
            );
            Ok(())
        }
        Err(e) => Err(gave_up(id, step, cause, undo, e)),
    }
}

fn gave_up(id: &str, step: String, cause: QmpError, undo: Undo, e: QmpError) -> HotplugError {
    HotplugError::Step {
        op: Op::Add,
        id: id.to_string(),
        step,
        source: Box::new(cause),
        remaining: undo.remaining(id),
        rollback: Some(Box::new(e)),
    }
}

/// Undoes what `undo` lists, on `qmp`, forgetting each thing once undone
/// (so a retry on another connection does only the rest).
fn undo_on(qmp: &mut Qmp, id: &str, undo: &mut Undo) -> Result<Undone, QmpError> {
    if undo.device {
        // The id was free before: a device by this name is ours.
        if device_exists(qmp, id)? {
            return Ok(Undone::Plugged);
        }
        undo.device = false;
    }
    if undo.netdev {
        match qmp.execute("netdev_del", Some(json!({ "id": id }))) {
            Ok(_) => log::debug!("rollback: netdev_del {id}"),
            Err(e) if e.class() == Some("DeviceNotFound") => {}
            Err(e) => return Err(e),
        }
        undo.netdev = false;
    }
    while let Some(name) = undo.names.last() {
        match qmp.execute("closefd", Some(json!({ "fdname": name }))) {
            Ok(_) => log::debug!("rollback: closefd {name}"),
            // A name QEMU never got, or that a netdev_add consumed.
            Err(e) if e.is_refusal() => log::debug!("rollback: closefd {name}: {e}"),
            Err(e) => return Err(e),
        }
        undo.names.pop();
    }
    Ok(Undone::Clean)
}

/// Hot-removes the NIC `id` within [`Monitor::timeout`]: `device_del`,
/// wait until the device is gone (`DEVICE_DELETED`, or it no longer being
/// listed), then `netdev_del`.
///
/// Idempotent: a device already gone (`DeviceNotFound`) or already being
/// unplugged is fine, so a `del` that timed out waiting for the guest can
/// be run again to finish. Neither a device nor a netdev by that name is
/// [`HotplugError::NoSuchNic`].
pub fn del(mon: &Monitor, id: &str) -> Result<(), HotplugError> {
    validate_id(id)?;
    let fail = |step: &str, e: QmpError, remaining: Vec<Leftover>| HotplugError::Step {
        op: Op::Del,
        id: id.to_string(),
        step: step.to_string(),
        source: Box::new(e),
        remaining,
        rollback: None,
    };
    let mut qmp = mon.connect().map_err(|e| fail("connect", e, Vec::new()))?;
    let had_device = match qmp.execute("device_del", Some(json!({ "id": id }))) {
        Ok(_) => true,
        Err(e) if e.class() == Some("DeviceNotFound") => false,
        Err(QmpError::Command { desc, .. })
            if desc.contains("already in the process of unplug") =>
        {
            true
        }
        Err(e) => {
            let left = if e.is_refusal() {
                Vec::new()
            } else {
                vec![Leftover::Device(id.into()), Leftover::Netdev(id.into())]
            };
            return Err(fail("device_del", e, left));
        }
    };
    if had_device {
        wait_gone(&mut qmp, id).map_err(|e| {
            fail(
                "waiting for the guest to release the device (DEVICE_DELETED); run del again to finish",
                e,
                vec![Leftover::Device(id.into()), Leftover::Netdev(id.into())],
            )
        })?;
    }
    match qmp.execute("netdev_del", Some(json!({ "id": id }))) {
        Ok(_) => Ok(()),
        Err(e) if e.class() == Some("DeviceNotFound") => {
            if had_device {
                Ok(())
            } else {
                Err(HotplugError::NoSuchNic(id.to_string()))
            }
        }
        Err(e) => Err(fail("netdev_del", e, vec![Leftover::Netdev(id.into())])),
    }
}

/// Waits until device `id` is gone: its `DEVICE_DELETED` event, or not
/// listed any more (the event may have gone to an earlier connection).
fn wait_gone(qmp: &mut Qmp, id: &str) -> Result<(), QmpError> {
    loop {
        let next_check = Instant::now() + UNPLUG_POLL;
        let ours = |e: &Value| e["data"]["device"].as_str() == Some(id);
        if qmp
            .wait_event_until("DEVICE_DELETED", ours, next_check)?
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
