//! Host-side link set-up over netlink.
