//! vmtap: TAP network backends for KVM/QEMU virtual machines.
//!
//! A Rust re-implementation of Ganeti's `hv_kvm.netdev`, without its defects,
//! and the pieces around it a VM manager needs.
//!
//! Layers, bottom to top:
//! - [`sys`]: the kernel interface (the `vmtap-sys` crate, the only one
//!   with `unsafe`): ioctls, `ifreq`, flags, the netlink queries.
//! - [`syscalls`]: the seam, a trait with the real kernel and (feature
//!   `fake`) a scriptable fake.
//! - [`tap`]: the model (queues, inspection, persistent taps, offloads).
//! - [`open`]: the policy (probe, decide flags, open N queues, roll back).
//! - [`tun`]: [`Tun`], the context every operation runs in (the kernel or
//!   a fake, and the device paths); [`names`]: name rules and paths.
//!
//! Beside the core, in their own crates: `vmtap-net` (host-side link
//! set-up), `vmtap-qemu` (QEMU arguments, QMP, hot-plug) and the `vmtap`
//! command (`vmtap-cli`).
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

#![forbid(unsafe_code)]

pub mod bulk;
pub mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod names;
pub mod open;
pub mod owner;
pub mod syscalls;
pub mod tap;
pub mod tun;

/// The parts of the kernel interface (the `vmtap-sys` crate) that the
/// core's API uses: flags, and the link facts the [`Syscalls`] seam
/// returns. (No netlink crate's type is part of the core's API.)
pub mod sys {
    pub use vmtap_sys::rtnl::{LinkState, TunLinkInfo};
    pub use vmtap_sys::{
        IFNAME_MAX, Offloads, TUN_FEATURES, TunFlags, VHOST_NET_DEVICE, VHOST_NET_F_VIRTIO_NET_HDR,
        format_mac,
    };
}

pub use bulk::{Outcomes, TaggedTap};
pub use error::{Action, Difference, Error, NameProblem, QueueProblem, Result, VhostProblem};
pub use names::{DevicePaths, MAX_QUEUES, TUN_PATH, VHOST_NET_PATH, validate_name};
pub use open::{
    FeatureReport, Features, OpenOptions, VnetHdr, open_tap, probe_multi_queue, probe_vnet_hdr,
    tun_features,
};
pub use owner::{Owner, Ownership};
pub use syscalls::{Kernel, Syscalls};
pub use tap::{
    FdStatus, PersistentOptions, Tap, TapInfo, TapQueue, TapStatus, TapSummary, owner_gid,
    owner_uid,
};
pub use tun::Tun;
pub use vmtap_sys::{Offloads, TunFlags};
