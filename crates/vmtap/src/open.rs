//! The policy: probe the kernel's features, decide the flags, check the
//! name, open N queues (and vhost-net fds) and roll back on any failure.
//!
//! This is Ganeti's `hv_kvm.netdev` (`_GetTunFeatures`, `_ProbeTapVnetHdr`,
//! `_ProbeTapMqVirtioNet`, `OpenTap`), without its defects.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Action, BindMode, Error, NameProblem, Result, explain_open};
use crate::sys::rtnl::{LinkState, TunLinkInfo};
use crate::sys::{IFNAME_MAX, TunFlags};
use crate::syscalls::{Kernel, Syscalls};
use crate::tap::{Tap, TapQueue, TapStatus, bind, lookup_link, open_tun, tap_flags, wait_unused};

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The vhost-net device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";
/// The kernel's limit on queues per tap (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// Reads the kernel's supported TUN features (`TUNGETFEATURES`) from an fd
/// of `/dev/net/tun` (bound or not).
///
/// Ganeti: `_GetTunFeatures`. Like it, a failing ioctl (an old kernel, or an
/// fd that is not a TUN fd) is logged as a warning and gives `None`, meaning
/// "unsupported", rather than an error.
pub fn tun_features(fd: BorrowedFd<'_>) -> Option<TunFlags> {
    tun_features_with(&Kernel, fd)
}

/// [`tun_features`] over any [`Syscalls`] (Ganeti's `_ioctl=` parameter).
pub fn tun_features_with(sys: &dyn Syscalls, fd: BorrowedFd<'_>) -> Option<TunFlags> {
    read_features(|out| sys.tun_get_features(fd, out))
}

/// Runs a TUNGETFEATURES call with a zeroed argument; a failure is logged
/// and means "unsupported".
fn read_features(ioctl: impl FnOnce(&mut u32) -> std::io::Result<()>) -> Option<TunFlags> {
    let mut features = 0u32;
    match ioctl(&mut features) {
        Ok(()) => Some(TunFlags::from_bits_retain(features)),
        Err(e) => {
            log::warn!("ioctl(TUNGETFEATURES) failed: {e}");
            None
        }
    }
}

fn probe_flag(sys: &dyn Syscalls, fd: BorrowedFd<'_>, flag: TunFlags, name: &str) -> bool {
    match tun_features_with(sys, fd) {
        Some(f) if f.contains(flag) => true,
        Some(_) => {
            log::warn!("Kernel does not support {name}, not enabling");
            false
        }
        None => false,
    }
}

/// Whether to enable `IFF_VNET_HDR`: true only when `TUNGETFEATURES` works
/// and reports it; false (with a logged warning) otherwise.
///
/// Ganeti: `_ProbeTapVnetHdr`.
pub fn probe_vnet_hdr(fd: BorrowedFd<'_>) -> bool {
    probe_vnet_hdr_with(&Kernel, fd)
}

/// [`probe_vnet_hdr`] over any [`Syscalls`].
pub fn probe_vnet_hdr_with(sys: &dyn Syscalls, fd: BorrowedFd<'_>) -> bool {
    probe_flag(sys, fd, TunFlags::VNET_HDR, "IFF_VNET_HDR")
}

/// Whether the kernel supports `IFF_MULTI_QUEUE` (Linux 3.8 and later);
/// false (with a logged warning) when the ioctl fails or the flag is absent.
///
/// Ganeti: `_ProbeTapMqVirtioNet`.
pub fn probe_multi_queue(fd: BorrowedFd<'_>) -> bool {
    probe_multi_queue_with(&Kernel, fd)
}

/// [`probe_multi_queue`] over any [`Syscalls`].
pub fn probe_multi_queue_with(sys: &dyn Syscalls, fd: BorrowedFd<'_>) -> bool {
    probe_flag(sys, fd, TunFlags::MULTI_QUEUE, "IFF_MULTI_QUEUE")
}

/// Checks an interface name against the kernel's rules before any syscall:
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:`, NUL or byte the kernel's
/// `isspace()` counts as a space (tab, newline, vertical tab, form feed,
/// carriage return, space, and 0xA0, which is inside UTF-8 characters such
/// as `à`), and at most one `%`, only as `%d` (a template; refused when
/// `allow_template` is false). The kernel would cut a long name silently;
/// we refuse it. A name accepted here is created by the kernel exactly as
/// it is (the property tests check this against the kernel).
pub fn validate_name(name: &str, allow_template: bool) -> Result<()> {
    let kernel_space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0);
    let problem = if name.is_empty() {
        Some(NameProblem::Empty)
    } else if name.len() > IFNAME_MAX {
        Some(NameProblem::TooLong(name.len()))
    } else if name == "." || name == ".." {
        Some(NameProblem::Dot)
    } else if let Some(c) = name.chars().find(|c| matches!(c, '/' | ':')) {
        Some(NameProblem::Forbidden(c))
    } else if name.contains('\0') {
        Some(NameProblem::Nul)
    } else if name.bytes().any(|b| b.is_ascii() && kernel_space(b)) {
        Some(NameProblem::Whitespace)
    } else if let Some(c) = name
        .chars()
        .find(|c| c.to_string().bytes().any(kernel_space))
    {
        Some(NameProblem::SpaceByte(c))
    } else if name.matches('%').count() > 1 || (name.contains('%') && !name.contains("%d")) {
        Some(NameProblem::Percent)
    } else if name.contains("%d") && !allow_template {
        Some(NameProblem::Template)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InvalidName {
            name: name.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Whether to give packets a virtio-net header (`IFF_VNET_HDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VnetHdr {
    /// When the kernel supports it (Ganeti's behaviour). When attaching to
    /// an existing tap, whatever that tap has.
    #[default]
    Auto,
    /// Always; an error when the kernel (or an existing tap) lacks it.
    On,
    /// Never; an error when an existing tap has it.
    Off,
}

impl std::str::FromStr for VnetHdr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(Error::InvalidArgument(format!(
                "vnet_hdr must be auto, on or off, not \"{s}\""
            ))),
        }
    }
}

/// The features of Ganeti's `OpenTap(features=...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Open one `/dev/vhost-net` fd per queue. Default off.
    pub vhost: bool,
    /// Virtio-net header mode. Default auto.
    pub vnet_hdr: VnetHdr,
    /// Number of queues, 1 to 256. Default 1.
    pub queues: usize,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            vhost: false,
            vnet_hdr: VnetHdr::Auto,
            queues: 1,
        }
    }
}

/// Everything [`open_tap_with`] needs; build it with the setters.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Interface name or `%d` template; `None` lets the kernel pick `tapN`.
    pub name: Option<String>,
    /// Features.
    pub features: Features,
    /// Attach to an existing persistent tap that nobody uses instead of
    /// refusing it; its flags are then checked against `features` and never
    /// changed.
    pub attach_existing: bool,
    /// The TUN clone device (default `/dev/net/tun`).
    pub tun_path: PathBuf,
    /// The vhost-net device (default `/dev/vhost-net`).
    pub vhost_path: PathBuf,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            name: None,
            features: Features::default(),
            attach_existing: false,
            tun_path: TUN_PATH.into(),
            vhost_path: VHOST_NET_PATH.into(),
        }
    }
}

impl OpenOptions {
    /// Default options: kernel-chosen name, 1 queue, vnet_hdr auto, no vhost.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the interface name or template.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets the number of queues.
    pub fn queues(mut self, queues: usize) -> Self {
        self.features.queues = queues;
        self
    }
    /// Sets the vnet header mode.
    pub fn vnet_hdr(mut self, mode: VnetHdr) -> Self {
        self.features.vnet_hdr = mode;
        self
    }
    /// Opens vhost-net fds too.
    pub fn vhost(mut self, on: bool) -> Self {
        self.features.vhost = on;
        self
    }
    /// Attaches to an existing tap instead of refusing it.
    pub fn attach_existing(mut self, on: bool) -> Self {
        self.attach_existing = on;
        self
    }
    /// Uses another TUN clone device (tests).
    pub fn tun_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.tun_path = path.into();
        self
    }
    /// Uses another vhost-net device (tests, or a stand-in).
    pub fn vhost_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.vhost_path = path.into();
        self
    }

    /// Checks the options without touching the system.
    pub fn validate(&self) -> Result<()> {
        let q = self.features.queues;
        if !(1..=MAX_QUEUES).contains(&q) {
            return Err(Error::InvalidQueues(q));
        }
        match &self.name {
            Some(name) => validate_name(name, !self.attach_existing)?,
            None if self.attach_existing => {
                return Err(Error::InvalidArgument(
                    "attaching to an existing tap needs its name".into(),
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// Opens the tap with the real kernel.
    pub fn open(&self) -> Result<Tap> {
        open_tap_with(Arc::new(Kernel), self)
    }
}

/// Opens a tap for QEMU: the interface name, one tap fd per queue and, with
/// vhost, one vhost-net fd per queue.
///
/// Ganeti: `OpenTap(name, features)`. Differences:
/// - the name is checked first, and `None` (Ganeti's `""`) lets the kernel
///   pick a name for the first queue, to which every later queue attaches:
///   one device with N queues, never N devices (Ganeti issue #1268);
/// - by default an existing interface is refused (`IFF_TUN_EXCL`), so two
///   VMs never share a tap; see [`OpenOptions::attach_existing`];
/// - several queues on a kernel without `IFF_MULTI_QUEUE` is an error, not
///   a silent fallback that fails later with `EBUSY`;
/// - `vnet_hdr` can be forced on or off, not only probed;
/// - any failure closes every fd already opened and leaves no interface;
/// - fds are [`OwnedFd`]s opened close-on-exec.
///
/// ```no_run
/// use vmtap::{open_tap, Features};
/// let tap = open_tap(None, &Features { queues: 4, ..Features::default() })?;
/// println!("{} has {} queues", tap.name(), tap.queues().len());
/// # Ok::<(), vmtap::Error>(())
/// ```
pub fn open_tap(name: Option<&str>, features: &Features) -> Result<Tap> {
    let opts = OpenOptions {
        name: name.map(str::to_string),
        features: *features,
        ..OpenOptions::default()
    };
    opts.open()
}

/// [`open_tap`] with every option, over any [`Syscalls`].
pub fn open_tap_with(sys: Arc<dyn Syscalls>, opts: &OpenOptions) -> Result<Tap> {
    opts.validate()?;
    match opts.name.as_deref() {
        Some(name) if opts.attach_existing => attach(sys, opts, name),
        name => create(sys, opts, name.unwrap_or("")),
    }
}

/// Creates a new tap (refusing an existing interface) with N queues.
fn create(sys: Arc<dyn Syscalls>, opts: &OpenOptions, name: &str) -> Result<Tap> {
    let queues = opts.features.queues;
    let first = open_tun(&*sys, &opts.tun_path)?;
    let features = read_features(|out| sys.clone_device_features(first.as_fd(), out));
    let supported = |flag: TunFlags| features.is_some_and(|f| f.contains(flag));

    let vnet_hdr = match opts.features.vnet_hdr {
        VnetHdr::Off => false,
        VnetHdr::On if !supported(TunFlags::VNET_HDR) => return Err(Error::VnetHdrUnsupported),
        VnetHdr::On => true,
        VnetHdr::Auto => {
            let on = supported(TunFlags::VNET_HDR);
            if !on {
                log::warn!("Kernel does not support IFF_VNET_HDR, not enabling");
            }
            on
        }
    };
    let multi_queue = queues > 1;
    if multi_queue && !supported(TunFlags::MULTI_QUEUE) {
        return Err(Error::MultiQueueUnsupported(queues));
    }

    // vhost-net first: when it is missing, no interface is created at all.
    let vhost = open_vhosts(&*sys, opts)?;

    // Queue 0 creates the device, refusing an existing one; queues 1..
    // attach to queue 0's device by the name the kernel gave it.
    let flags = tap_flags(multi_queue, vnet_hdr);
    let create_flags = flags | TunFlags::TUN_EXCL;
    let ifname = bind(
        &*sys,
        first.as_fd(),
        name,
        create_flags,
        BindMode::Create,
        0,
    )?;
    log::debug!("queue 0 created {ifname} with {create_flags:?}");
    let mut tap_queues = Vec::with_capacity(queues);
    tap_queues.push(TapQueue::with_sys(first, sys.clone()));
    for k in 1..queues {
        let fd = open_tun(&*sys, &opts.tun_path)?;
        bind(&*sys, fd.as_fd(), &ifname, flags, BindMode::AddQueue, k)?;
        tap_queues.push(TapQueue::with_sys(fd, sys.clone()));
    }
    Ok(Tap {
        name: ifname,
        flags,
        queues: tap_queues,
        vhost,
    })
}

/// The flags a queue must bind with to attach to the (idle) tap `link`
/// without changing it: the first queue to attach to an idle tap sets
/// them. Its complete flags when sysfs shows them for sure; else the ones
/// netlink reports. Netlink does not report `IFF_ONE_QUEUE`
/// (no effect since Linux 3.8) nor the NAPI flags: without a trusted sysfs
/// they are taken as off, as `vmtap create`, `ip tuntap` and QEMU make taps.
fn existing_flags(sys: &dyn Syscalls, link: &LinkState, tun: &TunLinkInfo) -> TunFlags {
    let kept = TunFlags::TAP
        | TunFlags::NO_PI
        | TunFlags::ONE_QUEUE
        | TunFlags::VNET_HDR
        | TunFlags::MULTI_QUEUE
        | TunFlags::NAPI
        | TunFlags::NAPI_FRAGS;
    if let Some(exact) = sys.exact_tun_flags(link) {
        return exact & kept;
    }
    let mut flags = tap_flags(tun.multi_queue, tun.vnet_hdr) - TunFlags::ONE_QUEUE;
    flags.set(TunFlags::NO_PI, !tun.pi);
    flags
}

/// Attaches N queues to the existing persistent tap `name`, which nobody
/// uses, without creating or changing it: its flags are read over netlink
/// first and the queues bind with exactly those; a request that disagrees,
/// a tap that is not persistent and a tap in use are refused before any
/// queue is bound.
fn attach(sys: Arc<dyn Syscalls>, opts: &OpenOptions, name: &str) -> Result<Tap> {
    let queues = opts.features.queues;
    let link = lookup_link(&*sys, name, Action::Attach)?;
    let status = TapStatus::from_link(&link)?;
    let tun = link.tun.clone().expect("a tap has tun attributes");
    check_existing(name, opts.features.vnet_hdr, queues > 1, &tun)?;
    // A tap that lives only with its fds belongs to whoever holds them,
    // and a tap with queues attached is some VM's: never share one.
    if !status.persistent {
        return Err(Error::NotPersistent(name.to_string()));
    }
    let (link, _) = wait_unused(&*sys, link, Action::Attach)?;
    let flags = existing_flags(&*sys, &link, &tun);
    log::debug!("{name} exists (index {}) with {flags:?}", link.index);

    let vhost = open_vhosts(&*sys, opts)?;
    let mut tap_queues = Vec::with_capacity(queues);
    for k in 0..queues {
        let fd = open_tun(&*sys, &opts.tun_path)?;
        bind(&*sys, fd.as_fd(), name, flags, BindMode::Attach, k)?;
        // The tap may have been removed since it was looked up, and this
        // bind created a new one: its MAC address (random per tap) and
        // persistence tell. Dropping the fd removes what was created.
        let same = sys.tun_get_hwaddr(fd.as_fd()).ok() == link.mac
            && sys
                .tun_get_iff(fd.as_fd())
                .is_ok_and(|(_, f)| f.contains(TunFlags::PERSIST));
        if !same {
            return Err(Error::Vanished(name.to_string()));
        }
        tap_queues.push(TapQueue::with_sys(fd, sys.clone()));
    }
    // Another process may have attached between the look-up and the binds
    // (a single-queue tap refuses a second queue itself): count again.
    if tun.multi_queue {
        let now = lookup_link(&*sys, name, Action::Attach)?;
        let users = TapStatus::from_link(&now)?.users() as usize;
        if now.index != link.index || users < queues {
            return Err(Error::Vanished(name.to_string()));
        }
        if users > queues {
            return Err(Error::InUse {
                ifname: name.to_string(),
                queues: (users - queues) as u32,
            });
        }
    }
    Ok(Tap {
        name: name.to_string(),
        flags,
        queues: tap_queues,
        vhost,
    })
}

/// Refuses to attach when the tap's settings differ from the request:
/// vmtap never changes an existing tap's flags.
fn check_existing(ifname: &str, vnet: VnetHdr, multi_queue: bool, tun: &TunLinkInfo) -> Result<()> {
    let mismatch = |detail: String| {
        Err(Error::Mismatch {
            ifname: ifname.to_string(),
            detail,
        })
    };
    if tun.multi_queue != multi_queue {
        return mismatch(format!(
            "its multi-queue setting differs (the tap is {}, {} was asked)",
            if tun.multi_queue {
                "multi-queue"
            } else {
                "single-queue"
            },
            if multi_queue {
                "more than 1 queue"
            } else {
                "1 queue"
            },
        ));
    }
    if tun.pi {
        return mismatch(
            "it has packet-information headers (pi on); QEMU needs a tap without them".into(),
        );
    }
    match vnet {
        VnetHdr::On if !tun.vnet_hdr => mismatch("vnet_hdr is off but on was asked".into()),
        VnetHdr::Off if tun.vnet_hdr => mismatch("vnet_hdr is on but off was asked".into()),
        _ => Ok(()),
    }
}

/// Opens one vhost-net fd per queue (none without vhost), checking that
/// the node is a vhost-net device (`VHOST_GET_FEATURES` offers
/// `VHOST_NET_F_VIRTIO_NET_HDR`, which only vhost-net has).
fn open_vhosts(sys: &dyn Syscalls, opts: &OpenOptions) -> Result<Vec<OwnedFd>> {
    if !opts.features.vhost {
        return Ok(Vec::new());
    }
    let path = &opts.vhost_path;
    let mut vhost = Vec::with_capacity(opts.features.queues);
    for _ in 0..opts.features.queues {
        let fd = sys
            .open_device(path)
            .map_err(|source| Error::VhostUnavailable {
                path: path.to_path_buf(),
                cause: explain_open(&source, "vhost_net"),
                source,
            })?;
        check_vhost_net(sys, fd.as_fd(), path)?;
        vhost.push(fd);
    }
    Ok(vhost)
}

/// Opens `path` and checks that it is a usable vhost-net device (as
/// `OpenOptions::vhost` would), then closes it.
pub fn check_vhost_net_path(path: &Path) -> Result<()> {
    let mut opts = OpenOptions::new().vhost(true).vhost_path(path);
    opts.features.queues = 1;
    open_vhosts(&Kernel, &opts).map(drop)
}

/// Checks that `fd` (opened from `path`) is the vhost-net device: the
/// character device 10:238 (fixed for vhost-net; vhost-vsock, vhost-scsi
/// and vhost-vdpa have other numbers but answer the same ioctls), on which
/// `VHOST_GET_FEATURES` works (the module is there behind the node).
pub(crate) fn check_vhost_net(sys: &dyn Syscalls, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let not = |cause: String| {
        Err(Error::NotVhostNet {
            path: path.to_path_buf(),
            cause,
        })
    };
    let (major, minor) = crate::sys::VHOST_NET_DEVICE;
    match sys.char_device(fd) {
        Ok(Some(dev)) if dev == (major, minor) => {}
        Ok(Some((a, b))) => {
            return not(format!(
                "it is character device {a}:{b}, not vhost-net's {major}:{minor}"
            ));
        }
        Ok(None) => return not("it is not a character device".into()),
        Err(e) => return not(format!("fstat failed: {e}")),
    }
    match sys.vhost_get_features(fd) {
        Ok(_) => Ok(()),
        Err(e) => not(format!("VHOST_GET_FEATURES failed: {e}")),
    }
}

#[cfg(test)]
mod tests;
