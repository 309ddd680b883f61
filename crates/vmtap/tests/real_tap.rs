//! The library on real TAP devices, each test in its own network namespace.

use vmtap_testkit as common;

use std::os::fd::AsFd;

use common::*;
use vmtap::{
    Error, Features, OpenOptions, PersistentOptions, Tun, TunFlags, VnetHdr, open_tap, tun_features,
};

#[test]
fn kernel_features_include_tap_vnet_hdr_and_multi_queue() {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let f = tun_features(tun.as_fd()).expect("TUNGETFEATURES works on an unbound fd");
    assert!(
        f.contains(TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR | TunFlags::MULTI_QUEUE)
    );
}

#[test]
fn one_device_with_n_queues_for_n_in_1_2_8_256() {
    for n in [1usize, 2, 8, 256] {
        in_netns(move || {
            let tap = open_tap(
                None,
                &Features {
                    queues: n,
                    ..Features::default()
                },
            )
            .unwrap();
            let name = tap.name().to_string();
            // vmtap's own choice: tapN, N below a million.
            assert!(
                name.strip_prefix("tap")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n < vmtap::names::AUTO_NAME_SPACE),
                "{name}"
            );
            assert_eq!(tap.queues().len(), n);
            // The kernel's view: one device, n queues, the flags asked.
            assert_eq!(interfaces(), vec!["lo".to_string(), name.clone()]);
            let details = ip_details(&name);
            assert!(
                details.contains("tun type tap pi off vnet_hdr on"),
                "{details}"
            );
            assert_eq!(sysfs_tx_queues(&name), n);
            let flags =
                u32::from_str_radix(sysfs_read(&name, "tun_flags").trim_start_matches("0x"), 16)
                    .unwrap();
            let flags = TunFlags::from_bits_retain(flags);
            assert_eq!(flags.contains(TunFlags::MULTI_QUEUE), n > 1);
            assert!(flags.contains(TunFlags::VNET_HDR | TunFlags::NO_PI | TunFlags::TAP));
            // TUNGETIFF on every fd.
            for q in tap.queues() {
                let info = q.info().unwrap();
                assert_eq!(info.name, name);
                assert!(info.is_tap() && info.no_pi() && info.vnet_hdr());
                assert_eq!(info.multi_queue(), n > 1);
                assert!(!info.persistent());
            }
            let fds: Vec<_> = tap.queues().iter().map(|q| q.as_fd()).collect();
            assert_eq!(Tun::system().check_queues(&fds).unwrap().name, name);
            drop(fds);
            drop(tap);
            // The device is gone once the fds are dropped (asynchronously:
            // a sibling test's forked child may hold copies until it execs).
            wait_gone(&name);
        });
    }
}

#[test]
fn templates_and_vnet_hdr_off() {
    in_netns(|| {
        let a = OpenOptions::new()
            .name("vm%d")
            .vnet_hdr(VnetHdr::Off)
            .open()
            .unwrap();
        let b = OpenOptions::new().name("vm%d").queues(2).open().unwrap();
        assert_eq!((a.name(), b.name()), ("vm0", "vm1"));
        assert!(!a.queues()[0].info().unwrap().vnet_hdr());
        assert!(ip_details("vm0").contains("vnet_hdr off"));
        assert!(b.queues()[1].info().unwrap().vnet_hdr());
    });
}

#[test]
fn a_second_user_of_a_name_is_refused() {
    in_netns(|| {
        let first = OpenOptions::new().name("vm0").queues(2).open().unwrap();
        let err = OpenOptions::new().name("vm0").queues(2).open().unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBUSY));
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(sysfs_tx_queues("vm0"), 2, "nothing attached");
        drop(first);
    });
}

#[test]
fn names_the_kernel_would_mangle_are_refused_before_any_syscall() {
    in_netns(|| {
        for bad in ["a/b", "abcdefghijklmnopq", "a b", ".."] {
            let err = OpenOptions::new().name(bad).open().unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        }
        assert_eq!(interfaces(), vec!["lo"]);
    });
}

#[test]
fn persistent_multi_queue_tap_with_owner_and_group() {
    in_netns(|| {
        let opts = PersistentOptions::new()
            .multi_queue(true)
            .vnet_hdr(true)
            .owner(4242)
            .group(4343);
        let info = Tun::system().create_persistent("pq0", &opts).unwrap();
        wait_unused("pq0");
        assert!(info.persistent() && info.multi_queue() && info.vnet_hdr());
        assert_eq!(sysfs_read("pq0", "owner"), "4242");
        assert_eq!(sysfs_read("pq0", "group"), "4343");
        assert!(ip_details("pq0").contains("persist on"));

        // Attach 4 queues on purpose: the tap gets them, then keeps existing.
        let tap = OpenOptions::new()
            .name("pq0")
            .queues(4)
            .attach_existing(true)
            .open()
            .unwrap();
        assert_eq!(sysfs_tx_queues("pq0"), 4);
        assert!(tap.flags().contains(TunFlags::VNET_HDR));
        drop(tap);
        assert!(exists("pq0"));
        wait_unused("pq0");

        // While a user holds queues, a second one asking other flags would
        // get the device's flags silently: reported instead. (With no queue
        // attached, the kernel lets the first attacher set them.)
        let holder = OpenOptions::new()
            .name("pq0")
            .queues(2)
            .attach_existing(true)
            .open()
            .unwrap();
        let err = OpenOptions::new()
            .name("pq0")
            .queues(2)
            .vnet_hdr(VnetHdr::Off)
            .attach_existing(true)
            .open()
            .unwrap_err();
        assert!(
            err.to_string().contains("vnet_hdr is on but off was asked"),
            "{err}"
        );
        let err = OpenOptions::new()
            .name("pq0")
            .attach_existing(true)
            .open()
            .unwrap_err();
        assert!(
            err.to_string().contains("multi-queue setting differs"),
            "{err}"
        );
        assert_eq!(sysfs_tx_queues("pq0"), 2);
        drop(holder);

        // A tap whose queues are still attached is refused; the holder's
        // fds go asynchronously (a sibling test's forked child may hold
        // copies until it execs).
        wait_unused("pq0");
        Tun::system().delete_persistent("pq0").unwrap();
        wait_gone("pq0");

        Tun::system()
            .create_persistent("ps0", &PersistentOptions::default())
            .unwrap();
        wait_unused("ps0");
        assert!(!ip_details("ps0").contains("multi_queue"));
        Tun::system().delete_persistent("ps0").unwrap();
        assert_eq!(interfaces(), vec!["lo"]);

        veth("ve0", "ve1");
        let err = Tun::system().delete_persistent("ve0").unwrap_err();
        assert_eq!(err.to_string(), "\"ve0\" exists but is not a TAP device");
        assert!(exists("ve0"));
        let err = Tun::system().delete_persistent("nope0").unwrap_err();
        assert!(matches!(err, Error::NoSuchInterface { .. }));
        assert!(!exists("nope0"), "delete never creates");
    });
}

#[test]
fn deleting_a_tap_in_use_that_is_not_persistent_is_refused() {
    in_netns(|| {
        let tap = OpenOptions::new().name("busy0").queues(2).open().unwrap();
        let err = Tun::system().delete_persistent("busy0").unwrap_err();
        assert!(matches!(err, Error::NotPersistent(_)), "{err}");
        assert_eq!(sysfs_tx_queues("busy0"), 2);
        drop(tap);
    });
}

/// The kernel selftest's queue lifecycle (tools/testing/selftests/net/tun.c).
#[test]
fn queue_lifecycle_matches_the_kernel_selftest() {
    let open2 = || OpenOptions::new().name("lc0").queues(2).open().unwrap();
    let del = || ip(&["link", "del", "lc0"]);
    in_netns(move || {
        // delete link, then detach: EINVAL
        let tap = open2();
        del();
        let err = tap.queues()[1].detach().unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        drop(tap);

        // detach, then delete
        let tap = open2();
        tap.queues()[0].detach().unwrap();
        assert_eq!(sysfs_tx_queues("lc0"), 1, "a detached queue is not counted");
        del();
        assert!(!exists("lc0"));
        drop(tap);

        // detach, close, delete
        let tap = open2();
        tap.queues()[0].detach().unwrap();
        let (_, mut fds, _) = tap.into_parts();
        fds.remove(0);
        del();
        drop(fds);

        // detach, re-attach, delete
        let tap = open2();
        tap.queues()[1].detach().unwrap();
        tap.queues()[1].attach().unwrap();
        assert_eq!(sysfs_tx_queues("lc0"), 2);
        del();
        drop(tap);

        // detach, re-attach, close, delete
        let tap = open2();
        tap.queues()[1].detach().unwrap();
        tap.queues()[1].attach().unwrap();
        let (_, mut fds, _) = tap.into_parts();
        fds.pop();
        del();
        drop(fds);
        assert_eq!(interfaces(), vec!["lo"]);
    });
}

#[test]
fn offloads_and_vnet_header_size() {
    in_netns(|| {
        let tap = OpenOptions::new()
            .name("off0")
            .vnet_hdr(VnetHdr::On)
            .open()
            .unwrap();
        let q = &tap.queues()[0];
        let all = vmtap::Offloads::all();
        let set = q.set_offloads_with_fallback(all).unwrap();
        assert!(set.contains(vmtap::Offloads::CSUM | vmtap::Offloads::TSO4));
        // TSO without CSUM is refused by the kernel.
        assert!(q.set_offloads(vmtap::Offloads::TSO4).is_err());
        q.set_vnet_hdr_size(12).unwrap();
        assert_eq!(q.vnet_hdr_size().unwrap(), 12);
        assert!(q.set_vnet_hdr_size(4).is_err());
        q.set_sndbuf(1 << 20).unwrap();
    });
}

#[test]
fn inspecting_fds_that_are_not_taps_is_a_clear_error() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let err = Tun::system().inspect_fd(file.as_fd()).unwrap_err();
    assert!(
        err.to_string().contains("not an fd of /dev/net/tun"),
        "{err}"
    );
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(Tun::system().inspect_fd(sock.as_fd()).is_err());
    let unbound = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let err = Tun::system().inspect_fd(unbound.as_fd()).unwrap_err();
    assert!(err.to_string().contains("not bound"), "{err}");
}

#[test]
fn existing_veth_is_never_taken_over() {
    in_netns(|| {
        veth("vx0", "vx1");
        let err = OpenOptions::new().name("vx0").open().unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBUSY));
        let err = OpenOptions::new()
            .name("vx0")
            .attach_existing(true)
            .open()
            .unwrap_err();
        assert!(err.to_string().contains("not a TAP device"), "{err}");
        assert!(ip_details("vx0").contains("veth"));
    });
}

#[test]
fn attaching_from_threads_to_missing_or_vanishing_taps_leaves_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    in_netns(|| {
        // `ip monitor` sees every interface that appears, even briefly.
        let mut monitor = KillOnDrop(
            std::process::Command::new("ip")
                .args(["-o", "monitor", "link"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut console = Console::new(monitor.0.stdout.take().unwrap(), None);
        wait_until("ip monitor listens", 30, || {
            Tun::system()
                .create_persistent("mark0", &PersistentOptions::default())
                .unwrap();
            wait_unused("mark0");
            let seen =
                console.wait_within("mark0", |_| true, std::time::Duration::from_millis(300));
            Tun::system().delete_persistent("mark0").unwrap();
            seen.is_some()
        });
        // Threads started here share this thread's network namespace. One
        // forks all the time, so that children hold copies of whatever fds
        // the others have open, as in any multi-threaded VM manager.
        let stop = Arc::new(AtomicBool::new(false));
        let forker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let (ghost, vanishing) = (format!("gh{t}"), format!("va{t}"));
                    let mq = PersistentOptions::new().multi_queue(true);
                    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
                    for _ in 0..40 {
                        let err = OpenOptions::new()
                            .name(&ghost)
                            .queues(2)
                            .attach_existing(true)
                            .open()
                            .unwrap_err();
                        assert!(matches!(err, Error::NoSuchInterface { .. }), "{err}");

                        // The tap is deleted (as `ip link del` would, users
                        // or not) while this thread attaches to it. (A tap
                        // an earlier attach made by accident goes once the
                        // children forked meanwhile let go of its fd.)
                        wait_until(&format!("{vanishing} is gone"), 30, || {
                            vmtap::Tun::system().status(&vanishing).is_err()
                        });
                        Tun::system().create_persistent(&vanishing, &mq).unwrap();
                        let index = vmtap::Tun::system().status(&vanishing).unwrap().index;
                        let deleter = std::thread::spawn(move || {
                            vmtap_sys::rtnl::Netlink::open()
                                .unwrap()
                                .delete_index(index)
                                .unwrap();
                        });
                        let outcome = match OpenOptions::new()
                            .name(&vanishing)
                            .queues(3)
                            .attach_existing(true)
                            .open()
                        {
                            Ok(_) => "attached before the delete".to_string(),
                            Err(Error::NoSuchInterface { .. }) => "no such tap".to_string(),
                            // The creator's fd (or an accidental tap's) can
                            // live on briefly in a child forked meanwhile.
                            Err(Error::InUse { .. }) => "in use for a moment".to_string(),
                            Err(Error::Vanished(_)) => "vanished while attaching".to_string(),
                            Err(e) => panic!("unexpected: {e}"),
                        };
                        *outcomes.entry(outcome).or_default() += 1;
                        deleter.join().unwrap();
                    }
                    outcomes
                })
            })
            .collect();
        for w in workers {
            let outcomes = w.join().unwrap();
            eprintln!("outcomes: {outcomes:?}");
        }
        stop.store(true, Ordering::Relaxed);
        forker.join().unwrap();
        // Whatever an attach created by accident went with its fds (once
        // the forked children that held copies had exec'd).
        wait_until("only lo is left", 30, || interfaces() == vec!["lo"]);
        Tun::system()
            .create_persistent("mark1", &PersistentOptions::default())
            .unwrap();
        console.wait_for("mark1", |_| true);
        drop(monitor);
        let ghosts: Vec<&String> = console.log.iter().filter(|l| l.contains(": gh")).collect();
        assert!(
            ghosts.is_empty(),
            "attach created a missing tap: {ghosts:?}"
        );
    });
}

#[test]
fn racing_attaches_never_share_a_tap() {
    use std::time::Instant;
    in_netns(|| {
        Tun::system()
            .create_persistent("sh0", &PersistentOptions::new().multi_queue(true))
            .unwrap();
        // Each thread attaches 2 queues over and over; while one holds the
        // tap no other attach may succeed (the look-up refuses a tap in
        // use, and a count after binding catches one that raced in).
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut held = Vec::new();
                    for _ in 0..150 {
                        let opts = OpenOptions::new()
                            .name("sh0")
                            .queues(2)
                            .attach_existing(true);
                        match opts.open() {
                            Ok(tap) => {
                                let from = Instant::now();
                                std::thread::yield_now();
                                held.push((from, Instant::now()));
                                drop(tap);
                            }
                            // Back off a little so that every thread gets a turn.
                            Err(Error::InUse { .. }) => {
                                std::thread::sleep(std::time::Duration::from_micros(
                                    200 + 300 * (held.len() as u64 % 3),
                                ))
                            }
                            Err(e) => panic!("unexpected: {e}"),
                        }
                    }
                    held
                })
            })
            .collect();
        let mut held: Vec<(Instant, Instant)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        held.sort();
        assert!(!held.is_empty(), "some attaches succeed");
        eprintln!("{} attaches succeeded, none at the same time", held.len());
        for pair in held.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "two attaches held sh0 at once");
        }
        wait_unused("sh0");
        Tun::system().delete_persistent("sh0").unwrap();
    });
}

#[test]
fn an_exhausted_template_says_so() {
    in_netns(|| {
        // 14 bytes before the number: "x0".."x9" fit, "x10".."x99" fit,
        // "x100" would be cut to "x10", which is taken: 100 names in all.
        let template = "abcdefghijklm%d";
        for i in 0..100 {
            let info = Tun::system()
                .create_persistent(template, &PersistentOptions::default())
                .unwrap();
            assert_eq!(info.name, format!("abcdefghijklm{i}"));
        }
        let err = Tun::system()
            .create_persistent(template, &PersistentOptions::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot create tap \"abcdefghijklm%d\" (queue 0): every name this template gives (cut to 15 bytes) is taken"
        );
        let err = OpenOptions::new().name(template).open().unwrap_err();
        assert!(
            err.to_string().contains("every name this template gives"),
            "{err}"
        );
        assert_eq!(interfaces().len(), 101);
    });
}

#[test]
fn adopted_fds_are_checked_and_closed_on_any_failure() {
    in_netns(|| {
        let tun = Tun::system();
        // A 2-queue tap opened "elsewhere": its fds become a Tap again.
        let (name, fds, _) = OpenOptions::new()
            .name("ad0")
            .queues(2)
            .open()
            .unwrap()
            .into_parts();
        let tap = tun.adopt_tap(fds, VnetHdr::On, false).unwrap();
        assert_eq!((tap.name(), tap.queues().len()), (name.as_str(), 2));
        assert!(
            tap.flags()
                .contains(TunFlags::MULTI_QUEUE | TunFlags::VNET_HDR)
        );
        assert!(!tap.flags().contains(TunFlags::TUN_EXCL));
        let info = tap.verify().unwrap();
        assert_eq!((info.name.as_str(), info.flags), ("ad0", tap.flags()));
        drop(tap);
        wait_gone("ad0");

        let open1 = |name: &str, vnet| {
            OpenOptions::new()
                .name(name)
                .vnet_hdr(vnet)
                .open()
                .unwrap()
                .into_parts()
                .1
                .pop()
                .unwrap()
        };
        // Two single-queue taps are not one tap.
        let fds = vec![open1("ad1", VnetHdr::On), open1("ad2", VnetHdr::On)];
        let err = tun.adopt_tap(fds, VnetHdr::Auto, false).unwrap_err();
        assert!(matches!(&err, Error::InconsistentQueues(_)), "{err}");
        // Not the vnet header asked.
        let err = tun
            .adopt_tap(vec![open1("ad3", VnetHdr::Off)], VnetHdr::On, false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the fds of tap \"ad3\" are not what was asked: vnet_hdr is off but on was asked"
        );
        let err = tun
            .adopt_tap(vec![open1("ad4", VnetHdr::On)], VnetHdr::Off, false)
            .unwrap_err();
        assert!(err.to_string().contains("vnet_hdr is on but off"), "{err}");
        // A tap with packet-information headers.
        let pi: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap()
            .into();
        vmtap_sys::tun_set_iff(pi.as_fd(), "ad5", TunFlags::TAP).unwrap();
        let err = tun.adopt_tap(vec![pi], VnetHdr::Auto, false).unwrap_err();
        assert!(err.to_string().contains("packet-information"), "{err}");
        // No fds at all.
        assert!(matches!(
            tun.adopt_tap(Vec::new(), VnetHdr::Auto, false),
            Err(Error::InconsistentQueues(_))
        ));
        // Every fd given was closed (no other fd held them): the taps went
        // with them.
        for n in ["ad1", "ad2", "ad3", "ad4", "ad5"] {
            wait_gone(n);
        }
    });
}
