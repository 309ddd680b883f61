//! Unit tests of the policy and the model, on the fake kernel (no root).

use std::os::fd::AsFd;
use std::sync::Arc;

use super::*;
use crate::fake::{FakeDevice, FakeKernel, Op};
use crate::names::{DevicePaths, TUN_PATH, VHOST_NET_PATH};
use crate::tap::PersistentOptions;
use vmtap_sys::Offloads;

fn fake() -> Arc<FakeKernel> {
    Arc::new(FakeKernel::new())
}

/// The context of a fake kernel, with the default paths.
fn ktun(k: &Arc<FakeKernel>) -> Tun {
    Tun::with(k.clone(), DevicePaths::default())
}

/// The context of a fake kernel, with another vhost-net path.
fn ktun_vhost(k: &Arc<FakeKernel>, vhost_net: &str) -> Tun {
    Tun::with(
        k.clone(),
        DevicePaths {
            vhost_net: vhost_net.into(),
            ..DevicePaths::default()
        },
    )
}

fn open(k: &Arc<FakeKernel>, opts: &OpenOptions) -> Result<Tap> {
    ktun(k).open(opts)
}

fn no_mq_features() -> u32 {
    (TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR | TunFlags::ONE_QUEUE).bits()
}

// --- Ganeti's _GetTunFeatures / _ProbeTapVnetHdr / _ProbeTapMqVirtioNet ---

#[test]
fn features_ioctl_is_asked_with_a_zero_argument_and_returns_flags_unchanged() {
    for value in [
        0,
        TunFlags::VNET_HDR.bits(),
        TunFlags::MULTI_QUEUE.bits(),
        0xdead_0000 | TunFlags::TAP.bits(),
    ] {
        let k = Arc::new(FakeKernel::with_features(Some(value)));
        let fd = k.open_device(Path::new(TUN_PATH)).unwrap();
        assert_eq!(
            ktun(&k).features_of(fd.as_fd()).map(|f| f.bits()),
            Some(value)
        );
        assert_eq!(k.features_args_seen(), vec![0]);
        assert_eq!(k.calls().last().unwrap().op, Op::GetFeatures);
    }
}

#[test]
fn features_are_none_when_the_ioctl_fails() {
    let k = Arc::new(FakeKernel::with_features(None));
    let fd = k.open_device(Path::new(TUN_PATH)).unwrap();
    assert_eq!(ktun(&k).features_of(fd.as_fd()), None);
}

#[test]
fn real_features_ioctl_on_a_regular_file_reports_unsupported() {
    let file = std::fs::File::open("/proc/self/cmdline").unwrap();
    assert_eq!(tun_features(file.as_fd()), None);
    assert!(!probe_vnet_hdr(file.as_fd()));
    assert!(!probe_multi_queue(file.as_fd()));
}

#[test]
fn probes_answer_per_flag() {
    let cases: [(Option<u32>, bool, bool); 5] = [
        (Some(0), false, false),
        (None, false, false),
        (Some(TunFlags::VNET_HDR.bits()), true, false),
        (Some(TunFlags::MULTI_QUEUE.bits()), false, true),
        (
            Some((TunFlags::VNET_HDR | TunFlags::MULTI_QUEUE).bits()),
            true,
            true,
        ),
    ];
    for (features, vnet, mq) in cases {
        let k = Arc::new(FakeKernel::with_features(features));
        let fd = k.open_device(Path::new(TUN_PATH)).unwrap();
        assert_eq!(ktun(&k).probe_vnet_hdr(fd.as_fd()), vnet, "{features:?}");
        assert_eq!(ktun(&k).probe_multi_queue(fd.as_fd()), mq, "{features:?}");
        // Both probes asked the fd they were given, through TUNGETFEATURES.
        let asked: Vec<_> = k.calls().into_iter().map(|c| c.op).collect();
        assert_eq!(asked, vec![Op::Open, Op::GetFeatures, Op::GetFeatures]);
    }
}

// --- Names ---

#[test]
fn names_are_checked_with_the_rule_named() {
    let bad: &[(&str, &str)] = &[
        ("", "is empty"),
        ("abcdefghijklmnop", "16 bytes long"),
        (".", "reserved"),
        ("..", "reserved"),
        ("a/b", "contains '/'"),
        ("a:b", "contains ':'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\0b", "NUL"),
        ("a\x0bb", "whitespace"),
        ("voilà", "byte 0xa0"),
        ("a%s", "\"%d\""),
        ("a%d%d", "\"%d\""),
        ("%%d", "\"%d\""),
    ];
    for (name, words) in bad {
        let err = validate_name(name, true).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_invalid_input());
        assert!(msg.contains(words), "{name:?}: {msg}");
    }
    assert_eq!(
        validate_name("a/b", true).unwrap_err().to_string(),
        "interface name \"a/b\" contains '/'"
    );
    // The kernel's isspace() is not Unicode's: these are names to it.
    for good in [
        "tap0",
        "vm-1.eth0",
        "gnt.com.3",
        "abcdefghijklmno",
        "t%d",
        "a\u{2000}b",
        "a\u{85}b",
        "a\x1cb",
        "é",
    ] {
        validate_name(good, true).unwrap();
    }
    assert!(validate_name("t%d", false).is_err());
}

#[test]
fn invalid_input_makes_no_syscall() {
    let k = fake();
    for opts in [
        OpenOptions::new().name("a/b"),
        OpenOptions::new().queues(0),
        OpenOptions::new().queues(257),
        OpenOptions::new().attach_existing(true),
    ] {
        let err = open(&k, &opts).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
    assert!(k.calls().is_empty());
}

// --- open_tap ---

#[test]
fn one_queue_gets_ganeti_flags_plus_exclusive() {
    let k = fake();
    let tap = open(&k, &OpenOptions::new().name("vm0")).unwrap();
    assert_eq!(tap.name(), "vm0");
    assert_eq!(tap.queues().len(), 1);
    let setiff: Vec<_> = k
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::SetIff)
        .collect();
    let want = TunFlags::TAP
        | TunFlags::NO_PI
        | TunFlags::VNET_HDR
        | TunFlags::ONE_QUEUE
        | TunFlags::TUN_EXCL;
    assert_eq!(setiff[0].arg, format!("vm0 {want:?}"));
    let dev = &k.devices()["vm0"];
    assert_eq!(
        dev.flags,
        TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR | TunFlags::ONE_QUEUE
    );
}

#[test]
fn a_taken_name_makes_vmtap_choose_another() {
    let k = fake();
    k.fail_op(Op::SetIff, 0, libc::EBUSY);
    k.fail_op(Op::SetIff, 1, libc::EBUSY);
    let tap = open(&k, &OpenOptions::new().queues(2)).unwrap();
    let binds: Vec<String> = k
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::SetIff)
        .map(|c| c.arg.split(' ').next().unwrap_or("").to_string())
        .collect();
    // Two taken names, then the one that worked, then queue 1 by that name.
    assert_eq!(binds.len(), 4, "{binds:?}");
    assert_eq!(binds[2], tap.name());
    assert_eq!(binds[3], tap.name());
    assert!(
        binds[..2]
            .iter()
            .all(|b| b.starts_with("tap") && b != tap.name())
    );
    assert_eq!(k.devices().len(), 1);
}

#[test]
fn when_every_chosen_name_is_taken_the_kernel_chooses() {
    let k = fake();
    for i in 0..vmtap_sys_attempts() {
        k.fail_op(Op::SetIff, i, libc::EBUSY);
    }
    let tap = open(&k, &OpenOptions::new()).unwrap();
    let last = k.calls().into_iter().rfind(|c| c.op == Op::SetIff).unwrap();
    // The kernel's template: the fake, like the kernel, gives tap0 first.
    assert!(last.arg.starts_with(" "), "{last:?}");
    assert_eq!(tap.name(), "tap0");
}

fn vmtap_sys_attempts() -> usize {
    crate::names::AUTO_NAME_ATTEMPTS
}

#[test]
fn another_error_on_a_chosen_name_is_not_retried() {
    let k = fake();
    k.fail_op(Op::SetIff, 0, libc::EPERM);
    let err = open(&k, &OpenOptions::new()).unwrap_err();
    let binds = k.calls().iter().filter(|c| c.op == Op::SetIff).count();
    assert_eq!(binds, 1);
    assert!(err.to_string().contains("\"tap"), "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(k.open_fds(), 0);
    assert!(k.devices().is_empty());
}

#[test]
fn ownership_goes_in_the_alias_of_a_created_tap_only() {
    let k = fake();
    let own = crate::owner::Ownership::new()
        .owner(crate::owner::Owner {
            pid: 7,
            start_time: 9,
            pidns: Some(5),
        })
        .tag("vm1".to_string())
        .unwrap();
    let tap = open(&k, &OpenOptions::new().ownership(own.clone())).unwrap();
    assert_eq!(
        k.devices()[tap.name()].alias.as_deref(),
        Some("vmtap pid=7 start=9 pidns=5 tag=vm1")
    );
    // A failure to tag leaves nothing.
    let k = fake();
    k.fail_op(Op::SetAlias, 0, libc::EPERM);
    let err = open(&k, &OpenOptions::new().queues(2).ownership(own)).unwrap_err();
    assert!(err.to_string().contains("cannot record the owner"), "{err}");
    assert_eq!(k.open_fds(), 0);
    assert!(k.devices().is_empty());
}

#[test]
fn no_name_gives_one_device_with_all_queues() {
    for n in [1, 2, 8, 256] {
        let k = fake();
        k.add_device("tap0", FakeDevice::default());
        let tap = open(&k, &OpenOptions::new().queues(n)).unwrap();
        // vmtap picks a free tapN itself.
        let name = tap.name().to_string();
        assert!(name.starts_with("tap") && name[3..].parse::<u32>().is_ok() && name != "tap0");
        assert_eq!(tap.queues().len(), n);
        let devs = k.devices();
        assert_eq!(devs[&name].queue_fds(), n, "one device with {n} queues");
        assert_eq!(devs.len(), 2);
        // Every queue after the first attached by the chosen name.
        let names: Vec<_> = k
            .calls()
            .into_iter()
            .filter(|c| c.op == Op::SetIff)
            .map(|c| c.arg.split(' ').next().unwrap().to_string())
            .collect();
        // Queue 0 binds the chosen name (not the kernel's template), and
        // every later queue the same.
        assert!(names.iter().all(|n| *n == name), "{names:?}");
        if n > 1 {
            assert!(tap.flags().contains(TunFlags::MULTI_QUEUE));
            assert!(!tap.flags().contains(TunFlags::ONE_QUEUE));
        }
        assert_eq!(tap.verify().unwrap().name, name);
    }
}

#[test]
fn template_names_work() {
    let k = fake();
    k.add_other_interface("vm0");
    let tap = open(&k, &OpenOptions::new().name("vm%d").queues(3)).unwrap();
    assert_eq!(tap.name(), "vm1");
    assert_eq!(k.devices()["vm1"].queue_fds(), 3);
}

#[test]
fn vnet_hdr_modes() {
    let k = fake();
    let t = open(&k, &OpenOptions::new().vnet_hdr(VnetHdr::Off)).unwrap();
    assert!(!t.flags().contains(TunFlags::VNET_HDR));
    let t = open(&k, &OpenOptions::new().vnet_hdr(VnetHdr::On)).unwrap();
    assert!(t.flags().contains(TunFlags::VNET_HDR));

    let old = Arc::new(FakeKernel::with_features(Some(
        (TunFlags::TAP | TunFlags::NO_PI).bits(),
    )));
    let t = open(&old, &OpenOptions::new()).unwrap();
    assert!(
        !t.flags().contains(TunFlags::VNET_HDR),
        "auto follows the kernel"
    );
    drop(t);
    let err = open(&old, &OpenOptions::new().vnet_hdr(VnetHdr::On)).unwrap_err();
    assert!(matches!(err, Error::VnetHdrUnsupported), "{err}");
    assert_eq!(old.open_fds(), 0);
    assert!(old.devices().is_empty());
}

#[test]
fn several_queues_without_kernel_multi_queue_is_a_clear_error() {
    for features in [Some(no_mq_features()), None] {
        let k = Arc::new(FakeKernel::with_features(features));
        let err = open(&k, &OpenOptions::new().queues(4)).unwrap_err();
        assert!(matches!(err, Error::MultiQueueUnsupported(4)), "{err}");
        assert!(err.to_string().contains("IFF_MULTI_QUEUE"));
        assert!(
            !k.calls().iter().any(|c| c.op == Op::SetIff),
            "no device was created"
        );
        assert_eq!(k.open_fds(), 0);
    }
}

#[test]
fn vhost_opens_one_fd_per_queue_from_the_given_path() {
    let k = fake();
    k.add_vhost_net("/x/vhost");
    let tap = ktun_vhost(&k, "/x/vhost")
        .open(&OpenOptions::new().queues(3).vhost(true))
        .unwrap();
    assert_eq!(tap.vhost_fds().len(), 3);
    let opened: Vec<_> = k
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Open)
        .map(|c| c.arg)
        .collect();
    assert_eq!(opened.iter().filter(|p| *p == "/x/vhost").count(), 3);
    let (name, taps, vhost) = tap.into_parts();
    assert!(name.starts_with("tap"));
    assert_eq!((taps.len(), vhost.len()), (3, 3));
}

#[test]
fn missing_vhost_net_says_so_and_leaves_nothing() {
    let k = fake();
    k.remove_path(VHOST_NET_PATH);
    let err = open(&k, &OpenOptions::new().queues(2).vhost(true)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::VhostUnavailable { .. }));
    assert!(
        msg.contains("vhost-net is not available on this host"),
        "{msg}"
    );
    assert_eq!(k.open_fds(), 0);
    assert!(k.devices().is_empty());
}

#[test]
fn missing_tun_device_names_the_module() {
    let k = fake();
    k.remove_path(TUN_PATH);
    let msg = open(&k, &OpenOptions::new()).unwrap_err().to_string();
    assert!(
        msg.contains("/dev/net/tun") && msg.contains("tun module"),
        "{msg}"
    );
}

#[test]
fn an_existing_interface_is_refused_by_default() {
    let k = fake();
    let _vm1 = open(&k, &OpenOptions::new().name("shared")).unwrap();
    let err = open(&k, &OpenOptions::new().name("shared")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EBUSY));
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(k.devices()["shared"].queue_fds(), 1, "not shared");

    k.add_other_interface("veth0");
    let err = open(&k, &OpenOptions::new().name("veth0")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EBUSY));
    assert_eq!(k.open_fds(), 1);
}

#[test]
fn attach_existing_attaches_and_verifies_flags() {
    let k = fake();
    let persistent = |flags| FakeDevice::new(flags, true);
    let mq_vnet = TunFlags::TAP | TunFlags::NO_PI | TunFlags::MULTI_QUEUE | TunFlags::VNET_HDR;
    k.add_device("p0", persistent(mq_vnet));
    let tap = open(
        &k,
        &OpenOptions::new()
            .name("p0")
            .queues(4)
            .attach_existing(true),
    )
    .unwrap();
    assert_eq!(k.devices()["p0"].queue_fds(), 4);
    assert!(tap.flags().contains(TunFlags::VNET_HDR));
    drop(tap);
    assert_eq!(k.devices()["p0"].queue_fds(), 0, "persistent tap stays");

    // Flags that differ from the tap's are reported, not silently taken.
    let _holder = open(
        &k,
        &OpenOptions::new()
            .name("p0")
            .queues(2)
            .attach_existing(true),
    )
    .unwrap();
    let err = open(
        &k,
        &OpenOptions::new()
            .name("p0")
            .queues(2)
            .attach_existing(true)
            .vnet_hdr(VnetHdr::Off),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("vnet_hdr is on"), "{err}");

    // Multi-queue differs: refused before the kernel is asked.
    let binds = |k: &FakeKernel| k.calls().iter().filter(|c| c.op == Op::SetIff).count();
    let before = binds(&k);
    let err = open(&k, &OpenOptions::new().name("p0").attach_existing(true)).unwrap_err();
    assert!(
        err.to_string().contains("multi-queue setting differs"),
        "{err}"
    );
    assert_eq!(binds(&k), before, "nothing was bound");

    k.add_other_interface("br0");
    let err = open(&k, &OpenOptions::new().name("br0").attach_existing(true)).unwrap_err();
    assert!(err.to_string().contains("not a TAP device"), "{err}");

    let err = open(&k, &OpenOptions::new().name("nope").attach_existing(true)).unwrap_err();
    assert!(matches!(err, Error::NoSuchInterface { .. }), "{err}");
    assert_eq!(err.to_string(), "no interface named \"nope\" to attach to");
    assert_eq!(k.open_fds(), 2);
    assert_eq!(k.devices().keys().collect::<Vec<_>>(), vec!["p0"]);
}

#[test]
fn kernel_errnos_map_to_actionable_causes() {
    let cases = [
        (libc::EPERM, "t0", "CAP_NET_ADMIN"),
        (libc::E2BIG, "t0", "256 queues"),
        (libc::ENFILE, "t%d", "every name this template gives"),
        (libc::EEXIST, "t%d", "every name this template gives"),
        (libc::EEXIST, "t0", "already exists"),
    ];
    for (errno, name, words) in cases {
        let k = fake();
        k.fail_op(Op::SetIff, 0, errno);
        let err = open(&k, &OpenOptions::new().name(name)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(words) && msg.contains(&format!("\"{name}\"")),
            "{msg}"
        );
        assert_eq!(k.open_fds(), 0);
    }
}

/// Fails every call of a successful open in turn; whatever happens, no fd
/// and no interface may be left once the result is dropped.
#[test]
fn a_failure_at_any_step_leaves_nothing_behind() {
    for (queues, vhost) in [(1, false), (3, false), (3, true)] {
        let opts = OpenOptions::new().queues(queues).vhost(vhost);
        let reference = fake();
        reference.add_vhost_net(VHOST_NET_PATH);
        let total = open(&reference, &opts)
            .map(|_| reference.calls().len())
            .unwrap();
        assert_eq!(total, 1 + queues * 2 + if vhost { 3 * queues } else { 0 });
        for step in 0..total {
            for errno in [libc::EIO, libc::EBUSY, libc::ENOENT] {
                let k = fake();
                k.add_vhost_net(VHOST_NET_PATH);
                k.add_device("keep", FakeDevice::default());
                k.fail_nth_call(step, errno);
                let result = open(&k, &opts);
                let op = k.calls()[step].op;
                match &result {
                    // A name vmtap chose that is taken: it chose another.
                    Ok(tap)
                        if op == Op::SetIff
                            && errno == libc::EBUSY
                            && k.calls().iter().position(|c| c.op == Op::SetIff) == Some(step) =>
                    {
                        assert!(!k.calls()[step].arg.starts_with(&format!("{} ", tap.name())));
                    }
                    // Otherwise only a failed feature probe may be survived
                    // (it degrades to "unsupported").
                    Ok(tap) => {
                        assert_eq!(op, Op::GetFeatures);
                        assert_eq!(queues, 1);
                        assert!(!tap.flags().contains(TunFlags::VNET_HDR));
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
                drop(result);
                assert_eq!(k.open_fds(), 0, "step {step} ({op:?}) leaked an fd");
                assert_eq!(
                    k.devices().keys().collect::<Vec<_>>(),
                    vec!["keep"],
                    "step {step} ({op:?}) left an interface"
                );
            }
        }
    }
}

// --- Model: inspection, persistent taps, queues, offloads ---

#[test]
fn check_queues_refuses_mixed_devices() {
    let k = fake();
    let a = open(&k, &OpenOptions::new().queues(2)).unwrap();
    let b = open(&k, &OpenOptions::new().queues(2)).unwrap();
    let fds = [a.queues()[0].as_fd(), b.queues()[1].as_fd()];
    let err = ktun(&k).check_queues(&fds).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("is bound to \"{}\"", a.name())),
        "{err}"
    );
    let single = open(&k, &OpenOptions::new()).unwrap();
    let unbound = k.open_device(Path::new(TUN_PATH)).unwrap();
    let err = ktun(&k)
        .check_queues(&[single.queues()[0].as_fd(), unbound.as_fd()])
        .unwrap_err();
    assert!(err.to_string().contains("not multi-queue"), "{err}");
    let err = ktun(&k).check_queues(&[unbound.as_fd()]).unwrap_err();
    assert!(err.to_string().contains("not bound"), "{err}");
    assert!(ktun(&k).check_queues(&[]).is_err());
}

#[test]
fn persistent_create_and_delete() {
    let k = fake();
    let opts = PersistentOptions::new()
        .multi_queue(true)
        .vnet_hdr(true)
        .owner(1000)
        .group(100);
    let info = ktun(&k).create_persistent("p%d", &opts).unwrap();
    assert_eq!(info.name, "p0");
    assert!(info.persistent() && info.multi_queue() && info.vnet_hdr());
    assert_eq!(k.open_fds(), 0);
    let dev = &k.devices()["p0"];
    assert_eq!(
        (dev.owner, dev.group, dev.persist),
        (Some(1000), Some(100), true)
    );

    // Creating it again is refused.
    let err = ktun(&k).create_persistent("p0", &opts).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EBUSY));

    ktun(&k).delete_persistent("p0").unwrap();
    assert!(k.devices().is_empty());
    assert_eq!(k.open_fds(), 0);

    ktun(&k)
        .create_persistent("s0", &PersistentOptions::default())
        .unwrap();
    ktun(&k).delete_persistent("s0").unwrap();
    assert!(k.devices().is_empty());

    k.add_other_interface("veth0");
    let err = ktun(&k).delete_persistent("veth0").unwrap_err();
    assert_eq!(err.to_string(), "\"veth0\" exists but is not a TAP device");
    let err = ktun(&k).delete_persistent("nope").unwrap_err();
    assert!(matches!(err, Error::NoSuchInterface { .. }));
    assert_eq!(err.to_string(), "no interface named \"nope\" to delete");
    assert_eq!(k.open_fds(), 0);
}

#[test]
fn persistent_create_failing_midway_leaves_nothing() {
    for op in [Op::SetOwner, Op::SetGroup, Op::SetPersist, Op::GetIff] {
        let k = fake();
        k.fail_op(op, 0, libc::EPERM);
        let opts = PersistentOptions::new().owner(1).group(2);
        assert!(ktun(&k).create_persistent("p0", &opts).is_err());
        assert!(k.devices().is_empty(), "{op:?} left a device");
        assert_eq!(k.open_fds(), 0);
    }
}

#[test]
fn queue_detach_and_attach() {
    let k = fake();
    let tap = open(&k, &OpenOptions::new().queues(2)).unwrap();
    let q = &tap.queues()[1];
    q.detach().unwrap();
    assert!(q.detach().is_err(), "already detached");
    q.attach().unwrap();
    let err = q.attach().unwrap_err();
    assert!(err.to_string().contains("TUNSETQUEUE(attach)"), "{err}");
    let single = open(&k, &OpenOptions::new()).unwrap();
    assert!(single.queues()[0].detach().is_err());
}

#[test]
fn offloads_fall_back_like_qemu() {
    let k = fake();
    let tap = open(&k, &OpenOptions::new()).unwrap();
    let q = &tap.queues()[0];
    let all = Offloads::CSUM
        | Offloads::TSO4
        | Offloads::TSO6
        | Offloads::TSO_ECN
        | Offloads::UFO
        | Offloads::USO4
        | Offloads::USO6;
    assert_eq!(q.set_offloads_with_fallback(all).unwrap(), all);
    k.fail_op(Op::SetOffload, 1, libc::EINVAL);
    let no_uso = all - Offloads::USO4 - Offloads::USO6;
    assert_eq!(q.set_offloads_with_fallback(all).unwrap(), no_uso);
    k.fail_op(Op::SetOffload, 3, libc::EINVAL);
    k.fail_op(Op::SetOffload, 4, libc::EINVAL);
    assert_eq!(
        q.set_offloads_with_fallback(all).unwrap(),
        no_uso - Offloads::UFO
    );
    q.set_vnet_hdr_size(12).unwrap();
    assert!(q.set_vnet_hdr_size(4).is_err());
}

// --- Attach and delete never create or change a tap ---

fn binds(k: &FakeKernel) -> Vec<String> {
    k.calls()
        .into_iter()
        .filter(|c| c.op == Op::SetIff)
        .map(|c| c.arg)
        .collect()
}

#[test]
fn attach_binds_with_the_taps_own_flags_and_changes_nothing() {
    let sq = TunFlags::TAP | TunFlags::NO_PI;
    let mq_vnet = TunFlags::TAP | TunFlags::NO_PI | TunFlags::MULTI_QUEUE | TunFlags::VNET_HDR;
    for (flags, queues) in [(sq, 1), (sq | TunFlags::ONE_QUEUE, 1), (mq_vnet, 3)] {
        for mode in [VnetHdr::Auto, VnetHdr::On, VnetHdr::Off] {
            let k = fake();
            k.add_device("p0", FakeDevice::new(flags, true));
            let opts = OpenOptions::new()
                .name("p0")
                .queues(queues)
                .vnet_hdr(mode)
                .attach_existing(true);
            let result = open(&k, &opts);
            let has_vnet = flags.contains(TunFlags::VNET_HDR);
            let refused = matches!(
                (mode, has_vnet),
                (VnetHdr::On, false) | (VnetHdr::Off, true)
            );
            match result {
                Ok(tap) => {
                    assert!(!refused, "{flags:?} {mode:?}");
                    assert_eq!(tap.flags(), flags | TunFlags::PERSIST);
                    assert_eq!(binds(&k), vec![format!("p0 {flags:?}"); queues]);
                }
                Err(e) => {
                    assert!(refused, "{flags:?} {mode:?}: {e}");
                    assert!(matches!(e, Error::Mismatch { .. }), "{e}");
                    assert!(binds(&k).is_empty(), "refused before binding");
                }
            }
            let dev = &k.devices()["p0"];
            assert_eq!(dev.flags, flags, "{mode:?}: the tap's flags are unchanged");
            assert_eq!(dev.queue_fds(), 0);
            assert_eq!(k.open_fds(), 0);
        }
    }
}

#[test]
fn attach_without_a_trusted_sysfs_uses_the_netlink_flags() {
    let k = fake();
    k.hide_sysfs();
    let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR;
    k.add_device("p0", FakeDevice::new(flags, true));
    let tap = open(&k, &OpenOptions::new().name("p0").attach_existing(true)).unwrap();
    // IFF_ONE_QUEUE (invisible to netlink, no effect since 3.8) is taken
    // as off, as vmtap create and `ip tuntap` make taps.
    assert_eq!(tap.flags(), flags | TunFlags::PERSIST);
    assert!(tap.flags().contains(TunFlags::VNET_HDR));
}

#[test]
fn attach_refuses_taps_with_packet_information_and_tun_devices() {
    let k = fake();
    k.add_device("pi0", FakeDevice::new(TunFlags::TAP, true));
    k.add_device(
        "tun0",
        FakeDevice::new(TunFlags::TUN | TunFlags::NO_PI, true),
    );
    let err = open(&k, &OpenOptions::new().name("pi0").attach_existing(true)).unwrap_err();
    assert!(err.to_string().contains("packet-information"), "{err}");
    let err = open(&k, &OpenOptions::new().name("tun0").attach_existing(true)).unwrap_err();
    assert!(matches!(err, Error::NotATap(_)), "{err}");
    assert!(binds(&k).is_empty());
}

#[test]
fn attach_to_a_missing_name_makes_no_bind() {
    let k = fake();
    for queues in [1, 4] {
        let err = open(
            &k,
            &OpenOptions::new()
                .name("ghost")
                .queues(queues)
                .vhost(true)
                .attach_existing(true),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoSuchInterface { .. }), "{err}");
    }
    assert!(binds(&k).is_empty());
    assert!(k.calls().iter().all(|c| c.op != Op::Open), "nothing opened");
    assert!(k.devices().is_empty());
}

#[test]
fn a_tap_removed_while_attaching_is_not_recreated() {
    // The tap goes between the netlink look-up and the first bind: the
    // bind creates a new one, which vmtap notices (another MAC, not
    // persistent) and drops, so nothing is left.
    for queues in [1, 3] {
        let k = fake();
        let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR;
        let flags = if queues > 1 {
            flags | TunFlags::MULTI_QUEUE
        } else {
            flags
        };
        k.add_device("p0", FakeDevice::new(flags, true));
        k.remove_interface_before(Op::SetIff, 0, "p0");
        let err = open(
            &k,
            &OpenOptions::new()
                .name("p0")
                .queues(queues)
                .attach_existing(true),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Vanished(_)), "{err}");
        assert_eq!(binds(&k).len(), 1, "stopped after the first queue");
        assert!(
            k.devices().is_empty(),
            "the accidental tap went with its fd"
        );
        assert_eq!(k.open_fds(), 0);
    }
}

#[test]
fn every_failure_of_an_attach_leaves_the_tap_as_it_was() {
    let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::MULTI_QUEUE;
    let opts = OpenOptions::new()
        .name("p0")
        .queues(3)
        .vhost(true)
        .attach_existing(true);
    let setup = || {
        let k = fake();
        k.add_vhost_net(VHOST_NET_PATH);
        k.add_device("p0", FakeDevice::new(flags, true));
        k
    };
    let reference = setup();
    let total = open(&reference, &opts)
        .map(|_| reference.calls().len())
        .unwrap();
    for step in 0..total {
        let k = setup();
        k.fail_nth_call(step, libc::EIO);
        let result = open(&k, &opts);
        let op = k.calls()[step].op;
        // Only the sysfs read may fail quietly (netlink's flags are used).
        assert_eq!(
            result.is_ok(),
            op == Op::ExactTunFlags,
            "step {step} ({op:?})"
        );
        drop(result);
        assert_eq!(k.open_fds(), 0, "step {step} ({op:?}) leaked an fd");
        let devs = k.devices();
        assert_eq!(devs.keys().collect::<Vec<_>>(), vec!["p0"], "step {step}");
        assert_eq!(
            devs["p0"].flags, flags,
            "step {step} ({op:?}) changed the tap"
        );
    }
}

#[test]
fn delete_checks_over_netlink_and_never_binds() {
    let k = fake();
    let mq = PersistentOptions::new().multi_queue(true);
    ktun(&k).create_persistent("m0", &mq).unwrap();
    ktun(&k)
        .create_persistent("s0", &PersistentOptions::default())
        .unwrap();
    let calls_before = k.calls().len();

    // In use: multi-queue (counted by the kernel, detached queues too) and
    // single-queue (its carrier).
    let m = open(
        &k,
        &OpenOptions::new()
            .name("m0")
            .queues(2)
            .attach_existing(true),
    )
    .unwrap();
    m.queues()[1].detach().unwrap();
    let s = open(&k, &OpenOptions::new().name("s0").attach_existing(true)).unwrap();
    for (name, users) in [("m0", 2), ("s0", 1)] {
        let err = ktun(&k).delete_persistent(name).unwrap_err();
        assert!(
            matches!(&err, Error::InUse { queues, .. } if *queues == users),
            "{err}"
        );
        assert!(err.to_string().contains("in use"), "{err}");
    }
    drop((m, s));
    let tail: Vec<Op> = k.calls()[calls_before..].iter().map(|c| c.op).collect();
    for name in ["m0", "s0"] {
        assert_eq!(ktun(&k).status(name).unwrap().queues, 0);
        let before = k.calls().len();
        ktun(&k).delete_persistent(name).unwrap();
        let ops: Vec<Op> = k.calls()[before..].iter().map(|c| c.op).collect();
        assert_eq!(ops, vec![Op::LinkState, Op::DeleteLink], "{name}");
    }
    assert!(tail.contains(&Op::SetIff));
    assert!(k.devices().is_empty());

    // A tap that lives only while its fds are open is not deleted.
    let t = open(&k, &OpenOptions::new().name("t0")).unwrap();
    let err = ktun(&k).delete_persistent("t0").unwrap_err();
    assert!(matches!(err, Error::NotPersistent(_)), "{err}");
    drop(t);
}

#[test]
fn a_delete_that_loses_a_race_says_no_such_interface() {
    let k = fake();
    ktun(&k)
        .create_persistent("dd", &PersistentOptions::default())
        .unwrap();
    k.fail_op(Op::DeleteLink, 0, libc::ENODEV);
    let err = ktun(&k).delete_persistent("dd").unwrap_err();
    assert_eq!(err.to_string(), "no interface named \"dd\" to delete");
    k.fail_op(Op::DeleteLink, 1, libc::EPERM);
    let err = ktun(&k).delete_persistent("dd").unwrap_err();
    assert!(
        err.to_string().starts_with("deleting \"dd\" over netlink"),
        "{err}"
    );
    ktun(&k).delete_persistent("dd").unwrap();
}

#[test]
fn vhost_paths_must_be_vhost_net_devices() {
    let k = fake();
    let err = ktun_vhost(&k, "/dev/null")
        .open(&OpenOptions::new().queues(2).vhost(true))
        .unwrap_err();
    assert!(matches!(err, Error::NotVhostNet { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "/dev/null is not a vhost-net device: it is not a character device"
    );
    let err = ktun_vhost(&k, TUN_PATH)
        .open(&OpenOptions::new().vhost(true))
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("it is character device 10:200, not vhost-net's 10:238"),
        "{err}"
    );
    assert!(binds(&k).is_empty(), "checked before any tap exists");
    assert_eq!(k.open_fds(), 0);
    k.add_vhost_net("/dev/vhost-net");
    let tap = open(&k, &OpenOptions::new().queues(2).vhost(true)).unwrap();
    assert_eq!(tap.vhost_fds().len(), 2);
}

#[test]
fn inspecting_fds_says_what_they_are() {
    let k = fake();
    let tap = open(&k, &OpenOptions::new().name("mq0").queues(2)).unwrap();
    tap.queues()[0].detach().unwrap();
    let st = ktun(&k).inspect_fd_status(tap.queues()[1].as_fd()).unwrap();
    assert_eq!(st.in_this_netns, Some(true));
    let status = st.status.unwrap();
    assert_eq!((status.queues, status.disabled_queues), (1, 1));

    let single = open(&k, &OpenOptions::new().name("sq0")).unwrap();
    let st = ktun(&k)
        .inspect_fd_status(single.queues()[0].as_fd())
        .unwrap();
    assert_eq!(st.status.unwrap().queues, 1);

    let tun = k.open_device(Path::new(TUN_PATH)).unwrap();
    k.tun_set_iff(tun.as_fd(), "tun0", TunFlags::TUN | TunFlags::NO_PI)
        .unwrap();
    let err = ktun(&k).inspect_fd_status(tun.as_fd()).unwrap_err();
    assert!(matches!(err, Error::FdIsTun { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("a TUN (layer 3) device, not a TAP"),
        "{err}"
    );
}

#[test]
fn attach_refuses_taps_that_are_not_persistent_or_in_use() {
    let k = fake();
    let mq = TunFlags::TAP | TunFlags::NO_PI | TunFlags::MULTI_QUEUE;
    k.add_device("p0", FakeDevice::new(mq, true));
    let _vm = open(
        &k,
        &OpenOptions::new()
            .name("p0")
            .queues(2)
            .attach_existing(true),
    )
    .unwrap();
    let _other = open(&k, &OpenOptions::new().name("t0").queues(2)).unwrap();
    let before = binds(&k).len();
    let err = open(
        &k,
        &OpenOptions::new()
            .name("p0")
            .queues(2)
            .attach_existing(true),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::InUse { queues: 2, .. }),
        "another VM's tap is never shared: {err}"
    );
    let err = open(
        &k,
        &OpenOptions::new()
            .name("t0")
            .queues(2)
            .attach_existing(true),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotPersistent(_)), "{err}");
    assert_eq!(binds(&k).len(), before, "refused before binding");
    assert_eq!(k.devices()["p0"].queue_fds(), 2);
}
