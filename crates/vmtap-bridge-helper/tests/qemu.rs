//! QEMU runs the helper for real: `-netdev bridge,br=br0,helper=PATH` and
//! `-netdev tap,helper="PATH --br=br0"`, as root and (the helper setuid
//! root) as `nobody`; the guest answers ping across the bridge, and the
//! tap goes when QEMU exits. Each test in its own network namespace, with
//! the ACL file of the test in a private mount namespace.
//!
//! Skipped when QEMU or the guest is missing, unless VMTAP_REQUIRE=1 (set
//! by scripts/test), where that is a failure.

use std::process::Stdio;

use serde_json::Value;
use vmtap_testkit::helper::*;
use vmtap_testkit::*;

const HELPER: &str = env!("CARGO_BIN_EXE_vmtap-bridge-helper");

/// The ports of `bridge`.
fn ports(bridge: &str) -> Vec<Value> {
    let out = ip(&["-d", "-j", "link", "show", "master", bridge]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn ping(dst: &str) -> bool {
    run("ping", &["-c", "3", "-W", "2", "-i", "0.3", dst]).is_ok()
}

/// Boots the guest with `netdev` (id n0) under QEMU in a private mount
/// namespace with `etc` as /etc/qemu, as root or as nobody; checks that
/// the guest sees its NIC and answers ping through br0 on the helper's tap,
/// then that the tap goes when QEMU is killed.
fn boot_and_ping(etc: &EtcQemu, as_user: bool, netdev: &str, guest_ip: &str) {
    let (kernel, initrd) = guest().expect("checked by the caller");
    let mut argv: Vec<String> = if as_user { as_nobody() } else { Vec::new() };
    argv.push("qemu-system-x86_64".into());
    argv.extend(guest_qemu_args(&kernel, &initrd, &format!("{guest_ip}/24")));
    argv.extend([
        "-netdev".into(),
        netdev.into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut child = KillOnDrop(
        etc.command(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn QEMU"),
    );
    let out = child.0.stdout.take().unwrap();
    let err = child.0.stderr.take().unwrap();
    let mut console = Console::new(out, Some(Box::new(err)));
    let nic = console.wait_for("VMTAP-NIC eth0 up", |_| true);
    assert!(nic.contains("rx-0 tx-0"), "{nic}");
    // unshare, sh and setpriv exec in turn: the child is QEMU now.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    assert!(status.contains("Name:\tqemu-system-x86"), "{status}");
    let uid = if as_user { "65534" } else { "0" };
    assert!(
        status.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")),
        "{status}"
    );

    let p = ports("br0");
    assert_eq!(p.len(), 1, "one port, the helper's tap: {p:?}");
    let tap = p[0]["ifname"].as_str().unwrap().to_string();
    assert!(tap.starts_with("tap"), "{tap}");
    let l = &p[0];
    assert_eq!(l["mtu"], 1400);
    assert!(l["address"].as_str().unwrap().starts_with("fe:"), "{l}");
    assert_eq!(
        l["linkinfo"]["info_data"]["vnet_hdr"], true,
        "QEMU passes --use-vnet"
    );
    assert!(ping(guest_ip), "the guest answers ping across the bridge");

    drop(child);
    wait_gone(&tap);
    assert!(ports("br0").is_empty());
}

fn bridge_with_address(host_ip: &str) {
    ip(&["link", "add", "br0", "type", "bridge"]);
    ip(&["link", "set", "br0", "mtu", "1400"]);
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", "br0"]);
    ip(&["link", "set", "br0", "up"]);
}

fn can_run() -> bool {
    if guest().is_none() {
        return false;
    }
    if !is_root() {
        skip("QEMU helper tests need real root (private mounts, setuid copies)");
        return false;
    }
    true
}

#[test]
fn qemu_runs_it_for_netdev_bridge() {
    if !can_run() {
        return;
    }
    in_netns(|| {
        bridge_with_address("10.77.21.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        boot_and_ping(
            &etc,
            false,
            &format!("bridge,id=n0,br=br0,helper={HELPER}"),
            "10.77.21.2",
        );
    });
}

#[test]
fn qemu_runs_it_for_netdev_tap_through_its_shell() {
    if !can_run() {
        return;
    }
    in_netns(|| {
        bridge_with_address("10.77.22.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        // A helper with a space: QEMU runs `/bin/sh -c "PATH --br=br0
        // --use-vnet --fd=N"`.
        boot_and_ping(
            &etc,
            false,
            &format!("tap,id=n0,helper={HELPER} --br=br0"),
            "10.77.22.2",
        );
    });
}

#[test]
fn an_unprivileged_qemu_gets_a_bridged_nic_through_the_setuid_helper() {
    if !can_run() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::Setuid);
    in_netns(move || {
        bridge_with_address("10.77.23.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        boot_and_ping(
            &etc,
            true,
            &format!("bridge,id=n0,br=br0,helper={}", installed.path.display()),
            "10.77.23.2",
        );
    });
}
