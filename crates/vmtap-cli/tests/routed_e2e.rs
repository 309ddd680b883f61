//! End to end, routed mode: a real guest behind a tap that `vmtap open
//! --mode routed` set up, in a private network namespace.
//!
//! The guest has a /32 address and an on-link default route, so it ARPs
//! for every address it talks to; the host answers for what lies behind
//! its other interfaces by proxy ARP on the tap. The test shows the guest
//! and the host ping each other, the guest reaches an address behind a
//! veth (a second namespace) only while proxy ARP and forwarding are on,
//! `vmtap ifup` puts them back, and the rule outlives the tap until
//! `vmtap ifdown`.
//!
//! The guest runs a shell on its serial console (the test guest's kernel
//! and initramfs, with `rdinit=/bin/busybox -- sh` instead of its init),
//! fed through QEMU's standard input; every command ends with a marker
//! line that carries its exit status.
//!
//! Skipped when QEMU or the guest is missing, unless VMTAP_REQUIRE=1.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// The tap, the guest's address and the routing table of the NIC.
const TAP: &str = "vr0";
const GUEST_IP: &str = "10.99.1.2";
const TABLE: &str = "100";
/// The host's own address, on a bridge without ports (not the tap).
const HOST_IP: &str = "10.99.0.1";
/// An address behind a veth, in a second namespace.
const FAR_IP: &str = "10.99.2.2";

/// How long one guest command may take (TCG on a loaded machine).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// The guest's kernel command line: a shell on the serial console as
/// the first process.
const SHELL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/bin/busybox -- sh";

/// What the guest's own init would do before configuring NICs: busybox
/// links, /proc and /sys, the virtio modules in order; then it waits (at
/// most 20 s) for eth0.
const GUEST_SETUP: &str = "/bin/busybox --install -s /bin; \
    mount -t proc proc /proc; mount -t sysfs sysfs /sys; \
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
             failover net_failover virtio_net; do \
        [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; \
    done; \
    n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done; \
    [ -e /sys/class/net/eth0 ]";

/// A QEMU started through `vmtap open`, with a shell on its serial
/// console. Killed (and reaped) when dropped.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Console,
    commands: u32,
}

/// What a guest command printed, and its exit status.
struct Ran {
    status: i32,
    output: String,
}

impl Guest {
    fn start(vmtap_args: &[&str]) -> Guest {
        let (kernel, initrd) = guest().expect("checked by the caller");
        let mut qemu = guest_qemu_args(&kernel, &initrd, "");
        let append = qemu
            .iter()
            .position(|a| a == "-append")
            .expect("the guest's arguments have -append");
        qemu[append + 1] = SHELL_CMDLINE.to_string();
        let mut child = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .arg("open")
            .args(vmtap_args)
            .arg("--")
            .arg("qemu-system-x86_64")
            .args(&qemu)
            .args(["-netdev", "{netdev}", "-device", "virtio-net-pci,{device}"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmtap");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        Guest {
            child,
            stdin,
            console: Console::new(out, Some(Box::new(err))),
            commands: 0,
        }
    }

    /// Waits until the guest's shell has started.
    fn wait_for_shell(&mut self) {
        self.console.wait_for("built-in shell (ash)", |_| true);
    }

    /// Runs `cmd` in the guest's shell; waits (up to [`COMMAND_LIMIT`])
    /// for the marker line that follows it. The marker's number is
    /// computed by the shell, so the echo of the typed line never matches.
    fn sh(&mut self, cmd: &str) -> Ran {
        self.commands += 1;
        let n = self.commands;
        let mark = format!("VMTAP-RC-{n}=");
        let from = self.console.log.len();
        let line = format!("{cmd}; rc=$?; echo VMTAP-RC-$(({n}))=$rc\n");
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("cannot type into the guest's console: {e}"));
        let status = |l: &str| -> Option<i32> {
            let (_, after) = l.split_once(&mark)?;
            after.trim().parse().ok()
        };
        let Some(end) = self
            .console
            .wait_within(&mark, |l| status(l).is_some(), COMMAND_LIMIT)
        else {
            panic!(
                "guest command {cmd:?} did not finish within {COMMAND_LIMIT:?}; the console said:\n{}",
                self.console.log.join("\n")
            );
        };
        let output = self.console.log[from..self.console.log.len() - 1]
            .iter()
            .map(|l| l.trim_end_matches('\r'))
            .collect::<Vec<_>>()
            .join("\n");
        Ran {
            status: status(&end).unwrap(),
            output,
        }
    }

    /// [`Guest::sh`], which must succeed.
    fn sh_ok(&mut self, cmd: &str) -> String {
        let ran = self.sh(cmd);
        assert_eq!(
            ran.status, 0,
            "guest command {cmd:?} failed; it said:\n{}",
            ran.output
        );
        ran.output
    }

    /// Stops QEMU and waits for it.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second network namespace, held by a child that does nothing until
/// it is killed.
struct Far(KillOnDrop);

impl Far {
    fn start() -> Far {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let far = Far(KillOnDrop(child));
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = format!("/proc/{}/ns/net", far.pid());
        wait_until("the far namespace exists", 30, || {
            std::fs::read_link(&theirs).is_ok_and(|ns| ns != ours)
        });
        far
    }

    fn pid(&self) -> String {
        self.0.0.id().to_string()
    }

    /// Runs `cmd args` in the far namespace.
    fn run(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        let pid = self.pid();
        let mut all = vec!["-t", pid.as_str(), "-n", cmd];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// `ip ARGS` in the far namespace; panics on failure.
    fn ip(&self, args: &[&str]) {
        self.run("ip", args)
            .unwrap_or_else(|e| panic!("far: ip {args:?}: {e}"));
    }
}

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

/// Every IPv4 rule, as `ip -j rule show` has it.
fn rules() -> Vec<Value> {
    let out = ip(&["-4", "-j", "rule", "show"]);
    match serde_json::from_str(&out).unwrap() {
        Value::Array(v) => v,
        other => panic!("ip -j rule show: {other}"),
    }
}

/// The tables of the IPv4 rules whose iif is `dev`.
fn iif_rule_tables(dev: &str) -> Vec<String> {
    rules()
        .iter()
        .filter(|r| r["iif"].as_str() == Some(dev))
        .map(|r| r["table"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The IPv4 unicast routes of `table` (all devices), as (dst, dev,
/// protocol).
fn routes(table: &str) -> Vec<(String, String, String)> {
    let out = ip(&["-4", "-j", "route", "show", "table", table]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mut r: Vec<_> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"].as_str().is_none_or(|t| t == "unicast"))
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("dst"), s("dev"), s("protocol"))
        })
        .collect();
    r.sort();
    r
}

fn sysctl_path(dev: &str, name: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{dev}/{name}")
}

/// An IPv4 sysctl of `dev` (or `all`, `default`) in this namespace.
fn sysctl(dev: &str, name: &str) -> String {
    let p = sysctl_path(dev, name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .trim()
        .to_string()
}

fn set_sysctl(dev: &str, name: &str, value: &str) {
    let p = sysctl_path(dev, name);
    std::fs::write(&p, value).unwrap_or_else(|e| panic!("{p}: {e}"));
}

/// The link as `ip -j link show` has it.
fn link(dev: &str) -> Value {
    let out = ip(&["-j", "link", "show", "dev", dev]);
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

fn is_up(dev: &str) -> bool {
    link(dev)["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("UP")))
}

/// The MAC addresses of the ARP replies in busybox arping's output
/// ("Unicast reply from IP [MAC] ..."), lower case.
fn arp_replies(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let start = l.find('[')? + 1;
            let end = l[start..].find(']')? + start;
            Some(l[start..end].to_ascii_lowercase())
        })
        .collect()
}

/// The guest asks who has `ip` (broadcast ARP requests, whatever its
/// neighbour cache holds); the MACs that answered.
fn guest_arping(g: &mut Guest, ip: &str) -> Vec<String> {
    let ran = g.sh(&format!("arping -c 2 -w 4 -I eth0 {ip}"));
    let replies = arp_replies(&ran.output);
    // busybox arping exits 0 when an answer came.
    assert_eq!(
        ran.status == 0,
        !replies.is_empty(),
        "arping's status and output disagree:\n{}",
        ran.output
    );
    replies
}

/// The guest pings `ip` with an empty neighbour cache; whether replies
/// came.
fn guest_pings(g: &mut Guest, ip: &str) -> (bool, String) {
    let ran = g.sh(&format!(
        "ip neigh flush dev eth0; ping -c 3 -i 0.5 -W 5 {ip}"
    ));
    let received = ran
        .output
        .lines()
        .find_map(|l| {
            let (before, _) = l.split_once(" packets received")?;
            before.rsplit(' ').next()?.parse::<u32>().ok()
        })
        .unwrap_or(0);
    assert_eq!(
        ran.status == 0,
        received > 0,
        "ping's status and output disagree:\n{}",
        ran.output
    );
    (received > 0, ran.output)
}

/// Host-side ping of `dst` from `src`, in the calling thread's namespace.
fn host_ping(src: &str, dst: &str) -> Result<String, String> {
    run("ping", &["-c", "3", "-i", "0.5", "-W", "5", "-I", src, dst])
}

#[test]
fn routed_guest_reaches_the_host_and_beyond_by_proxy_arp_and_ifdown_removes_the_rule() {
    if guest().is_none() {
        return;
    }
    in_netns(|| {
        // Nothing forwards or proxies unless asked: what the tap gets is
        // vmtap's doing.
        for scope in ["all", "default"] {
            set_sysctl(scope, "forwarding", "0");
            set_sysctl(scope, "proxy_arp", "0");
        }
        ip(&["link", "set", "lo", "up"]);
        // The host's own address lives on a bridge with no ports.
        ip(&["link", "add", "hostbr", "type", "bridge"]);
        ip(&["addr", "add", &format!("{HOST_IP}/32"), "dev", "hostbr"]);
        ip(&["link", "set", "hostbr", "up"]);
        // Another network behind a veth, in a second namespace with its
        // route back to the guests' network through the host.
        let far = Far::start();
        veth("vfar0", "vfar1");
        ip(&["link", "set", "vfar1", "netns", &far.pid()]);
        ip(&["addr", "add", "10.99.2.1/24", "dev", "vfar0"]);
        ip(&["link", "set", "vfar0", "up"]);
        set_sysctl("vfar0", "forwarding", "1");
        far.ip(&["link", "set", "lo", "up"]);
        far.ip(&["addr", "add", &format!("{FAR_IP}/24"), "dev", "vfar1"]);
        far.ip(&["link", "set", "vfar1", "up"]);
        far.ip(&["route", "add", "10.99.1.0/24", "via", "10.99.2.1"]);
        // Traffic to the guests' network that does not come from a guest
        // (the host's own, the veth's) finds their table too: the
        // administrator's part of a routed set-up with a table.
        ip(&[
            "rule",
            "add",
            "to",
            "10.99.1.0/24",
            "lookup",
            TABLE,
            "pref",
            "1000",
        ]);

        let mut g = Guest::start(&[
            "--name", TAP, "--mode", "routed", "--ip", GUEST_IP, "--link", TABLE,
        ]);
        g.wait_for_shell();

        // What routed mode promises, read back from the kernel (vmtap set
        // it up before it exec'd QEMU).
        assert_eq!(
            iif_rule_tables(TAP),
            vec![TABLE],
            "rule iif {TAP} lookup {TABLE}"
        );
        let host_route = (GUEST_IP.to_string(), TAP.to_string(), "static".to_string());
        assert_eq!(routes(TABLE), vec![host_route.clone()]);
        assert!(
            routes("main").iter().all(|r| r.1 != TAP),
            "no route through the tap in main: {:?}",
            routes("main")
        );
        assert_eq!(sysctl(TAP, "proxy_arp"), "1");
        assert_eq!(sysctl(TAP, "forwarding"), "1");
        assert!(is_up(TAP), "routed mode brings the tap up");
        let tap_mac = link(TAP)["address"].as_str().unwrap().to_ascii_lowercase();

        g.sh_ok(GUEST_SETUP);
        g.sh_ok(&format!(
            "ip addr add {GUEST_IP}/32 dev eth0; ip link set eth0 up; ip route add default dev eth0"
        ));

        // The guest and the host ping each other.
        let (replied, out) = guest_pings(&mut g, HOST_IP);
        assert!(replied, "the guest pings the host's {HOST_IP}:\n{out}");
        if let Err(e) = host_ping(HOST_IP, GUEST_IP) {
            panic!("the host pings the guest: {e}");
        }

        // An address behind another interface: the tap answers the
        // guest's ARP for it (proxy ARP), and the host forwards.
        let replies = guest_arping(&mut g, FAR_IP);
        assert!(
            !replies.is_empty() && replies.iter().all(|m| *m == tap_mac),
            "the host answers ARP for {FAR_IP} with the tap's MAC {tap_mac}: {replies:?}"
        );
        let (replied, out) = guest_pings(&mut g, FAR_IP);
        assert!(replied, "the guest reaches {FAR_IP}:\n{out}");
        if let Err(e) = far.run("ping", &["-c", "3", "-i", "0.5", "-W", "5", GUEST_IP]) {
            panic!("the far namespace pings the guest: {e}");
        }

        // Without proxy ARP the far address is unreachable (the host's own
        // address still answers: it is local, ARP needs no proxy for it);
        // `vmtap ifup` with Ganeti's variables puts it back.
        let env = [
            ("INTERFACE", TAP),
            ("MODE", "routed"),
            ("LINK", TABLE),
            ("IP", GUEST_IP),
        ];
        set_sysctl(TAP, "proxy_arp", "0");
        assert_eq!(guest_arping(&mut g, FAR_IP), Vec::<String>::new());
        let (replied, out) = guest_pings(&mut g, FAR_IP);
        assert!(!replied, "no proxy ARP, yet {FAR_IP} answered:\n{out}");
        let (replied, out) = guest_pings(&mut g, HOST_IP);
        assert!(replied, "the host's own address needs no proxy:\n{out}");
        ok(&vmtap_env(&["ifup"], &env));
        assert_eq!(sysctl(TAP, "proxy_arp"), "1");
        let (replied, out) = guest_pings(&mut g, FAR_IP);
        assert!(replied, "proxy ARP back, {FAR_IP} answers:\n{out}");

        // Without forwarding on the tap, no proxy ARP either (the kernel
        // proxies only for a device that forwards), and nothing passes.
        set_sysctl(TAP, "forwarding", "0");
        assert_eq!(guest_arping(&mut g, FAR_IP), Vec::<String>::new());
        let (replied, out) = guest_pings(&mut g, FAR_IP);
        assert!(!replied, "no forwarding, yet {FAR_IP} answered:\n{out}");
        ok(&vmtap_env(&["ifup"], &env));
        assert_eq!(sysctl(TAP, "forwarding"), "1");
        let (replied, out) = guest_pings(&mut g, FAR_IP);
        assert!(replied, "forwarding back, {FAR_IP} answers:\n{out}");
        // A second ifup changed nothing else.
        assert_eq!(iif_rule_tables(TAP), vec![TABLE]);
        assert_eq!(routes(TABLE), vec![host_route]);

        // QEMU goes, and the tap with it; the rule stays (the kernel keeps
        // rules that name a device), until ifdown.
        g.stop();
        wait_gone(TAP);
        assert_eq!(
            iif_rule_tables(TAP),
            vec![TABLE],
            "the rule outlives the tap"
        );
        assert_eq!(routes(TABLE), vec![], "the route went with the tap");
        ok(&vmtap_env(&["ifdown", TAP], &[]));
        assert_eq!(
            iif_rule_tables(TAP),
            Vec::<String>::new(),
            "ifdown removed the rule"
        );
        assert!(
            rules()
                .iter()
                .any(|r| r["dst"].as_str() == Some("10.99.1.0") && r["table"] == TABLE),
            "ifdown removes its own rules only: {:?}",
            rules()
        );
        let records = state_dir(env!("CARGO_TARGET_TMPDIR")).join("nics");
        let left: Vec<_> = std::fs::read_dir(&records)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|f| f.ends_with(&format!("-{TAP}.json")))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(left, Vec::<String>::new(), "no record left for {TAP}");
    });
}
