//! The syscall seam: every kernel call the tap model and the policy make,
//! as a trait with the real kernel behind it ([`Kernel`]) and a scriptable
//! fake for tests (`fake::FakeKernel`, with the `fake` feature).
//!
//! This is what Ganeti's `_ioctl=` and `_features_fn=` parameters were for,
//! made a type.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmtap_sys::rtnl::{LinkState, Netlink};
use vmtap_sys::{self as sys, Offloads, TunFlags};

/// The kernel calls vmtap makes on TUN/TAP and vhost-net device nodes.
pub trait Syscalls: Send + Sync {
    /// Opens a device node read-write and close-on-exec.
    fn open_device(&self, path: &Path) -> io::Result<OwnedFd>;
    /// `TUNGETFEATURES`; `out` is zero on entry and receives the flags.
    fn tun_get_features(&self, fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()>;
    /// `TUNGETFEATURES` on an fd the caller just opened from the TUN clone
    /// device. The real kernel answers this from a per-process cache after
    /// the first success (the driver's features do not change); the default
    /// asks every time.
    fn clone_device_features(&self, fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()> {
        self.tun_get_features(fd, out)
    }
    /// `TUNSETIFF`; returns the name of the interface the fd is bound to.
    fn tun_set_iff(&self, fd: BorrowedFd<'_>, name: &str, flags: TunFlags) -> io::Result<String>;
    /// `TUNGETIFF`: name and flags of a bound fd.
    fn tun_get_iff(&self, fd: BorrowedFd<'_>) -> io::Result<(String, TunFlags)>;
    /// `TUNSETPERSIST`.
    fn tun_set_persist(&self, fd: BorrowedFd<'_>, persist: bool) -> io::Result<()>;
    /// `TUNSETOWNER`.
    fn tun_set_owner(&self, fd: BorrowedFd<'_>, uid: u32) -> io::Result<()>;
    /// `TUNSETGROUP`.
    fn tun_set_group(&self, fd: BorrowedFd<'_>, gid: u32) -> io::Result<()>;
    /// `TUNSETOFFLOAD`.
    fn tun_set_offload(&self, fd: BorrowedFd<'_>, offloads: Offloads) -> io::Result<()>;
    /// `TUNSETVNETHDRSZ`.
    fn tun_set_vnet_hdr_size(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()>;
    /// `TUNGETVNETHDRSZ`.
    fn tun_get_vnet_hdr_size(&self, fd: BorrowedFd<'_>) -> io::Result<i32>;
    /// `TUNSETSNDBUF`.
    fn tun_set_sndbuf(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()>;
    /// `TUNSETQUEUE` with `IFF_ATTACH_QUEUE` (true) or `IFF_DETACH_QUEUE`.
    fn tun_set_queue(&self, fd: BorrowedFd<'_>, attach: bool) -> io::Result<()>;
    /// The link named `name` in the caller's network namespace (netlink
    /// `RTM_GETLINK`, with the tun driver's attributes), or `None`.
    fn link_state(&self, name: &str) -> io::Result<Option<LinkState>>;
    /// The complete `IFF_*` flags of the tap `link` describes (including
    /// `IFF_ONE_QUEUE` and the NAPI flags, which netlink does not report),
    /// or `None` when they cannot be read for sure (sysfs shows another
    /// network namespace, or no sysfs).
    fn exact_tun_flags(&self, link: &LinkState) -> Option<TunFlags>;
    /// Deletes the link with this index (`RTM_DELLINK`).
    fn delete_link(&self, index: u32) -> io::Result<()>;
    /// Every link of the caller's network namespace (an `RTM_GETLINK`
    /// dump, with the tun driver's attributes, aliases and link groups).
    fn links(&self) -> io::Result<Vec<LinkState>>;
    /// Sets the alias of the link named `ifname` (`RTM_SETLINK`).
    fn set_link_alias(&self, ifname: &str, alias: &str) -> io::Result<()>;
    /// Puts each link of `indices` in link group `group`, in order, over
    /// one netlink socket: one result per index.
    fn set_link_groups(&self, indices: &[u32], group: u32) -> io::Result<Vec<io::Result<()>>>;
    /// Deletes every link of link group `group` at once (`RTM_DELLINK`
    /// with `IFLA_GROUP`).
    fn delete_link_group(&self, group: u32) -> io::Result<()>;
    /// Takes the lock of vmtap's bulk operations in the caller's network
    /// namespace, waiting up to `wait` for another process that holds it;
    /// held until the returned value (if any) is dropped, or the process
    /// dies. `ErrorKind::TimedOut` when it stays taken.
    fn bulk_lock(&self, wait: Duration) -> io::Result<Option<OwnedFd>>;
    /// `SIOCGIFHWADDR` on a bound tun fd: the device's MAC address.
    fn tun_get_hwaddr(&self, fd: BorrowedFd<'_>) -> io::Result<[u8; 6]>;
    /// Whether the device of a bound tun fd is in the caller's network
    /// namespace (`TUNGETDEVNETNS`), or `None` when that cannot be asked.
    fn tun_in_this_netns(&self, fd: BorrowedFd<'_>) -> io::Result<Option<bool>>;
    /// `VHOST_GET_FEATURES`.
    fn vhost_get_features(&self, fd: BorrowedFd<'_>) -> io::Result<u64>;
    /// The (major, minor) of the character device `fd` is open on, or
    /// `None` when it is not a character device (`fstat`).
    fn char_device(&self, fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>>;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Syscalls for Kernel {
    fn open_device(&self, path: &Path) -> io::Result<OwnedFd> {
        // std opens with O_CLOEXEC.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(OwnedFd::from(file))
    }
    fn tun_get_features(&self, fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()> {
        sys::tun_get_features(fd, out)
    }
    /// The TUN driver's features cannot change while the module is loaded
    /// (and it cannot be unloaded while this process holds a tun fd), so
    /// the first successful answer on a clone-device fd is kept.
    fn clone_device_features(&self, fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()> {
        static CACHE: AtomicU64 = AtomicU64::new(0);
        const KNOWN: u64 = 1 << 32;
        let cached = CACHE.load(Ordering::Relaxed);
        if cached & KNOWN != 0 {
            *out = cached as u32;
            return Ok(());
        }
        sys::tun_get_features(fd, out)?;
        CACHE.store(KNOWN | u64::from(*out), Ordering::Relaxed);
        Ok(())
    }
    fn tun_set_iff(&self, fd: BorrowedFd<'_>, name: &str, flags: TunFlags) -> io::Result<String> {
        sys::tun_set_iff(fd, name, flags)
    }
    fn tun_get_iff(&self, fd: BorrowedFd<'_>) -> io::Result<(String, TunFlags)> {
        sys::tun_get_iff(fd)
    }
    fn tun_set_persist(&self, fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
        sys::tun_set_persist(fd, persist)
    }
    fn tun_set_owner(&self, fd: BorrowedFd<'_>, uid: u32) -> io::Result<()> {
        sys::tun_set_owner(fd, uid)
    }
    fn tun_set_group(&self, fd: BorrowedFd<'_>, gid: u32) -> io::Result<()> {
        sys::tun_set_group(fd, gid)
    }
    fn tun_set_offload(&self, fd: BorrowedFd<'_>, offloads: Offloads) -> io::Result<()> {
        sys::tun_set_offload(fd, offloads)
    }
    fn tun_set_vnet_hdr_size(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
        sys::tun_set_vnet_hdr_size(fd, size)
    }
    fn tun_get_vnet_hdr_size(&self, fd: BorrowedFd<'_>) -> io::Result<i32> {
        sys::tun_get_vnet_hdr_size(fd)
    }
    fn tun_set_sndbuf(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
        sys::tun_set_sndbuf(fd, size)
    }
    fn tun_set_queue(&self, fd: BorrowedFd<'_>, attach: bool) -> io::Result<()> {
        sys::tun_set_queue(fd, attach)
    }
    fn link_state(&self, name: &str) -> io::Result<Option<LinkState>> {
        Netlink::open()?.link(name)
    }
    /// Reads `/sys/class/net/NAME/tun_flags`, trusting it only when sysfs
    /// shows this network namespace: the same ifindex, MAC address (random
    /// per tap) and the flags netlink reports must all agree.
    fn exact_tun_flags(&self, link: &LinkState) -> Option<TunFlags> {
        let tun = link.tun.as_ref()?;
        let dir = Path::new("/sys/class/net").join(&link.name);
        // One read of a small attribute file (no size probe first).
        let read = |f: &str| -> Option<String> {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let n = std::fs::File::open(dir.join(f)).ok()?.read(&mut buf).ok()?;
            String::from_utf8(buf[..n].to_vec()).ok()
        };
        let index: u32 = read("ifindex")?.trim().parse().ok()?;
        let mac = read("address")?;
        let flags = read("tun_flags")?;
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
        let flags = TunFlags::from_bits_retain(flags);
        let same = index == link.index
            && link.mac.map(|m| vmtap_sys::format_mac(&m)) == Some(mac.trim().to_string())
            && flags.contains(TunFlags::TAP) == tun.tap
            && flags.contains(TunFlags::NO_PI) != tun.pi
            && flags.contains(TunFlags::VNET_HDR) == tun.vnet_hdr
            && flags.contains(TunFlags::MULTI_QUEUE) == tun.multi_queue
            && flags.contains(TunFlags::PERSIST) == tun.persist;
        same.then_some(flags)
    }
    fn delete_link(&self, index: u32) -> io::Result<()> {
        Netlink::open()?.delete_index(index)
    }
    fn links(&self) -> io::Result<Vec<LinkState>> {
        Netlink::open()?.links()
    }
    fn set_link_alias(&self, ifname: &str, alias: &str) -> io::Result<()> {
        Netlink::open()?.set_alias_by_name(ifname, alias)
    }
    fn set_link_groups(&self, indices: &[u32], group: u32) -> io::Result<Vec<io::Result<()>>> {
        let mut nl = Netlink::open()?;
        Ok(indices.iter().map(|i| nl.set_group(*i, group)).collect())
    }
    fn delete_link_group(&self, group: u32) -> io::Result<()> {
        Netlink::open()?.delete_group(group)
    }
    /// An abstract Unix socket bound to a fixed name: abstract names are
    /// per network namespace, and the kernel frees one when its last fd
    /// goes, so the lock dies with its holder (no stale lock file).
    fn bulk_lock(&self, wait: Duration) -> io::Result<Option<OwnedFd>> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};
        let addr = SocketAddr::from_abstract_name(b"vmtap-bulk-lock")?;
        let deadline = Instant::now() + wait;
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(l) => return Ok(Some(OwnedFd::from(l))),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "another vmtap delete or gc in this network namespace holds the lock",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn tun_get_hwaddr(&self, fd: BorrowedFd<'_>) -> io::Result<[u8; 6]> {
        sys::tun_get_hwaddr(fd)
    }
    fn tun_in_this_netns(&self, fd: BorrowedFd<'_>) -> io::Result<Option<bool>> {
        use std::os::linux::fs::MetadataExt;
        let ns = match sys::tun_get_devnetns(fd) {
            Ok(ns) => std::fs::File::from(ns).metadata()?,
            // Not allowed (no CAP_NET_ADMIN there) or an old kernel.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM) | Some(libc::ENOTTY) | Some(libc::EINVAL)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Network namespaces are per thread: compare with this thread's.
        let mine = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Some(
            ns.st_dev() == mine.st_dev() && ns.st_ino() == mine.st_ino(),
        ))
    }
    fn vhost_get_features(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        sys::vhost_get_features(fd)
    }
    fn char_device(&self, fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
        use rustix::fs::{FileType, fstat, major, minor};
        let st = fstat(fd)?;
        Ok(
            (FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice)
                .then(|| (major(st.st_rdev), minor(st.st_rdev))),
        )
    }
}
