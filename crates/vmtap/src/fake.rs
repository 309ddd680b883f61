//! A scriptable fake of the [`Syscalls`] seam, for tests without root.
//!
//! It models the TUN driver's rules that the policy depends on (create or
//! attach by name, `%d` templates, `IFF_TUN_EXCL`, multi-queue mismatch,
//! the first attacher setting the feature flags,
//! single-queue `EBUSY`, 256 queues, persistence, `TUNSETQUEUE`), records
//! every call, and can fail any chosen call with any errno.
//!
//! The fds it hands out are real: one end of a Unix socket pair, whose other
//! end the fake keeps. When every copy of a handed-out fd has been closed,
//! the kept end reads end-of-file, so [`FakeKernel::open_fds`] counts exactly
//! the fds the code under test still holds, even with tests running in
//! parallel. A device whose last fd is closed disappears unless persistent,
//! as in the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::syscalls::Syscalls;
use vmtap_sys::rtnl::{LinkState, TunLinkInfo};
use vmtap_sys::{Offloads, TUN_FEATURES, TunFlags};

/// The calls the fake records (one per [`Syscalls`] method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `open_device`.
    Open,
    /// `tun_get_features`.
    GetFeatures,
    /// `tun_set_iff`.
    SetIff,
    /// `tun_get_iff`.
    GetIff,
    /// `tun_set_persist`.
    SetPersist,
    /// `tun_set_owner`.
    SetOwner,
    /// `tun_set_group`.
    SetGroup,
    /// `tun_set_offload`.
    SetOffload,
    /// `tun_set_vnet_hdr_size`.
    SetVnetHdrSize,
    /// `tun_get_vnet_hdr_size`.
    GetVnetHdrSize,
    /// `tun_set_sndbuf`.
    SetSndbuf,
    /// `tun_set_queue`.
    SetQueue,
    /// `link_state`.
    LinkState,
    /// `exact_tun_flags`.
    ExactTunFlags,
    /// `delete_link`.
    DeleteLink,
    /// `tun_get_hwaddr`.
    GetHwaddr,
    /// `tun_in_this_netns`.
    InThisNetns,
    /// `vhost_get_features`.
    VhostGetFeatures,
    /// `char_device`.
    CharDevice,
    /// `links`.
    Links,
    /// `set_link_alias`.
    SetAlias,
    /// `set_link_groups` (one call per index).
    SetGroupOf,
    /// `delete_link_group`.
    DeleteGroup,
}

/// One recorded call: the operation and a short description of its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which method.
    pub op: Op,
    /// The argument as text (path, name and flags, value...).
    pub arg: String,
}

/// A fake tap device.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    /// Flags set at creation (`TUNGETIFF` adds `PERSIST` when persistent).
    pub flags: TunFlags,
    /// Persistent.
    pub persist: bool,
    /// Owner uid, if set.
    pub owner: Option<u32>,
    /// Group gid, if set.
    pub group: Option<u32>,
    /// Last offloads set.
    pub offloads: Offloads,
    /// The user turned the carrier off (`IFF_NO_CARRIER`/`TUNSETCARRIER`).
    pub carrier_off: bool,
    /// The link's alias, if set.
    pub alias: Option<String>,
    /// The link's group (0: the default).
    pub link_group: u32,
    index: u32,
    mac: [u8; 6],
    queues: Vec<u64>,
}

impl FakeDevice {
    /// A device with these creation flags, persistent or not, no fds bound.
    pub fn new(flags: TunFlags, persist: bool) -> Self {
        Self {
            flags,
            persist,
            ..Self::default()
        }
    }

    /// Number of fds bound to the device (attached or detached).
    pub fn queue_fds(&self) -> usize {
        self.queues.len()
    }

    /// The interface index the fake gave the device.
    pub fn index(&self) -> u32 {
        self.index
    }
}

struct FakeFd {
    kept: UnixStream,
    path: PathBuf,
    bound: Option<String>,
    detached: bool,
}

#[derive(Default)]
struct State {
    features: Option<u32>,
    features_arg_seen: Vec<u32>,
    devices: BTreeMap<String, FakeDevice>,
    others: BTreeMap<String, (u32, u32)>,
    next_index: u32,
    sysfs_hidden: bool,
    vhost_net: BTreeSet<PathBuf>,
    fds: HashMap<u64, FakeFd>,
    calls: Vec<Call>,
    fail_call: Option<(usize, i32)>,
    fail_op: Vec<(Op, usize, i32)>,
    removals: Vec<(Op, usize, String)>,
    joins: Vec<(Op, usize, String)>,
    last_group: u32,
    op_counts: HashMap<Op, usize>,
    missing: BTreeSet<PathBuf>,
}

/// The fake kernel. See the module documentation.
pub struct FakeKernel {
    state: Mutex<State>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    Ok(file.metadata()?.st_ino())
}

impl FakeKernel {
    /// A fake of a current kernel: TUNGETFEATURES reports TUN, TAP,
    /// NO_PI, ONE_QUEUE, VNET_HDR, MULTI_QUEUE and the NAPI flags, and
    /// `/dev/vhost-net` is a vhost-net device.
    pub fn new() -> Self {
        let features = TunFlags::TUN | TunFlags::TAP | TunFlags::NO_CARRIER | TUN_FEATURES;
        Self::with_features(Some(features.bits()))
    }

    /// A fake whose TUNGETFEATURES returns `features`, or fails with
    /// `ENOTTY` (an old kernel, or not a TUN fd) when `None`.
    pub fn with_features(features: Option<u32>) -> Self {
        Self {
            state: Mutex::new(State {
                features,
                vhost_net: BTreeSet::from([PathBuf::from(crate::names::VHOST_NET_PATH)]),
                ..State::default()
            }),
        }
    }

    /// Makes `path` missing: opening it fails with `ENOENT`.
    pub fn remove_path(&self, path: impl Into<PathBuf>) {
        self.lock().missing.insert(path.into());
    }

    /// Adds a non-tap interface (a veth, a bridge) named `name`.
    pub fn add_other_interface(&self, name: &str) {
        let mut st = self.lock();
        let index = st.new_index();
        st.others.insert(name.to_string(), (index, 0));
    }

    /// Adds a non-tap interface named `name` in link group `group`.
    pub fn add_other_interface_in_group(&self, name: &str, group: u32) {
        let mut st = self.lock();
        let index = st.new_index();
        st.others.insert(name.to_string(), (index, group));
    }

    /// The non-tap interfaces that exist now, by name.
    pub fn other_interfaces(&self) -> Vec<String> {
        self.lock().others.keys().cloned().collect()
    }

    /// Adds an existing tap device, with no fds bound.
    pub fn add_device(&self, name: &str, mut device: FakeDevice) {
        let mut st = self.lock();
        device.index = st.new_index();
        device.mac = fake_mac(device.index);
        st.devices.insert(name.to_string(), device);
    }

    /// Makes `exact_tun_flags` answer `None`, as when sysfs shows another
    /// network namespace.
    pub fn hide_sysfs(&self) {
        self.lock().sysfs_hidden = true;
    }

    /// Makes fds opened from `path` vhost-net fds (`VHOST_GET_FEATURES`
    /// works on them); fds of other paths answer `ENOTTY`.
    pub fn add_vhost_net(&self, path: impl Into<PathBuf>) {
        self.lock().vhost_net.insert(path.into());
    }

    /// Fails call number `n` (counting every call from 0) with `errno`.
    pub fn fail_nth_call(&self, n: usize, errno: i32) {
        self.lock().fail_call = Some((n, errno));
    }

    /// Fails the `nth` call (from 0) of operation `op` with `errno`.
    pub fn fail_op(&self, op: Op, nth: usize, errno: i32) {
        self.lock().fail_op.push((op, nth, errno));
    }

    /// Removes interface `name` just before the `nth` call (from 0) of
    /// `op` runs, as a racing `ip link del` would.
    pub fn remove_interface_before(&self, op: Op, nth: usize, name: &str) {
        self.lock().removals.push((op, nth, name.to_string()));
    }

    /// Puts interface `name` into the link group most recently set by
    /// `set_link_groups` just before the `nth` call (from 0) of `op` runs,
    /// as another tool racing with a bulk delete would.
    pub fn join_group_before(&self, op: Op, nth: usize, name: &str) {
        self.lock().joins.push((op, nth, name.to_string()));
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The values the `out` argument of TUNGETFEATURES held on entry.
    pub fn features_args_seen(&self) -> Vec<u32> {
        self.lock().features_arg_seen.clone()
    }

    /// How many handed-out fds are still open somewhere in this process.
    pub fn open_fds(&self) -> usize {
        let mut st = self.lock();
        st.reap();
        st.fds.len()
    }

    /// The tap devices that exist now, by name.
    pub fn devices(&self) -> BTreeMap<String, FakeDevice> {
        let mut st = self.lock();
        st.reap();
        st.devices.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a call and decides whether it fails.
    fn enter(&self, op: Op, arg: String) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let mut st = self.lock();
        st.reap();
        let index = st.calls.len();
        st.calls.push(Call { op, arg });
        let nth = {
            let c = st.op_counts.entry(op).or_insert(0);
            *c += 1;
            *c - 1
        };
        if let Some((n, e)) = st.fail_call
            && n == index
        {
            return Err(errno(e));
        }
        if let Some(&(_, _, e)) = st.fail_op.iter().find(|(o, n, _)| *o == op && *n == nth) {
            return Err(errno(e));
        }
        let gone: Vec<String> = st
            .removals
            .iter()
            .filter(|(o, n, _)| *o == op && *n == nth)
            .map(|(_, _, name)| name.clone())
            .collect();
        let joining: Vec<String> = st
            .joins
            .iter()
            .filter(|(o, n, _)| *o == op && *n == nth)
            .map(|(_, _, name)| name.clone())
            .collect();
        let group = st.last_group;
        for name in joining {
            if let Some(o) = st.others.get_mut(&name) {
                o.1 = group;
            }
            if let Some(d) = st.devices.get_mut(&name) {
                d.link_group = group;
            }
        }
        for name in gone {
            st.others.remove(&name);
            if let Some(dev) = st.devices.remove(&name) {
                for q in dev.queues {
                    if let Some(f) = st.fds.get_mut(&q) {
                        f.bound = None;
                    }
                }
            }
        }
        Ok(st)
    }
}

/// A locally administered unicast MAC derived from the index.
fn fake_mac(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x02, 0xfa, b[0], b[1], b[2], b[3]]
}

impl State {
    fn new_index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index + 1
    }

    /// Forgets fds whose every copy is closed, and removes devices whose
    /// last fd went away (unless persistent).
    fn reap(&mut self) {
        let mut closed = Vec::new();
        for (ino, f) in &self.fds {
            let mut buf = [0u8; 1];
            if matches!((&f.kept).read(&mut buf), Ok(0)) {
                closed.push(*ino);
            }
        }
        for ino in closed {
            let Some(f) = self.fds.remove(&ino) else {
                continue;
            };
            if let Some(name) = f.bound {
                let gone = match self.devices.get_mut(&name) {
                    Some(dev) => {
                        dev.queues.retain(|q| *q != ino);
                        dev.queues.is_empty() && !dev.persist
                    }
                    None => false,
                };
                if gone {
                    self.devices.remove(&name);
                }
            }
        }
    }

    fn bound(&self, ino: u64) -> io::Result<(&FakeFd, String)> {
        let f = self.fds.get(&ino).ok_or_else(|| errno(libc::ENOTTY))?;
        let name = f.bound.clone().ok_or_else(|| errno(libc::EBADFD))?;
        Ok((f, name))
    }

    fn exists(&self, name: &str) -> bool {
        self.devices.contains_key(name) || self.others.contains_key(name)
    }

    fn expand(&self, name: &str) -> io::Result<String> {
        let template = if name.is_empty() { "tap%d" } else { name };
        if !template.contains("%d") {
            return Ok(template.to_string());
        }
        (0..32768)
            .map(|i| template.replacen("%d", &i.to_string(), 1))
            .find(|n| !self.exists(n))
            .ok_or_else(|| errno(libc::ENFILE))
    }
}

impl State {
    fn link(&self, name: &str) -> Option<LinkState> {
        let st = self;
        if let Some(&(index, link_group)) = st.others.get(name) {
            return Some(LinkState {
                index,
                name: name.to_string(),
                kind: Some("veth".into()),
                link_group,
                ..LinkState::default()
            });
        }
        let dev = st.devices.get(name)?;
        let detached = dev
            .queues
            .iter()
            .filter(|q| st.fds.get(q).is_some_and(|f| f.detached))
            .count() as u32;
        let bound = dev.queues.len() as u32;
        let mq = dev.flags.contains(TunFlags::MULTI_QUEUE);
        Some(LinkState {
            index: dev.index,
            alias: dev.alias.clone(),
            link_group: dev.link_group,
            name: name.to_string(),
            mtu: Some(1500),
            mac: Some(dev.mac),
            carrier: bound > 0 && !dev.carrier_off,
            kind: Some("tun".into()),
            tun: Some(TunLinkInfo {
                owner: dev.owner,
                group: dev.group,
                tap: dev.flags.contains(TunFlags::TAP),
                pi: !dev.flags.contains(TunFlags::NO_PI),
                vnet_hdr: dev.flags.contains(TunFlags::VNET_HDR),
                persist: dev.persist,
                multi_queue: mq,
                // As tun.c: the queue counts are reported for multi-queue
                // devices only.
                queues: if mq { bound - detached } else { 0 },
                disabled_queues: if mq { detached } else { 0 },
            }),
            ..LinkState::default()
        })
    }
}

impl Syscalls for FakeKernel {
    fn open_device(&self, path: &Path) -> io::Result<OwnedFd> {
        let mut st = self.enter(Op::Open, path.display().to_string())?;
        if st.missing.contains(path) {
            return Err(errno(libc::ENOENT));
        }
        let (kept, given) = UnixStream::pair()?;
        kept.set_nonblocking(true)?;
        let ino = inode(given.as_fd())?;
        st.fds.insert(
            ino,
            FakeFd {
                kept,
                path: path.to_path_buf(),
                bound: None,
                detached: false,
            },
        );
        Ok(OwnedFd::from(given))
    }

    fn tun_get_features(&self, fd: BorrowedFd<'_>, out: &mut u32) -> io::Result<()> {
        let mut st = self.enter(Op::GetFeatures, format!("arg={out}"))?;
        st.features_arg_seen.push(*out);
        let ino = inode(fd)?;
        if !st.fds.contains_key(&ino) {
            return Err(errno(libc::ENOTTY));
        }
        *out = st.features.ok_or_else(|| errno(libc::ENOTTY))?;
        Ok(())
    }

    fn tun_set_iff(&self, fd: BorrowedFd<'_>, name: &str, flags: TunFlags) -> io::Result<String> {
        let mut st = self.enter(Op::SetIff, format!("{name} {flags:?}"))?;
        let ino = inode(fd)?;
        match st.fds.get(&ino) {
            None => return Err(errno(libc::ENOTTY)),
            Some(f) if f.bound.is_some() => return Err(errno(libc::EEXIST)),
            Some(_) => {}
        }
        if !flags.intersects(TunFlags::TAP | TunFlags::TUN) {
            return Err(errno(libc::EINVAL));
        }
        let excl = flags.contains(TunFlags::TUN_EXCL);
        let mq = flags.contains(TunFlags::MULTI_QUEUE);
        let ifname = st.expand(name)?;
        if st.others.contains_key(&ifname) {
            return Err(errno(if excl { libc::EBUSY } else { libc::EINVAL }));
        }
        if let Some(dev) = st.devices.get_mut(&ifname) {
            if excl {
                return Err(errno(libc::EBUSY));
            }
            if dev.flags.contains(TunFlags::TAP) != flags.contains(TunFlags::TAP)
                || dev.flags.contains(TunFlags::MULTI_QUEUE) != mq
            {
                return Err(errno(libc::EINVAL));
            }
            if !mq && !dev.queues.is_empty() {
                return Err(errno(libc::EBUSY));
            }
            if dev.queues.len() >= 256 {
                return Err(errno(libc::E2BIG));
            }
            // As tun.c: the first queue to attach sets the feature flags;
            // later ones get the device's as they are.
            if dev.queues.is_empty() {
                dev.flags = (dev.flags - TUN_FEATURES) | (flags & TUN_FEATURES);
            }
            dev.queues.push(ino);
        } else {
            let kept = TunFlags::TUN | TunFlags::TAP | TUN_FEATURES;
            let index = st.new_index();
            st.devices.insert(
                ifname.clone(),
                FakeDevice {
                    flags: flags & kept,
                    queues: vec![ino],
                    index,
                    mac: fake_mac(index),
                    ..FakeDevice::default()
                },
            );
        }
        if let Some(f) = st.fds.get_mut(&ino) {
            f.bound = Some(ifname.clone());
        }
        Ok(ifname)
    }

    fn tun_get_iff(&self, fd: BorrowedFd<'_>) -> io::Result<(String, TunFlags)> {
        let st = self.enter(Op::GetIff, String::new())?;
        let (_, name) = st.bound(inode(fd)?)?;
        let dev = st.devices.get(&name).ok_or_else(|| errno(libc::EBADFD))?;
        let mut flags = dev.flags;
        flags.set(TunFlags::PERSIST, dev.persist);
        Ok((name, flags))
    }

    fn tun_set_persist(&self, fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
        let mut st = self.enter(Op::SetPersist, persist.to_string())?;
        let (_, name) = st.bound(inode(fd)?)?;
        if let Some(dev) = st.devices.get_mut(&name) {
            dev.persist = persist;
        }
        Ok(())
    }

    fn tun_set_owner(&self, fd: BorrowedFd<'_>, uid: u32) -> io::Result<()> {
        let mut st = self.enter(Op::SetOwner, uid.to_string())?;
        let (_, name) = st.bound(inode(fd)?)?;
        if let Some(dev) = st.devices.get_mut(&name) {
            dev.owner = Some(uid);
        }
        Ok(())
    }

    fn tun_set_group(&self, fd: BorrowedFd<'_>, gid: u32) -> io::Result<()> {
        let mut st = self.enter(Op::SetGroup, gid.to_string())?;
        let (_, name) = st.bound(inode(fd)?)?;
        if let Some(dev) = st.devices.get_mut(&name) {
            dev.group = Some(gid);
        }
        Ok(())
    }

    fn tun_set_offload(&self, fd: BorrowedFd<'_>, offloads: Offloads) -> io::Result<()> {
        let mut st = self.enter(Op::SetOffload, format!("{offloads:?}"))?;
        let (_, name) = st.bound(inode(fd)?)?;
        let needs_csum = Offloads::TSO4
            | Offloads::TSO6
            | Offloads::TSO_ECN
            | Offloads::UFO
            | Offloads::USO4
            | Offloads::USO6;
        if offloads.intersects(needs_csum) && !offloads.contains(Offloads::CSUM) {
            return Err(errno(libc::EINVAL));
        }
        if offloads.contains(Offloads::USO4) != offloads.contains(Offloads::USO6) {
            return Err(errno(libc::EINVAL));
        }
        if let Some(dev) = st.devices.get_mut(&name) {
            dev.offloads = offloads;
        }
        Ok(())
    }

    fn tun_set_vnet_hdr_size(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
        let st = self.enter(Op::SetVnetHdrSize, size.to_string())?;
        st.bound(inode(fd)?)?;
        if size < 10 {
            return Err(errno(libc::EINVAL));
        }
        Ok(())
    }

    fn tun_get_vnet_hdr_size(&self, fd: BorrowedFd<'_>) -> io::Result<i32> {
        let st = self.enter(Op::GetVnetHdrSize, String::new())?;
        st.bound(inode(fd)?)?;
        Ok(10)
    }

    fn tun_set_sndbuf(&self, fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
        let st = self.enter(Op::SetSndbuf, size.to_string())?;
        st.bound(inode(fd)?)?;
        Ok(())
    }

    fn tun_set_queue(&self, fd: BorrowedFd<'_>, attach: bool) -> io::Result<()> {
        let mut st = self.enter(Op::SetQueue, attach.to_string())?;
        let ino = inode(fd)?;
        let (f, name) = st.bound(ino)?;
        let detached = f.detached;
        let mq = st
            .devices
            .get(&name)
            .is_some_and(|d| d.flags.contains(TunFlags::MULTI_QUEUE));
        if !mq || attach != detached {
            return Err(errno(libc::EINVAL));
        }
        if let Some(f) = st.fds.get_mut(&ino) {
            f.detached = !attach;
        }
        Ok(())
    }

    fn link_state(&self, name: &str) -> io::Result<Option<LinkState>> {
        let st = self.enter(Op::LinkState, name.to_string())?;
        Ok(st.link(name))
    }

    fn links(&self) -> io::Result<Vec<LinkState>> {
        let st = self.enter(Op::Links, String::new())?;
        let mut all: Vec<LinkState> = st
            .others
            .keys()
            .chain(st.devices.keys())
            .filter_map(|n| st.link(n))
            .collect();
        all.sort_by_key(|l| l.index);
        Ok(all)
    }

    fn set_link_alias(&self, ifname: &str, alias: &str) -> io::Result<()> {
        let mut st = self.enter(Op::SetAlias, format!("{ifname} {alias}"))?;
        let dev = st
            .devices
            .get_mut(ifname)
            .ok_or_else(|| errno(libc::ENODEV))?;
        dev.alias = (!alias.is_empty()).then(|| alias.to_string());
        Ok(())
    }

    fn set_link_groups(&self, indices: &[u32], group: u32) -> io::Result<Vec<io::Result<()>>> {
        let mut results = Vec::with_capacity(indices.len());
        for &index in indices {
            let r = self
                .enter(Op::SetGroupOf, format!("{index} {group}"))
                .and_then(|mut st| {
                    st.last_group = group;
                    if let Some(o) = st.others.values_mut().find(|o| o.0 == index) {
                        o.1 = group;
                        return Ok(());
                    }
                    let dev = st
                        .devices
                        .values_mut()
                        .find(|d| d.index == index)
                        .ok_or_else(|| errno(libc::ENODEV))?;
                    dev.link_group = group;
                    Ok(())
                });
            results.push(r);
        }
        Ok(results)
    }

    /// No lock: a fake kernel belongs to one test.
    fn bulk_lock(&self, _wait: std::time::Duration) -> io::Result<Option<OwnedFd>> {
        Ok(None)
    }

    fn delete_link_group(&self, group: u32) -> io::Result<()> {
        let mut st = self.enter(Op::DeleteGroup, group.to_string())?;
        if group == 0 {
            return Err(errno(libc::EPERM));
        }
        let names: Vec<String> = st
            .devices
            .iter()
            .filter(|(_, d)| d.link_group == group)
            .map(|(n, _)| n.clone())
            .collect();
        let others: Vec<String> = st
            .others
            .iter()
            .filter(|(_, o)| o.1 == group)
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() && others.is_empty() {
            return Err(errno(libc::ENODEV));
        }
        for name in others {
            st.others.remove(&name);
        }
        for name in names {
            let dev = st.devices.remove(&name).expect("listed above");
            for q in dev.queues {
                if let Some(f) = st.fds.get_mut(&q) {
                    f.bound = None;
                }
            }
        }
        Ok(())
    }

    fn exact_tun_flags(&self, link: &LinkState) -> Option<TunFlags> {
        let st = self.enter(Op::ExactTunFlags, link.name.clone()).ok()?;
        if st.sysfs_hidden {
            return None;
        }
        let dev = st.devices.get(&link.name)?;
        let mut flags = dev.flags;
        flags.set(TunFlags::PERSIST, dev.persist);
        (dev.index == link.index).then_some(flags)
    }

    fn delete_link(&self, index: u32) -> io::Result<()> {
        let mut st = self.enter(Op::DeleteLink, index.to_string())?;
        if let Some(name) = st
            .others
            .iter()
            .find(|(_, i)| i.0 == index)
            .map(|(n, _)| n.clone())
        {
            st.others.remove(&name);
            return Ok(());
        }
        let name = st
            .devices
            .iter()
            .find(|(_, d)| d.index == index)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| errno(libc::ENODEV))?;
        let dev = st.devices.remove(&name).expect("found above");
        for q in dev.queues {
            if let Some(f) = st.fds.get_mut(&q) {
                f.bound = None;
            }
        }
        Ok(())
    }

    fn tun_get_hwaddr(&self, fd: BorrowedFd<'_>) -> io::Result<[u8; 6]> {
        let st = self.enter(Op::GetHwaddr, String::new())?;
        let (_, name) = st.bound(inode(fd)?)?;
        let dev = st.devices.get(&name).ok_or_else(|| errno(libc::ENODEV))?;
        Ok(dev.mac)
    }

    fn tun_in_this_netns(&self, fd: BorrowedFd<'_>) -> io::Result<Option<bool>> {
        let st = self.enter(Op::InThisNetns, String::new())?;
        st.bound(inode(fd)?)?;
        Ok(Some(true))
    }

    fn char_device(&self, fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
        let st = self.enter(Op::CharDevice, String::new())?;
        let f = st.fds.get(&inode(fd)?).ok_or_else(|| errno(libc::EBADF))?;
        Ok(if st.vhost_net.contains(&f.path) {
            Some(vmtap_sys::VHOST_NET_DEVICE)
        } else if f.path == Path::new(crate::names::TUN_PATH) {
            Some((10, 200))
        } else {
            None
        })
    }

    fn vhost_get_features(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let st = self.enter(Op::VhostGetFeatures, String::new())?;
        let f = st.fds.get(&inode(fd)?).ok_or_else(|| errno(libc::ENOTTY))?;
        if st.vhost_net.contains(&f.path) {
            Ok(vmtap_sys::VHOST_NET_F_VIRTIO_NET_HDR | (1 << 15) | (1 << 32))
        } else {
            Err(errno(libc::ENOTTY))
        }
    }
}
