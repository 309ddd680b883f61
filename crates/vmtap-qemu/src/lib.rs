//! vmtap's QEMU side: the `-netdev`/`-device` arguments for opened taps
//! and the placeholders of `vmtap open` ([`args`]), a QMP client that
//! passes fds, with one deadline per operation and bounded reads ([`qmp`]),
//! and NIC hot-plug with rollback ([`hotplug`]).

#![forbid(unsafe_code)]

pub mod args;
pub mod hotplug;
pub mod qmp;
