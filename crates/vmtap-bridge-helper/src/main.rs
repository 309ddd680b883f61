//! `vmtap-bridge-helper`: a drop-in for QEMU's `qemu-bridge-helper`.
//!
//! QEMU runs it for `-netdev bridge,br=BR` and `-netdev tap,helper=...`
//! (libvirt too) as `[--use-vnet] --br=BR --fd=N`, in any order. It drops
//! to `CAP_NET_ADMIN` as the caller ([`privs`]), checks the bridge against
//! `/etc/qemu/bridge.conf` ([`acl`]), checks that the bridge is a Linux
//! bridge, opens a tap (`IFF_TAP|IFF_NO_PI`, `IFF_VNET_HDR` with
//! `--use-vnet` when the kernel has it; the kernel's `tap%d` name) with
//! vmtap, gives it the bridge's MTU and a MAC starting with 0xfe, enslaves
//! it and brings it up over netlink (vmtap-net, unrecorded: the tap goes
//! with its fds), then sends byte `0x00` with the fd on socket N
//! ([`send`]). Exit 0 only after sending; 1 with one line on stderr
//! otherwise, with nothing left behind (the tap exists only while its fds
//! are open, and they close on exit).
//!
//! vmtap's extensions, which QEMU never passes: `--queues=N` (N fds of one
//! multi-queue tap, in one message) and `--name=NAME` (a name or `%d`
//! template instead of `tap%d`).

#![forbid(unsafe_code)]

mod acl;
mod args;
mod privs;
mod send;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use vmtap::{OpenOptions, Tun, VnetHdr};
use vmtap_net::{LinkError, LinkOptions};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            say(&msg);
            ExitCode::from(1)
        }
    }
}

/// One line on stderr (a closed stderr is not a panic).
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "vmtap-bridge-helper: {}", escape(msg));
}

/// `s` with control characters escaped, so that a message stays one line
/// (the same escaping as the `vmtap` command's).
pub(crate) fn escape(s: &str) -> String {
    vmtap::error::escape_controls(s)
}

/// `s` escaped and in double quotes.
pub(crate) fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn run(argv: Vec<OsString>) -> Result<(), String> {
    // First of all: CAP_NET_ADMIN as the caller, nothing else.
    let dropped = privs::drop_privileges().map_err(|e| e.to_string())?;
    let args = args::parse(argv).map_err(|e| e.to_string())?;

    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let refused = privs::refused_variable(
        dropped.secure,
        vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    );
    if let Some(name) = refused {
        return Err(format!(
            "refusing to run with privileges and {} in the environment",
            quote(&String::from_utf8_lossy(name))
        ));
    }
    // Nothing from the caller's environment is needed, or used.
    vmtap_sys::clear_environment().map_err(|e| format!("cannot clear the environment: {e}"))?;

    // The ACL, read as the caller (per-user include files work by their
    // permissions, as QEMU intends).
    let acl = acl::Acl::load(
        &acl::SystemFiles,
        Path::new(acl::ACL_FILE),
        acl::Limits::default(),
    )
    .map_err(|e| e.to_string())?;
    for w in &acl.warnings {
        say(&format!("warning: {w}"));
    }
    if !acl.allows(&args.bridge) {
        return Err(format!(
            "access to bridge {} denied by the ACL file {}",
            quote(&args.bridge),
            acl::ACL_FILE
        ));
    }

    let sock = vmtap_sys::dup_inherited_fd(args.fd)
        .map_err(|e| format!("--fd={}: not an open fd ({e})", args.fd))?;
    send::check_socket(sock.as_fd()).map_err(|e| format!("--fd={}: {e}", args.fd))?;
    if !dropped.net_admin {
        return Err("no CAP_NET_ADMIN: install the helper setuid root \
                    (install -m 4755) or with the file capability (setcap cap_net_admin+ep)"
            .into());
    }

    // The ACL speaks of names: a bridge is reached by its name only, not
    // by one of its alternative names (the kernel resolves those too), so
    // that a rule for the name cannot be walked around.
    if let Ok(Some(l)) = vmtap_sys::rtnl::Netlink::open().and_then(|mut nl| nl.link(&args.bridge))
        && l.name != args.bridge
    {
        return Err(format!(
            "{} is an alternative name of {}: give the bridge's name",
            quote(&args.bridge),
            quote(&l.name)
        ));
    }
    // The bridge is checked before a tap exists.
    let link = LinkOptions::new().bridge(&args.bridge).record(false);
    link.check().map_err(|e| match e {
        LinkError::NoSuchInterface(b) => format!("bridge {}: no such interface", quote(&b)),
        LinkError::NotABridge(b) => format!(
            "{} is not a Linux bridge (only a Linux bridge can take the tap)",
            quote(&b)
        ),
        e => message(&e),
    })?;

    let opts = OpenOptions::new()
        .queues(args.queues)
        .vnet_hdr(if args.use_vnet {
            VnetHdr::Auto
        } else {
            VnetHdr::Off
        })
        // Named as QEMU's helper names taps (the kernel's tap%d: tap0 is
        // the lowest free), unless --name says otherwise.
        .name(args.name.as_deref().unwrap_or("tap%d"));
    // From here on, a failure drops the tap's fds, and the tap with them.
    let tap = Tun::system().open(&opts).map_err(|e| message(&e))?;
    let changes = vmtap_net::configure(tap.name(), &link).map_err(|e| message(&e))?;
    tap.verify().map_err(|e| message(&e))?;
    let fds: Vec<BorrowedFd<'_>> = tap.queues().iter().map(|q| q.as_fd()).collect();
    send::send_fds(sock.as_fd(), &fds)
        .map_err(|e| format!("sending the fds of {} on --fd={}: {e}", tap.name(), args.fd))?;
    // The receiver holds the tap now; its settings go with it.
    changes.keep();
    Ok(())
}

/// An error and its causes on one line.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    vmtap::error::full_message(e)
}
