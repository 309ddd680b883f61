//! NIC modes through the command: `vmtap ifup`/`ifdown` with Ganeti's
//! environment, read back from the kernel; each test in its own network
//! namespace.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;
use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// `vmtap ARGS` with exactly the variables `vars` (nothing inherited but
/// PATH, so a variable of the test's own environment cannot leak in).
fn vmtap_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("VMTAP_STATE_DIR", state_dir(env!("CARGO_TARGET_TMPDIR")))
        .args(args)
        .envs(vars.iter().copied());
    c.output().expect("run vmtap")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
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
        if run(
            "ip",
            &[
                "link",
                "add",
                "bv0",
                "type",
                "bridge",
                "vlan_filtering",
                "1",
            ],
        )
        .is_err()
        {
            not_run_here("bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)");
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
