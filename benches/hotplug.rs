//! `vmtap hotplug add` against the QMP exchange alone, on one running QEMU
//! (run as root, with QEMU and the test guest: scripts/build-guest):
//!   cargo bench --bench hotplug
//!
//! For 1 and 4 queues, interleaved: (a) the whole command, as a process:
//! start, connect, open the tap, getfd, netdev_add, device_add; (b) the same
//! QMP exchange (connect, getfd per fd, netdev_add, device_add) with the
//! fds opened beforehand, i.e. the part QEMU spends. Each add is followed by
//! an untimed hotplug del. Prints medians and the ratio (a) / (b).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use vmtap::hotplug;
use vmtap::qmp::Qmp;
use vmtap::{OpenOptions, sys};

const ROUNDS: usize = 15;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (kernel, initrd) = common::guest().expect("QEMU and the guest (scripts/build-guest)");
    sys::unshare_network_namespace().expect("run as root: unshare(CLONE_NEWNET)");
    let dir = std::env::temp_dir().join(format!("vmtap-bench-hp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("qmp.sock");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(common::guest_qemu_args(&kernel, &initrd, "10.77.9.2/24"))
        .args(["-nic", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let out = BufReader::new(qemu.stdout.take().unwrap());
    let mut lines = out.lines();
    lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("VMTAP-BOOTED"))
        .expect("guest boots");
    std::thread::spawn(move || for _ in lines {});

    let timeout = Duration::from_secs(30);
    let del = |id: &str| {
        let mut c = Qmp::connect(&sock, timeout).unwrap();
        hotplug::del(&mut c, id, timeout).unwrap();
    };
    println!("hotplug add, {ROUNDS} rounds each, medians:");
    for queues in [1usize, 4] {
        let q = queues.to_string();
        let (mut whole, mut qmp_only) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS + 1 {
            let run_whole = || {
                let t = Instant::now();
                let st = Command::new(env!("CARGO_BIN_EXE_vmtap"))
                    .args([
                        "hotplug",
                        "add",
                        "--qmp",
                        sock.to_str().unwrap(),
                        "--id",
                        "bw",
                        "--queues",
                        &q,
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                let d = t.elapsed();
                assert!(st.success());
                del("bw");
                d
            };
            let run_qmp = || {
                let tap = OpenOptions::new().queues(queues).open().unwrap();
                let t = Instant::now();
                let mut c = Qmp::connect(&sock, timeout).unwrap();
                hotplug::plug(&mut c, "bq", &tap, "virtio-net-pci", None).unwrap();
                let d = t.elapsed();
                drop(c);
                drop(tap);
                del("bq");
                d
            };
            let (w, p) = if r % 2 == 0 {
                let w = run_whole();
                (w, run_qmp())
            } else {
                let p = run_qmp();
                (run_whole(), p)
            };
            if r > 0 {
                whole.push(w);
                qmp_only.push(p);
            }
        }
        whole.sort();
        qmp_only.sort();
        let (w, p) = (whole[ROUNDS / 2], qmp_only[ROUNDS / 2]);
        println!(
            "  {queues} queue(s): vmtap hotplug add {:.2} ms, QMP exchange alone {:.2} ms, ratio {:.2}",
            w.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            w.as_secs_f64() / p.as_secs_f64()
        );
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
