//! `vmtap ifup` against Ganeti's NIC script, whole process, same private
//! network namespace (run as root, with Open vSwitch installed:
//! scripts/install-deps):
//!   cargo bench --bench nic_modes
//!
//! For the routed and openvswitch modes, interleaved, from the same state
//! each time (an untimed reset between runs): (a) `vmtap ifup` with
//! Ganeti's variables; (b) the equivalent of Ganeti's script: `bash` with
//! the `ip` and `ovs-vsctl` commands it runs (written from its source, in
//! the form that works); (c) the floor: spawning `/bin/true`. Prints the
//! medians and the ratio (a) / (b).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmtap_testkit as common;

const ROUNDS: usize = 40;
const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// Ganeti's routed mode (kvm-ifup, routed): link up, the device's rules
/// replaced by one, the host route, proxy ARP and forwarding.
const ROUTED_SH: &str = r#"
ip link set "$INTERFACE" up
while ip rule del dev "$INTERFACE" 2>/dev/null; do :; done
ip rule add dev "$INTERFACE" table "$LINK"
ip route replace "$IP" table "$LINK" proto static dev "$INTERFACE"
echo 1 > "/proc/sys/net/ipv4/conf/$INTERFACE/proxy_arp"
echo 1 > "/proc/sys/net/ipv4/conf/$INTERFACE/forwarding"
"#;

/// Ganeti's openvswitch mode (kvm-ifup, openvswitch), access VLAN, in the
/// form that works (its own fails for `.100`).
const OVS_SH: &str = r#"
ovs-vsctl del-port "$INTERFACE" 2>/dev/null || true
ip link set "$INTERFACE" up
ovs-vsctl add-port "$LINK" "$INTERFACE"
ovs-vsctl set port "$INTERFACE" tag=100
"#;

fn run_ok(c: &mut Command) {
    let st = c.stdout(Stdio::null()).status().expect("spawn");
    assert!(st.success(), "{c:?}: {st}");
}

fn timed(mut c: Command) -> Duration {
    c.stdout(Stdio::null());
    let t = Instant::now();
    let st = c.status().expect("spawn");
    let d = t.elapsed();
    assert!(st.success(), "{c:?}: {st}");
    d
}

fn vmtap(state: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new(VMTAP);
    c.env("VMTAP_STATE_DIR", state)
        .envs(env.iter().copied())
        .args(args);
    c
}

fn script(text: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("bash");
    c.args(["-c", text]).envs(env.iter().copied());
    c
}

struct Row {
    label: &'static str,
    vmtap: Vec<Duration>,
    script: Vec<Duration>,
    floor: Vec<Duration>,
}

fn bench(
    label: &'static str,
    state: &Path,
    env: &[(&str, &str)],
    baseline: &str,
    reset: &dyn Fn(),
    check: &dyn Fn(),
) -> Row {
    let mut row = Row {
        label,
        vmtap: Vec::new(),
        script: Vec::new(),
        floor: Vec::new(),
    };
    for round in 0..ROUNDS + 2 {
        reset();
        let a = timed(vmtap(state, env, &["ifup"]));
        check();
        run_ok(&mut vmtap(state, env, &["ifdown"]));
        reset();
        let b = timed(script(baseline, env));
        check();
        reset();
        let c = timed(Command::new("/bin/true"));
        // The first rounds warm caches up.
        if round >= 2 {
            row.vmtap.push(a);
            row.script.push(b);
            row.floor.push(c);
        }
    }
    reset();
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    common::reexec_in_private_namespace();
    // Records live on a tmpfs, as /run is (this namespace's own mount).
    let state = std::env::temp_dir().join(format!("vmtap-bench-nic-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0700", "tmpfs"])
            .arg(&state),
    );
    let ip = |args: &[&str]| common::ip(args);
    let mut rows = Vec::new();

    // Routed: table 100, one IPv4 address.
    ip(&["tuntap", "add", "dev", "rb0", "mode", "tap"]);
    let routed_env = [
        ("INTERFACE", "rb0"),
        ("MODE", "routed"),
        ("LINK", "100"),
        ("IP", "10.9.0.2"),
    ];
    let routed_reset = || {
        while common::run("ip", &["rule", "del", "iif", "rb0"]).is_ok() {}
        let _ = common::run("ip", &["route", "flush", "table", "100"]);
        for f in ["proxy_arp", "forwarding"] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/rb0/{f}"), "0").unwrap();
        }
        ip(&["link", "set", "rb0", "down"]);
    };
    let routed_check = || {
        let rules = ip(&["rule", "show", "iif", "rb0"]);
        assert_eq!(rules.lines().count(), 1, "{rules}");
        assert!(ip(&["route", "show", "table", "100"]).contains("10.9.0.2 dev rb0 proto static"));
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/rb0/proxy_arp")
                .unwrap()
                .trim(),
            "1"
        );
    };
    rows.push(bench(
        "routed",
        &state,
        &routed_env,
        ROUTED_SH,
        &routed_reset,
        &routed_check,
    ));

    // Open vSwitch: a private switch on the userspace datapath, VLAN 100.
    let Some(d) = common::ovs::OvsDaemons::start() else {
        panic!("Open vSwitch is needed (scripts/install-deps)");
    };
    d.add_bridge("swb");
    ip(&["tuntap", "add", "dev", "ob0", "mode", "tap"]);
    let rundir = d.db_path().parent().unwrap().to_str().unwrap().to_string();
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let ovs_env = [
        ("INTERFACE", "ob0"),
        ("MODE", "openvswitch"),
        ("LINK", "swb"),
        ("VLAN", ".100"),
        ("OVS_RUNDIR", rundir.as_str()),
        ("PATH", path.as_str()),
    ];
    let ovs_reset = || {
        d.vsctl(&["--if-exists", "del-port", "ob0"]);
        ip(&["link", "set", "ob0", "down"]);
    };
    let ovs_check = || {
        assert_eq!(d.vsctl(&["get", "Port", "ob0", "tag"]).trim(), "100");
    };
    rows.push(bench(
        "openvswitch",
        &state,
        &ovs_env,
        OVS_SH,
        &ovs_reset,
        &ovs_check,
    ));
    drop(d);
    run_ok(Command::new("umount").arg(&state));
    let _ = std::fs::remove_dir(&state);

    println!(
        "{:<12} {:>14} {:>14} {:>10} {:>8}   ({ROUNDS} rounds, medians)",
        "mode", "vmtap ifup", "Ganeti script", "floor", "ratio"
    );
    for mut r in rows {
        let a = common::median(&mut r.vmtap);
        let b = common::median(&mut r.script);
        let c = common::median(&mut r.floor);
        println!(
            "{:<12} {:>11} µs {:>11} µs {:>7} µs {:>8.2}",
            r.label,
            a.as_micros(),
            b.as_micros(),
            c.as_micros(),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}
