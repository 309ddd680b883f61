//! vmtap's kernel interface: TUN/TAP and vhost-net ioctl requests, `ifreq`
//! handling, flags, fd helpers, and ([`rtnl`]) the route-netlink queries the
//! tap core needs before it binds to an existing tap.
//!
//! This is the only crate of vmtap that contains `unsafe` code; every block
//! has a `// SAFETY:` comment. Request
//! numbers come from libc, which builds them with the kernel's `_IOW`/`_IOR`
//! encoding for the target architecture (the values differ on powerpc, mips
//! and sparc; hard-coded x86 hex values would be wrong there).
//!
//! The ioctl functions take a [`BorrowedFd`] and return
//! [`std::io::Result`]; no raw fd is stored anywhere. The one function that
//! takes a raw fd number, [`dup_inherited_fd`], exists because its job is
//! to find out whether that number is open at all (rustix's safe `dup`
//! needs a `BorrowedFd`, whose contract is exactly that).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bitflags::bitflags;

#[cfg(feature = "counting-alloc")]
pub mod counting_alloc;
pub mod rtnl;

/// A MAC address as `ip` and sysfs print it: six lower-case hex bytes
/// joined by `:`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The ioctl request numbers of the TUN driver, as encoded for this target.
pub mod request {
    /// `TUNSETIFF`: bind an fd to a new or existing interface.
    pub const TUNSETIFF: libc::Ioctl = libc::TUNSETIFF;
    /// `TUNGETIFF`: read back the name and flags of a bound fd.
    pub const TUNGETIFF: libc::Ioctl = libc::TUNGETIFF;
    /// `TUNGETFEATURES`: the `IFF_*` flags this kernel supports.
    pub const TUNGETFEATURES: libc::Ioctl = libc::TUNGETFEATURES;
    /// `TUNSETPERSIST`: keep the device after its last fd is closed.
    pub const TUNSETPERSIST: libc::Ioctl = libc::TUNSETPERSIST;
    /// `TUNSETOWNER`: uid allowed to attach to a persistent device.
    pub const TUNSETOWNER: libc::Ioctl = libc::TUNSETOWNER;
    /// `TUNSETGROUP`: gid allowed to attach to a persistent device.
    pub const TUNSETGROUP: libc::Ioctl = libc::TUNSETGROUP;
    /// `TUNSETOFFLOAD`: the `TUN_F_*` offloads the reader can handle.
    pub const TUNSETOFFLOAD: libc::Ioctl = libc::TUNSETOFFLOAD;
    /// `TUNGETVNETHDRSZ`: size of the virtio-net header.
    pub const TUNGETVNETHDRSZ: libc::Ioctl = libc::TUNGETVNETHDRSZ;
    /// `TUNSETVNETHDRSZ`: set the size of the virtio-net header.
    pub const TUNSETVNETHDRSZ: libc::Ioctl = libc::TUNSETVNETHDRSZ;
    /// `TUNGETSNDBUF`: the send buffer size.
    pub const TUNGETSNDBUF: libc::Ioctl = libc::TUNGETSNDBUF;
    /// `TUNSETSNDBUF`: set the send buffer size.
    pub const TUNSETSNDBUF: libc::Ioctl = libc::TUNSETSNDBUF;
    /// `TUNSETQUEUE`: attach or detach a queue of a multi-queue device.
    pub const TUNSETQUEUE: libc::Ioctl = libc::TUNSETQUEUE;
    /// `TUNGETDEVNETNS`: an fd of the network namespace the device is in.
    pub const TUNGETDEVNETNS: libc::Ioctl = libc::TUNGETDEVNETNS;
    /// `SIOCGIFHWADDR`: the MAC address (the tun driver answers it on a
    /// bound fd too). A socket ioctl, not `_IOC`-encoded.
    pub const SIOCGIFHWADDR: libc::Ioctl = libc::SIOCGIFHWADDR as libc::Ioctl;
    /// `VHOST_GET_FEATURES`: `_IOR(VHOST_VIRTIO, 0x00, __u64)` from
    /// `linux/vhost.h` (libc has no constant for it; its encoder is used).
    pub const VHOST_GET_FEATURES: libc::Ioctl = libc::_IOR::<u64>(super::VHOST_VIRTIO, 0x00);
}

/// The ioctl type of vhost devices (`VHOST_VIRTIO` in `linux/vhost.h`).
const VHOST_VIRTIO: u32 = 0xAF;

/// `VHOST_NET_F_VIRTIO_NET_HDR` (bit 27; shared with `VIRTIO_F_ANY_LAYOUT`,
/// which every vhost device offers, so it does not tell vhost-net apart).
pub const VHOST_NET_F_VIRTIO_NET_HDR: u64 = 1 << 27;

/// The vhost-net misc device's (major, minor): `MISC_MAJOR` 10 and
/// `VHOST_NET_MINOR` 238 (fixed in `include/linux/miscdevice.h`).
pub const VHOST_NET_DEVICE: (u32, u32) = (10, 238);

/// The TUN/TAP clone device's (major, minor): `MISC_MAJOR` 10 and
/// `TUN_MINOR` 200 (fixed in `include/linux/miscdevice.h`); every fd
/// bound to a tap is open on it.
pub const TUN_DEVICE: (u32, u32) = (10, 200);

bitflags! {
    /// The `IFF_*` flags of `TUNSETIFF`, `TUNGETIFF` and `TUNGETFEATURES`.
    ///
    /// Unknown bits reported by a newer kernel are kept as they are.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TunFlags: u32 {
        /// Layer-3 TUN device.
        const TUN = libc::IFF_TUN as u32;
        /// Layer-2 TAP device.
        const TAP = libc::IFF_TAP as u32;
        /// NAPI receive path.
        const NAPI = libc::IFF_NAPI as u32;
        /// NAPI with fragments.
        const NAPI_FRAGS = libc::IFF_NAPI_FRAGS as u32;
        /// Bring the device up without carrier.
        const NO_CARRIER = libc::IFF_NO_CARRIER as u32;
        /// Multi-queue device: one fd per queue.
        const MULTI_QUEUE = libc::IFF_MULTI_QUEUE as u32;
        /// `TUNSETQUEUE`: (re-)enable this fd's queue.
        const ATTACH_QUEUE = libc::IFF_ATTACH_QUEUE as u32;
        /// `TUNSETQUEUE`: disable this fd's queue.
        const DETACH_QUEUE = libc::IFF_DETACH_QUEUE as u32;
        /// The device is persistent (read-only, reported by `TUNGETIFF`).
        const PERSIST = libc::IFF_PERSIST as u32;
        /// No packet information header in front of each packet.
        const NO_PI = libc::IFF_NO_PI as u32;
        /// Historical single-queue flag; no effect since Linux 3.8.
        const ONE_QUEUE = libc::IFF_ONE_QUEUE as u32;
        /// A virtio-net header in front of each packet.
        const VNET_HDR = libc::IFF_VNET_HDR as u32;
        /// Fail with `EBUSY` instead of attaching to an existing device.
        const TUN_EXCL = libc::IFF_TUN_EXCL as u32;
        const _ = !0;
    }
}

bitflags! {
    /// The `TUN_F_*` offload flags of `TUNSETOFFLOAD`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Offloads: u32 {
        /// The reader can handle partial checksums.
        const CSUM = libc::TUN_F_CSUM;
        /// TCP segmentation offload, IPv4.
        const TSO4 = libc::TUN_F_TSO4;
        /// TCP segmentation offload, IPv6.
        const TSO6 = libc::TUN_F_TSO6;
        /// TSO with ECN bits.
        const TSO_ECN = libc::TUN_F_TSO_ECN;
        /// UDP fragmentation offload.
        const UFO = libc::TUN_F_UFO;
        /// UDP segmentation offload, IPv4 (must go with USO6).
        const USO4 = libc::TUN_F_USO4;
        /// UDP segmentation offload, IPv6 (must go with USO4).
        const USO6 = libc::TUN_F_USO6;
    }
}

/// The flags a tap's first queue sets and every later one takes as they
/// are (`TUN_FEATURES` in tun.c): no-PI, one-queue, vnet header,
/// multi-queue and the NAPI flags.
pub const TUN_FEATURES: TunFlags = TunFlags::NO_PI
    .union(TunFlags::ONE_QUEUE)
    .union(TunFlags::VNET_HDR)
    .union(TunFlags::MULTI_QUEUE)
    .union(TunFlags::NAPI)
    .union(TunFlags::NAPI_FRAGS);

/// Longest interface name the kernel accepts, without the trailing NUL.
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// Builds a zeroed `ifreq` carrying `name` and `flags`.
fn ifreq(name: &str, flags: TunFlags) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (bytes and a union of integers and
    // arrays) for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(IFNAME_MAX)) {
        *dst = src as libc::c_char;
    }
    // The kernel reads a `short`: IFF_TUN_EXCL (0x8000) becomes its sign bit,
    // which is what C code passing the same constant does too.
    req.ifr_ifru.ifru_flags = flags.bits() as u16 as libc::c_short;
    req
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn ifreq_flags(req: &libc::ifreq) -> TunFlags {
    // SAFETY: TUNSETIFF/TUNGETIFF use the `ifru_flags` member of the union,
    // and every bit pattern is a valid `c_short`.
    let raw = unsafe { req.ifr_ifru.ifru_flags };
    TunFlags::from_bits_retain(u32::from(raw as u16))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNGETFEATURES`: the flags this kernel's TUN driver supports.
///
/// `out` must be zero on entry (the kernel writes the whole value).
pub fn tun_get_features(fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()> {
    let mut value: libc::c_uint = *out;
    // SAFETY: TUNGETFEATURES writes one `unsigned int` through the pointer,
    // which points to a live, writable `c_uint`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::TUNGETFEATURES, &mut value) })?;
    *out = value;
    Ok(())
}

/// `TUNSETIFF`: binds `fd` to the interface `name` (created if missing; an
/// empty name or a `%d` template lets the kernel choose) and returns the
/// name of the interface the fd is now bound to.
pub fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: TunFlags) -> io::Result<String> {
    let mut req = ifreq(name, flags);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid,
    // writable ifreq that outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::TUNSETIFF, &mut req) })?;
    Ok(ifreq_name(&req))
}

/// `TUNGETIFF`: the interface name and flags of a bound fd.
pub fn tun_get_iff(fd: BorrowedFd<'_>) -> io::Result<(String, TunFlags)> {
    let mut req = ifreq("", TunFlags::empty());
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`, which is valid
    // and writable for the duration of the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::TUNGETIFF, &mut req) })?;
    Ok((ifreq_name(&req), ifreq_flags(&req)))
}

/// Runs an ioctl whose argument is an integer passed by value (not a pointer).
fn ioctl_value(fd: BorrowedFd<'_>, req: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests used with this helper (TUNSETPERSIST, TUNSETOWNER,
    // TUNSETGROUP, TUNSETOFFLOAD) take their argument by value; the kernel
    // does not dereference it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, value) })
}

/// Runs an ioctl whose argument is a pointer to a C `int`.
fn ioctl_int_ptr(fd: BorrowedFd<'_>, req: libc::Ioctl, value: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: the requests used with this helper (TUN{GET,SET}VNETHDRSZ,
    // TUN{GET,SET}SNDBUF, TUNSETQUEUE via its own helper) read or write one
    // `int` through the pointer, which points to a live `c_int`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, value as *mut libc::c_int) })
}

/// `TUNSETPERSIST`: make the device persistent (or not).
pub fn tun_set_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    ioctl_value(fd, request::TUNSETPERSIST, libc::c_ulong::from(persist))
}

/// `TUNSETOWNER`: the uid allowed to attach without `CAP_NET_ADMIN`.
pub fn tun_set_owner(fd: BorrowedFd<'_>, uid: u32) -> io::Result<()> {
    ioctl_value(fd, request::TUNSETOWNER, libc::c_ulong::from(uid))
}

/// `TUNSETGROUP`: the gid allowed to attach without `CAP_NET_ADMIN`.
pub fn tun_set_group(fd: BorrowedFd<'_>, gid: u32) -> io::Result<()> {
    ioctl_value(fd, request::TUNSETGROUP, libc::c_ulong::from(gid))
}

/// `TUNSETOFFLOAD`: the offloads the reader of this fd handles.
pub fn tun_set_offload(fd: BorrowedFd<'_>, offloads: Offloads) -> io::Result<()> {
    ioctl_value(
        fd,
        request::TUNSETOFFLOAD,
        libc::c_ulong::from(offloads.bits()),
    )
}

/// `TUNSETVNETHDRSZ`: the virtio-net header size (the kernel wants >= 10).
pub fn tun_set_vnet_hdr_size(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    let mut value = size;
    ioctl_int_ptr(fd, request::TUNSETVNETHDRSZ, &mut value)
}

/// `TUNGETVNETHDRSZ`: the virtio-net header size.
pub fn tun_get_vnet_hdr_size(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut value = 0;
    ioctl_int_ptr(fd, request::TUNGETVNETHDRSZ, &mut value)?;
    Ok(value)
}

/// `TUNSETSNDBUF`: the send buffer size in bytes.
pub fn tun_set_sndbuf(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    let mut value = size;
    ioctl_int_ptr(fd, request::TUNSETSNDBUF, &mut value)
}

/// `TUNGETSNDBUF`: the send buffer size in bytes.
pub fn tun_get_sndbuf(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut value = 0;
    ioctl_int_ptr(fd, request::TUNGETSNDBUF, &mut value)?;
    Ok(value)
}

/// `TUNSETQUEUE`: attach (`true`) or detach (`false`) this fd's queue.
pub fn tun_set_queue(fd: BorrowedFd<'_>, attach: bool) -> io::Result<()> {
    let flag = if attach {
        TunFlags::ATTACH_QUEUE
    } else {
        TunFlags::DETACH_QUEUE
    };
    let mut req = ifreq("", flag);
    // SAFETY: TUNSETQUEUE reads one `struct ifreq`; `req` is valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::TUNSETQUEUE, &mut req) })
}

/// The MAC address of the device `fd` is bound to (`SIOCGIFHWADDR` on the
/// tun fd itself, no socket needed).
pub fn tun_get_hwaddr(fd: BorrowedFd<'_>) -> io::Result<[u8; 6]> {
    let mut req = ifreq("", TunFlags::empty());
    // SAFETY: SIOCGIFHWADDR reads and writes one `struct ifreq`; `req` is
    // valid and writable for the duration of the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::SIOCGIFHWADDR, &mut req) })?;
    // SAFETY: SIOCGIFHWADDR fills the `ifru_hwaddr` member of the union;
    // every bit pattern of a `sockaddr` is valid.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok(mac)
}

/// `TUNGETDEVNETNS`: an fd of the network namespace the device of `fd`
/// lives in (needs `CAP_NET_ADMIN` there; Linux 5.2 and later).
pub fn tun_get_devnetns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), request::TUNGETDEVNETNS) };
    check(ns)?;
    // SAFETY: `ns` is a fresh fd (opened close-on-exec by the kernel) that
    // nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// `VHOST_GET_FEATURES`: the virtio feature bits a vhost device offers.
/// Fails with `ENOTTY` on anything that is not a vhost device.
pub fn vhost_get_features(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut features: u64 = 0;
    // SAFETY: VHOST_GET_FEATURES writes one `__u64` through the pointer,
    // which points to a live, writable u64.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request::VHOST_GET_FEATURES, &mut features) })?;
    Ok(features)
}

/// The pid of the process at the other end of a connected Unix socket
/// (`SO_PEERCRED`: the process that connected or, for the accepting side,
/// that called `listen()`), as the caller's pid namespace sees it; `None`
/// when that process is outside it (the kernel reports pid 0).
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes (one `struct ucred`)
    // through the pointer, which points to a live, writable ucred of that
    // size; `len` is a valid, writable socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(u32::try_from(cred.pid).ok().filter(|p| *p != 0))
}

/// Takes a duplicate (close-on-exec) of fd number `raw`, which this process
/// inherited from its parent, as an owned fd. Fails with `EBADF` when no such
/// fd is open; the original is left as it is.
pub fn dup_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_DUPFD_CLOEXEC on any integer is safe: it fails with EBADF if
    // `raw` is not open, and otherwise returns a new fd that nobody owns yet.
    let new = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
    check(new)?;
    // SAFETY: `new` was just returned by the kernel as a fresh fd owned by
    // nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The number of threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Removes every variable from this process's environment, for a
/// privileged program that needs none of them. Refuses (`EBUSY`, nothing
/// removed) unless the process has exactly one thread: changing the
/// environment while another thread may read it is undefined behaviour
/// (which is why `std::env::remove_var` is `unsafe`), and only the caller,
/// this one thread, could start another meanwhile.
pub fn clear_environment() -> io::Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("the process has {threads} threads; the environment is changed only with one"),
        ));
    }
    let names: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    // Names `remove_var` would panic on (empty, or with '=' or NUL: only a
    // hand-made environment has them) are refused, not left.
    if let Some(odd) = names
        .iter()
        .find(|n| n.is_empty() || n.as_encoded_bytes().iter().any(|&b| b == b'=' || b == 0))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an environment entry has a malformed name {odd:?}"),
        ));
    }
    for name in names {
        // SAFETY: the process has one thread (checked above; only this
        // thread could start another, and it does not), so nothing reads
        // or writes the environment concurrently.
        unsafe { std::env::remove_var(&name) };
    }
    Ok(())
}

/// Moves the calling thread into a new, empty network namespace.
///
/// Network namespaces are per thread: other threads are not affected, and
/// processes this thread spawns afterwards start in the new namespace. Used
/// by the tests (and by tools that want a private sandbox); needs
/// `CAP_SYS_ADMIN` in the thread's user namespace.
pub fn unshare_network_namespace() -> io::Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's namespace
    // membership; it touches no memory of ours.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// The cookie of the calling thread's network namespace
/// (`SO_NETNS_COOKIE`, Linux 5.14): unique for the life of the system and
/// never reused, unlike the namespace's inode number.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: socket() takes no pointers; the fd it returns is owned at
    // once.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(raw)?;
    // SAFETY: `raw` is a new fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `cookie`, which
    // lives across the call, and sets `len` to what it wrote.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    })?;
    if len as usize != std::mem::size_of::<u64>() {
        return Err(io::Error::other("SO_NETNS_COOKIE: unexpected length"));
    }
    Ok(cookie)
}

/// The uid of user `name` (through NSS, as `getpwnam_r`), or `None`.
pub fn user_id(name: &str) -> io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `passwd` is a plain C struct; all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated,
    // `buf` is writable for `buf.len()` bytes, and `pwd`/`result` are live.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(pwd.pw_uid))
}

/// The gid of group `name` (through NSS, as `getgrnam_r`), or `None`.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `group` is a plain C struct; all-zero is a valid value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user_id`: valid name, writable buffer, live out-params.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(grp.gr_gid))
}

#[cfg(test)]
// `libc::Ioctl` is `c_ulong` on glibc but `c_int` on musl: the casts are
// needed there.
#[allow(clippy::unnecessary_cast)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn values_match_the_ganeti_reference_on_x86_64() {
        assert_eq!(request::TUNSETIFF as u32 as u64, 0x400454ca);
        assert_eq!(request::TUNGETIFF as u32 as u64, 0x800454d2);
        assert_eq!(request::TUNGETFEATURES as u32 as u64, 0x800454cf);
        assert_eq!(request::VHOST_GET_FEATURES as u32 as u64, 0x8008af00);
        assert_eq!(TunFlags::TAP.bits(), 0x0002);
        assert_eq!(TunFlags::NO_PI.bits(), 0x1000);
        assert_eq!(TunFlags::ONE_QUEUE.bits(), 0x2000);
        assert_eq!(TunFlags::VNET_HDR.bits(), 0x4000);
        assert_eq!(TunFlags::MULTI_QUEUE.bits(), 0x0100);
    }

    #[test]
    fn requests_carry_the_tun_type_and_numbers() {
        // Decode with the generic layout (nr in bits 0..8, type in 8..16),
        // which holds on every architecture.
        let nr = |r: libc::Ioctl| (r as u64) & 0xff;
        let ty = |r: libc::Ioctl| ((r as u64) >> 8) & 0xff;
        for (req, n) in [
            (request::TUNSETIFF, 202),
            (request::TUNSETPERSIST, 203),
            (request::TUNSETOWNER, 204),
            (request::TUNSETGROUP, 206),
            (request::TUNGETFEATURES, 207),
            (request::TUNSETOFFLOAD, 208),
            (request::TUNGETIFF, 210),
            (request::TUNGETSNDBUF, 211),
            (request::TUNSETSNDBUF, 212),
            (request::TUNGETVNETHDRSZ, 215),
            (request::TUNSETVNETHDRSZ, 216),
            (request::TUNSETQUEUE, 217),
            (request::TUNGETDEVNETNS, 227),
        ] {
            assert_eq!(nr(req), n);
            assert_eq!(ty(req), u64::from(b'T'));
        }
        assert_eq!(nr(request::VHOST_GET_FEATURES), 0);
        assert_eq!(ty(request::VHOST_GET_FEATURES), 0xAF);
        assert_eq!(TunFlags::TUN_EXCL.bits(), 0x8000);
        assert_eq!(TunFlags::PERSIST.bits(), 0x0800);
        assert_eq!(TunFlags::ATTACH_QUEUE.bits(), 0x0200);
        assert_eq!(TunFlags::DETACH_QUEUE.bits(), 0x0400);
    }

    #[test]
    fn ifreq_round_trips_name_and_high_flag_bit() {
        let req = ifreq("tap-é1", TunFlags::TAP | TunFlags::TUN_EXCL);
        assert_eq!(ifreq_name(&req), "tap-é1");
        assert_eq!(ifreq_flags(&req), TunFlags::TAP | TunFlags::TUN_EXCL);
    }

    #[test]
    fn the_environment_is_left_alone_with_other_threads() {
        // The test harness runs this on a thread of its own: two at least.
        let err = clear_environment().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        assert!(err.to_string().contains("threads"), "{err}");
        assert!(std::env::vars_os().next().is_some());
    }

    #[test]
    fn root_user_and_group_resolve() {
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(user_id("no-such-user-vmtap").unwrap(), None);
    }

    #[test]
    fn features_on_a_regular_file_fail_with_enotty() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let mut out = 0;
        let err = tun_get_features(std::os::fd::AsFd::as_fd(&file), &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
