//! NIC hot-plug into a running QEMU over QMP, as Ganeti does it, with
//! rollback: `getfd` for each fd (named `ID-0..`, `ID-vhost-0..`), then
//! `netdev_add`, then `device_add`. If a step fails, the steps before it are
//! undone inside QEMU (`netdev_del`, `closefd`) and our fds are closed, so
//! neither side keeps a leftover fd and no tap stays on the host.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::link::{self, LinkError, LinkOptions, MacAddr};
use crate::open::{OpenOptions, open_tap_with};
use crate::qmp::{Qmp, QmpError};
use crate::syscalls::{Kernel, Syscalls};
use crate::tap::Tap;

/// Errors of hot-plug.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Opening the tap failed.
    #[error(transparent)]
    Open(#[from] crate::Error),
    /// Host-side link set-up failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A QMP step failed (after rollback of the steps before it).
    #[error("hot-plug of \"{id}\" failed at {step}: {source}")]
    Step {
        /// The device id.
        id: String,
        /// The step (`getfd ID-1`, `netdev_add`, `device_add`...).
        step: String,
        /// QEMU's reason.
        #[source]
        source: QmpError,
    },
    /// The id is unusable as a QEMU id.
    #[error("invalid id \"{0}\": use letters, digits, '-', '.', '_', starting with a letter")]
    InvalidId(String),
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

/// Hot-adds a NIC: opens the tap, sets up its host side, then [`plug`]s
/// it. Returns the host interface name. On any failure nothing is left in
/// QEMU (as far as the connection allows) and no tap on the host.
pub fn add(qmp: &mut Qmp, opts: &HotplugOptions) -> Result<String, HotplugError> {
    add_with(Arc::new(Kernel), qmp, opts)
}

/// [`add`] over any [`Syscalls`].
pub fn add_with(
    sys: Arc<dyn Syscalls>,
    qmp: &mut Qmp,
    opts: &HotplugOptions,
) -> Result<String, HotplugError> {
    validate_id(&opts.id)?;
    opts.open.validate()?;
    let tap = open_tap_with(sys, &opts.open)?;
    link::configure(tap.name(), &opts.link)?.keep();
    plug(qmp, &opts.id, &tap, &opts.driver, opts.mac)?;
    // QEMU holds its own copies now; ours close when `tap` drops.
    Ok(tap.name().to_string())
}

/// The QMP part of [`add`], for a tap opened already: `getfd` for each fd
/// (`ID-0..`, `ID-vhost-0..`), `netdev_add`, `device_add`; on failure the
/// earlier steps are undone in QEMU (`closefd`, `netdev_del`).
pub fn plug(
    qmp: &mut Qmp,
    id: &str,
    tap: &Tap,
    driver: &str,
    mac: Option<MacAddr>,
) -> Result<(), HotplugError> {
    let queues = tap.queues().len();
    let step_err = |step: String, source| HotplugError::Step {
        id: id.to_string(),
        step,
        source,
    };

    // getfd for every fd; on failure close the names already given.
    let mut given: Vec<String> = Vec::new();
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
        if let Err(e) = qmp.execute_with_fds("getfd", Some(json!({ "fdname": name })), &[fd]) {
            close_fds(qmp, &given);
            return Err(step_err(format!("getfd {name}"), e));
        }
        given.push(name);
    }
    let (tap_names, vhost_names) = given.split_at(queues);

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
    if let Err(e) = qmp.execute("netdev_add", Some(netdev)) {
        close_fds(qmp, &given);
        return Err(step_err("netdev_add".into(), e));
    }

    let mut device = json!({ "driver": driver, "netdev": id, "id": id });
    if queues > 1 {
        device["mq"] = json!(true);
        device["vectors"] = json!(crate::qemu::vectors(queues));
    }
    if let Some(mac) = mac {
        device["mac"] = json!(mac.to_string());
    }
    if let Err(e) = qmp.execute("device_add", Some(device)) {
        if let Err(undo) = qmp.execute("netdev_del", Some(json!({ "id": id }))) {
            log::warn!("rollback: netdev_del {id} failed: {undo}");
        }
        // Names a netdev_add that failed half-way did not consume.
        close_fds(qmp, &given);
        return Err(step_err("device_add".into(), e));
    }
    Ok(())
}

fn close_fds(qmp: &mut Qmp, names: &[String]) {
    for name in names {
        // A name already consumed by QEMU is unknown to closefd: fine.
        if let Err(e) = qmp.execute("closefd", Some(json!({ "fdname": name }))) {
            log::debug!("rollback: closefd {name}: {e}");
        }
    }
}

/// Hot-removes the NIC `id`: `device_del`, wait for `DEVICE_DELETED` (up to
/// `timeout`), then `netdev_del`.
pub fn del(qmp: &mut Qmp, id: &str, timeout: Duration) -> Result<(), HotplugError> {
    validate_id(id)?;
    let step_err = |step: &str, source| HotplugError::Step {
        id: id.to_string(),
        step: step.to_string(),
        source,
    };
    qmp.execute("device_del", Some(json!({ "id": id })))
        .map_err(|e| step_err("device_del", e))?;
    qmp.wait_event(
        "DEVICE_DELETED",
        |e: &Value| e["data"]["device"].as_str() == Some(id),
        timeout,
    )
    .map_err(|e| step_err("waiting for DEVICE_DELETED", e))?;
    qmp.execute("netdev_del", Some(json!({ "id": id })))
        .map_err(|e| step_err("netdev_del", e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
