//! End to end: `vmtap open` starts a real QEMU guest on the tap, and the
//! guest answers ping. Each test in its own network namespace.
//!
//! Skipped when QEMU or the guest is missing, unless VMTAP_REQUIRE_QEMU=1
//! (set by .ci/run), where that is a failure.

use vmtap_testkit as common;

use std::process::{Child, Stdio};

use common::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// A QEMU started through `vmtap open`, with its serial console read on a
/// thread. Killed when dropped.
struct Vm {
    child: Child,
    console: Console,
}

impl Vm {
    fn start(vmtap_args: &[&str], ip: &str, extra_device: &str) -> Vm {
        let (kernel, initrd) = guest().expect("checked by the caller");
        let device = format!("virtio-net-pci,{{device}}{extra_device}");
        let mut args: Vec<String> = vec!["open".into()];
        args.extend(vmtap_args.iter().map(|a| a.to_string()));
        args.extend(["--".into(), "qemu-system-x86_64".into()]);
        args.extend(guest_qemu_args(&kernel, &initrd, ip));
        args.extend([
            "-netdev".into(),
            "{netdev}".into(),
            "-device".into(),
            device,
        ]);
        let mut child = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmtap");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        Vm {
            child,
            console: Console::new(out, Some(Box::new(err))),
        }
    }

    /// Waits for a console line containing `needle` that satisfies `ok`.
    fn wait_for(&mut self, needle: &str, ok: impl Fn(&str) -> bool) -> String {
        self.console.wait_for(needle, ok)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops QEMU and waits for it.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(src: Option<&str>, dst: &str) -> bool {
    let mut args = vec!["-c", "3", "-W", "2", "-i", "0.3"];
    if let Some(s) = src {
        args.extend_from_slice(&["-I", s]);
    }
    args.push(dst);
    run("ping", &args).is_ok()
}

/// Sum of interrupts per virtio input queue, from a `VMTAP-IRQ` line.
fn irq_counts(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter(|w| w.contains("-input."))
        .filter_map(|w| w.rsplit('=').next()?.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn two_queues_guest_answers_ping_and_both_queues_carry_traffic() {
    if guest().is_none() {
        return;
    }
    in_netns(|| {
        let mut vm = Vm::start(
            &["--name", "vt0", "--queues", "2", "--up"],
            "10.77.1.2/24",
            "",
        );
        let nic = vm.wait_for("VMTAP-NIC eth0 up", |_| true);
        assert!(
            nic.contains("rx-0 rx-1 tx-0 tx-1"),
            "guest has 2 queue pairs: {nic}"
        );
        let cmd = cmdline(vm.pid());
        assert!(cmd.contains("tap,id=net0,fds="), "{cmd}");
        assert!(
            cmd.contains("virtio-net-pci,netdev=net0,mq=on,vectors=6"),
            "{cmd}"
        );
        assert_eq!(sysfs_tx_queues("vt0"), 2, "QEMU kept both queues attached");
        assert!(ip_details("vt0").contains("state UNKNOWN") || ip_details("vt0").contains(",UP"));

        ip(&["addr", "add", "10.77.1.1/24", "dev", "vt0"]);
        assert!(ping(None, "10.77.1.2"), "guest answers ping over the tap");
        // Several flows (one per source address) spread over both queues.
        for i in 11..27 {
            let src = format!("10.77.1.{i}");
            ip(&["addr", "add", &format!("{src}/24"), "dev", "vt0"]);
            assert!(ping(Some(&src), "10.77.1.2"));
        }
        let line = vm.wait_for("VMTAP-IRQ", |l| {
            let c = irq_counts(l);
            c.len() == 2 && c.iter().all(|&n| n > 0)
        });
        eprintln!("per-queue interrupts in the guest: {line}");

        vm.stop();
        wait_gone("vt0");
        assert_eq!(interfaces(), vec!["lo"]);
    });
}

#[test]
fn one_queue_through_a_bridge() {
    if guest().is_none() {
        return;
    }
    in_netns(|| {
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "set", "br0", "mtu", "1400"]);
        ip(&["addr", "add", "10.77.2.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        let mut vm = Vm::start(&["--name", "vt1", "--bridge", "br0"], "10.77.2.2/24", "");
        let nic = vm.wait_for("VMTAP-NIC eth0 up", |_| true);
        assert!(nic.contains("rx-0 tx-0"), "{nic}");
        let cmd = cmdline(vm.pid());
        assert!(cmd.contains("tap,id=net0,fd="), "{cmd}");
        assert!(!cmd.contains("fds=") && !cmd.contains("mq=on"), "{cmd}");
        let d = ip_details("vt1");
        assert!(d.contains("master br0") && d.contains("mtu 1400"), "{d}");
        assert!(d.contains("link/ether fe:"), "MAC first byte 0xfe: {d}");
        assert!(
            ping(None, "10.77.2.2"),
            "guest reachable through the bridge"
        );
        vm.stop();
        wait_gone("vt1");
    });
}

#[test]
fn a_qemu_command_line_mistake_makes_qemu_exit_and_the_tap_vanish() {
    if guest().is_none() {
        return;
    }
    in_netns(|| {
        let mut vm = Vm::start(
            &["--name", "vt2", "--queues", "2"],
            "10.77.3.2/24",
            ",no_such_property=1",
        );
        let status = vm.child.wait().unwrap();
        assert!(!status.success());
        let said = vm.wait_for("no_such_property", |_| true);
        assert!(said.contains("stderr"), "{said}");
        wait_gone("vt2");
        assert_eq!(interfaces(), vec!["lo"]);
    });
}
