//! `vmtap open --helper` and `vmtap hotplug add --helper`: a user without
//! privileges (nobody, through setpriv) gets a bridged, multi-queue tap
//! from `vmtap-bridge-helper` installed setuid root, and a real guest sees
//! its queues and answers ping. Each test in its own network namespace,
//! with the helper's ACL file in a private mount namespace.
//!
//! The helper is the workspace's `vmtap-bridge-helper`, built beside
//! `vmtap` (`cargo test` of the workspace builds it; with `cargo test -p
//! vmtap-cli` alone, build it first). QEMU tests are skipped without QEMU
//! or the guest unless VMTAP_REQUIRE=1, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use vmtap_testkit::helper::*;
use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// The helper built beside vmtap.
fn helper_bin() -> Option<PathBuf> {
    let p = Path::new(VMTAP).with_file_name("vmtap-bridge-helper");
    if p.exists() {
        return Some(p);
    }
    skip(&format!(
        "{} is not built (cargo build -p vmtap-bridge-helper)",
        p.display()
    ));
    None
}

fn root() -> bool {
    if is_root() {
        return true;
    }
    skip("needs real root (setuid copies, private mounts)");
    false
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails(o: &Output, code: i32, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(want), "wanted {want:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn bridge(host_ip: &str) {
    ip(&["link", "add", "br0", "type", "bridge"]);
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", "br0"]);
    ip(&["link", "set", "br0", "up"]);
}

fn ping(dst: &str) -> bool {
    run("ping", &["-c", "3", "-W", "2", "-i", "0.3", dst]).is_ok()
}

#[test]
fn what_the_helper_sets_itself_is_refused_with_it() {
    in_netns(|| {
        for (extra, want) in [
            (&["--queues", "2"][..], "--helper needs --bridge BR"),
            (
                &["--mode", "routed", "--ip", "192.0.2.1"],
                "--helper needs --bridge BR",
            ),
            (
                &["--bridge", "br0", "--mtu", "1400"],
                "--mtu cannot be used with --helper",
            ),
            (
                &["--bridge", "br0", "--mac", "52:54:00:00:00:01"],
                "--mac cannot be used",
            ),
            (&["--bridge", "br0", "--up"], "--up cannot be used"),
            (
                &["--bridge", "br0", "--name", "t0", "--attach-existing"],
                "--attach-existing cannot be used",
            ),
            (
                &["--mode", "bridged", "--link", "br0", "--vlan", ".100"],
                "--vlan cannot be used",
            ),
            (
                &["--bridge", "br0", "--helper-timeout", "0"],
                "must be positive",
            ),
            (&["--bridge", "0123456789abcdef"], "not a valid bridge name"),
        ] {
            let mut args = vec!["open", "--helper", "/nonexistent/helper"];
            args.extend_from_slice(extra);
            args.extend(["--", "true"]);
            let o = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
                .args(&args)
                .output()
                .unwrap();
            fails(&o, 2, want);
        }
        let o = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args([
                "hotplug",
                "add",
                "--qmp",
                "/nonexistent",
                "--id",
                "n1",
                "--helper",
                "/h",
                "--bridge",
                "br0",
                "--up",
            ])
            .output()
            .unwrap();
        fails(&o, 2, "--up cannot be used with --helper");
        assert_eq!(interfaces(), ["lo"]);
    });
}

#[test]
fn open_execs_the_program_with_the_helpers_tap() {
    if !root() {
        return;
    }
    let Some(helper) = helper_bin() else {
        return;
    };
    in_netns(move || {
        bridge("10.77.30.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        let wrapper = etc.wrapper(&[helper.to_str().unwrap()]);
        // The program inspects the fd it got.
        let o = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(["open", "--helper"])
            .arg(&wrapper)
            .args([
                "--bridge",
                "br0",
                "--queues",
                "2",
                "--",
                "sh",
                "-c",
                "echo {ifname} {netdev}; exec \"$0\" inspect --fd \"${1%%:*}\" --json",
                VMTAP,
                "{fds}",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let mut lines = out.lines();
        let first = lines.next().unwrap();
        assert!(first.starts_with("tap0 tap,id=net0,fds="), "{first}");
        let v: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(v["ifname"], "tap0");
        assert_eq!(v["multi_queue"], true);
        assert_eq!(v["queues"], 2);
        wait_gone("tap0");

        // vhost-net fds are opened by vmtap, as the caller.
        let o = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(["open", "--helper"])
            .arg(&wrapper)
            .args(["--bridge", "br0", "--vhost", "--", "echo", "{netdev}"])
            .output()
            .unwrap();
        if Path::new("/dev/vhost-net").exists() {
            assert!(o.status.success(), "{}", stderr(&o));
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains(",vhost=on,vhostfd="), "{out}");
        } else {
            fails(&o, 1, "vhost-net is not available");
        }
        wait_gone("tap0");

        // The helper's refusal, on one line; nothing is left.
        let etc = EtcQemu::with_acl("allow br1\n");
        let wrapper = etc.wrapper(&[helper.to_str().unwrap()]);
        let o = vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(["open", "--helper"])
            .arg(&wrapper)
            .args(["--bridge", "br0", "--", "true"])
            .output()
            .unwrap();
        fails(
            &o,
            1,
            "failed (exit 1): vmtap-bridge-helper: access to bridge \"br0\" denied by the ACL file /etc/qemu/bridge.conf",
        );
        assert!(stderr(&o).starts_with("vmtap: the bridge helper "));
        assert_eq!(interfaces(), ["br0", "lo"]);
    });
}

#[test]
fn an_unprivileged_user_gets_a_four_queue_bridged_nic() {
    if guest().is_none() || !root() {
        return;
    }
    let Some(helper) = helper_bin() else {
        return;
    };
    let installed = install(&helper, Privilege::Setuid);
    in_netns(move || {
        bridge("10.77.31.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        let (kernel, initrd) = guest().unwrap();
        let mut argv = as_nobody();
        argv.extend([
            VMTAP.to_string(),
            "open".into(),
            "--helper".into(),
            installed.path.display().to_string(),
            "--bridge".into(),
            "br0".into(),
            "--queues".into(),
            "4".into(),
            "--".into(),
            "qemu-system-x86_64".into(),
        ]);
        argv.extend(guest_qemu_args(&kernel, &initrd, "10.77.31.2/24"));
        argv.extend([
            // The guest uses as many queue pairs as it has CPUs (the last
            // -smp counts).
            "-smp".into(),
            "4".into(),
            "-netdev".into(),
            "{netdev}".into(),
            "-device".into(),
            "virtio-net-pci,{device}".into(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut qemu = KillOnDrop(
            etc.command(&argv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = qemu.0.stdout.take().unwrap();
        let err = qemu.0.stderr.take().unwrap();
        let mut console = Console::new(out, Some(Box::new(err)));
        let nic = console.wait_for("VMTAP-NIC eth0 up", |_| true);
        assert!(
            nic.contains("rx-0 rx-1 rx-2 rx-3 tx-0 tx-1 tx-2 tx-3"),
            "the guest sees 4 queue pairs: {nic}"
        );
        // vmtap exec'd QEMU, as nobody.
        let status = std::fs::read_to_string(format!("/proc/{}/status", qemu.0.id())).unwrap();
        assert!(status.contains("Name:\tqemu-system-x86"), "{status}");
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534"),
            "{status}"
        );
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", qemu.0.id())).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("tap,id=net0,fds="), "{cmdline}");
        assert!(cmdline.contains("mq=on,vectors=10"), "{cmdline}");
        // One device with 4 queues, a port of br0.
        assert_eq!(interfaces(), ["br0", "lo", "tap0"]);
        assert_eq!(sysfs_tx_queues("tap0"), 4);
        let d = ip_details("tap0");
        assert!(d.contains("master br0") && d.contains("multi_queue"), "{d}");
        assert!(
            ping("10.77.31.2"),
            "the guest answers ping across the bridge"
        );
        drop(qemu);
        wait_gone("tap0");
    });
}

#[test]
fn an_unprivileged_user_hot_plugs_a_bridged_nic() {
    if guest().is_none() || !root() {
        return;
    }
    let Some(helper) = helper_bin() else {
        return;
    };
    let installed = install(&helper, Privilege::Setuid);
    in_netns(move || {
        bridge("10.77.32.1");
        let etc = EtcQemu::with_acl("allow br0\n");
        let run_dir = TempDir::new("hp-helper");
        run_dir.give_to(NOBODY);
        let qmp = run_dir.path().join("qmp.sock");
        let (kernel, initrd) = guest().unwrap();
        let mut argv = as_nobody();
        argv.push("qemu-system-x86_64".into());
        argv.extend(guest_qemu_args(&kernel, &initrd, "10.77.32.2/24"));
        argv.extend([
            "-nic".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut qemu = KillOnDrop(
            etc.command(&argv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut console = Console::new(qemu.0.stdout.take().unwrap(), None);
        console.wait_for("VMTAP-BOOTED", |_| true);

        let hotplug = |args: &[&str]| {
            let mut argv = as_nobody();
            argv.extend([VMTAP.to_string(), "hotplug".into()]);
            argv.extend(args.iter().map(|a| a.to_string()));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            etc.command(&argv).output().unwrap()
        };
        let qmp = qmp.display().to_string();
        let helper_path = installed.path.display().to_string();
        let o = hotplug(&[
            "add",
            "--qmp",
            &qmp,
            "--id",
            "nic1",
            "--queues",
            "2",
            "--bridge",
            "br0",
            "--helper",
            &helper_path,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "tap0\n");
        let nic = console.wait_for("VMTAP-NIC eth0 up", |_| true);
        assert!(nic.contains("rx-0 rx-1 tx-0 tx-1"), "{nic}");
        assert_eq!(sysfs_tx_queues("tap0"), 2);
        assert!(ip_details("tap0").contains("master br0"));
        assert!(
            ping("10.77.32.2"),
            "the guest answers ping across the bridge"
        );

        // A refused helper leaves nothing in QEMU or on the host.
        let denied = EtcQemu::with_acl("allow br1\n");
        let mut argv = as_nobody();
        argv.extend(
            [
                VMTAP, "hotplug", "add", "--qmp", &qmp, "--id", "nic2", "--bridge", "br0",
                "--helper",
            ]
            .map(String::from),
        );
        argv.push(helper_path.clone());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let o = denied.command(&argv).output().unwrap();
        fails(&o, 1, "denied by the ACL file");
        assert_eq!(interfaces(), ["br0", "lo", "tap0"]);

        let o = hotplug(&["del", "--qmp", &qmp, "--id", "nic1"]);
        assert!(o.status.success(), "{}", stderr(&o));
        console.wait_for("VMTAP-NIC-GONE eth0", |_| true);
        wait_gone("tap0");
        drop(qemu);
    });
}
