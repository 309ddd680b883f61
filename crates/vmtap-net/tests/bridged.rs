//! Bridged set-up on real taps, each test in its own network namespace:
//! the unrecorded set-up ([`LinkOptions::record`]`(false)`) that a bridge
//! helper uses makes the same changes as a recorded one, writes nothing,
//! and puts back what it did when a step fails.

use std::path::PathBuf;

use serde_json::Value;
use vmtap::OpenOptions;
use vmtap_net::{LinkError, LinkOptions, NicMode, StateDir, configure};
use vmtap_testkit::*;

/// A state directory of this test's own, which does not exist yet.
fn fresh_dir(tag: &str) -> PathBuf {
    let d = state_dir(env!("CARGO_TARGET_TMPDIR")).join(tag);
    assert!(!d.exists());
    d
}

/// MTU, MAC, master and UP, as `ip -j -d link` has them.
fn bridged_state(name: &str) -> (u64, String, Option<String>, bool) {
    let l: Value = serde_json::from_str(&ip(&["-d", "-j", "link", "show", "dev", name])).unwrap();
    let l = &l[0];
    (
        l["mtu"].as_u64().unwrap(),
        l["address"].as_str().unwrap().to_string(),
        l["master"].as_str().map(str::to_string),
        l["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some("UP")),
    )
}

fn bridge(name: &str, mtu: &str) {
    ip(&["link", "add", name, "type", "bridge"]);
    ip(&["link", "set", name, "mtu", mtu]);
}

#[test]
fn an_unrecorded_bridged_set_up_makes_the_changes_and_writes_nothing() {
    in_netns(|| {
        bridge("bu0", "1400");
        let tap = OpenOptions::new().name("ut0").open().unwrap();
        let before = bridged_state("ut0");
        assert_eq!(before.0, 1500);
        assert_eq!(before.2, None);
        assert!(!before.3);

        let dir = fresh_dir("unrecorded");
        let opts = LinkOptions::new()
            .bridge("bu0")
            .record(false)
            .state_dir(StateDir::new(&dir));
        opts.check().unwrap();
        let changes = configure("ut0", &opts).unwrap();
        let (mtu, mac, master, up) = bridged_state("ut0");
        assert_eq!((mtu, master.as_deref(), up), (1400, Some("bu0"), true));
        assert!(mac.starts_with("fe:"), "{mac}");
        assert_eq!(&mac[2..], &before.1[2..], "only the first byte changes");
        assert!(!dir.exists(), "nothing on disk: {}", dir.display());

        // Undone in this process, as a recorded set-up is.
        changes.undo().unwrap();
        assert_eq!(bridged_state("ut0"), before);
        assert!(!dir.exists());

        // The same set-up recorded does write (so the checks above can
        // fail).
        let recorded = fresh_dir("recorded");
        let opts = LinkOptions::new()
            .bridge("bu0")
            .state_dir(StateDir::new(&recorded));
        configure("ut0", &opts).unwrap().keep();
        let files = std::fs::read_dir(recorded.join("nics")).unwrap().count();
        assert!(files > 0, "a recorded set-up keeps a record");
        drop(tap);
    });
}

#[test]
fn an_unrecorded_set_up_that_fails_half_way_puts_back_what_it_did() {
    in_netns(|| {
        bridge("bu1", "1400");
        let _tap = OpenOptions::new().name("ut1").open().unwrap();
        // A macvlan on the tap holds its rx handler: the bridge cannot
        // take it (EBUSY), after the MTU and the MAC were set.
        ip(&["link", "add", "mv1", "link", "ut1", "type", "macvlan"]);
        let before = bridged_state("ut1");
        let dir = fresh_dir("half-way");
        let opts = LinkOptions::new()
            .bridge("bu1")
            .record(false)
            .state_dir(StateDir::new(&dir));
        opts.check().unwrap();
        let err = configure("ut1", &opts).unwrap_err();
        assert!(
            err.to_string().contains("adding it to bridge \"bu1\""),
            "{err}"
        );
        assert!(!err.is_invalid_input());
        assert_eq!(bridged_state("ut1"), before, "MTU and MAC put back");
        assert!(!dir.exists());
    });
}

#[test]
fn routed_and_openvswitch_set_ups_cannot_be_unrecorded() {
    in_netns(|| {
        let _tap = OpenOptions::new().name("ut2").open().unwrap();
        let before = bridged_state("ut2");
        let dir = fresh_dir("refused");
        for mode in [
            NicMode::parse("routed", Some("100"), None, &["192.0.2.7"]).unwrap(),
            NicMode::parse("openvswitch", Some("sw0"), None, &[]).unwrap(),
        ] {
            let opts = LinkOptions::new()
                .mode(mode.clone())
                .record(false)
                .state_dir(StateDir::new(&dir));
            for err in [
                opts.check().unwrap_err(),
                configure("ut2", &opts).unwrap_err(),
            ] {
                assert!(matches!(err, LinkError::NeedsRecord(m) if m == mode.name()));
                assert!(err.is_invalid_input());
                assert!(err.to_string().contains("needs a record"), "{err}");
            }
        }
        assert_eq!(bridged_state("ut2"), before);
        assert!(!dir.exists());
    });
}

/// Bridged mode with VLANs on a VLAN-filtering bridge: access, trunk and
/// hybrid ports deliver frames within a VLAN and never across, the same
/// checks as Open vSwitch's (`tests/ovs.rs`). Needs bridge VLAN filtering
/// (the guest-kernel lane has it).
#[test]
fn frames_on_a_vlan_filtering_bridge_go_where_the_vlans_say() {
    use vmtap::VnetHdr;
    use vmtap_testkit::frames::{Port, VlanPorts, vlan_frame_checks};
    in_netns(|| {
        if !vlan_filtering_bridge("bv0") {
            return;
        }
        ip(&["link", "set", "bv0", "up"]);
        let dir = StateDir::new(fresh_dir("vlan-frames"));
        let open = |name: &'static str, mac: u8, spec: &str| {
            let tap = OpenOptions::new()
                .name(name)
                .vnet_hdr(VnetHdr::Off)
                .open()
                .unwrap();
            let mode = NicMode::parse("bridged", Some("bv0"), Some(spec), &[]).unwrap();
            configure(name, &LinkOptions::new().mode(mode).state_dir(dir.clone()))
                .unwrap()
                .keep();
            Port::new(name, mac, tap)
        };
        let ports = VlanPorts {
            a1: open("a1", 1, ".100"),
            a2: open("a2", 2, "100"),
            b1: open("b1", 3, ".200"),
            tr: open("tr", 4, ":100:200"),
            hy: open("hy", 5, ".100:200"),
        };
        // As on Open vSwitch (tests/ovs.rs).
        vlan_frame_checks(&ports);
        let VlanPorts { a1, a2, b1, tr, hy } = &ports;
        // The host's own 802.1Q interface on the bridge (the 8021q module)
        // in VLAN 200: what it sends reaches the VLAN-200 ports only,
        // tagged on the trunk and the hybrid port, untagged on the access
        // port.
        ip(&[
            "link", "add", "link", "bv0", "name", "bv0.200", "type", "vlan", "id", "200",
        ]);
        run(
            "bridge",
            &["vlan", "add", "dev", "bv0", "vid", "200", "self"],
        )
        .unwrap();
        ip(&["link", "set", "bv0.200", "up"]);
        send_from("bv0.200", &vmtap_testkit::frames::frame(9, None, "h1"));
        b1.expect_first("h1", None);
        tr.expect_first("h1", Some(200));
        hy.expect_first("h1", Some(200));
        a2.send(None, "f9");
        a1.expect_first("f9", None);
        drop(ports);
    });
}

/// Sends one Ethernet frame out of interface `dev` (an `AF_PACKET` socket,
/// through Python: the test kit has no raw-socket code of its own).
fn send_from(dev: &str, frame: &[u8]) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
         s.bind(('{dev}', 0)); s.send(bytes.fromhex('{hex}'))"
    );
    run("python3", &["-c", &script]).unwrap();
}
