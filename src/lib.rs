//! vmtap: TAP network backends for KVM/QEMU virtual machines.
//!
//! A Rust re-implementation of Ganeti's `hv_kvm.netdev`, without its defects,
//! and the pieces around it a VM manager needs.
//!
//! Layers, bottom to top:
//! - [`sys`]: the kernel interface (ioctls, `ifreq`, flags); the only `unsafe`.
//! - [`syscalls`]: the seam, a trait with the real kernel and a fake ([`fake`]).
//! - [`tap`]: the model (queues, inspection, persistent taps, offloads).
//! - [`open`]: the policy (probe, decide flags, open N queues, roll back).
//! - Beside the core: [`link`] (netlink host-side set-up) and [`qemu`]
//!   (`-netdev`/`-device` strings).
//!
//! ```no_run
//! use vmtap::{OpenOptions, VnetHdr};
//! let tap = OpenOptions::new().queues(2).vnet_hdr(VnetHdr::Auto).open()?;
//! let (ifname, tap_fds, vhost_fds) = tap.into_parts();
//! assert_eq!(tap_fds.len(), 2);
//! assert!(vhost_fds.is_empty());
//! # let _ = ifname;
//! # Ok::<(), vmtap::Error>(())
//! ```

pub mod error;
pub mod fake;
pub mod hotplug;
pub mod link;
pub mod open;
pub mod qemu;
pub mod qmp;
pub mod sys;
pub mod syscalls;
pub mod tap;

pub use error::{Action, Error, NameProblem, Result};
pub use open::{
    Features, MAX_QUEUES, OpenOptions, VnetHdr, open_tap, open_tap_with, probe_multi_queue,
    probe_multi_queue_with, probe_vnet_hdr, probe_vnet_hdr_with, tun_features, tun_features_with,
    validate_name,
};
pub use sys::{Offloads, TunFlags};
pub use syscalls::{Kernel, Syscalls};
pub use tap::{
    FdStatus, PersistentOptions, Tap, TapInfo, TapQueue, TapStatus, check_queues,
    create_persistent, delete_persistent, inspect_fd, inspect_fd_status, tap_status,
};
