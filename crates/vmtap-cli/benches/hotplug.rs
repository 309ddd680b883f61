//! `vmtap hotplug add` against the QMP exchange alone, on one running QEMU
//! (run as root, with QEMU and the test guest: scripts/build-guest):
//!   cargo bench --bench hotplug
//!
//! For 1 and 4 queues, interleaved: (a) the whole command, as a process:
//! start, connect, check the id is free, open the tap, getfd, netdev_add,
//! device_add; (b) the bare QMP exchange (connect, getfd per fd,
//! netdev_add, device_add) with the fds opened beforehand, i.e. the part
//! QEMU spends; (c) the library's QMP part, `hotplug::plug`, on fds opened
//! beforehand: (b) plus the id check. Each add is followed by an untimed
//! hotplug del. Prints medians and the ratios (a) / (b) and (c) / (b).

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmtap_testkit as common;

use serde::de::IgnoredAny;
use serde_json::json;
use vmtap::{OpenOptions, Tap};
use vmtap_qemu::hotplug::{self, Monitor};
use vmtap_qemu::qmp::Qmp;
use vmtap_sys as sys;

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
    let monitor = Monitor::new(&sock, timeout);
    let del = |id: &str| hotplug::del(&monitor, id).unwrap();
    // The bare exchange, as a minimal client would do it.
    let bare = |id: &str, tap: &Tap| {
        let mut c = Qmp::connect(&sock, timeout).unwrap();
        let mut names = Vec::new();
        for (i, q) in tap.queues().iter().enumerate() {
            let name = format!("{id}-{i}");
            c.execute_with_fds::<IgnoredAny>(
                "getfd",
                Some(json!({ "fdname": name })),
                &[q.as_fd()],
            )
            .unwrap();
            names.push(name);
        }
        let mut netdev = json!({ "type": "tap", "id": id });
        if names.len() == 1 {
            netdev["fd"] = json!(names[0]);
        } else {
            netdev["fds"] = json!(names.join(":"));
        }
        c.execute::<IgnoredAny>("netdev_add", Some(netdev)).unwrap();
        let mut device = json!({ "driver": "virtio-net-pci", "netdev": id, "id": id });
        if names.len() > 1 {
            device["mq"] = json!(true);
            device["vectors"] = json!(vmtap_qemu::args::vectors(names.len()));
        }
        c.execute::<IgnoredAny>("device_add", Some(device)).unwrap();
    };
    println!("hotplug add, {ROUNDS} rounds each, medians:");
    for queues in [1usize, 4] {
        let q = queues.to_string();
        // [whole command, bare exchange, hotplug::plug]
        let mut times: [Vec<Duration>; 3] = Default::default();
        for r in 0..ROUNDS + 1 {
            let run_whole = || {
                let t = Instant::now();
                let st = vmtap_testkit::vmtap_command(
                    env!("CARGO_BIN_EXE_vmtap"),
                    env!("CARGO_TARGET_TMPDIR"),
                )
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
            let run_bare = || {
                let tap = OpenOptions::new().queues(queues).open().unwrap();
                let t = Instant::now();
                bare("bb", &tap);
                let d = t.elapsed();
                drop(tap);
                del("bb");
                d
            };
            let run_plug = || {
                let tap = OpenOptions::new().queues(queues).open().unwrap();
                let t = Instant::now();
                hotplug::plug(&monitor, "bq", &tap, "virtio-net-pci", None).unwrap();
                let d = t.elapsed();
                drop(tap);
                del("bq");
                d
            };
            // Rotate the order so that none always runs first.
            let mut round = [Duration::ZERO; 3];
            for k in 0..3 {
                let which = (r + k) % 3;
                round[which] = match which {
                    0 => run_whole(),
                    1 => run_bare(),
                    _ => run_plug(),
                };
            }
            if r > 0 {
                for (all, d) in times.iter_mut().zip(round) {
                    all.push(d);
                }
            }
        }
        let [w, b, p] = times.map(|mut all| {
            all.sort();
            all[ROUNDS / 2].as_secs_f64() * 1e3
        });
        println!(
            "  {queues} queue(s): vmtap hotplug add {w:.2} ms, bare QMP exchange {b:.2} ms, ratio {:.2}; hotplug::plug {p:.2} ms, ratio {:.2}",
            w / b,
            p / b
        );
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
