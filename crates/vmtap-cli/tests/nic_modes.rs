//! NIC modes through the command: `vmtap ifup`/`ifdown` with Ganeti's
//! environment, read back from the kernel; each test in its own network
//! namespace.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;
use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// `vmtap ARGS` with exactly the variables `vars` and the test's records.
fn vmtap_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    vmtap_command_with(VMTAP, env!("CARGO_TARGET_TMPDIR"), vars)
        .args(args)
        .output()
        .expect("run vmtap")
}

fn ok(o: &Output) {
    assert_success(o);
}

fn fails(o: &Output, code: i32, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(want), "wanted {want:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The link as `ip -d -j link show` has it.
fn link(name: &str) -> Value {
    let out = ip(&["-d", "-j", "link", "show", "dev", name]);
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

/// What bridged mode changes on a link: MTU, MAC, master, up.
fn bridged_state(name: &str) -> (u64, String, Option<String>, bool) {
    let l = link(name);
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

/// This process's record files for the NICs of every namespace.
fn records() -> Vec<PathBuf> {
    let dir = state_dir(env!("CARGO_TARGET_TMPDIR")).join("nics");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The record files of interface `name` (any namespace of this run; the
/// names the tests use are unique to each test).
fn records_of(name: &str) -> Vec<PathBuf> {
    records()
        .into_iter()
        .filter(|p| {
            let f = p.file_name().unwrap().to_str().unwrap();
            f.ends_with(&format!("-{name}.json")) || f.ends_with(&format!("-{name}.lock"))
        })
        .collect()
}

#[test]
fn bridged_ifup_twice_is_once_and_ifdown_puts_everything_back() {
    in_netns(|| {
        ip(&["link", "add", "bm0", "type", "bridge"]);
        ip(&["link", "set", "bm0", "mtu", "1400"]);
        ip(&["tuntap", "add", "dev", "bt0", "mode", "tap"]);
        let before = bridged_state("bt0");
        assert_eq!((before.0, before.2.clone(), before.3), (1500, None, false));
        let env = [("INTERFACE", "bt0"), ("MODE", "bridged"), ("LINK", "bm0")];

        ok(&vmtap_env(&["ifup"], &env));
        let up = bridged_state("bt0");
        let mut want_mac = before.1.clone();
        want_mac.replace_range(0..2, "fe");
        assert_eq!(up, (1400, want_mac, Some("bm0".into()), true));
        let record = records_of("bt0")
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a record");
        let first = std::fs::read(&record).unwrap();

        // Twice is once: same state, same record.
        ok(&vmtap_env(&["ifup", "bt0"], &env));
        assert_eq!(bridged_state("bt0"), up);
        assert_eq!(std::fs::read(&record).unwrap(), first);

        ok(&vmtap_env(&["ifdown"], &[("INTERFACE", "bt0")]));
        assert_eq!(bridged_state("bt0"), before);
        assert!(records_of("bt0").is_empty(), "{:?}", records_of("bt0"));
        // Nothing recorded: nothing to do, and no error.
        ok(&vmtap_env(&["ifdown", "bt0"], &[]));
        assert_eq!(bridged_state("bt0"), before);
        // The bridge itself is untouched.
        assert_eq!(link("bm0")["mtu"], 1400);
    });
}

#[test]
fn ifdown_undoes_only_what_ifup_changed() {
    in_netns(|| {
        ip(&["link", "add", "bm1", "type", "bridge"]);
        ip(&["tuntap", "add", "dev", "bt1", "mode", "tap"]);
        // Already up, with the bridge's MTU: ifup does not change these,
        // so ifdown leaves them.
        ip(&["link", "set", "bt1", "up"]);
        let before = bridged_state("bt1");
        ok(&vmtap_env(
            &["ifup", "bt1"],
            &[("MODE", "bridged"), ("BRIDGE", "bm1")],
        ));
        assert_eq!(bridged_state("bt1").2.as_deref(), Some("bm1"));
        ok(&vmtap_env(&["ifdown", "bt1"], &[]));
        let after = bridged_state("bt1");
        assert_eq!(after, before);
        assert!(after.3, "it was up before ifup: it stays up");
    });
}

#[test]
fn invalid_or_missing_variables_exit_2_and_touch_nothing() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "bt2", "mode", "tap"]);
        let before = bridged_state("bt2");
        for (vars, want) in [
            (vec![("MODE", "bridged"), ("LINK", "br0")], "no interface"),
            (vec![("INTERFACE", "bt2")], "MODE is not set"),
            (
                vec![("INTERFACE", "bt2"), ("MODE", "pool"), ("LINK", "x")],
                "unknown NIC mode \"pool\"",
            ),
            (
                vec![("INTERFACE", "bt2"), ("MODE", "routed")],
                "Routed NIC but no IP address specified",
            ),
            (
                vec![("INTERFACE", "bt2"), ("MODE", "bridged")],
                "needs a bridge",
            ),
            (
                vec![
                    ("INTERFACE", "bt2"),
                    ("MODE", "openvswitch"),
                    ("LINK", "sw"),
                    ("VLAN", ".100:"),
                ],
                "not a VLAN spec",
            ),
            (
                vec![
                    ("INTERFACE", "bt2"),
                    ("MODE", "bridged"),
                    ("LINK", "br0"),
                    ("VLAN", "4095"),
                ],
                "VLAN 4095 is out of range",
            ),
        ] {
            fails(&vmtap_env(&["ifup"], &vars), 2, want);
        }
        assert_eq!(bridged_state("bt2"), before);
        assert!(records_of("bt2").is_empty());
    });
}

#[test]
fn host_failures_exit_1_and_leave_nothing() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "bt3", "mode", "tap"]);
        ip(&["link", "add", "bm3", "type", "bridge"]);
        ip(&["link", "add", "nb3", "type", "veth", "peer", "name", "nb3p"]);
        let before = bridged_state("bt3");
        for (vars, want) in [
            (
                vec![("MODE", "bridged"), ("LINK", "nobr")],
                "no interface named \"nobr\"",
            ),
            (
                vec![("MODE", "bridged"), ("LINK", "nb3")],
                "\"nb3\" is not a bridge",
            ),
            (
                vec![("MODE", "bridged"), ("LINK", "bm3"), ("VLAN", ".100")],
                "bridge \"bm3\" does not filter VLANs",
            ),
        ] {
            let mut vars = vars;
            vars.push(("INTERFACE", "bt3"));
            fails(&vmtap_env(&["ifup"], &vars), 1, want);
            assert_eq!(bridged_state("bt3"), before, "{vars:?}");
        }
        fails(
            &vmtap_env(
                &["ifup"],
                &[
                    ("INTERFACE", "nosuch"),
                    ("MODE", "bridged"),
                    ("LINK", "bm3"),
                ],
            ),
            1,
            "no interface named \"nosuch\"",
        );
        assert!(records_of("bt3").is_empty());
        assert!(records_of("nosuch").is_empty());
    });
}

/// Bridge VLANs (`bridge -j vlan show`) of a port: (vid, pvid, untagged).
fn port_vlans(port: &str) -> Vec<(u64, bool, bool)> {
    let out = run("bridge", &["-j", "vlan", "show", "dev", port]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut r = Vec::new();
    for entry in v.as_array().into_iter().flatten() {
        for vl in entry["vlans"].as_array().into_iter().flatten() {
            let flags: Vec<&str> = vl["flags"]
                .as_array()
                .map(|f| f.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let first = vl["vlan"].as_u64().unwrap();
            let last = vl["vlanEnd"].as_u64().unwrap_or(first);
            for vid in first..=last {
                r.push((
                    vid,
                    flags.contains(&"PVID"),
                    flags.contains(&"Egress Untagged"),
                ));
            }
        }
    }
    r.sort();
    r
}

#[test]
fn bridged_vlans_access_trunk_hybrid() {
    in_netns(|| {
        if !vlan_filtering_bridge("bv0") {
            return;
        }
        for (i, (spec, want)) in [
            (".100", vec![(1, false, true), (100, true, true)]),
            ("100", vec![(1, false, true), (100, true, true)]),
            (
                ":100:200",
                vec![(1, true, true), (100, false, false), (200, false, false)],
            ),
            (
                ".100:200",
                vec![(1, false, true), (100, true, true), (200, false, false)],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let tap = format!("bvt{i}");
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            let env = [
                ("INTERFACE", tap.as_str()),
                ("MODE", "bridged"),
                ("LINK", "bv0"),
                ("VLAN", spec),
            ];
            ok(&vmtap_env(&["ifup"], &env));
            assert_eq!(port_vlans(&tap), want, "{spec}");
            ok(&vmtap_env(&["ifup"], &env));
            assert_eq!(port_vlans(&tap), want, "{spec}: twice");
            ok(&vmtap_env(&["ifdown", &tap], &[]));
            assert!(
                port_vlans(&tap).is_empty(),
                "{spec}: {:?}",
                port_vlans(&tap)
            );
            assert_eq!(bridged_state(&tap).2, None);
        }
    });
}

/// The rules (`ip -j rule`, `ip -6 -j rule`) whose iif is `dev`, as
/// (family, table).
fn rules_of(dev: &str) -> Vec<(&'static str, String)> {
    let mut r = Vec::new();
    for (fam, flag) in [("inet", "-4"), ("inet6", "-6")] {
        let out = ip(&[flag, "-j", "rule", "show"]);
        for rule in serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
        {
            if rule["iif"].as_str() == Some(dev) {
                r.push((fam, rule["table"].as_str().unwrap().to_string()));
            }
        }
    }
    r
}

/// The routes through `dev` in `table`, both families, as (dst, protocol).
fn routes_of(dev: &str, table: &str) -> Vec<(String, String)> {
    let mut r = Vec::new();
    for flag in ["-4", "-6"] {
        let Ok(out) = run(
            "ip",
            &[flag, "-j", "route", "show", "table", table, "dev", dev],
        ) else {
            continue;
        };
        for route in serde_json::from_str::<Value>(&out)
            .unwrap_or(Value::Null)
            .as_array()
            .into_iter()
            .flatten()
        {
            if route["type"].as_str().is_some_and(|t| t != "unicast") {
                continue;
            }
            let dst = route["dst"].as_str().unwrap().to_string();
            if dst.starts_with("fe80") {
                continue;
            }
            r.push((dst, route["protocol"].as_str().unwrap_or("").to_string()));
        }
    }
    r.sort();
    r
}

/// proxy_arp, forwarding (IPv4), proxy_ndp, forwarding (IPv6) of `dev`.
fn sysctls(dev: &str) -> [bool; 4] {
    let read = |p: String| std::fs::read_to_string(&p).unwrap().trim() != "0";
    [
        read(format!("/proc/sys/net/ipv4/conf/{dev}/proxy_arp")),
        read(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding")),
        read(format!("/proc/sys/net/ipv6/conf/{dev}/proxy_ndp")),
        read(format!("/proc/sys/net/ipv6/conf/{dev}/forwarding")),
    ]
}

fn is_up(dev: &str) -> bool {
    bridged_state(dev).3
}

#[test]
fn routed_ifup_twice_is_once_and_ifdown_removes_exactly_its_own() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "rt0", "mode", "tap"]);
        ip(&["tuntap", "add", "dev", "rt6", "mode", "tap"]);
        // A stale rule for the name (an earlier tap's): ifup replaces it.
        ip(&["rule", "add", "iif", "rt0", "lookup", "200"]);
        // Another device's rule and a sysctl already on: not ifup's, so
        // ifdown leaves them.
        ip(&["rule", "add", "iif", "other0", "lookup", "100"]);
        std::fs::write("/proc/sys/net/ipv4/conf/rt0/forwarding", "1").unwrap();

        let env4 = [
            ("INTERFACE", "rt0"),
            ("MODE", "routed"),
            ("LINK", "100"),
            ("IP", "10.7.0.2"),
        ];
        ok(&vmtap_env(&["ifup"], &env4));
        let want_rules = vec![("inet", "100".to_string())];
        assert_eq!(rules_of("rt0"), want_rules);
        assert_eq!(
            routes_of("rt0", "100"),
            vec![("10.7.0.2".to_string(), "static".to_string())]
        );
        assert_eq!(routes_of("rt0", "main"), vec![]);
        assert_eq!(sysctls("rt0"), [true, true, false, false]);
        assert!(is_up("rt0"));

        // Twice is once.
        ok(&vmtap_env(&["ifup"], &env4));
        assert_eq!(rules_of("rt0"), want_rules);
        assert_eq!(routes_of("rt0", "100").len(), 1);

        // IPv6, no table: the route goes into main, no rule, the IPv6
        // sysctls only.
        let env6 = [
            ("INTERFACE", "rt6"),
            ("MODE", "routed"),
            ("IP", "2001:db8::7"),
        ];
        ok(&vmtap_env(&["ifup"], &env6));
        ok(&vmtap_env(&["ifup"], &env6));
        assert_eq!(rules_of("rt6"), vec![]);
        assert_eq!(
            routes_of("rt6", "main"),
            vec![("2001:db8::7".to_string(), "static".to_string())]
        );
        assert_eq!(sysctls("rt6"), [false, false, true, true]);

        ok(&vmtap_env(&["ifdown", "rt0"], &[]));
        assert_eq!(rules_of("rt0"), vec![]);
        assert_eq!(routes_of("rt0", "100"), vec![]);
        // forwarding was on before: it stays on.
        assert_eq!(sysctls("rt0"), [false, true, false, false]);
        assert!(!is_up("rt0"));
        assert_eq!(rules_of("other0"), vec![("inet", "100".to_string())]);

        ok(&vmtap_env(&["ifdown", "rt6"], &[]));
        assert_eq!(routes_of("rt6", "main"), vec![]);
        assert_eq!(sysctls("rt6"), [false, false, false, false]);
        assert!(records_of("rt0").is_empty() && records_of("rt6").is_empty());
    });
}

#[test]
fn routed_rules_outlive_the_tap_and_ifdown_removes_them_after() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "rg0", "mode", "tap"]);
        let env = [
            ("INTERFACE", "rg0"),
            ("MODE", "routed"),
            ("LINK", "100"),
            ("IP", "10.7.1.2"),
        ];
        ok(&vmtap_env(&["ifup"], &env));
        ip(&["link", "del", "rg0"]);
        assert_eq!(rules_of("rg0").len(), 1, "the kernel keeps the rule");
        ok(&vmtap_env(&["ifdown", "rg0"], &[]));
        assert_eq!(rules_of("rg0"), vec![]);
        assert!(records_of("rg0").is_empty());

        // A new tap of the same name: a record of the old one is undone
        // first (its rule is gone, not doubled).
        ip(&["tuntap", "add", "dev", "rg0", "mode", "tap"]);
        ok(&vmtap_env(&["ifup"], &env));
        ip(&["link", "del", "rg0"]);
        ip(&["tuntap", "add", "dev", "rg0", "mode", "tap"]);
        let env2 = [
            ("INTERFACE", "rg0"),
            ("MODE", "routed"),
            ("LINK", "101"),
            ("IP", "10.7.1.2"),
        ];
        ok(&vmtap_env(&["ifup"], &env2));
        assert_eq!(rules_of("rg0"), vec![("inet", "101".to_string())]);
        ok(&vmtap_env(&["ifdown", "rg0"], &[]));
        assert_eq!(rules_of("rg0"), vec![]);
    });
}

#[test]
fn an_ipv6_nic_on_a_tap_without_ipv6_is_refused_before_anything_changes() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "rf0", "mode", "tap"]);
        // Someone else's rule for the tap (a selector besides iif): never
        // vmtap's to remove.
        ip(&[
            "rule", "add", "iif", "rf0", "fwmark", "7", "lookup", "200", "pref", "100",
        ]);
        std::fs::write("/proc/sys/net/ipv6/conf/rf0/disable_ipv6", "1").unwrap();
        let before = (rules_of("rf0"), sysctls("rf0"), is_up("rf0"));
        let o = vmtap_env(
            &["ifup"],
            &[
                ("INTERFACE", "rf0"),
                ("MODE", "routed"),
                ("LINK", "100"),
                ("IP", "2001:db8::9"),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("IPv6 is off on \"rf0\""), "{err}");
        assert_eq!((rules_of("rf0"), sysctls("rf0"), is_up("rf0")), before);
        assert_eq!(routes_of("rf0", "100"), vec![]);
        assert!(records_of("rf0").is_empty(), "{:?}", records_of("rf0"));
    });
}

#[test]
fn racing_ifups_of_one_nic_end_as_one() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "rr0", "mode", "tap"]);
        let env = [
            ("INTERFACE", "rr0"),
            ("MODE", "routed"),
            ("LINK", "100"),
            ("IP", "10.7.2.2"),
        ];
        let children: Vec<_> = (0..8)
            .map(|_| {
                vmtap_command_with(VMTAP, env!("CARGO_TARGET_TMPDIR"), &env)
                    .arg("ifup")
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            ok(&c.wait_with_output().unwrap());
        }
        assert_eq!(rules_of("rr0"), vec![("inet", "100".to_string())]);
        assert_eq!(routes_of("rr0", "100").len(), 1);
        ok(&vmtap_env(&["ifdown", "rr0"], &[]));
        assert_eq!(rules_of("rr0"), vec![]);
        assert_eq!(routes_of("rr0", "100"), vec![]);
        assert_eq!(sysctls("rr0"), [false; 4]);
        assert!(!is_up("rr0"));
    });
}

/// `vmtap hotplug ARGS` against the fake monitor at `qmp`.
fn hotplug(qmp: &std::path::Path, args: &[&str]) -> Output {
    let qmp = qmp.to_str().unwrap();
    let mut all = vec!["hotplug", args[0], "--qmp", qmp];
    all.extend(&args[1..]);
    vmtap_env(&all, &[])
}

#[test]
fn hotplug_del_undoes_what_hotplug_add_set_up() {
    use vmtap_testkit::fakeqmp::FakeQemu;
    in_netns(|| {
        let q = FakeQemu::normal();
        let add = [
            "add", "--id", "nic1", "--name", "hr0", "--mode", "routed", "--link", "100", "--ip",
            "10.7.3.2",
        ];
        ok(&hotplug(&q.path, &add));
        assert_eq!(rules_of("hr0"), vec![("inet", "100".to_string())]);
        assert_eq!(routes_of("hr0", "100").len(), 1);
        ok(&hotplug(&q.path, &["del", "--id", "nic1"]));
        // The rule outlives the tap: del removed it.
        assert_eq!(rules_of("hr0"), vec![]);
        assert!(records_of("hr0").is_empty(), "{:?}", records_of("hr0"));
        // Gone from QEMU and from the books: a second del says so.
        fails(&hotplug(&q.path, &["del", "--id", "nic1"]), 1, "nic1");
        drop(q.finish());
        wait_gone("hr0");
    });
}

#[test]
fn a_refused_hotplug_add_leaves_no_rule_behind() {
    use vmtap_testkit::fakeqmp::{Act, Config};
    in_netns(|| {
        let q = Config::default()
            .act(|c| {
                if c.name == "device_add" {
                    Act::Fail
                } else {
                    Act::Normal
                }
            })
            .start();
        let o = hotplug(
            &q.path,
            &[
                "add", "--id", "nic2", "--name", "hf0", "--mode", "routed", "--link", "100",
                "--ip", "10.7.4.2",
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(rules_of("hf0"), vec![]);
        assert!(records_of("hf0").is_empty(), "{:?}", records_of("hf0"));
        assert!(q.finish().is_clean());
        wait_gone("hf0");
    });
}

/// `tag trunks vlan_mode` of an OVS port, as ovs-vsctl prints them.
fn ovs_columns(d: &vmtap_testkit::ovs::OvsDaemons, port: &str) -> String {
    d.vsctl(&["get", "Port", port, "tag", "trunks", "vlan_mode"])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn ovs_ports(d: &vmtap_testkit::ovs::OvsDaemons, switch: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .vsctl(&["list-ports", switch])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn openvswitch_every_vlan_form_twice_then_ifdown() {
    use vmtap_testkit::ovs::OvsDaemons;
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("sw0");
        let rundir = d.db_path().parent().unwrap().to_str().unwrap().to_string();
        // Ganeti's script fails for no VLAN and for ".100", and makes an
        // access port of ".100:200".
        for (i, (vlan, want)) in [
            ("", "[] [] []"),
            (".100", "100 [] []"),
            ("100", "100 [] []"),
            (":100:200", "[] [100, 200] []"),
            (":200:100", "[] [100, 200] []"),
            (".100:200", "100 [200] native-untagged"),
        ]
        .into_iter()
        .enumerate()
        {
            let tap = format!("ot{i}");
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            let env = [
                ("INTERFACE", tap.as_str()),
                ("MODE", "openvswitch"),
                ("LINK", "sw0"),
                ("VLAN", vlan),
                ("OVS_RUNDIR", rundir.as_str()),
            ];
            ok(&vmtap_env(&["ifup"], &env));
            assert_eq!(ovs_columns(&d, &tap), want, "{vlan:?}");
            let uuid = d.vsctl(&["get", "Interface", &tap, "_uuid"]);
            assert!(is_up(&tap));
            // Twice is once: the port is not even re-made.
            ok(&vmtap_env(&["ifup"], &env));
            assert_eq!(ovs_columns(&d, &tap), want, "{vlan:?}: twice");
            assert_eq!(d.vsctl(&["get", "Interface", &tap, "_uuid"]), uuid);
        }
        assert_eq!(ovs_ports(&d, "sw0").len(), 6);
        for i in 0..6 {
            let tap = format!("ot{i}");
            ok(&vmtap_env(
                &["ifdown", &tap],
                &[("OVS_RUNDIR", rundir.as_str())],
            ));
            assert!(!is_up(&tap));
        }
        assert_eq!(ovs_ports(&d, "sw0"), Vec::<String>::new());
    });
}

#[test]
fn openvswitch_port_of_someone_else_and_a_gone_tap() {
    use vmtap_testkit::ovs::OvsDaemons;
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("sw1");
        d.add_bridge("sw2");
        let rundir = d.db_path().parent().unwrap().to_str().unwrap().to_string();
        let run_env = [("OVS_RUNDIR", rundir.as_str())];
        ip(&["tuntap", "add", "dev", "oa0", "mode", "tap"]);
        ip(&["tuntap", "add", "dev", "ob0", "mode", "tap"]);
        // A port the admin made on sw1: ifup sets its VLAN, ifdown leaves
        // the port (it was not vmtap's).
        d.vsctl(&["add-port", "sw1", "oa0"]);
        let env = [
            ("INTERFACE", "oa0"),
            ("MODE", "openvswitch"),
            ("LINK", "sw1"),
            ("VLAN", ".300"),
            ("OVS_RUNDIR", rundir.as_str()),
        ];
        ok(&vmtap_env(&["ifup"], &env));
        assert_eq!(ovs_columns(&d, "oa0"), "300 [] []");
        ok(&vmtap_env(&["ifdown", "oa0"], &run_env));
        assert_eq!(ovs_ports(&d, "sw1"), vec!["oa0"]);

        // A stale port on another switch is moved; the tap goes away and
        // the port (which OVS keeps) is removed by ifdown.
        d.vsctl(&["add-port", "sw2", "ob0"]);
        let env = [
            ("INTERFACE", "ob0"),
            ("MODE", "openvswitch"),
            ("LINK", "sw1"),
            ("OVS_RUNDIR", rundir.as_str()),
        ];
        ok(&vmtap_env(&["ifup"], &env));
        assert_eq!(ovs_ports(&d, "sw2"), Vec::<String>::new());
        assert_eq!(ovs_ports(&d, "sw1"), vec!["oa0", "ob0"]);
        ip(&["link", "del", "ob0"]);
        assert_eq!(ovs_ports(&d, "sw1"), vec!["oa0", "ob0"], "OVS keeps it");
        ok(&vmtap_env(&["ifdown", "ob0"], &run_env));
        assert_eq!(ovs_ports(&d, "sw1"), vec!["oa0"]);

        // No such switch: found out after the tap was brought up (a
        // failure half-way), so that is undone; the error names it.
        let before = bridged_state("oa0");
        let o = vmtap_env(
            &["ifup"],
            &[
                ("INTERFACE", "oa0"),
                ("MODE", "openvswitch"),
                ("LINK", "nosw"),
                ("OVS_RUNDIR", rundir.as_str()),
            ],
        );
        fails(&o, 1, "nosw");
        assert_eq!(bridged_state("oa0"), before);
    });
}

#[test]
fn openvswitch_not_running_is_a_clear_error() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "on0", "mode", "tap"]);
        let empty = std::env::temp_dir().join(format!("vmtap-no-ovs-{}", std::process::id()));
        let o = vmtap_env(
            &["ifup"],
            &[
                ("INTERFACE", "on0"),
                ("MODE", "openvswitch"),
                ("LINK", "sw0"),
                ("OVS_RUNDIR", empty.to_str().unwrap()),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("Open vSwitch") || err.contains("ovs-vsctl"),
            "{err}"
        );
        assert!(!is_up("on0"), "nothing changed");
        assert!(records_of("on0").is_empty());
    });
}

#[test]
fn ifup_racing_ifdown_ends_in_one_state_or_the_other() {
    in_netns(|| {
        ip(&["link", "add", "bz0", "type", "bridge"]);
        ip(&["tuntap", "add", "dev", "bz1", "mode", "tap"]);
        let pristine = bridged_state("bz1");
        let env = [("INTERFACE", "bz1"), ("MODE", "bridged"), ("LINK", "bz0")];
        let spawn = |args: &[&str], vars: &[(&str, &str)]| {
            vmtap_command_with(VMTAP, env!("CARGO_TARGET_TMPDIR"), vars)
                .args(args)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        for _ in 0..20 {
            let up = spawn(&["ifup"], &env);
            let down = spawn(&["ifdown", "bz1"], &[]);
            ok(&up.wait_with_output().unwrap());
            ok(&down.wait_with_output().unwrap());
            let on_record = records_of("bz1")
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "json"));
            let st = bridged_state("bz1");
            if on_record {
                assert_eq!(st.2.as_deref(), Some("bz0"), "on record, so set up");
                assert!(st.3);
                ok(&vmtap_env(&["ifdown", "bz1"], &[]));
            }
            assert_eq!(bridged_state("bz1"), pristine);
        }
    });
}

#[test]
fn ifdown_leaves_what_the_admin_changed_since() {
    in_netns(|| {
        ip(&["link", "add", "bx0", "type", "bridge"]);
        ip(&["link", "add", "bx1", "type", "bridge"]);
        ip(&["tuntap", "add", "dev", "bxt", "mode", "tap"]);
        ok(&vmtap_env(
            &["ifup", "bxt"],
            &[("MODE", "bridged"), ("LINK", "bx0")],
        ));
        // The admin moves the tap to another bridge and sets a new MTU.
        ip(&["link", "set", "bxt", "master", "bx1"]);
        ip(&["link", "set", "bxt", "mtu", "1300"]);
        ok(&vmtap_env(&["ifdown", "bxt"], &[]));
        let st = bridged_state("bxt");
        assert_eq!(st.2.as_deref(), Some("bx1"), "not vmtap's bridge: left");
        assert_eq!(st.0, 1300);
        // vmtap's MAC is put back (nobody changed it), and it goes down.
        assert!(!st.1.starts_with("fe:"), "{}", st.1);
        assert!(!st.3);
    });
}

#[test]
fn an_unsafe_state_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    in_netns(|| {
        ip(&["link", "add", "bu0", "type", "bridge"]);
        ip(&["tuntap", "add", "dev", "but", "mode", "tap"]);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("unsafe-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let o = vmtap_env(
            &["ifup", "but"],
            &[
                ("MODE", "bridged"),
                ("LINK", "bu0"),
                ("VMTAP_STATE_DIR", dir.to_str().unwrap()),
            ],
        );
        fails(&o, 1, "writable by others");
        assert_eq!(bridged_state("but").2, None, "nothing changed");
        std::fs::remove_dir_all(&dir).unwrap();

        // A planted symbolic link where the record's new copy goes is
        // removed, not written through.
        ok(&vmtap_env(
            &["ifup", "but"],
            &[("MODE", "bridged"), ("LINK", "bu0")],
        ));
        let record = records_of("but")
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        let target = dir.with_extension("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, record.with_extension("json.new")).unwrap();
        ok(&vmtap_env(&["ifdown", "but"], &[]));
        ok(&vmtap_env(
            &["ifup", "but"],
            &[("MODE", "bridged"), ("LINK", "bu0")],
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        ok(&vmtap_env(&["ifdown", "but"], &[]));
        std::fs::remove_file(&target).unwrap();
        let _ = std::fs::remove_file(record.with_extension("json.new"));
    });
}

#[test]
fn open_with_a_mode_sets_up_before_exec_and_undoes_a_failed_exec() {
    in_netns(|| {
        let o = vmtap_env(
            &[
                "open",
                "--name",
                "og0",
                "--mode",
                "routed",
                "--ip",
                "10.7.5.2",
                "--link",
                "100",
                "--",
                "sh",
                "-c",
                "ip -o rule show iif {ifname}; ip route show table 100",
            ],
            &[],
        );
        ok(&o);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("iif og0 lookup 100"), "{out}");
        assert!(out.contains("10.7.5.2 dev og0 proto static"), "{out}");
        // The tap went with the program; its rule stays until ifdown.
        wait_gone("og0");
        assert_eq!(rules_of("og0"), vec![("inet", "100".to_string())]);
        ok(&vmtap_env(&["ifdown", "og0"], &[]));
        assert_eq!(rules_of("og0"), vec![]);

        // A program that cannot run: vmtap undoes it all itself.
        let o = vmtap_env(
            &[
                "open",
                "--name",
                "og1",
                "--mode",
                "routed",
                "--ip",
                "10.7.5.3",
                "--link",
                "100",
                "--",
                "/nonexistent/qemu",
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(rules_of("og1"), vec![]);
        assert!(records_of("og1").is_empty(), "{:?}", records_of("og1"));

        // --ip belongs to routed NICs only; --vlan to bridged and OVS.
        for (args, want) in [
            (
                vec!["open", "--bridge", "x", "--ip", "10.0.0.1", "--", "true"],
                "--ip is for a routed NIC",
            ),
            (
                vec![
                    "open", "--mode", "routed", "--ip", "10.0.0.1", "--vlan", "5", "--", "true",
                ],
                "no VLANs",
            ),
            (vec!["open", "--vlan", "5", "--", "true"], "need --mode"),
        ] {
            fails(&vmtap_env(&args, &[]), 2, want);
        }
    });
}

#[test]
fn a_late_ifdown_of_another_instance_leaves_a_reused_name_alone() {
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "ri0", "mode", "tap"]);
        let nic = |instance: &'static str, addr: &'static str| {
            [
                ("INTERFACE", "ri0"),
                ("MODE", "routed"),
                ("LINK", "100"),
                ("IP", addr),
                ("INSTANCE", instance),
            ]
        };
        ok(&vmtap_env(&["ifup"], &nic("vm-a", "10.7.6.2")));
        // vm-a's tap goes; vm-b gets the same name.
        ip(&["link", "del", "ri0"]);
        ip(&["tuntap", "add", "dev", "ri0", "mode", "tap"]);
        ok(&vmtap_env(&["ifup"], &nic("vm-b", "10.7.6.3")));
        let b = (rules_of("ri0"), routes_of("ri0", "100"), sysctls("ri0"));
        assert_eq!(b.1, vec![("10.7.6.3".to_string(), "static".to_string())]);
        // vm-a's late ifdown: not its NIC any more.
        ok(&vmtap_env(&["ifdown"], &nic("vm-a", "10.7.6.2")));
        assert_eq!(
            (rules_of("ri0"), routes_of("ri0", "100"), sysctls("ri0")),
            b
        );
        ok(&vmtap_env(&["ifdown"], &nic("vm-b", "10.7.6.3")));
        assert_eq!(rules_of("ri0"), vec![]);
        assert_eq!(routes_of("ri0", "100"), vec![]);
    });
}
