//! The tap model: a queue is an owned fd bound to an interface; a tap is a
//! name plus its queues (and vhost-net fds). Inspection, persistent taps,
//! queue attach/detach, offloads and the vnet header size live here.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{
    Action, BindMode, Error, QueueProblem, Result, explain_bind, explain_ioctl, explain_open,
};
use crate::names::validate_name;
use crate::owner::Ownership;
use crate::syscalls::Syscalls;
use crate::tun::Tun;
use vmtap_sys::rtnl::LinkState;
use vmtap_sys::{Offloads, TunFlags};

/// What `TUNGETIFF` says about a bound fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInfo {
    /// The interface name.
    pub name: String,
    /// The device's flags (`PERSIST` included when persistent).
    pub flags: TunFlags,
}

impl TapInfo {
    /// A layer-2 TAP device (not a TUN).
    pub fn is_tap(&self) -> bool {
        self.flags.contains(TunFlags::TAP)
    }
    /// Packets carry no packet-information header.
    pub fn no_pi(&self) -> bool {
        self.flags.contains(TunFlags::NO_PI)
    }
    /// Packets carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.flags.contains(TunFlags::VNET_HDR)
    }
    /// A multi-queue device.
    pub fn multi_queue(&self) -> bool {
        self.flags.contains(TunFlags::MULTI_QUEUE)
    }
    /// The device outlives its fds.
    pub fn persistent(&self) -> bool {
        self.flags.contains(TunFlags::PERSIST)
    }
}

/// One queue of a tap: an fd of `/dev/net/tun` bound to the interface.
///
/// Dropping it closes the fd; the kernel removes a non-persistent device
/// when its last queue is closed.
pub struct TapQueue {
    fd: OwnedFd,
    tun: Tun,
}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapQueue").field("fd", &self.fd).finish()
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<TapQueue> for OwnedFd {
    fn from(q: TapQueue) -> OwnedFd {
        q.fd
    }
}

fn ioctl_err(op: &'static str, ifname: &str, source: std::io::Error) -> Error {
    Error::Ioctl {
        op,
        ifname: ifname.to_string(),
        cause: explain_ioctl(&source),
        source,
    }
}

impl TapQueue {
    /// Wraps an fd that is bound to a tap (for example one inherited from a
    /// parent process); the real kernel is used for its ioctls.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self::new(fd, Tun::system())
    }

    pub(crate) fn new(fd: OwnedFd, tun: Tun) -> Self {
        Self { fd, tun }
    }

    fn sys(&self) -> &dyn Syscalls {
        self.tun.sys()
    }

    /// `TUNGETIFF`: the interface name and flags.
    pub fn info(&self) -> Result<TapInfo> {
        self.tun.inspect_fd(self.fd.as_fd())
    }

    /// Detaches this queue (`TUNSETQUEUE` + `IFF_DETACH_QUEUE`): it stops
    /// receiving packets but stays bound. Multi-queue taps only.
    pub fn detach(&self) -> Result<()> {
        self.check(
            "TUNSETQUEUE(detach)",
            self.sys().tun_set_queue(self.fd.as_fd(), false),
        )
    }

    /// Re-attaches a detached queue (`TUNSETQUEUE` + `IFF_ATTACH_QUEUE`).
    pub fn attach(&self) -> Result<()> {
        self.check(
            "TUNSETQUEUE(attach)",
            self.sys().tun_set_queue(self.fd.as_fd(), true),
        )
    }

    /// `TUNSETOFFLOAD` with exactly these offloads.
    pub fn set_offloads(&self, offloads: Offloads) -> Result<()> {
        self.check(
            "TUNSETOFFLOAD",
            self.sys().tun_set_offload(self.fd.as_fd(), offloads),
        )
    }

    /// Sets the offloads, falling back as QEMU does when the kernel refuses
    /// some of them (`EINVAL`): first without USO4/USO6, then also without
    /// UFO. Returns the offloads that were set.
    pub fn set_offloads_with_fallback(&self, wanted: Offloads) -> Result<Offloads> {
        let no_uso = wanted - (Offloads::USO4 | Offloads::USO6);
        let mut candidates = vec![wanted];
        for fallback in [no_uso, no_uso - Offloads::UFO] {
            if !candidates.contains(&fallback) {
                candidates.push(fallback);
            }
        }
        let last = candidates.len() - 1;
        for (i, candidate) in candidates.into_iter().enumerate() {
            match self.sys().tun_set_offload(self.fd.as_fd(), candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if i < last && e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!("TUNSETOFFLOAD {candidate:?} refused, falling back");
                }
                Err(e) => return self.check("TUNSETOFFLOAD", Err(e)),
            }
        }
        unreachable!("the last candidate returns")
    }

    /// `TUNSETVNETHDRSZ` (the kernel accepts 10 or more).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<()> {
        self.check(
            "TUNSETVNETHDRSZ",
            self.sys().tun_set_vnet_hdr_size(self.fd.as_fd(), size),
        )
    }

    /// `TUNGETVNETHDRSZ`.
    pub fn vnet_hdr_size(&self) -> Result<i32> {
        self.check(
            "TUNGETVNETHDRSZ",
            self.sys().tun_get_vnet_hdr_size(self.fd.as_fd()),
        )
    }

    /// `TUNSETSNDBUF`.
    pub fn set_sndbuf(&self, size: i32) -> Result<()> {
        self.check(
            "TUNSETSNDBUF",
            self.sys().tun_set_sndbuf(self.fd.as_fd(), size),
        )
    }

    /// Turns a failed ioctl into an [`Error::Ioctl`] naming the interface
    /// (looked up only on failure).
    fn check<T>(&self, op: &'static str, result: std::io::Result<T>) -> Result<T> {
        result.map_err(|e| {
            let name = self
                .sys()
                .tun_get_iff(self.fd.as_fd())
                .map(|(n, _)| n)
                .unwrap_or_default();
            ioctl_err(op, &name, e)
        })
    }
}

/// An opened tap: the interface name, one queue per fd, and (with vhost)
/// one `/dev/vhost-net` fd per queue. Owns every fd; dropping it closes them.
#[derive(Debug)]
pub struct Tap {
    pub(crate) name: String,
    pub(crate) flags: TunFlags,
    pub(crate) queues: Vec<TapQueue>,
    pub(crate) vhost: Vec<OwnedFd>,
}

impl Tap {
    /// The interface name (as the kernel chose it when a template was used).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The flags the device has, as `TUNGETIFF` reports them: those
    /// `TUNSETIFF` set, or, when attaching to an existing (persistent) tap,
    /// its own with `PERSIST`.
    pub fn flags(&self) -> TunFlags {
        self.flags
    }
    /// The queues, in order.
    pub fn queues(&self) -> &[TapQueue] {
        &self.queues
    }
    /// The vhost-net fds (empty without vhost), one per queue.
    pub fn vhost_fds(&self) -> &[OwnedFd] {
        &self.vhost
    }
    /// Ganeti's `(ifname, [tapfds], [vhostfds])`, as owned fds.
    pub fn into_parts(self) -> (String, Vec<OwnedFd>, Vec<OwnedFd>) {
        let fds = self.queues.into_iter().map(OwnedFd::from).collect();
        (self.name, fds, self.vhost)
    }
    /// Checks with `TUNGETIFF` that the queues form one device with
    /// consistent flags (see [`Tun::check_queues`]).
    pub fn verify(&self) -> Result<TapInfo> {
        let fds: Vec<BorrowedFd<'_>> = self.queues.iter().map(|q| q.as_fd()).collect();
        match self.queues.first() {
            Some(q) => q.tun.check_queues(&fds),
            None => Err(Error::InconsistentQueues(QueueProblem::NoFds)),
        }
    }
}

impl Tun {
    /// `TUNGETIFF` on any fd: its interface name and flags, or a clear
    /// error when the fd is not a bound TUN/TAP fd.
    pub fn inspect_fd(&self, fd: BorrowedFd<'_>) -> Result<TapInfo> {
        match self.sys().tun_get_iff(fd) {
            Ok((name, flags)) => Ok(TapInfo { name, flags }),
            Err(source) => {
                let cause = match source.raw_os_error() {
                    Some(libc::EBADFD) => {
                        "it is a /dev/net/tun fd not bound to any interface".into()
                    }
                    Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                        "it is not an fd of /dev/net/tun (TUNGETIFF is not supported on it)".into()
                    }
                    Some(libc::EBADF) => "no such open fd".into(),
                    _ => source.to_string(),
                };
                Err(Error::NotATapFd {
                    fd: fd.as_raw_fd(),
                    cause,
                    source,
                })
            }
        }
    }

    /// Checks that `fds` are all bound to the same TAP device and agree on
    /// its flags (multi-queue, vnet header, no-PI). QEMU only checks the
    /// vnet header; a stray fd would otherwise fail later in an obscure way.
    pub fn check_queues(&self, fds: &[BorrowedFd<'_>]) -> Result<TapInfo> {
        let Some((first, rest)) = fds.split_first() else {
            return Err(Error::InconsistentQueues(QueueProblem::NoFds));
        };
        let info = self.inspect_fd(*first)?;
        if !info.is_tap() {
            return Err(Error::InconsistentQueues(QueueProblem::Tun {
                ifname: info.name,
            }));
        }
        if !rest.is_empty() && !info.multi_queue() {
            return Err(Error::InconsistentQueues(QueueProblem::NotMultiQueue {
                ifname: info.name,
                fds: fds.len(),
            }));
        }
        let key = TunFlags::TAP | TunFlags::MULTI_QUEUE | TunFlags::VNET_HDR | TunFlags::NO_PI;
        for fd in rest {
            let other = self.inspect_fd(*fd)?;
            if other.name != info.name {
                return Err(Error::InconsistentQueues(QueueProblem::OtherDevice {
                    first: (first.as_raw_fd(), info.name),
                    other: (fd.as_raw_fd(), other.name),
                }));
            }
            if other.flags & key != info.flags & key {
                return Err(Error::InconsistentQueues(QueueProblem::OtherFlags {
                    first: (first.as_raw_fd(), info.flags & key),
                    other: (fd.as_raw_fd(), other.flags & key),
                }));
            }
        }
        Ok(info)
    }
}

/// A user for a tap's owner: a uid, or a user name looked up through NSS.
pub fn owner_uid(user: &str) -> Result<u32> {
    resolve_owner(user, "user", vmtap_sys::user_id)
}

/// A group for a tap's group: a gid, or a group name looked up through NSS.
pub fn owner_gid(group: &str) -> Result<u32> {
    resolve_owner(group, "group", vmtap_sys::group_id)
}

fn resolve_owner(
    s: &str,
    kind: &'static str,
    lookup: fn(&str) -> std::io::Result<Option<u32>>,
) -> Result<u32> {
    if let Ok(id) = s.parse::<u32>() {
        return match id {
            u32::MAX => Err(Error::InvalidOwnerId { kind, id }),
            id => Ok(id),
        };
    }
    lookup(s)
        .map_err(|source| Error::OwnerLookup {
            kind,
            name: s.to_string(),
            source,
        })?
        .ok_or_else(|| Error::NoSuchOwner {
            kind,
            name: s.to_string(),
        })
}

/// What a persistent tap is created with; build it with the setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistentOptions {
    /// Multi-queue device.
    pub multi_queue: bool,
    /// Packets carry a virtio-net header.
    pub vnet_hdr: bool,
    /// uid allowed to open it without `CAP_NET_ADMIN`.
    pub owner: Option<u32>,
    /// gid allowed to open it without `CAP_NET_ADMIN` (with an owner too,
    /// the user must match both).
    pub group: Option<u32>,
    /// Who owns it, recorded in its alias (see [`crate::owner`]).
    pub ownership: Option<Ownership>,
}

impl PersistentOptions {
    /// A single-queue tap without vnet header, owner or group.
    pub fn new() -> Self {
        Self::default()
    }
    /// Multi-queue or not.
    pub fn multi_queue(mut self, on: bool) -> Self {
        self.multi_queue = on;
        self
    }
    /// With a virtio-net header or not.
    pub fn vnet_hdr(mut self, on: bool) -> Self {
        self.vnet_hdr = on;
        self
    }
    /// The uid allowed to open it (`None`: no owner).
    pub fn owner(mut self, uid: impl Into<Option<u32>>) -> Self {
        self.owner = uid.into();
        self
    }
    /// The gid allowed to open it (`None`: no group).
    pub fn group(mut self, gid: impl Into<Option<u32>>) -> Self {
        self.group = gid.into();
        self
    }
    /// Records who owns it in its alias (`None`: no alias).
    pub fn ownership(mut self, ownership: impl Into<Option<Ownership>>) -> Self {
        self.ownership = ownership.into();
        self
    }
}

impl Tun {
    /// Creates a persistent tap `name` (a `%d` template is allowed) that an
    /// unprivileged QEMU can then open by name, and returns what the kernel
    /// made.
    ///
    /// Refuses an existing interface. Persistence is switched on last, so a
    /// failure in between leaves nothing behind.
    pub fn create_persistent(&self, name: &str, opts: &PersistentOptions) -> Result<TapInfo> {
        validate_name(name, true)?;
        self.create_persistent_as(Some(name), opts)
    }

    /// [`Tun::create_persistent`] under a name vmtap picks, as
    /// [`Tun::open`] does without a name (`tapN`, at a cost that does not
    /// grow with the number of interfaces).
    pub fn create_persistent_auto(&self, opts: &PersistentOptions) -> Result<TapInfo> {
        self.create_persistent_as(None, opts)
    }

    fn create_persistent_as(
        &self,
        name: Option<&str>,
        opts: &PersistentOptions,
    ) -> Result<TapInfo> {
        let sys = self.sys();
        let fd = open_tun(self)?;
        // Without IFF_ONE_QUEUE (no effect since Linux 3.8; `ip tuntap` does
        // not set it either), so that attaching without a trusted sysfs binds
        // with exactly the tap's flags.
        let flags =
            (tap_flags(opts.multi_queue, opts.vnet_hdr) - TunFlags::ONE_QUEUE) | TunFlags::TUN_EXCL;
        let ifname = crate::open::bind_new(sys, fd.as_fd(), name, flags)?;
        if let Some(own) = &opts.ownership {
            crate::open::tag_link(sys, &ifname, own)?;
        }
        if let Some(uid) = opts.owner {
            sys.tun_set_owner(fd.as_fd(), uid)
                .map_err(|e| ioctl_err("TUNSETOWNER", &ifname, e))?;
        }
        if let Some(gid) = opts.group {
            sys.tun_set_group(fd.as_fd(), gid)
                .map_err(|e| ioctl_err("TUNSETGROUP", &ifname, e))?;
        }
        sys.tun_set_persist(fd.as_fd(), true)
            .map_err(|e| ioctl_err("TUNSETPERSIST", &ifname, e))?;
        let info = self.inspect_fd(fd.as_fd());
        if info.is_err() {
            // Undo persistence so that closing the fd removes the device.
            let _ = sys.tun_set_persist(fd.as_fd(), false);
        }
        info
    }
}

/// A tap as the kernel reports it over netlink (`RTM_GETLINK` with the tun
/// driver's `IFLA_TUN_*` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapStatus {
    /// The interface name.
    pub name: String,
    /// The interface index.
    pub index: u32,
    /// The device outlives its fds.
    pub persistent: bool,
    /// The uid allowed to attach without `CAP_NET_ADMIN`, if set.
    pub owner: Option<u32>,
    /// The gid allowed to attach without `CAP_NET_ADMIN`, if set.
    pub group: Option<u32>,
    /// A multi-queue device.
    pub multi_queue: bool,
    /// Packets carry a virtio-net header.
    pub vnet_hdr: bool,
    /// Packets carry a packet-information header (`IFF_NO_PI` is off).
    pub pi: bool,
    /// Queues attached now. The kernel counts them for multi-queue taps;
    /// a single-queue tap has 1 when its carrier is on (the driver turns
    /// it on when the queue attaches and off when it goes), else 0.
    pub queues: u32,
    /// Queues detached with `TUNSETQUEUE` but still open (multi-queue).
    pub disabled_queues: u32,
}

impl TapStatus {
    /// Reads a tap's status from a link; `NotATap` for anything else.
    pub(crate) fn from_link(link: &LinkState) -> Result<Self> {
        let tun = match &link.tun {
            Some(t) if t.tap => t,
            _ => return Err(Error::NotATap(link.name.clone())),
        };
        let queues = if tun.multi_queue {
            tun.queues
        } else {
            u32::from(link.carrier)
        };
        Ok(Self {
            name: link.name.clone(),
            index: link.index,
            persistent: tun.persist,
            owner: tun.owner,
            group: tun.group,
            multi_queue: tun.multi_queue,
            vnet_hdr: tun.vnet_hdr,
            pi: tun.pi,
            queues,
            disabled_queues: tun.disabled_queues,
        })
    }

    /// Queues bound to the tap: attached plus detached ones.
    pub fn users(&self) -> u32 {
        self.queues + self.disabled_queues
    }
}

/// The link named `name`, required to exist, over netlink.
pub(crate) fn lookup_link(sys: &dyn Syscalls, name: &str, action: Action) -> Result<LinkState> {
    sys.link_state(name)
        .map_err(|source| Error::Netlink {
            step: "looking up",
            ifname: name.to_string(),
            source,
        })?
        .ok_or_else(|| Error::NoSuchInterface {
            ifname: name.to_string(),
            action,
        })
}

/// How long a tap that still shows users is watched for them to go before
/// it counts as in use. In a multi-threaded program an fd closed by one
/// thread lives on in a child another thread is forking until that child
/// execs (a tap just made persistent still shows its creator's queue for
/// that moment); a VM's queues stay.
pub const RELEASE_GRACE: Duration = Duration::from_millis(50);

/// `status` of `link` as it is once its users are gone, watched for up to
/// [`RELEASE_GRACE`]; [`Error::InUse`] when they stay.
pub(crate) fn wait_unused(
    sys: &dyn Syscalls,
    link: LinkState,
    action: Action,
) -> Result<(LinkState, TapStatus)> {
    let deadline = Instant::now() + RELEASE_GRACE;
    let mut link = link;
    loop {
        let status = TapStatus::from_link(&link)?;
        if status.users() == 0 {
            return Ok((link, status));
        }
        if Instant::now() >= deadline {
            return Err(Error::InUse {
                ifname: link.name,
                queues: status.users(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
        let again = lookup_link(sys, &link.name, action)?;
        if again.index != link.index {
            return Err(Error::Vanished(link.name));
        }
        link = again;
    }
}

impl Tun {
    /// The status of tap `name` over netlink, without opening or attaching
    /// anything.
    pub fn status(&self, name: &str) -> Result<TapStatus> {
        validate_name(name, false)?;
        TapStatus::from_link(&lookup_link(self.sys(), name, Action::Inspect)?)
    }
}

/// What is known about the tap behind an fd: `TUNGETIFF`, and the
/// netlink view when the device is in the caller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdStatus {
    /// `TUNGETIFF`: name and flags.
    pub info: TapInfo,
    /// Whether the device is in the caller's network namespace (`None`
    /// when that cannot be told).
    pub in_this_netns: Option<bool>,
    /// The netlink view, when the device is known to be in this network
    /// namespace. For a single-queue tap its `queues` is 1: the fd is it.
    pub status: Option<TapStatus>,
}

/// What is known of a tap, for a report: from netlink when the device is
/// in this network namespace, else what `TUNGETIFF` on an fd tells (the
/// fields it cannot tell are `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSummary {
    /// The interface name.
    pub ifname: String,
    /// Whether the device is in the caller's network namespace (`None`:
    /// cannot tell).
    pub this_netns: Option<bool>,
    /// The device outlives its fds.
    pub persistent: bool,
    /// Owner uid, if set (and known).
    pub owner: Option<u32>,
    /// Group gid, if set (and known).
    pub group: Option<u32>,
    /// A multi-queue device.
    pub multi_queue: bool,
    /// Packets carry a virtio-net header.
    pub vnet_hdr: bool,
    /// Queues attached (see [`TapStatus::queues`]), when known.
    pub queues: Option<u32>,
    /// Queues detached but open, when known.
    pub disabled_queues: Option<u32>,
}

impl From<&TapStatus> for TapSummary {
    fn from(t: &TapStatus) -> Self {
        Self {
            ifname: t.name.clone(),
            this_netns: Some(true),
            persistent: t.persistent,
            owner: t.owner,
            group: t.group,
            multi_queue: t.multi_queue,
            vnet_hdr: t.vnet_hdr,
            queues: Some(t.queues),
            disabled_queues: Some(t.disabled_queues),
        }
    }
}

impl FdStatus {
    /// The netlink view when there is one; else what `TUNGETIFF` tells (a
    /// single-queue tap has the one queue the fd is).
    pub fn summary(&self) -> TapSummary {
        match &self.status {
            Some(st) => TapSummary {
                this_netns: self.in_this_netns,
                ..TapSummary::from(st)
            },
            None => TapSummary {
                ifname: self.info.name.clone(),
                this_netns: self.in_this_netns,
                persistent: self.info.persistent(),
                owner: None,
                group: None,
                multi_queue: self.info.multi_queue(),
                vnet_hdr: self.info.vnet_hdr(),
                queues: (!self.info.multi_queue()).then_some(1),
                disabled_queues: None,
            },
        }
    }
}

impl Tun {
    /// [`Tun::inspect_fd_status`] of fd number `fd`, which this process
    /// inherited (it is duplicated, not taken); errors name `fd`.
    pub fn inspect_inherited_fd(&self, fd: std::os::fd::RawFd) -> Result<FdStatus> {
        let dup =
            vmtap_sys::dup_inherited_fd(fd).map_err(|source| Error::FdNotOpen { fd, source })?;
        self.inspect_fd_status(dup.as_fd()).map_err(|e| match e {
            Error::NotATapFd { cause, source, .. } => Error::NotATapFd { fd, cause, source },
            Error::FdIsTun { ifname, .. } => Error::FdIsTun { fd, ifname },
            other => other,
        })
    }
}

impl Tun {
    /// Inspects a TAP fd: `TUNGETIFF`, then (when the device is in this
    /// network namespace, checked with `TUNGETDEVNETNS` or else by MAC
    /// address) its netlink status. A TUN fd is an error.
    pub fn inspect_fd_status(&self, fd: BorrowedFd<'_>) -> Result<FdStatus> {
        let sys = self.sys();
        let info = self.inspect_fd(fd)?;
        if !info.is_tap() {
            return Err(Error::FdIsTun {
                fd: fd.as_raw_fd(),
                ifname: info.name,
            });
        }
        let link = sys.link_state(&info.name).ok().flatten();
        let in_this_netns = match sys.tun_in_this_netns(fd) {
            Ok(Some(same)) => Some(same),
            // Cannot ask the kernel: a same-named link here with the fd's MAC
            // address (random per tap) is taken as the same device.
            _ => match (&link, sys.tun_get_hwaddr(fd)) {
                (Some(l), Ok(mac)) => Some(l.mac == Some(mac)),
                (None, _) => Some(false),
                _ => None,
            },
        };
        let status = match (&link, in_this_netns) {
            (Some(l), Some(true)) => TapStatus::from_link(l).ok().map(|mut st| {
                if !st.multi_queue {
                    st.queues = 1;
                }
                st
            }),
            _ => None,
        };
        Ok(FdStatus {
            info,
            in_this_netns,
            status,
        })
    }
}

impl Tun {
    /// Deletes the persistent tap `name` (single- or multi-queue) with
    /// `RTM_DELLINK`, after checking over netlink that it is a persistent tap
    /// with no queue attached. It never opens or attaches to the tap, so it
    /// never creates one, and of several racing deletes one succeeds and the
    /// others find no such interface.
    ///
    /// Refuses, with [`Error::NotATap`], an interface that is not a TAP
    /// device; with [`Error::NotPersistent`] a tap that lives only while its
    /// fds are open; with [`Error::InUse`] a tap with queues attached; and
    /// with [`Error::NoSuchInterface`] a name that does not exist.
    pub fn delete_persistent(&self, name: &str) -> Result<()> {
        let sys = self.sys();
        validate_name(name, false)?;
        let link = lookup_link(sys, name, Action::Delete)?;
        let status = TapStatus::from_link(&link)?;
        if !status.persistent {
            return Err(Error::NotPersistent(name.to_string()));
        }
        let (link, _) = wait_unused(sys, link, Action::Delete)?;
        sys.delete_link(link.index)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENODEV) => Error::NoSuchInterface {
                    ifname: name.to_string(),
                    action: Action::Delete,
                },
                _ => Error::Netlink {
                    step: "deleting",
                    ifname: name.to_string(),
                    source,
                },
            })
    }
}

pub(crate) fn tap_flags(multi_queue: bool, vnet_hdr: bool) -> TunFlags {
    let mut flags = TunFlags::TAP | TunFlags::NO_PI;
    flags.set(TunFlags::VNET_HDR, vnet_hdr);
    flags.set(TunFlags::MULTI_QUEUE, multi_queue);
    flags.set(TunFlags::ONE_QUEUE, !multi_queue);
    flags
}

/// `TUNSETIFF` with the error explained for what the caller was doing.
pub(crate) fn bind(
    sys: &dyn Syscalls,
    fd: BorrowedFd<'_>,
    name: &str,
    flags: TunFlags,
    mode: BindMode,
    queue: usize,
) -> Result<String> {
    sys.tun_set_iff(fd, name, flags)
        .map_err(|source| Error::Bind {
            mode,
            ifname: if name.is_empty() { "tap%d" } else { name }.to_string(),
            queue,
            cause: explain_bind(&source, mode, name),
            source,
        })
}

/// Opens the TUN clone device of `tun`.
pub(crate) fn open_tun(tun: &Tun) -> Result<OwnedFd> {
    let path = &tun.paths().tun;
    tun.sys()
        .open_device(path)
        .map_err(|source| Error::OpenDevice {
            path: path.to_path_buf(),
            cause: explain_open(&source, "tun"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_owners_are_taken_as_ids_but_not_the_kernels_none() {
        assert_eq!(owner_uid("0").unwrap(), 0);
        assert_eq!(owner_gid("4294967294").unwrap(), 4_294_967_294);
        let e = owner_uid("4294967295").unwrap_err();
        assert!(
            matches!(e, Error::InvalidOwnerId { kind: "user", .. }),
            "{e}"
        );
        assert!(e.is_invalid_input());
        assert!(owner_gid("4294967295").unwrap_err().is_invalid_input());
    }
}
