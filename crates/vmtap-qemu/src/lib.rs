//! vmtap's QEMU side: the `-netdev`/`-device` arguments for opened taps
//! and the placeholders of `vmtap open` ([`args`]), a QMP client that
//! passes fds, with one deadline per operation and bounded reads ([`qmp`]),
//! NIC hot-plug with rollback ([`hotplug`]), the exec hand-off of
//! `vmtap open` ([`launch`]), and a bridged tap from a bridge helper, for
//! users without `CAP_NET_ADMIN` ([`helper`]).

#![forbid(unsafe_code)]

pub mod args;
pub mod helper;
pub mod hotplug;
pub mod launch;
pub mod qmp;
