//! NIC hot-plug into a real running QEMU over QMP, in a private network
//! namespace. Skipped without QEMU/guest unless VMTAP_REQUIRE_QEMU=1.

use vmtap_testkit as common;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde::de::IgnoredAny;
use serde_json::json;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

struct Qemu {
    child: Child,
    console: Console,
    qmp: PathBuf,
}

impl Qemu {
    fn start(dir: &Path, ip: &str) -> Qemu {
        let (kernel, initrd) = guest().unwrap();
        let qmp = dir.join("qmp.sock");
        let mut child = Command::new("qemu-system-x86_64")
            .args(guest_qemu_args(&kernel, &initrd, ip))
            .args(["-nic", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        Qemu {
            child,
            console: Console::new(out, None),
            qmp,
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        self.console.wait_for(needle, |_| true)
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// QEMU's fd count once it has settled on `want` (QEMU closes its side
    /// of a finished QMP connection a moment after the client exits), or
    /// what it is after 3 s.
    fn fds_settled(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n = self.fd_count();
            if n == want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A QMP connection of our own.
    fn qmp(&self) -> vmtap_qemu::qmp::Qmp {
        vmtap_qemu::qmp::Qmp::connect(&self.qmp, Duration::from_secs(30)).unwrap()
    }

    /// Whether QEMU has a netdev or device `id`, asked on a connection of
    /// our own.
    fn presence(&self, id: &str) -> vmtap_qemu::hotplug::Presence {
        vmtap_qemu::hotplug::presence(&mut self.qmp(), id).unwrap()
    }

    fn vmtap(&self, args: &[&str]) -> Output {
        let qmp = self.qmp.to_str().unwrap();
        let mut all = vec!["hotplug", args[0], "--qmp", qmp];
        all.extend_from_slice(&args[1..]);
        vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(&all)
            .output()
            .unwrap()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn hot_add_ping_remove_failures_and_cycles_leave_nothing() {
    if guest().is_none() {
        return;
    }
    in_netns(|| {
        let dir = std::env::temp_dir().join(format!("vmtap-hp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut vm = Qemu::start(&dir, "10.77.4.2/24");
        vm.wait_for("VMTAP-BOOTED");
        let base_fds = vm.fd_count();
        let base_ifs = interfaces();

        // Add two queues; the guest sees the NIC and answers ping.
        let out = ok(&vm.vmtap(&[
            "add", "--id", "nic1", "--queues", "2", "--name", "hp0", "--up", "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["ifname"].as_str(), v["id"].as_str()),
            (Some("hp0"), Some("nic1"))
        );
        let nic = vm.wait_for("VMTAP-NIC eth0 up");
        assert!(nic.contains("rx-0 rx-1 tx-0 tx-1"), "{nic}");
        ip(&["addr", "add", "10.77.4.1/24", "dev", "hp0"]);
        assert!(
            run("ping", &["-c", "3", "-W", "2", "10.77.4.2"]).is_ok(),
            "guest answers on the hot-added NIC"
        );

        ok(&vm.vmtap(&["del", "--id", "nic1"]));
        vm.wait_for("VMTAP-NIC-GONE eth0");
        assert!(!exists("hp0"), "tap gone from the host");
        assert_eq!(
            vm.fds_settled(base_fds),
            base_fds,
            "QEMU holds no leftover fd"
        );

        // del removes NICs only: a virtio-rng stays, untouched.
        {
            let mut c = vm.qmp();
            let _: IgnoredAny = c
                .execute(
                    "device_add",
                    Some(json!({"driver": "virtio-rng-pci", "id": "rng0"})),
                )
                .unwrap();
        }
        let e = err(&vm.vmtap(&["del", "--id", "rng0"]));
        assert!(e.contains("is not a NIC"), "{e}");
        assert!(vm.presence("rng0").device, "rng0 was touched");
        {
            let mut c = vm.qmp();
            let _: IgnoredAny = c
                .execute("device_del", Some(json!({"id": "rng0"})))
                .unwrap();
        }
        wait_until("rng0 is unplugged", 60, || !vm.presence("rng0").device);
        assert_eq!(vm.fds_settled(base_fds), base_fds, "after rng0");

        // While another client holds QEMU's monitor, vmtap says so.
        {
            let _held = vm.qmp();
            let o = vm.vmtap(&["add", "--id", "held", "--timeout", "1"]);
            let e = err(&o);
            assert!(
                e.contains("QEMU serves one QMP client at a time: another client may be connected")
                    && e.contains("(timeout: 1s)"),
                "{e}"
            );
            assert_eq!(interfaces(), base_ifs);
        }

        // Failures: each leaves QEMU's fds and the host's interfaces as they were.
        ok(&vm.vmtap(&["add", "--id", "busy", "--name", "hp1"]));
        // QEMU opens the device's ioeventfds when the guest driver starts
        // it: measure once the guest has the NIC up.
        vm.wait_for("VMTAP-NIC eth");
        let busy_fds = vm.fds_settled(0);
        let busy_ifs = interfaces();
        let cases: &[(&[&str], &str)] = &[
            (&["add", "--id", "busy"], "netdev_add"),
            (
                &["add", "--id", "nic2", "--driver", "no-such-nic"],
                "device_add",
            ),
            (
                &[
                    "add",
                    "--id",
                    "nic3",
                    "--vhost",
                    "--vhost-device",
                    "/nonexistent",
                ],
                "vhost-net is not available",
            ),
            (
                &["add", "--id", "nic4", "--bridge", "nobr0"],
                "no interface named \"nobr0\"",
            ),
            (&["del", "--id", "nothere"], "device_del"),
        ];
        for (args, words) in cases {
            let e = err(&vm.vmtap(args));
            assert!(e.contains(words), "{args:?}: {e}");
            assert_eq!(
                vm.fds_settled(busy_fds),
                busy_fds,
                "{args:?}: QEMU fd leaked"
            );
            assert_eq!(interfaces(), busy_ifs, "{args:?}: host interface left");
        }
        // Invalid input: exit 2, nothing opened.
        for args in [
            &["add", "--id", "x", "--mac", "nope"][..],
            &["add", "--id", "x", "--queues", "300"],
        ] {
            let o = vm.vmtap(args);
            assert_eq!(o.status.code(), Some(2), "{args:?}");
        }
        ok(&vm.vmtap(&["del", "--id", "busy"]));
        vm.wait_for("VMTAP-NIC-GONE");
        assert_eq!(vm.fds_settled(base_fds), base_fds);

        // A socket that is not QMP, and one that closes mid-way.
        let fake = dir.join("notqmp.sock");
        let listener = UnixListener::bind(&fake).unwrap();
        let server = std::thread::spawn(move || {
            for (i, conn) in listener.incoming().take(2).enumerate() {
                let mut c = conn.unwrap();
                if i == 0 {
                    let _ = c.write_all(b"SSH-2.0-OpenSSH\r\n");
                } else {
                    let _ = c.write_all(b"{\"QMP\": {\"version\": {}}}\r\n");
                }
            }
        });
        for words in ["not a QMP socket", "closed the QMP connection"] {
            let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
                .args([
                    "hotplug",
                    "add",
                    "--qmp",
                    fake.to_str().unwrap(),
                    "--id",
                    "z",
                    "--timeout",
                    "3",
                ])
                .output()
                .unwrap();
            let e = err(&o);
            assert!(e.contains(words), "{e}");
            assert_eq!(interfaces(), base_ifs);
        }
        server.join().unwrap();

        // Adds with deadlines too short to finish, so that they fail at
        // different steps: each ends with the full NIC (reported as a
        // success, then removed) or with nothing of it in QEMU, and QEMU's
        // fds come back each time. The rollback gets a generous deadline
        // of its own: what is tested here is that it undoes exactly what
        // was done, not how fast.
        let attempts = 36;
        let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
        for i in 0..attempts {
            // 1 ms to 50 ms, spaced geometrically: most fail somewhere.
            let t = format!(
                "{:.4}",
                0.001 * 50f64.powf(i as f64 / (attempts - 1) as f64)
            );
            let o = vm.vmtap(&[
                "add",
                "--id",
                "tiny",
                "--queues",
                "2",
                "--timeout",
                &t,
                "--rollback-timeout",
                "20",
            ]);
            let outcome = if o.status.success() {
                ok(&vm.vmtap(&["del", "--id", "tiny", "--timeout", "60"]));
                if String::from_utf8_lossy(&o.stderr).contains("QEMU did it") {
                    "plugged, device_add late".to_string()
                } else {
                    "plugged".to_string()
                }
            } else {
                let e = String::from_utf8_lossy(&o.stderr).into_owned();
                assert!(!e.contains("may remain"), "attempt {i} ({t} s): {e}");
                assert!(e.contains("no answer from QEMU in time"), "{e}");
                // "... failed at STEP: ..."
                e.split(" failed at ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .unwrap_or(&e)
                    .to_string()
            };
            let p = vm.presence("tiny");
            assert_eq!(
                p,
                vmtap_qemu::hotplug::Presence::default(),
                "attempt {i} ({t} s, {outcome}): QEMU keeps {p:?}"
            );
            assert_eq!(interfaces(), base_ifs, "attempt {i}: host interface left");
            assert_eq!(
                vm.fds_settled(base_fds),
                base_fds,
                "attempt {i} ({t} s, {outcome}): QEMU fd leaked"
            );
            *outcomes.entry(outcome).or_default() += 1;
        }
        eprintln!("adds with tiny timeouts: {outcomes:?}");

        // The same, with a rollback deadline too short to finish: whatever
        // may remain in QEMU is named, with the tap it keeps on the host;
        // when nothing is said to remain, the tap goes.
        let mut named = 0;
        for i in 0..12 {
            let t = format!("{:.4}", 0.001 * 50f64.powf(i as f64 / 11.0));
            let o = vm.vmtap(&[
                "add",
                "--id",
                "lf1",
                "--name",
                "lf0",
                "--timeout",
                &t,
                "--rollback-timeout",
                "0.000001",
            ]);
            let e = String::from_utf8_lossy(&o.stderr).into_owned();
            if !o.status.success() {
                if e.contains("may remain") {
                    assert!(
                        e.contains("the tap lf0 stays on the host while QEMU holds its fds"),
                        "attempt {i} ({t} s): {e}"
                    );
                    named += 1;
                } else {
                    wait_gone("lf0");
                }
            }
            // Clean up whatever is there, as the message says.
            if !vm.presence("lf1").is_free() {
                ok(&vm.vmtap(&["del", "--id", "lf1", "--timeout", "60"]));
            }
            let mut c = vm.qmp();
            let _ = c.execute::<IgnoredAny>("closefd", Some(json!({"fdname": "lf1-0"})));
            drop(c);
            wait_gone("lf0");
            assert_eq!(
                vm.fds_settled(base_fds),
                base_fds,
                "attempt {i} ({t} s): QEMU fd leaked: {e}"
            );
        }
        eprintln!("adds whose rollback could not finish, the tap named: {named}");

        // Cycles on the same QEMU.
        let cycles: usize = std::env::var("VMTAP_HOTPLUG_CYCLES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(50);
        for i in 0..cycles {
            ok(&vm.vmtap(&["add", "--id", "cyc", "--queues", "2"]));
            ok(&vm.vmtap(&["del", "--id", "cyc", "--timeout", "30"]));
            assert_eq!(interfaces(), base_ifs, "cycle {i}");
        }
        assert_eq!(vm.fds_settled(base_fds), base_fds, "after {cycles} cycles");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
