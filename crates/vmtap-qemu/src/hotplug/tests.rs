//! Pure parts of hot-plug: reading `info network`, and how leftovers are
//! reported. The QMP exchanges are tested against a fake QEMU monitor in
//! `tests/hotplug_fake.rs`, and against QEMU in `tests/hotplug_e2e.rs`.

use super::*;

/// `info network` of QEMU 7.2 with a 2-queue virtio NIC on a tap netdev,
/// an e1000 on another, and an unattached netdev.
const INFO_NETWORK: &str = "n1: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ n1: index=0,type=tap,fd=12\r\nn1: index=1,type=nic,\r\n \\ n1: index=1,type=tap,fd=13\r\ndev2: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:57\r\n \\ n2: index=0,type=tap,fd=14\r\nn3: index=0,type=tap,fd=15\r\nhub 0\r\n \\ hub0port0: index=0,type=hubport,peer=x\r\n";

#[test]
fn info_network_lines_give_names_types_and_attachment() {
    let clients: Vec<(&str, &str, Option<&str>)> = network_clients(INFO_NETWORK)
        .map(|c| (c.name, c.ty, c.nic))
        .collect();
    assert_eq!(
        clients,
        [
            ("n1", "nic", None),
            ("n1", "tap", Some("n1")),
            ("n1", "nic", None),
            ("n1", "tap", Some("n1")),
            ("dev2", "nic", None),
            ("n2", "tap", Some("dev2")),
            ("n3", "tap", None),
            ("hub0port0", "hubport", None),
        ]
    );
    assert_eq!(network_clients("").count(), 0);
    assert_eq!(network_clients("garbage: here\r\n").count(), 0);
}

#[test]
fn leftovers_are_named_and_runs_of_fd_names_shortened() {
    let mut r = vec![
        Leftover::Device("nic1".into()),
        Leftover::Netdev("nic1".into()),
    ];
    r.extend((0..64).map(|i| Leftover::FdName(format!("nic1-{i}"))));
    r.extend((0..2).map(|i| Leftover::FdName(format!("nic1-vhost-{i}"))));
    let note = leftovers_note(&r, None, false, None);
    assert_eq!(
        note,
        "; may remain in QEMU: device nic1, netdev nic1, fd names nic1-0 to nic1-63, fd name nic1-vhost-0, fd name nic1-vhost-1"
    );
    assert_eq!(leftovers_note(&[], None, false, Some("tap0")), "");
    // What remains in QEMU holds the tap's fds: the tap stays, named.
    let note = leftovers_note(&r[1..2], None, false, Some("lf0"));
    assert_eq!(
        note,
        "; may remain in QEMU: netdev nic1; the tap lf0 stays on the host while QEMU holds its fds"
    );
    assert!(consecutive("a-9", "a-10"));
    assert!(!consecutive("a-1", "b-2"));
    assert!(!consecutive("a-1", "a-3"));
    assert!(!consecutive("a", "a"));
}

#[test]
fn errors_say_the_step_the_id_and_what_remains() {
    let e = HotplugError::Step {
        op: Op::Add,
        id: "nic1".into(),
        ifname: Some("tap7".into()),
        left_alone: false,
        step: Step::Getfd("nic1-1".into()),
        source: Box::new(QmpError::Closed("waiting for the reply to getfd".into())),
        remaining: vec![
            Leftover::FdName("nic1-0".into()),
            Leftover::FdName("nic1-1".into()),
        ],
        rollback: Some(Box::new(QmpError::NotListening("/run/q".into()))),
    };
    let msg = e.to_string();
    assert!(
        msg.starts_with("hot-plug of \"nic1\" (host tap tap7) failed at getfd nic1-1: QEMU closed"),
        "{msg}"
    );
    assert!(msg.contains("rollback incomplete: nobody listens"), "{msg}");
    assert!(
        msg.ends_with(
            "may remain in QEMU: fd name nic1-0, fd name nic1-1; the tap tap7 stays on the host while QEMU holds its fds"
        ),
        "{msg}"
    );
    assert_eq!(e.remaining().len(), 2);
    let e = HotplugError::IdInUse {
        id: "busy".into(),
        netdev: true,
        device: false,
    };
    assert!(e.to_string().contains("already has a netdev"), "{e}");
    assert!(e.remaining().is_empty());
    let e = HotplugError::NoSuchNic("nothere".into());
    assert!(e.to_string().starts_with("device_del \"nothere\""), "{e}");
    let e = HotplugError::NotANic("rng0".into());
    assert!(e.to_string().contains("is not a NIC"), "{e}");
}

#[test]
fn the_rollback_deadline_has_a_floor() {
    let m = Monitor::new("/x", Duration::from_millis(1));
    assert_eq!(m.rollback_timeout, MIN_ROLLBACK_TIMEOUT);
    let m = Monitor::new("/x", Duration::from_secs(5));
    assert_eq!(m.rollback_timeout, Duration::from_secs(5));
}
