//! Many taps at once: delete them in one batch, list the taps vmtap
//! tagged, and collect the persistent taps whose owner is gone.
//!
//! The kernel waits for the network to quiesce after each unregister (tens
//! of milliseconds), so deleting a thousand taps one by one takes seconds.
//! Deleting a link group (`ip link delete group G`) unregisters all its
//! members in one batch. [`Tun::delete_persistent_many`] puts exactly the
//! taps asked for in a private group, checks that nothing else is in it,
//! and deletes the group.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::{Action, Error, Result};
use crate::names::validate_name;
use crate::owner::Ownership;
use crate::syscalls::Syscalls;
use crate::tap::{RELEASE_GRACE, TapStatus};
use crate::tun::Tun;
use vmtap_sys::rtnl::LinkState;

/// The outcome for each name of a bulk operation, in the order given
/// (each distinct name once).
pub type Outcomes = Vec<(String, Result<()>)>;

/// A tap that carries vmtap's ownership tag in its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedTap {
    /// The tap as netlink reports it.
    pub status: TapStatus,
    /// Administratively up.
    pub up: bool,
    /// Who owns it.
    pub ownership: Ownership,
    /// Whether the owner process still runs (`None`: no owner recorded,
    /// or it cannot be told).
    pub owner_alive: Option<bool>,
}

impl TaggedTap {
    /// Garbage: persistent, no queue attached, and its owner gone (a tap
    /// without an owner is never garbage).
    pub fn is_garbage(&self) -> bool {
        self.status.persistent && self.status.users() == 0 && self.owner_alive == Some(false)
    }
}

fn dump(sys: &dyn Syscalls, step: &'static str) -> Result<Vec<LinkState>> {
    sys.links()
        .map_err(|source| Error::BulkDelete { step, source })
}

/// Why a link may not be deleted as a persistent tap nobody uses, if so.
fn refusal(link: &LinkState) -> Option<Error> {
    match TapStatus::from_link(link) {
        Err(e) => Some(e),
        Ok(st) if !st.persistent => Some(Error::NotPersistent(link.name.clone())),
        Ok(st) if st.users() > 0 => Some(Error::InUse {
            ifname: link.name.clone(),
            queues: st.users(),
        }),
        Ok(_) => None,
    }
}

/// How long a bulk operation waits for another one in the same network
/// namespace (vmtap's bulk operations take turns, so that one never moves
/// or reports the taps of another).
pub const BULK_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Takes the bulk lock of this network namespace (see
/// [`Syscalls::bulk_lock`]).
fn lock(sys: &dyn Syscalls) -> Result<Option<std::os::fd::OwnedFd>> {
    sys.bulk_lock(BULK_LOCK_WAIT)
        .map_err(|source| Error::BulkDelete {
            step: "waiting for another vmtap delete or gc in this network namespace",
            source,
        })
}

impl Tun {
    /// The taps of this network namespace that vmtap tagged (see
    /// [`crate::owner`]), in index order, with their owners checked.
    pub fn tagged_taps(&self) -> Result<Vec<TaggedTap>> {
        let links = self.sys().links().map_err(|source| Error::Netlink {
            step: "listing",
            ifname: "every link".into(),
            source,
        })?;
        Ok(links.iter().filter_map(tagged).collect())
    }

    /// Deletes the taps [`TaggedTap::is_garbage`] finds (persistent, no
    /// queue attached, owner gone), in one batch; with `dry_run`, only
    /// says which. A tap without vmtap's tag is never touched. A tap that
    /// stopped being garbage, or went, before its turn is left out of the
    /// outcomes (another `gc` may have taken it).
    pub fn collect_garbage(&self, dry_run: bool) -> Result<Outcomes> {
        let _lock = lock(self.sys())?;
        let garbage: Vec<String> = self
            .tagged_taps()?
            .into_iter()
            .filter(TaggedTap::is_garbage)
            .map(|t| t.status.name)
            .collect();
        if dry_run {
            return Ok(garbage.into_iter().map(|n| (n, Ok(()))).collect());
        }
        // Checked again in the batch: only a tap that is still garbage goes.
        let out = self.delete_many_if(&garbage, |link| {
            tagged(link).is_some_and(|t| t.is_garbage())
        });
        Ok(out
            .into_iter()
            .filter(|(n, r)| match r {
                Err(
                    Error::NoSuchInterface { .. }
                    | Error::NotGarbage(_)
                    | Error::Vanished(_)
                    | Error::InUse { .. },
                ) => {
                    log::debug!("{n}: no longer garbage, or gone: skipped");
                    false
                }
                _ => true,
            })
            .collect())
    }

    /// Deletes the persistent taps `names` that nobody uses, all in one
    /// batch: the kernel's cost is about that of one delete. Each name gets
    /// its own outcome, with the errors [`Tun::delete_persistent`] gives
    /// (no such interface, not a tap, not persistent, in use); the others
    /// are deleted all the same. Nothing that was not asked is touched:
    /// the taps are put in a link group no other link is in, the group is
    /// checked to hold exactly them (else they are put back and deleted
    /// one by one), then deleted with one `RTM_DELLINK`, and every tap is
    /// checked to be gone. vmtap's bulk operations in one network
    /// namespace take turns (up to [`BULK_LOCK_WAIT`]).
    ///
    /// Like a single delete, a tap that a VM attaches to between the last
    /// check and the delete is deleted under it. A process killed between
    /// marking and deleting leaves its taps in the private group (their
    /// group number is all that changed).
    pub fn delete_persistent_many<S: AsRef<str>>(&self, names: &[S]) -> Outcomes {
        let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        match lock(self.sys()) {
            Ok(_lock) => self.delete_many_if(&names, |_| true),
            Err(e) => fail_all(&names, &e),
        }
    }

    /// Deletes, in one batch, the persistent taps nobody uses that vmtap
    /// tagged with `tag` (checked again at the delete: a tap re-created
    /// meanwhile under the same name without the tag is left alone). The
    /// outcomes name each tap found with the tag.
    pub fn delete_tagged(&self, tag: &str) -> Result<Outcomes> {
        crate::owner::check_tag(tag)?;
        let _lock = lock(self.sys())?;
        let names: Vec<String> = self
            .tagged_taps()?
            .into_iter()
            .filter(|t| t.ownership.tag.as_deref() == Some(tag))
            .map(|t| t.status.name)
            .collect();
        Ok(self.delete_many_if(&names, |link| {
            tagged(link).is_some_and(|t| t.ownership.tag.as_deref() == Some(tag))
        }))
    }

    fn delete_many_if<S: AsRef<str>>(
        &self,
        names: &[S],
        keep: impl Fn(&LinkState) -> bool,
    ) -> Outcomes {
        let sys = self.sys();
        let mut seen = HashSet::new();
        let names: Vec<&str> = names
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| seen.insert(*n))
            .collect();
        let mut outcome: HashMap<&str, Result<()>> = HashMap::new();
        let mut valid = Vec::new();
        for &n in &names {
            match validate_name(n, false) {
                Ok(()) => valid.push(n),
                Err(e) => {
                    outcome.insert(n, Err(e));
                }
            }
        }
        if !valid.is_empty() {
            match delete_batch(sys, &valid, &keep) {
                Ok(done) => outcome.extend(done),
                Err(e) => outcome.extend(
                    fail_all(&valid, &e)
                        .into_iter()
                        .zip(valid.iter())
                        .map(|((_, r), n)| (*n, r)),
                ),
            }
        }
        names
            .into_iter()
            .map(|n| {
                let r = outcome.remove(n).unwrap_or(Ok(()));
                (n.to_string(), r)
            })
            .collect()
    }
}

/// The same failure for every name (the whole batch failed), keeping the
/// step and the OS error number.
fn fail_all(names: &[&str], e: &Error) -> Outcomes {
    let step = match e {
        Error::BulkDelete { step, .. } => step,
        _ => "deleting",
    };
    let source = || match (e.errno(), e) {
        (Some(code), _) => std::io::Error::from_raw_os_error(code),
        (None, Error::BulkDelete { source, .. }) => {
            std::io::Error::new(source.kind(), source.to_string())
        }
        (None, e) => std::io::Error::other(crate::error::full_message(e)),
    };
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Err(Error::BulkDelete {
                    step,
                    source: source(),
                }),
            )
        })
        .collect()
}

fn tagged(link: &LinkState) -> Option<TaggedTap> {
    let ownership = Ownership::from_alias(link.alias.as_deref()?)?;
    let status = TapStatus::from_link(link).ok()?;
    let owner_alive = ownership.owner.and_then(|o| o.is_alive());
    Some(TaggedTap {
        status,
        up: link.up,
        ownership,
        owner_alive,
    })
}

/// The batch: look every name up in one dump, refuse what may not go
/// (waiting [`RELEASE_GRACE`] for users that are leaving), mark the rest
/// with a private group, check the group, delete it.
fn delete_batch<'a>(
    sys: &dyn Syscalls,
    names: &[&'a str],
    keep: &dyn Fn(&LinkState) -> bool,
) -> Result<Vec<(&'a str, Result<()>)>> {
    let mut done = Vec::with_capacity(names.len());
    let deadline = Instant::now() + RELEASE_GRACE;
    let (links, mut todo) = loop {
        let links = dump(sys, "listing the links")?;
        let by_name: HashMap<&str, &LinkState> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut todo = Vec::new();
        let mut busy = false;
        let mut refused = Vec::new();
        for &n in names {
            match by_name.get(n) {
                None => refused.push((
                    n,
                    Err(Error::NoSuchInterface {
                        ifname: n.to_string(),
                        action: Action::Delete,
                    }),
                )),
                Some(l) => match refusal(l) {
                    Some(e) => {
                        busy |= matches!(e, Error::InUse { .. });
                        refused.push((n, Err(e)));
                    }
                    None if !keep(l) => refused.push((n, Err(Error::NotGarbage(n.to_string())))),
                    None => todo.push((n, l.index, l.link_group)),
                },
            }
        }
        if !busy || Instant::now() >= deadline {
            done.extend(refused);
            break (links, todo);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if todo.is_empty() {
        return Ok(done);
    }
    let group = private_group(&links);
    let indices: Vec<u32> = todo.iter().map(|t| t.1).collect();
    let marked = sys
        .set_link_groups(&indices, group)
        .map_err(|source| Error::BulkDelete {
            step: "marking the taps",
            source,
        })?;
    let mut in_group = Vec::new();
    for ((name, index, before), r) in todo.drain(..).zip(marked) {
        match r {
            Ok(()) => in_group.push((name, index, before)),
            // Gone since the dump.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => done.push((
                name,
                Err(Error::NoSuchInterface {
                    ifname: name.to_string(),
                    action: Action::Delete,
                }),
            )),
            Err(source) => done.push((
                name,
                Err(Error::Netlink {
                    step: "marking",
                    ifname: name.to_string(),
                    source,
                }),
            )),
        }
    }
    // Check the group: exactly our taps, each still deletable.
    let restore = |list: &[(&str, u32, u32)]| restore_groups(sys, group, list);
    let links = match dump(sys, "checking the marked taps") {
        Ok(l) => l,
        Err(e) => {
            restore(&in_group);
            return Err(e);
        }
    };
    let ours: HashMap<u32, usize> = in_group.iter().enumerate().map(|(i, t)| (t.1, i)).collect();
    let mut foreign = false;
    let mut pulled = Vec::new();
    let mut pulled_index = HashSet::new();
    for l in links.iter().filter(|l| l.link_group == group) {
        match ours.get(&l.index) {
            None => foreign = true,
            Some(&i) => {
                let name = in_group[i].0;
                let problem = if l.name != name {
                    Some(Error::Vanished(name.to_string()))
                } else {
                    refusal(l).or_else(|| (!keep(l)).then(|| Error::NotGarbage(name.to_string())))
                };
                if let Some(e) = problem {
                    pulled.push(in_group[i]);
                    pulled_index.insert(l.index);
                    done.push((name, Err(e)));
                }
            }
        }
    }
    if !pulled.is_empty() {
        restore(&pulled);
    }
    let present: HashSet<u32> = links
        .iter()
        .filter(|l| l.link_group == group)
        .map(|l| l.index)
        .collect();
    let mut batch = Vec::new();
    for t in in_group {
        if pulled_index.contains(&t.1) {
            continue;
        }
        if !present.contains(&t.1) {
            // Gone, or moved out of the group by someone else, since it
            // was marked: left as it is.
            done.push((t.0, Err(Error::Vanished(t.0.to_string()))));
            continue;
        }
        batch.push(t);
    }
    if foreign {
        // Someone else uses the group: put ours back, and go one by one.
        log::warn!("link group {group} is not private: deleting the taps one at a time");
        restore(&batch);
        for (name, index, _) in batch {
            let r = sys.delete_link(index).map_err(|source| Error::Netlink {
                step: "deleting",
                ifname: name.to_string(),
                source,
            });
            done.push((name, r));
        }
        return Ok(done);
    }
    if batch.is_empty() {
        return Ok(done);
    }
    match sys.delete_link_group(group) {
        Ok(()) => {
            // The kernel deleted the group: check that each tap is gone.
            let left: HashSet<u32> = match sys.links() {
                Ok(links) => links.iter().map(|l| l.index).collect(),
                Err(source) => {
                    let msg = source.to_string();
                    for (name, _, _) in batch {
                        done.push((
                            name,
                            Err(Error::BulkDelete {
                                step: "checking that the taps are gone",
                                source: std::io::Error::new(source.kind(), msg.clone()),
                            }),
                        ));
                    }
                    return Ok(done);
                }
            };
            let (stayed, went): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|t| left.contains(&t.1));
            done.extend(went.into_iter().map(|t| (t.0, Ok(()))));
            if !stayed.is_empty() {
                restore(&stayed);
            }
            for (name, _, _) in stayed {
                done.push((
                    name,
                    Err(Error::BulkDelete {
                        step: "deleting the group",
                        source: std::io::Error::other("the tap is still there"),
                    }),
                ));
            }
        }
        Err(source) => {
            restore(&batch);
            let msg = source.to_string();
            for (name, _, _) in batch {
                done.push((
                    name,
                    Err(Error::Netlink {
                        step: "deleting",
                        ifname: name.to_string(),
                        source: match source.raw_os_error() {
                            Some(code) => std::io::Error::from_raw_os_error(code),
                            None => std::io::Error::new(source.kind(), msg.clone()),
                        },
                    }),
                ));
            }
        }
    }
    Ok(done)
}

/// Puts the taps of `list` that are still in `group` back in the group
/// each was in before; a tap that left the group meanwhile (deleted,
/// moved by someone else) is left as it is. A failure is logged with the
/// group, so that it can be found (`ip link show group G`).
fn restore_groups(sys: &dyn Syscalls, group: u32, list: &[(&str, u32, u32)]) {
    let in_group: HashSet<u32> = match sys.links() {
        Ok(links) => links
            .iter()
            .filter(|l| l.link_group == group)
            .map(|l| l.index)
            .collect(),
        Err(e) => {
            log::warn!("cannot put taps back from link group {group}: listing the links: {e}");
            return;
        }
    };
    for (name, index, before) in list {
        if !in_group.contains(index) {
            continue;
        }
        let r = sys
            .set_link_groups(&[*index], *before)
            .and_then(|mut r| r.pop().unwrap_or(Ok(())));
        if let Err(e) = r {
            log::warn!("cannot put {name} back from link group {group} into group {before}: {e}");
        }
    }
}

/// A link group no link of `links` is in, and not 0 (the default).
fn private_group(links: &[LinkState]) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let used: HashSet<u32> = links.iter().map(|l| l.link_group).collect();
    let mut h = std::hash::RandomState::new().build_hasher();
    loop {
        h.write_u32(std::process::id());
        // Above 2^31: clear of the small numbers people give groups.
        let g = (h.finish() as u32) | 0x8000_0000;
        if !used.contains(&g) {
            return g;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake::{FakeDevice, FakeKernel, Op};
    use crate::names::DevicePaths;
    use crate::owner::Owner;
    use crate::tap::PersistentOptions;
    use vmtap_sys::TunFlags;

    fn setup() -> (Arc<FakeKernel>, Tun) {
        let k = Arc::new(FakeKernel::new());
        let tun = Tun::with(k.clone(), DevicePaths::default());
        (k, tun)
    }

    fn persistent(k: &FakeKernel, name: &str) {
        k.add_device(name, FakeDevice::new(TunFlags::TAP | TunFlags::NO_PI, true));
    }

    fn outcome<'a>(out: &'a Outcomes, name: &str) -> &'a Result<()> {
        &out.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn one_group_delete_for_the_deletable_and_a_reason_for_each_other() {
        let (k, tun) = setup();
        for n in ["a", "b", "c"] {
            persistent(&k, n);
        }
        k.add_device("transient", FakeDevice::new(TunFlags::TAP, false));
        k.add_other_interface("eth0");
        k.add_other_interface_in_group("grouped", 7);
        persistent(&k, "busy");
        let busy = tun
            .open(&crate::OpenOptions::new().name("busy").attach_existing(true))
            .unwrap();
        let out = tun.delete_persistent_many(&[
            "a",
            "b",
            "a",
            "c",
            "nosuch",
            "eth0",
            "transient",
            "busy",
            "bad name",
        ]);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "b",
                "c",
                "nosuch",
                "eth0",
                "transient",
                "busy",
                "bad name"
            ],
            "each distinct name once, in order"
        );
        for n in ["a", "b", "c"] {
            assert!(outcome(&out, n).is_ok(), "{n}: {:?}", outcome(&out, n));
        }
        let is = |n: &str, f: fn(&Error) -> bool| {
            let r = outcome(&out, n);
            assert!(matches!(r, Err(e) if f(e)), "{n}: {r:?}");
        };
        is("nosuch", |e| matches!(e, Error::NoSuchInterface { .. }));
        is("eth0", |e| matches!(e, Error::NotATap(_)));
        is("transient", |e| matches!(e, Error::NotPersistent(_)));
        is("busy", |e| matches!(e, Error::InUse { .. }));
        is("bad name", |e| e.is_invalid_input());
        let left: Vec<String> = k.devices().into_keys().collect();
        assert_eq!(left, ["busy", "transient"]);
        assert_eq!(k.other_interfaces(), ["eth0", "grouped"]);
        let deletes: Vec<_> = k
            .calls()
            .into_iter()
            .filter(|c| matches!(c.op, Op::DeleteGroup | Op::DeleteLink))
            .collect();
        assert_eq!(deletes.len(), 1, "one batch: {deletes:?}");
        assert_eq!(deletes[0].op, Op::DeleteGroup);
        assert_ne!(deletes[0].arg, "7", "a group nobody uses");
        drop(busy);
    }

    #[test]
    fn a_foreign_link_in_the_group_makes_it_one_by_one_and_leaves_that_link() {
        let (k, tun) = setup();
        persistent(&k, "a");
        persistent(&k, "b");
        k.add_other_interface("stranger");
        // Another tool puts "stranger" in our group before the check.
        k.join_group_before(Op::Links, 1, "stranger");
        let out = tun.delete_persistent_many(&["a", "b"]);
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
        assert!(k.devices().is_empty());
        assert_eq!(k.other_interfaces(), ["stranger"]);
        let calls = k.calls();
        assert!(
            calls.iter().all(|c| c.op != Op::DeleteGroup),
            "no group delete"
        );
        assert_eq!(calls.iter().filter(|c| c.op == Op::DeleteLink).count(), 2);
    }

    #[test]
    fn a_tap_that_left_the_group_is_not_put_back_or_deleted() {
        let (k, tun) = setup();
        persistent(&k, "a");
        persistent(&k, "b");
        // "b" is removed by someone else after it was marked.
        k.remove_interface_before(Op::Links, 1, "b");
        let out = tun.delete_persistent_many(&["a", "b"]);
        assert!(outcome(&out, "a").is_ok());
        assert!(
            matches!(outcome(&out, "b"), Err(Error::Vanished(_))),
            "{out:?}"
        );
        assert!(k.devices().is_empty());
    }

    #[test]
    fn delete_tagged_takes_only_that_tag() {
        let (k, tun) = setup();
        for (name, tag) in [("x1", "ci"), ("x2", "ci"), ("y1", "other")] {
            let mut d = FakeDevice::new(TunFlags::TAP | TunFlags::NO_PI, true);
            d.alias = Some(Ownership::new().tag(tag.to_string()).unwrap().to_alias());
            k.add_device(name, d);
        }
        persistent(&k, "untagged");
        let out = tun.delete_tagged("ci").unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, r)| r.is_ok()));
        let left: Vec<String> = k.devices().into_keys().collect();
        assert_eq!(left, ["untagged", "y1"]);
        assert!(tun.delete_tagged("bad tag").is_err());
    }

    #[test]
    fn a_failed_group_delete_puts_the_groups_back_and_says_so() {
        let (k, tun) = setup();
        persistent(&k, "a");
        persistent(&k, "b");
        k.fail_op(Op::DeleteGroup, 0, libc::EIO);
        let out = tun.delete_persistent_many(&["a", "b"]);
        assert!(out.iter().all(|(_, r)| r.is_err()), "{out:?}");
        let devs = k.devices();
        assert_eq!(devs.len(), 2);
        assert!(devs.values().all(|d| d.link_group == 0), "groups restored");
    }

    #[test]
    fn a_failed_dump_fails_every_name_and_touches_nothing() {
        let (k, tun) = setup();
        persistent(&k, "a");
        k.fail_op(Op::Links, 0, libc::ENOBUFS);
        let out = tun.delete_persistent_many(&["a"]);
        assert!(
            matches!(&out[0].1, Err(Error::BulkDelete { .. })),
            "{out:?}"
        );
        assert_eq!(k.devices().len(), 1);
    }

    #[test]
    fn a_tap_gone_between_the_dump_and_the_marking_is_reported_missing() {
        let (k, tun) = setup();
        persistent(&k, "a");
        persistent(&k, "b");
        k.remove_interface_before(Op::SetGroupOf, 0, "a");
        let out = tun.delete_persistent_many(&["a", "b"]);
        assert!(matches!(
            outcome(&out, "a"),
            Err(Error::NoSuchInterface { .. })
        ));
        assert!(outcome(&out, "b").is_ok());
        assert!(k.devices().is_empty());
    }

    #[test]
    fn gc_takes_only_tagged_persistent_unused_taps_of_dead_owners() {
        let (k, tun) = setup();
        let me = Owner::this_process().unwrap();
        let dead = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        let tag = |name: &str, own: Ownership| {
            let mut d = FakeDevice::new(TunFlags::TAP | TunFlags::NO_PI, true);
            d.alias = Some(own.to_alias());
            k.add_device(name, d);
        };
        tag("dead", Ownership::new().owner(dead));
        tag("live", Ownership::new().owner(me));
        tag("nobody", Ownership::new());
        persistent(&k, "untagged");
        let mut foreign = FakeDevice::new(TunFlags::TAP | TunFlags::NO_PI, true);
        foreign.alias = Some("uplink to rack 3".into());
        k.add_device("foreign", foreign);
        let listed: Vec<String> = tun
            .tagged_taps()
            .unwrap()
            .into_iter()
            .map(|t| t.status.name)
            .collect();
        assert_eq!(listed.len(), 3, "{listed:?}");
        let dry = tun.collect_garbage(true).unwrap();
        assert_eq!(dry.len(), 1);
        assert_eq!(dry[0].0, "dead");
        assert_eq!(k.devices().len(), 5, "a dry run deletes nothing");
        let done = tun.collect_garbage(false).unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].1.is_ok());
        let left: Vec<String> = k.devices().into_keys().collect();
        assert_eq!(left, ["foreign", "live", "nobody", "untagged"]);
    }

    #[test]
    fn auto_named_persistent_taps_carry_their_ownership() {
        let (k, tun) = setup();
        let own = Ownership::new().tag("t1".to_string()).unwrap();
        let info = tun
            .create_persistent_auto(&PersistentOptions::new().ownership(own))
            .unwrap();
        assert!(info.name.starts_with("tap"));
        assert_eq!(
            k.devices()[&info.name].alias.as_deref(),
            Some("vmtap tag=t1")
        );
        k.fail_op(Op::SetAlias, 1, libc::EPERM);
        let own = Ownership::new();
        assert!(
            tun.create_persistent_auto(&PersistentOptions::new().ownership(own))
                .is_err()
        );
        assert_eq!(k.devices().len(), 1, "nothing left by the failure");
        assert_eq!(k.open_fds(), 0);
    }
}
