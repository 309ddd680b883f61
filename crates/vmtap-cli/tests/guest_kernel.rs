//! What only a kernel with vhost-net can show: run by the guest-kernel
//! lane (`scripts/test-guest-kernel`, Debian's kernel in a QEMU guest
//! whose root is this host's), and on any host that has `/dev/vhost-net`.
//! Elsewhere they say "NOT RUN (this kernel)", or fail with
//! `VMTAP_REQUIRE_KERNEL=1` (which the lane sets).
//!
//! In the lane the QEMU started here is nested (TCG inside TCG), so its
//! deadlines are generous; each test runs in its own network namespace.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// How long a nested guest may take to boot or to see a NIC.
const NESTED: Duration = Duration::from_secs(900);

fn vhost_net_here() -> bool {
    if Path::new("/dev/vhost-net").exists() {
        return true;
    }
    not_run_here("/dev/vhost-net (the vhost_net module): the guest-kernel lane runs this");
    false
}

fn vmtap(args: &[&str]) -> Output {
    vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The fds of process `pid` open on `/dev/vhost-net`.
fn vhost_fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new("/dev/vhost-net"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The vhost worker threads working for process `pid` (Linux names them
/// `vhost-PID`: a kernel thread up to 6.3, a thread of the process since
/// 6.4), one per vhost device whose owner was set (`VHOST_SET_OWNER`, as
/// QEMU does when vhost is in use).
fn vhost_workers_of(pid: u32) -> usize {
    let name = format!("vhost-{pid}");
    let mut n = 0;
    let is_worker = |comm: &Path| std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == name);
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if is_worker(&e.path().join("comm")) {
            n += 1;
        }
    }
    // Threads of QEMU itself (newer kernels).
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.filter_map(Result::ok) {
            if is_worker(&t.path().join("comm")) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn vhost_fds_are_the_real_vhost_net_device() {
    if !vhost_net_here() {
        return;
    }
    in_netns(|| {
        let tun = vmtap::Tun::system();
        tun.check_vhost_net().unwrap();
        let tap = vmtap::OpenOptions::new()
            .queues(2)
            .vhost(true)
            .open()
            .unwrap();
        assert_eq!(tap.vhost_fds().len(), 2);
        for fd in tap.vhost_fds() {
            let st = rustix::fs::fstat(fd.as_fd()).unwrap();
            assert_eq!(
                (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)),
                vmtap::sys::VHOST_NET_DEVICE
            );
        }
        drop(tap);
        wait_until("the tap gone", 30, || interfaces() == ["lo"]);
        let features: serde_json::Value =
            serde_json::from_str(&ok(&vmtap(&["features", "--json"]))).unwrap();
        assert_eq!(features["vhost_net"], true, "{features}");
        // Another vhost device, or a node that is not one, is refused.
        for (node, why) in [
            ("/dev/null", "is not a vhost-net device"),
            ("/dev/net/tun", "is not a vhost-net device"),
        ] {
            let o = vmtap(&["open", "--vhost", "--vhost-device", node, "--", "true"]);
            assert_eq!(o.status.code(), Some(1));
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains(why), "{node}: {e}");
        }
        assert_eq!(interfaces(), ["lo"], "nothing left by the refusals");
    });
}

/// A QEMU (nested in the lane) that `vmtap open --vhost` started, running
/// the test guest on the tap.
struct Vm {
    child: Child,
    console: Console,
    qmp: PathBuf,
    dir: PathBuf,
}

impl Vm {
    fn start(ip: &str, vmtap_args: &[&str]) -> Vm {
        let (kernel, initrd) = guest().expect("the test guest");
        let dir = std::env::temp_dir().join(format!(
            "vmtap-gk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let qmp = dir.join("qmp.sock");
        let mut qemu = guest_qemu_args(&kernel, &initrd, ip);
        qemu.extend([
            "-netdev".into(),
            "{netdev}".into(),
            "-device".into(),
            "virtio-net-pci,{device}".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
        let mut child = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .arg("open")
            .args(vmtap_args)
            .arg("--")
            .arg("qemu-system-x86_64")
            .args(&qemu)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        Vm {
            child,
            console: Console::new(out, Some(Box::new(err))),
            qmp,
            dir,
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let t = Instant::now();
        let line = self
            .console
            .wait_within(needle, |_| true, NESTED)
            .unwrap_or_else(|| {
                panic!(
                    "no console line with {needle:?} in {NESTED:?}; it said:\n{}",
                    self.console.log.join("\n")
                )
            });
        eprintln!("[{needle}] after {:.1}s", t.elapsed().as_secs_f64());
        line
    }

    fn hotplug(&self, args: &[&str]) -> Output {
        let qmp = self.qmp.to_str().unwrap();
        let mut all = vec!["hotplug", args[0], "--qmp", qmp, "--timeout", "300"];
        all.extend_from_slice(&args[1..]);
        vmtap(&all)
    }

    fn hmp(&self, command: &str) -> String {
        let mut c = vmtap_qemu::qmp::Qmp::connect(&self.qmp, Duration::from_secs(120)).unwrap();
        c.execute::<String>(
            "human-monitor-command",
            Some(serde_json::json!({ "command-line": command })),
        )
        .unwrap()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn qemu_runs_on_vmtaps_vhost_fds_and_takes_a_hot_plugged_vhost_nic() {
    if !vhost_net_here() || guest().is_none() {
        return;
    }
    in_netns(|| {
        let boot = Instant::now();
        let mut vm = Vm::start(
            "10.79.0.2/24",
            &["--vhost", "--queues", "2", "--name", "vh0", "--up"],
        );
        let pid = vm.child.id();
        vm.wait_for("VMTAP-BOOTED");
        let nic = vm.wait_for("VMTAP-NIC eth0 up");
        assert!(nic.contains("rx-0 rx-1 tx-0 tx-1"), "{nic}");
        eprintln!(
            "nested guest booted with its vhost NIC up in {:.1}s",
            boot.elapsed().as_secs_f64()
        );
        // QEMU holds vmtap's two vhost-net fds, and the kernel runs vhost
        // workers for it: vhost is in use (QEMU exits at start-up when
        // vhost=on cannot be set up).
        assert_eq!(vhost_fds_of(pid), 2);
        assert!(vhost_workers_of(pid) >= 1, "no vhost-{pid} worker");
        let info = vm.hmp("info network");
        assert!(info.contains("net0") && info.contains("type=tap"), "{info}");
        // Packets through vhost-net: the guest answers ping.
        ip(&["addr", "add", "10.79.0.1/24", "dev", "vh0"]);
        assert!(
            run("ping", &["-c", "3", "-W", "10", "10.79.0.2"]).is_ok(),
            "the guest answers through the vhost NIC"
        );

        // Hot-plug a second vhost NIC, then remove it.
        let workers = vhost_workers_of(pid);
        ok(&vm.hotplug(&[
            "add", "--id", "nic1", "--name", "vh1", "--vhost", "--queues", "2", "--up",
        ]));
        let nic = vm.wait_for("VMTAP-NIC eth1 up");
        assert!(nic.contains("rx-0 rx-1 tx-0 tx-1"), "{nic}");
        assert_eq!(vhost_fds_of(pid), 4);
        wait_until("a vhost worker for the new NIC", 60, || {
            vhost_workers_of(pid) > workers
        });
        assert!(
            ip_details("vh1").contains("alias vmtap pid="),
            "owner recorded"
        );
        ok(&vm.hotplug(&["del", "--id", "nic1"]));
        vm.wait_for("VMTAP-NIC-GONE eth1");
        wait_gone("vh1");
        wait_until("QEMU closed the removed NIC's vhost fds", 60, || {
            vhost_fds_of(pid) == 2
        });
        drop(vm);
        wait_gone("vh0");
    });
}
