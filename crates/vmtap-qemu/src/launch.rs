//! The exec hand-off of `vmtap open`: the tap's fds become the program's
//! (every other fd stays close-on-exec), and the placeholders of its
//! arguments become the fd numbers and QEMU's `-netdev`/`-device` values.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

use vmtap::{OpenOptions, Tap, Tun};
use vmtap_net::{LinkError, LinkOptions};

use crate::args::{InvalidId, device_opts, expand_placeholders, join_fds, netdev_arg, validate_id};
use crate::helper::{HelperError, HelperOptions, open_with_helper};

impl LaunchError {
    /// True for errors in the caller's input (nothing was touched).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Self::Tap(e) => e.is_invalid_input(),
            Self::Link(e) => e.is_invalid_input(),
            Self::Id(_) => true,
            Self::Helper(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// `vmtap open`: checks the options, the id and the bridge before anything
/// exists; opens the tap in `tun`; sets its host side up; then execs
/// `program` with the fds (see [`exec_with_tap`]). Returns only on
/// failure, with nothing left behind: a new tap goes with its fds, and the
/// link changes made to a tap that was attached to (it outlives us) are
/// put back.
pub fn open_and_exec(
    tun: &Tun,
    opts: &OpenOptions,
    link: &LinkOptions,
    id: &str,
    program: &str,
    args: &[String],
) -> LaunchError {
    if let Err(e) = opts.validate() {
        return e.into();
    }
    if let Err(e) = validate_id(id) {
        return LaunchError::Id(e);
    }
    // The bridge is checked before a tap exists.
    if let Err(e) = link.check() {
        return e.into();
    }
    let tap = match tun.open(opts) {
        Ok(tap) => tap,
        Err(e) => return e.into(),
    };
    log::debug!(
        "opened {} with {} queue(s), flags {:?}",
        tap.name(),
        tap.queues().len(),
        tap.flags()
    );
    // A failed step undoes the ones before it inside configure().
    let changes = match vmtap_net::configure(tap.name(), link) {
        Ok(changes) => changes,
        Err(e) => return e.into(),
    };
    let err = exec_with_tap(tap, id, program, args);
    // Nothing uses the tap: put back what outlives it (a persistent tap's
    // settings, routing rules, an OVS port), and the rest with it.
    if let Err(e) = changes.undo() {
        log::warn!("{e}");
    }
    err
}

/// `vmtap open --helper`: checks the options and the id; gets a bridged
/// tap from the bridge helper (see [`open_with_helper`]: the helper sets
/// up its host side, and the tap lives only as long as its fds); then
/// execs `program` with the fds (see [`exec_with_tap`]). Returns only on
/// failure, with nothing left behind.
pub fn open_with_helper_and_exec(
    tun: &Tun,
    helper: &HelperOptions,
    id: &str,
    program: &str,
    args: &[String],
) -> LaunchError {
    if let Err(e) = helper.validate() {
        return e.into();
    }
    if let Err(e) = validate_id(id) {
        return LaunchError::Id(e);
    }
    let tap = match open_with_helper(tun, helper) {
        Ok(tap) => tap,
        Err(e) => return e.into(),
    };
    log::debug!(
        "the bridge helper sent {} with {} queue(s), flags {:?}",
        tap.name(),
        tap.queues().len(),
        tap.flags()
    );
    exec_with_tap(tap, id, program, args)
}

/// Why the hand-off failed (it returns only on failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// Opening the tap failed, or the fds do not form one tap with
    /// consistent flags.
    #[error(transparent)]
    Tap(#[from] vmtap::Error),
    /// The host-side link set-up failed (the steps before it were undone).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// An fd could not be made inheritable.
    #[error("clearing close-on-exec on fd {fd}: {source}")]
    Inherit {
        /// The fd.
        fd: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The QEMU id is not one QEMU takes.
    #[error(transparent)]
    Id(InvalidId),
    /// No tap came from the bridge helper.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// `execvp` failed.
    #[error("cannot run {program:?}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The arguments of `program` with the placeholders replaced (in one
/// pass; see [`expand_placeholders`]): `{ifname}`, `{fds}`, `{vhostfds}`,
/// `{netdev}` (`-netdev` value with netdev id `id`), `{device}`.
pub fn expand_args(
    ifname: &str,
    id: &str,
    tap_fds: &[i32],
    vhost_fds: &[i32],
    args: &[String],
) -> Vec<String> {
    let netdev = netdev_arg(id, tap_fds, vhost_fds);
    let device = device_opts(id, tap_fds.len());
    let fds = join_fds(tap_fds);
    let vhostfds = join_fds(vhost_fds);
    let values = [
        ("ifname", ifname),
        ("fds", fds.as_str()),
        ("vhostfds", vhostfds.as_str()),
        ("netdev", netdev.as_str()),
        ("device", device.as_str()),
    ];
    args.iter()
        .map(|a| expand_placeholders(a, &values))
        .collect()
}

/// Verifies the tap's fds with `TUNGETIFF` (one device, consistent
/// flags), makes its tap and vhost fds inheritable, and execs `program`
/// with `args` expanded (see [`expand_args`]). Returns only on failure;
/// the fds are closed then.
pub fn exec_with_tap(tap: Tap, id: &str, program: &str, args: &[String]) -> LaunchError {
    let info = match tap.verify() {
        Ok(info) => info,
        Err(e) => return e.into(),
    };
    log::debug!(
        "verified {} fd(s) of {} with TUNGETIFF",
        tap.queues().len(),
        info.name
    );
    let (ifname, tap_fds, vhost_fds) = tap.into_parts();
    let nums = |fds: &[OwnedFd]| fds.iter().map(|f| f.as_raw_fd()).collect::<Vec<i32>>();
    let argv = expand_args(&ifname, id, &nums(&tap_fds), &nums(&vhost_fds), args);
    for fd in tap_fds.iter().chain(&vhost_fds) {
        if let Err(e) = rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::empty()) {
            return LaunchError::Inherit {
                fd: fd.as_raw_fd(),
                source: e.into(),
            };
        }
    }
    log::debug!("exec {program} {argv:?}");
    let source = std::process::Command::new(program).args(&argv).exec();
    LaunchError::Exec {
        program: program.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_get_the_fds_and_qemu_values() {
        let args: Vec<String> = [
            "-netdev",
            "{netdev}",
            "{device},mac=x",
            "{ifname}:{fds}|{vhostfds}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand_args("vm0", "n0", &[3, 4], &[5, 6], &args),
            [
                "-netdev",
                "tap,id=n0,fds=3:4,vhost=on,vhostfds=5:6",
                "netdev=n0,mq=on,vectors=6,mac=x",
                "vm0:3:4|5:6"
            ]
        );
    }
}
