//! The policy: probe the kernel's features, decide the flags, check the
//! name, open N queues (and vhost-net fds) and roll back on any failure.
//!
//! This is Ganeti's `hv_kvm.netdev` (`_GetTunFeatures`, `_ProbeTapVnetHdr`,
//! `_ProbeTapMqVirtioNet`, `OpenTap`), without its defects.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{
    Action, BindMode, Difference, Error, Result, VhostProblem, explain_bind, explain_open,
};
use crate::names::{self, MAX_QUEUES, validate_name};
use crate::owner::Ownership;
use crate::syscalls::Syscalls;
use crate::tap::{Tap, TapQueue, TapStatus, bind, lookup_link, open_tun, tap_flags, wait_unused};
use crate::tun::Tun;
use vmtap_sys::rtnl::{LinkState, TunLinkInfo};
use vmtap_sys::{TUN_FEATURES, TunFlags};

/// Reads the kernel's supported TUN features (`TUNGETFEATURES`) from an fd
/// of `/dev/net/tun` (bound or not).
///
/// Ganeti: `_GetTunFeatures`. Like it, a failing ioctl (an old kernel, or an
/// fd that is not a TUN fd) is logged as a warning and gives `None`, meaning
/// "unsupported", rather than an error. [`Tun::features_of`] over another
/// [`Syscalls`] (Ganeti's `_ioctl=` parameter).
pub fn tun_features(fd: BorrowedFd<'_>) -> Option<TunFlags> {
    Tun::system().features_of(fd)
}

/// Whether to enable `IFF_VNET_HDR`: true only when `TUNGETFEATURES` works
/// and reports it; false (with a logged warning) otherwise.
///
/// Ganeti: `_ProbeTapVnetHdr`.
pub fn probe_vnet_hdr(fd: BorrowedFd<'_>) -> bool {
    Tun::system().probe_vnet_hdr(fd)
}

/// Whether the kernel supports `IFF_MULTI_QUEUE` (Linux 3.8 and later);
/// false (with a logged warning) when the ioctl fails or the flag is absent.
///
/// Ganeti: `_ProbeTapMqVirtioNet`.
pub fn probe_multi_queue(fd: BorrowedFd<'_>) -> bool {
    Tun::system().probe_multi_queue(fd)
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

/// What the kernel supports, for a report (`vmtap features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureReport {
    /// `TUNGETFEATURES` on a fresh fd of the clone device (`None` when the
    /// ioctl fails: an old kernel).
    pub flags: Option<TunFlags>,
    /// The vhost-net device opens and is vhost-net.
    pub vhost_net: bool,
}

impl FeatureReport {
    /// Whether `flag` is supported.
    pub fn has(&self, flag: TunFlags) -> bool {
        self.flags.is_some_and(|f| f.contains(flag))
    }
}

impl Tun {
    /// [`tun_features`] over this context's kernel.
    pub fn features_of(&self, fd: BorrowedFd<'_>) -> Option<TunFlags> {
        read_features(|out| self.sys().tun_get_features(fd, out))
    }

    fn probe_flag(&self, fd: BorrowedFd<'_>, flag: TunFlags, name: &str) -> bool {
        match self.features_of(fd) {
            Some(f) if f.contains(flag) => true,
            Some(_) => {
                log::warn!("Kernel does not support {name}, not enabling");
                false
            }
            None => false,
        }
    }

    /// [`probe_vnet_hdr`] over this context's kernel.
    pub fn probe_vnet_hdr(&self, fd: BorrowedFd<'_>) -> bool {
        self.probe_flag(fd, TunFlags::VNET_HDR, "IFF_VNET_HDR")
    }

    /// [`probe_multi_queue`] over this context's kernel.
    pub fn probe_multi_queue(&self, fd: BorrowedFd<'_>) -> bool {
        self.probe_flag(fd, TunFlags::MULTI_QUEUE, "IFF_MULTI_QUEUE")
    }

    /// What the kernel supports: `TUNGETFEATURES` on a fresh fd of the
    /// clone device, and whether the vhost-net device is usable. An error
    /// when the clone device cannot be opened.
    pub fn features(&self) -> Result<FeatureReport> {
        let fd = open_tun(self)?;
        let flags = self.features_of(fd.as_fd());
        let vhost = self.check_vhost_net();
        if let Err(e) = &vhost {
            log::debug!("{e}");
        }
        Ok(FeatureReport {
            flags,
            vhost_net: vhost.is_ok(),
        })
    }

    /// Opens the vhost-net device and checks that it is one (as
    /// [`OpenOptions::vhost`] would), then closes it.
    pub fn check_vhost_net(&self) -> Result<()> {
        open_vhosts(self, 1).map(drop)
    }

    /// Takes the fds of one tap that another process opened (a bridge
    /// helper sent them) as a [`Tap`], checking first, with `TUNGETIFF`,
    /// that they are what QEMU can use: one TAP device ([`Tun::check_queues`]:
    /// the same device, consistent flags, multi-queue when there are
    /// several), without packet-information headers, and with a
    /// virtio-net header as `vnet_hdr` asks (`Auto`: either). (Packet
    /// information is seen over netlink, so only for a device in this
    /// network namespace: `TUNGETIFF` does not show it.) With
    /// `vhost`, one vhost-net fd per queue is opened too. On any failure
    /// every fd given is closed (a tap that lives only with its fds goes
    /// with them).
    pub fn adopt_tap(&self, fds: Vec<OwnedFd>, vnet_hdr: VnetHdr, vhost: bool) -> Result<Tap> {
        // Only fds of the TUN/TAP device are asked TAP ioctls: the same
        // number could mean something else to another driver.
        for fd in &fds {
            match self.sys().char_device(fd.as_fd()) {
                Ok(Some(dev)) if dev == vmtap_sys::TUN_DEVICE => {}
                other => {
                    let cause = match other {
                        Ok(Some((major, minor))) => {
                            format!(
                                "it is character device {major}:{minor}, not /dev/net/tun's 10:200"
                            )
                        }
                        Ok(None) => "it is not a character device".to_string(),
                        Err(e) => format!("fstat failed: {e}"),
                    };
                    return Err(Error::NotATapFd {
                        fd: fd.as_raw_fd(),
                        cause,
                        source: std::io::Error::from_raw_os_error(libc::ENOTTY),
                    });
                }
            }
        }
        let info = {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            self.check_queues(&borrowed)?
        };
        let differs = |difference| {
            Err(Error::NotAsAsked {
                ifname: info.name.clone(),
                difference,
            })
        };
        // TUNGETIFF cannot tell: it reports IFF_NOFILTER, the same bit as
        // IFF_NO_PI, on every fd without a socket filter. Netlink tells,
        // for a device in this network namespace.
        let pi = self
            .inspect_fd_status(fds[0].as_fd())?
            .status
            .is_some_and(|st| st.pi);
        if pi {
            return differs(Difference::PacketInfo);
        }
        match vnet_hdr {
            VnetHdr::On if !info.vnet_hdr() => return differs(Difference::VnetHdr { tap: false }),
            VnetHdr::Off if info.vnet_hdr() => return differs(Difference::VnetHdr { tap: true }),
            _ => {}
        }
        let vhost = open_vhosts(self, if vhost { fds.len() } else { 0 })?;
        Ok(Tap {
            // As TUNGETIFF reports the device.
            flags: info.flags & (TunFlags::TAP | TUN_FEATURES | TunFlags::PERSIST),
            name: info.name,
            queues: fds
                .into_iter()
                .map(|fd| TapQueue::new(fd, self.clone()))
                .collect(),
            vhost,
        })
    }

    /// Opens a tap for QEMU (see [`open_tap`] for what differs from
    /// Ganeti): one tap fd per queue and, with vhost, one vhost-net fd per
    /// queue; with [`OpenOptions::attach_existing`], attaches to a
    /// persistent tap nobody uses without changing it.
    pub fn open(&self, opts: &OpenOptions) -> Result<Tap> {
        opts.validate()?;
        match opts.name.as_deref() {
            Some(name) if opts.attach_existing => attach(self, opts, name),
            name => create(self, opts, name),
        }
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
            _ => Err(Error::InvalidVnetHdr(s.to_string())),
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

/// What to open; build it with the setters, open it with [`Tun::open`] (or
/// [`OpenOptions::open`] on the real kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Interface name or `%d` template (the kernel numbers it); `None`:
    /// vmtap picks a free `tapN` (see [`crate::names::next_auto_name`]).
    pub name: Option<String>,
    /// Features.
    pub features: Features,
    /// Attach to an existing persistent tap that nobody uses instead of
    /// refusing it; its flags are then checked against `features` and never
    /// changed.
    pub attach_existing: bool,
    /// Record who owns the tap in its alias (see [`crate::owner`]); only
    /// for a tap this call creates.
    pub ownership: Option<Ownership>,
}

impl OpenOptions {
    /// Default options: a name vmtap picks, 1 queue, vnet_hdr auto, no
    /// vhost, no ownership recorded.
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
    /// Records `ownership` in the alias of the tap created (`None`: no
    /// alias). An attached tap is left as it is.
    pub fn ownership(mut self, ownership: impl Into<Option<Ownership>>) -> Self {
        self.ownership = ownership.into();
        self
    }
    /// Sets the features at once.
    pub fn features(mut self, features: Features) -> Self {
        self.features = features;
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
                return Err(Error::AttachNeedsName);
            }
            None => {}
        }
        Ok(())
    }

    /// Opens the tap with the real kernel: `Tun::system().open(self)`.
    pub fn open(&self) -> Result<Tap> {
        Tun::system().open(self)
    }
}

/// Opens a tap for QEMU: the interface name, one tap fd per queue and, with
/// vhost, one vhost-net fd per queue.
///
/// Ganeti: `OpenTap(name, features)`. Differences:
/// - the name is checked first, and `None` (Ganeti's `""`) lets vmtap
///   pick a free `tapN` for the first queue (at a cost that does not grow
///   with the number of interfaces, unlike the kernel's `tap%d`), to which
///   every later queue attaches: one device with N queues, never N devices
///   (Ganeti issue #1268);
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
    let opts = OpenOptions::new().features(*features);
    let opts = match name {
        Some(name) => opts.name(name),
        None => opts,
    };
    opts.open()
}

/// Creates a new tap (refusing an existing interface) with N queues.
fn create(tun: &Tun, opts: &OpenOptions, name: Option<&str>) -> Result<Tap> {
    let sys = tun.sys();
    let queues = opts.features.queues;
    let first = open_tun(tun)?;
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
    let vhost = open_vhosts(tun, if opts.features.vhost { queues } else { 0 })?;

    // Queue 0 creates the device, refusing an existing one; queues 1..
    // attach to queue 0's device by the name the kernel gave it.
    let flags = tap_flags(multi_queue, vnet_hdr);
    let create_flags = flags | TunFlags::TUN_EXCL;
    let ifname = bind_new(sys, first.as_fd(), name, create_flags)?;
    log::debug!("queue 0 created {ifname} with {create_flags:?}");
    let mut tap_queues = Vec::with_capacity(queues);
    tap_queues.push(TapQueue::new(first, tun.clone()));
    if let Some(own) = &opts.ownership {
        tag_link(sys, &ifname, own)?;
    }
    for k in 1..queues {
        let fd = open_tun(tun)?;
        bind(sys, fd.as_fd(), &ifname, flags, BindMode::AddQueue, k)?;
        tap_queues.push(TapQueue::new(fd, tun.clone()));
    }
    Ok(Tap {
        name: ifname,
        flags,
        queues: tap_queues,
        vhost,
    })
}

/// Binds queue 0 of a new tap, refusing an existing interface
/// (`IFF_TUN_EXCL` must be in `flags`): with `name`, or, without, with the
/// next free name of this process's sequence ([`names::next_auto_name`]),
/// trying another when one is taken; after [`names::AUTO_NAME_ATTEMPTS`]
/// taken names the kernel's `tap%d` chooses.
pub(crate) fn bind_new(
    sys: &dyn Syscalls,
    fd: BorrowedFd<'_>,
    name: Option<&str>,
    flags: TunFlags,
) -> Result<String> {
    if let Some(name) = name {
        return bind(sys, fd, name, flags, BindMode::Create, 0);
    }
    for _ in 0..names::AUTO_NAME_ATTEMPTS {
        let candidate = names::next_auto_name();
        match sys.tun_set_iff(fd, &candidate, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                log::debug!("{candidate} is taken, trying another name");
                names::skip_taken_names();
            }
            Ok(ifname) => return Ok(ifname),
            Err(source) => {
                return Err(Error::Bind {
                    mode: BindMode::Create,
                    ifname: candidate.clone(),
                    queue: 0,
                    cause: explain_bind(&source, BindMode::Create, &candidate),
                    source,
                });
            }
        }
    }
    log::warn!(
        "{} names vmtap chose were taken: letting the kernel choose",
        names::AUTO_NAME_ATTEMPTS
    );
    bind(sys, fd, "", flags, BindMode::Create, 0)
}

/// Records `own` in the alias of the tap `ifname` this process created.
pub(crate) fn tag_link(sys: &dyn Syscalls, ifname: &str, own: &Ownership) -> Result<()> {
    sys.set_link_alias(ifname, &own.to_alias())
        .map_err(|source| Error::Tagging {
            ifname: ifname.to_string(),
            source,
        })
}

/// The flags a queue must bind with to attach to the (idle) tap `link`
/// without changing it: the first queue to attach to an idle tap sets
/// them. Its complete flags when sysfs shows them for sure; else the ones
/// netlink reports. Netlink does not report `IFF_ONE_QUEUE`
/// (no effect since Linux 3.8) nor the NAPI flags: without a trusted sysfs
/// they are taken as off, as `vmtap create`, `ip tuntap` and QEMU make taps.
fn existing_flags(sys: &dyn Syscalls, link: &LinkState, tun: &TunLinkInfo) -> TunFlags {
    if let Some(exact) = sys.exact_tun_flags(link) {
        return exact & (TunFlags::TAP | TUN_FEATURES);
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
fn attach(tun: &Tun, opts: &OpenOptions, name: &str) -> Result<Tap> {
    let sys = tun.sys();
    let queues = opts.features.queues;
    let link = lookup_link(sys, name, Action::Attach)?;
    let status = TapStatus::from_link(&link)?;
    let info = link.tun.clone().expect("a tap has tun attributes");
    check_existing(name, opts.features.vnet_hdr, queues > 1, &info)?;
    // A tap that lives only with its fds belongs to whoever holds them,
    // and a tap with queues attached is some VM's: never share one.
    if !status.persistent {
        return Err(Error::NotPersistent(name.to_string()));
    }
    let (link, _) = wait_unused(sys, link, Action::Attach)?;
    let flags = existing_flags(sys, &link, &info);
    log::debug!("{name} exists (index {}) with {flags:?}", link.index);

    let vhost = open_vhosts(tun, if opts.features.vhost { queues } else { 0 })?;
    let mut tap_queues = Vec::with_capacity(queues);
    for k in 0..queues {
        let fd = open_tun(tun)?;
        bind(sys, fd.as_fd(), name, flags, BindMode::Attach, k)?;
        // The tap may have been removed since it was looked up, and this
        // bind created a new one: its MAC address (random per tap) tells.
        // Dropping the fd removes what was created.
        if sys.tun_get_hwaddr(fd.as_fd()).ok() != link.mac {
            return Err(Error::Vanished(name.to_string()));
        }
        tap_queues.push(TapQueue::new(fd, tun.clone()));
    }
    // Another process may have attached between the look-up and the binds
    // (a single-queue tap refuses a second queue itself): count again.
    if info.multi_queue {
        let now = lookup_link(sys, name, Action::Attach)?;
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
        // As TUNGETIFF reports the device's flags: it is persistent.
        flags: flags | TunFlags::PERSIST,
        queues: tap_queues,
        vhost,
    })
}

/// Refuses to attach when the tap's settings differ from the request:
/// vmtap never changes an existing tap's flags.
fn check_existing(ifname: &str, vnet: VnetHdr, multi_queue: bool, tun: &TunLinkInfo) -> Result<()> {
    let difference = if tun.multi_queue != multi_queue {
        Some(Difference::MultiQueue {
            tap: tun.multi_queue,
        })
    } else if tun.pi {
        Some(Difference::PacketInfo)
    } else {
        match vnet {
            VnetHdr::On if !tun.vnet_hdr => Some(Difference::VnetHdr { tap: false }),
            VnetHdr::Off if tun.vnet_hdr => Some(Difference::VnetHdr { tap: true }),
            _ => None,
        }
    };
    match difference {
        Some(difference) => Err(Error::Mismatch {
            ifname: ifname.to_string(),
            difference,
        }),
        None => Ok(()),
    }
}

/// Opens `count` fds of the vhost-net device, checking that it is one.
fn open_vhosts(tun: &Tun, count: usize) -> Result<Vec<OwnedFd>> {
    let path = &tun.paths().vhost_net;
    let mut vhost = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = tun
            .sys()
            .open_device(path)
            .map_err(|source| Error::VhostUnavailable {
                path: path.to_path_buf(),
                cause: explain_open(&source, "vhost_net"),
                source,
            })?;
        check_vhost_net(tun.sys(), fd.as_fd(), path)?;
        vhost.push(fd);
    }
    Ok(vhost)
}

/// Checks that `fd` (opened from `path`) is the vhost-net device: the
/// character device 10:238 (fixed for vhost-net; vhost-vsock, vhost-scsi
/// and vhost-vdpa have other numbers but answer the same ioctls), on which
/// `VHOST_GET_FEATURES` works (the module is there behind the node).
pub(crate) fn check_vhost_net(sys: &dyn Syscalls, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let refused = |problem: VhostProblem| Error::NotVhostNet {
        path: path.to_path_buf(),
        problem,
    };
    match sys.char_device(fd) {
        Ok(Some(dev)) if dev == vmtap_sys::VHOST_NET_DEVICE => {}
        Ok(Some((major, minor))) => {
            return Err(refused(VhostProblem::OtherDevice { major, minor }));
        }
        Ok(None) => return Err(refused(VhostProblem::NotCharDevice)),
        Err(e) => return Err(refused(VhostProblem::Fstat(e))),
    }
    sys.vhost_get_features(fd)
        .map(drop)
        .map_err(|e| refused(VhostProblem::GetFeatures(e)))
}

#[cfg(test)]
mod tests;
