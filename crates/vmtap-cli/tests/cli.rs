//! The `vmtap` command's contract, each test in its own network namespace.

use vmtap_testkit as common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

fn vmtap(args: &[&str]) -> Output {
    vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(args)
        .output()
        .expect("run vmtap")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn features_json_has_the_documented_keys() {
    let v = json(&vmtap(&["features", "--json"]));
    assert!(v["flags"].as_u64().unwrap() > 0);
    for key in ["tap", "vnet_hdr", "multi_queue"] {
        assert_eq!(v[key], Value::Bool(true), "{key}: {v}");
    }
    // This host has no vhost-net; a path that is missing or not a
    // vhost-net device is not counted as one. (A real vhost-net device is
    // checked under the guest kernel.)
    for path in ["/nonexistent", "/dev/null", "/dev/net/tun"] {
        let v = json(&vmtap(&["features", "--json", "--vhost-device", path]));
        assert_eq!(v["vhost_net"], Value::Bool(false), "{path}");
    }
}

#[test]
fn open_substitutes_placeholders_and_passes_only_the_tap_fds() {
    in_netns(|| {
        // The shell lists its own fds with a child `ls` (no pipeline: a
        // pipeline's fds come and go while the list is taken).
        let script = "echo \"{ifname}|{fds}|{vhostfds}|{netdev}|{device}\"; ls /proc/$$/fd";
        let o = vmtap(&[
            "open", "--name", "pl0", "--queues", "3", "--id", "n7", "--", "sh", "-c", script,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let first = out.lines().next().unwrap();
        assert_eq!(
            first,
            "pl0|3:4:5||tap,id=n7,fds=3:4:5|netdev=n7,mq=on,vectors=8"
        );
        // The program has the fds the same script has when this test runs
        // it directly (0, 1, 2 and whatever the test inherited), plus the
        // three taps: nothing else vmtap opened leaks through exec.
        let fds = |text: &str| -> std::collections::BTreeSet<u32> {
            text.lines()
                .skip(1)
                .map(|f| f.trim().parse().unwrap())
                .collect()
        };
        let baseline = Command::new("sh").args(["-c", script]).output().unwrap();
        let mut want = fds(&stdout(&baseline));
        assert!(!want.contains(&3), "the test leaks fd 3 into children");
        want.extend([3, 4, 5]);
        assert_eq!(fds(&out), want, "{out}");

        let o = vmtap(&["open", "--", "sh", "-c", "echo {netdev} {device}"]);
        assert_eq!(stdout(&o).trim(), "tap,id=net0,fd=3 netdev=net0");
        assert_eq!(interfaces(), vec!["lo"], "taps vanish with the program");
    });
}

#[test]
fn vhost_devices_that_are_not_vhost_net_are_refused_before_any_tap_exists() {
    in_netns(|| {
        for (path, words) in [
            (
                "/dev/null",
                "/dev/null is not a vhost-net device: it is character device 1:3, not vhost-net's 10:238",
            ),
            ("/dev/net/tun", "it is character device 10:200, not"),
            (
                "/nonexistent/vhost-net",
                "vhost-net is not available on this host",
            ),
        ] {
            let o = vmtap(&[
                "open",
                "--queues",
                "2",
                "--vhost",
                "--vhost-device",
                path,
                "--",
                "true",
            ]);
            assert_eq!(o.status.code(), Some(1), "{path}");
            assert!(stderr(&o).contains(words), "{path}: {}", stderr(&o));
            assert_eq!(stderr(&o).lines().count(), 1);
            assert_eq!(interfaces(), vec!["lo"]);
        }
    });
}

#[test]
fn invalid_arguments_exit_2_with_one_line_and_touch_nothing() {
    in_netns(|| {
        let cases: &[(&[&str], &str)] = &[
            (
                &["open", "--name", "a/b", "--", "true"],
                "interface name \"a/b\" contains '/'",
            ),
            (
                &["open", "--queues", "0", "--", "true"],
                "0 is not in 1..=256",
            ),
            (
                &["open", "--queues", "257", "--", "true"],
                "257 is not in 1..=256",
            ),
            (
                &["open", "--mac", "zz:zz", "--", "true"],
                "invalid MAC address",
            ),
            (
                &["open", "--mac", "+2:54:00:12:34:56", "--", "true"],
                "invalid MAC address",
            ),
            (
                &["open", "--mac", "52:54-00:12:34:56", "--", "true"],
                "invalid MAC address",
            ),
            (
                &["open", "--mac", "01:00:5e:00:00:01", "--", "true"],
                "multicast",
            ),
            (
                &["open", "--mac", "ff:ff:ff:ff:ff:ff", "--", "true"],
                "multicast",
            ),
            (
                &["open", "--mac", "00:00:00:00:00:00", "--", "true"],
                "all-zero",
            ),
            (
                &[
                    "hotplug",
                    "add",
                    "--qmp",
                    "/nonexistent",
                    "--id",
                    "n1",
                    "--mac",
                    "01:00:5e:00:00:01",
                ],
                "multicast",
            ),
            (
                &["open", "--mtu", "50", "--up", "--", "true"],
                "invalid MTU 50: a tap takes 68 to 65521",
            ),
            (
                &["open", "--mtu", "67", "--", "true"],
                "a tap takes 68 to 65521",
            ),
            (
                &["open", "--mtu", "65522", "--", "true"],
                "a tap takes 68 to 65521",
            ),
            (
                &["open", "--id", "1net", "--", "true"],
                "invalid id \"1net\"",
            ),
            (&["open", "--id", "n,1", "--", "true"], "invalid id"),
            (&["open", "--id", "n=1", "--", "true"], "invalid id"),
            (&["open", "--id", "", "--", "true"], "invalid id"),
            (
                &["hotplug", "add", "--qmp", "/nonexistent", "--id", "1net"],
                "invalid id \"1net\"",
            ),
            (
                &["open", "--vnet-hdr", "maybe", "--", "true"],
                "auto, on or off",
            ),
            (&["open", "--queues", "2"], "needs a PROGRAM after --"),
            (
                &["open", "--attach-existing", "--", "true"],
                "needs its name",
            ),
            (&["create", "x y"], "contains whitespace"),
            (
                &["create", "ok0", "--owner", "no-such-user-vmtap"],
                "no user named",
            ),
            (&["inspect"], "required"),
        ];
        for (args, words) in cases {
            let o = vmtap(args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(words), "{args:?}: {err}");
            assert_eq!(interfaces(), vec!["lo"], "{args:?}");
        }
        let o = vmtap(&["open", "--name", "a/b", "--", "true"]);
        assert_eq!(stderr(&o), "vmtap: interface name \"a/b\" contains '/'\n");
    });
}

#[test]
fn system_failures_exit_1_and_leave_nothing() {
    in_netns(|| {
        veth("ve0", "ve1");
        ip(&["link", "add", "bigbr", "type", "bridge"]);
        ip(&["link", "set", "bigbr", "mtu", "65535"]);
        let cases: &[(&[&str], &str)] = &[
            (&["open", "--name", "ve0", "--", "true"], "already exists"),
            (
                &["open", "--bridge", "ve0", "--", "true"],
                "\"ve0\" is not a bridge",
            ),
            (
                &["open", "--bridge", "nobr", "--", "true"],
                "no interface named \"nobr\"",
            ),
            (
                &["open", "--bridge", "bigbr", "--", "true"],
                "bridge \"bigbr\" has MTU 65535, more than a tap can take (65521)",
            ),
            (
                &["open", "--name", "t0", "--", "/nonexistent/qemu"],
                "cannot run \"/nonexistent/qemu\"",
            ),
            (&["delete", "ve0"], "not a TAP device"),
            (
                &["delete", "nope0"],
                "no interface named \"nope0\" to delete",
            ),
            (
                &["open", "--name", "nope0", "--attach-existing", "--", "true"],
                "no interface named \"nope0\" to attach to",
            ),
            (&["inspect", "ve0"], "not a TAP device"),
        ];
        let before = interfaces();
        for (args, words) in cases {
            let o = vmtap(args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains(words), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert_eq!(interfaces(), before, "{args:?} left something");
        }
    });
}

#[test]
fn create_inspect_attach_delete() {
    in_netns(|| {
        let o = vmtap(&[
            "create",
            "pt0",
            "--multi-queue",
            "--vnet-hdr",
            "--owner",
            "nobody",
            "--group",
            "4343",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v = json(&vmtap(&["inspect", "pt0", "--json"]));
        assert_eq!(v["ifname"], "pt0");
        assert_eq!(v["persistent"], true);
        assert_eq!(v["owner"], 65534);
        assert_eq!(v["group"], 4343);
        assert_eq!(v["multi_queue"], true);
        assert_eq!(v["vnet_hdr"], true);
        assert_eq!(v["queues"], 0);

        // Attach 4 queues and inspect one of the inherited fds from inside.
        let o = vmtap(&[
            "open",
            "--name",
            "pt0",
            "--queues",
            "4",
            "--attach-existing",
            "--",
            VMTAP,
            "inspect",
            "--fd",
            "4",
            "--json",
        ]);
        let v = json(&o);
        assert_eq!(v["ifname"], "pt0");
        assert_eq!(v["queues"], 4);
        assert_eq!(v["owner"], 65534);

        let o = vmtap(&["create", "pt0"]);
        assert_eq!(o.status.code(), Some(1));
        let o = vmtap(&["delete", "pt0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(interfaces(), vec!["lo"]);

        let o = vmtap(&["create", "ps0"]);
        assert!(o.status.success());
        let v = json(&vmtap(&["inspect", "ps0", "--json"]));
        assert_eq!(
            (
                v["owner"].clone(),
                v["group"].clone(),
                v["multi_queue"].clone()
            ),
            (Value::Null, Value::Null, Value::Bool(false))
        );
        assert!(vmtap(&["delete", "ps0"]).status.success());
    });
}

#[test]
fn inspect_fd_on_things_that_are_not_taps() {
    let cases = [
        (
            "exec 7</etc/hostname; exec vmtap inspect --fd 7",
            "fd 7 is not a TUN/TAP fd",
        ),
        (
            "exec 7<>/dev/net/tun; exec vmtap inspect --fd 7",
            "not bound to any interface",
        ),
        ("exec vmtap inspect --fd 9", "fd 9 is not open"),
    ];
    for (script, words) in cases {
        let o = Command::new("sh")
            .arg("-c")
            .arg(script.replace("vmtap", VMTAP))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{script}");
        assert!(stderr(&o).contains(words), "{script}: {}", stderr(&o));
    }
    // A socket: the test's own stdin as a socket pair end.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(["inspect", "--fd", "0"])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(a)))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("fd 0 is not a TUN/TAP fd"),
        "{}",
        stderr(&o)
    );
}

/// `args` run as the user nobody, without supplementary groups.
fn as_nobody(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(args);
    cmd
}

#[test]
fn an_unprivileged_user_in_its_own_namespaces_opens_taps() {
    // As `nobody`, inside a new user + network namespace: the kernel grants
    // CAP_NET_ADMIN there; vmtap makes no privilege check of its own.
    // Becoming nobody needs real root (not root of a user namespace).
    if !as_nobody(&["true"]).status().is_ok_and(|s| s.success()) {
        skip("cannot become the user nobody (needs real root)");
        return;
    }
    // /dev/net/tun may be 0600 on the host: give the user a 0666 node of
    // its own (the library takes the device path as a parameter).
    let dir = std::env::temp_dir().join(format!("vmtap-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = dir.join("tun");
    let _ = std::fs::remove_file(&node);
    run(
        "mknod",
        &["-m", "666", node.to_str().unwrap(), "c", "10", "200"],
    )
    .unwrap();
    run("chmod", &["755", dir.to_str().unwrap()]).unwrap();
    let script = format!(
        "VMTAP_TUN={} {VMTAP} open --name u0 --queues 2 --up -- sh -c 'ip -d link show u0; id -u'",
        node.display()
    );
    let o = as_nobody(&["unshare", "-Urn", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("u0:") && out.contains("tun type tap") && out.contains("UP"),
        "{out}"
    );
    assert!(out.contains("multi_queue numqueues 2"), "{out}");
    // And without the namespaces the kernel says no, in plain words.
    let o = as_nobody(&[VMTAP, "open", "--", "true"])
        .env("VMTAP_TUN", &node)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("CAP_NET_ADMIN"), "{}", stderr(&o));
    // Attaching to a name that does not exist says so, not "permission
    // denied" (the kernel would have refused to create it).
    let o = as_nobody(&[
        VMTAP,
        "open",
        "--name",
        "nosuch0",
        "--attach-existing",
        "--",
        "true",
    ])
    .env("VMTAP_TUN", &node)
    .output()
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "vmtap: no interface named \"nosuch0\" to attach to\n"
    );
}

#[test]
fn placeholders_expand_once_and_can_be_written_literally() {
    in_netns(|| {
        let o = vmtap(&[
            "open",
            "--name",
            "{netdev}",
            "--",
            "echo",
            "{ifname}",
            "{{fds}}",
            "{fds}",
            "{\"id\":{\"x\":1}}",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "{netdev} {fds} 3 {\"id\":{\"x\":1}}\n");
    });
}

#[test]
fn a_closed_or_full_stdout_is_an_error_not_a_panic() {
    // A pipe whose reader is gone.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(["features", "--json"])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "vmtap: writing to standard output: Broken pipe (os error 32)\n"
    );
    // A full device.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(["features"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
}

/// `tun_flags` of a tap as sysfs shows it in this namespace.
fn tun_flags(name: &str) -> String {
    sysfs_read(name, "tun_flags")
}

#[test]
fn attaching_never_changes_the_taps_flags() {
    in_netns(|| {
        assert!(vmtap(&["create", "vn0"]).status.success());
        assert!(vmtap(&["create", "vh0", "--vnet-hdr"]).status.success());
        // Taps made by another tool, with and without IFF_ONE_QUEUE (which
        // netlink does not report: vmtap reads it from sysfs when sysfs
        // shows this namespace).
        ip(&["tuntap", "add", "it0", "mode", "tap"]);
        ip(&["tuntap", "add", "io0", "mode", "tap", "one_queue"]);
        let names = ["vn0", "vh0", "it0", "io0"];
        let flags = || names.iter().map(|n| tun_flags(n)).collect::<Vec<_>>();
        let before = flags();
        // With this namespace's sysfs mounted (as `ip netns exec` does),
        // and without (sysfs shows another namespace: netlink's flags).
        let sysfs = format!("mount -t sysfs sysfs /sys && exec {VMTAP} \"$@\"");
        let own_sysfs = |args: &[&str]| {
            let mut cmd = Command::new("unshare");
            cmd.args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &sysfs,
                "vmtap",
            ]);
            cmd.args(args).output().unwrap()
        };
        for (i, name) in names.iter().enumerate() {
            // Auto means "as the tap is", whether the program runs or not.
            for program in ["true", "/nonexistent/qemu"] {
                let args = ["open", "--name", name, "--attach-existing", "--", program];
                let o = own_sysfs(&args);
                assert_eq!(o.status.success(), program == "true", "{}", stderr(&o));
                if *name != "io0" {
                    let o = vmtap(&args);
                    assert_eq!(o.status.success(), program == "true", "{}", stderr(&o));
                }
                assert_eq!(flags()[i], before[i], "{name} {program}");
            }
        }
        // A request that disagrees is refused before anything is touched.
        let o = vmtap(&[
            "open",
            "--name",
            "vn0",
            "--attach-existing",
            "--vnet-hdr",
            "on",
            "--",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("vnet_hdr is off but on was asked"),
            "{}",
            stderr(&o)
        );
        let o = vmtap(&[
            "open",
            "--name",
            "vh0",
            "--attach-existing",
            "--vnet-hdr",
            "off",
            "--",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("vnet_hdr is on but off was asked"),
            "{}",
            stderr(&o)
        );
        assert_eq!(flags(), before);
        assert!(ip_details("vn0").contains("vnet_hdr off"));
        assert!(ip_details("vh0").contains("vnet_hdr on"));
    });
}

#[test]
fn link_changes_on_an_existing_tap_are_undone_when_a_later_step_fails() {
    in_netns(|| {
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["link", "set", "br0", "mtu", "9000"]);
        assert!(vmtap(&["create", "lk0"]).status.success());
        // The settings vmtap may change (bringing a link up also gives it
        // a default qdisc, which stays: not a setting).
        let settings = || {
            let d = ip_details("lk0");
            let qdisc = d
                .split(" qdisc ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            d.replace(&format!(" qdisc {qdisc} "), " ")
        };
        let before = settings();
        for extra in [
            &["--mtu", "9000", "--mac", "52:54:00:00:00:01", "--up"][..],
            &["--bridge", "br0"],
        ] {
            let mut args = vec!["open", "--name", "lk0", "--attach-existing"];
            args.extend_from_slice(extra);
            args.extend(["--", "/nonexistent/qemu"]);
            let o = vmtap(&args);
            assert_eq!(o.status.code(), Some(1), "{extra:?}");
            assert!(stderr(&o).contains("cannot run"), "{}", stderr(&o));
            assert_eq!(settings(), before, "{extra:?} left a change");
        }
        // A tap that is a port of another bridge is not moved (its port
        // settings could not be put back): refused before any change.
        ip(&["link", "add", "br1", "type", "bridge"]);
        ip(&["link", "set", "lk0", "master", "br1"]);
        let before = settings();
        let o = vmtap(&[
            "open",
            "--name",
            "lk0",
            "--attach-existing",
            "--mtu",
            "9000",
            "--bridge",
            "br0",
            "--",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("\"lk0\" is a port of \"br1\" already"),
            "{}",
            stderr(&o)
        );
        assert_eq!(settings(), before);
        ip(&["link", "set", "lk0", "nomaster"]);

        // When the program runs, the changes stay (that was the request).
        let o = vmtap(&[
            "open",
            "--name",
            "lk0",
            "--attach-existing",
            "--mtu",
            "9000",
            "--",
            "true",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(ip_details("lk0").contains("mtu 9000"));
    });
}

#[test]
fn delete_refuses_taps_in_use_and_racing_deletes_create_nothing() {
    in_netns(|| {
        assert!(vmtap(&["create", "mq0", "--multi-queue"]).status.success());
        // In use: delete from inside the program that holds the queues.
        let o = vmtap(&[
            "open",
            "--name",
            "mq0",
            "--attach-existing",
            "--queues",
            "2",
            "--",
            VMTAP,
            "delete",
            "mq0",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("tap \"mq0\" is in use (2 queue(s) attached)"),
            "{}",
            stderr(&o)
        );
        assert!(exists("mq0"));
        assert!(vmtap(&["delete", "mq0"]).status.success());

        // 16 racing deletes of one tap, watched by `ip monitor`: one
        // succeeds, the others find no such interface, and no interface of
        // that name ever appears again (a delete never creates one).
        assert!(vmtap(&["create", "dd"]).status.success());
        let index = ip(&["-o", "link", "show", "dd"])
            .split(':')
            .next()
            .unwrap()
            .trim()
            .to_string();
        let mut monitor = KillOnDrop(
            Command::new("ip")
                .args(["-o", "monitor", "link"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = monitor.0.stdout.take().unwrap();
        let mut console = Console::new(out, None);
        // The monitor is listening once it reports a change we make (one
        // made before it subscribed is not reported: make it again).
        wait_until("ip monitor listens", 30, || {
            assert!(vmtap(&["create", "mark0"]).status.success());
            let seen =
                console.wait_within("mark0", |_| true, std::time::Duration::from_millis(300));
            assert!(vmtap(&["delete", "mark0"]).status.success());
            seen.is_some()
        });
        let racers: Vec<_> = (0..16)
            .map(|_| {
                vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
                    .args(["delete", "dd"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let results: Vec<Output> = racers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        // Everything before this mark has been reported once it is.
        assert!(vmtap(&["create", "mark1"]).status.success());
        console.wait_for("mark1", |_| true);
        drop(monitor);
        let ok = results.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "exactly one delete succeeds");
        for o in results.iter().filter(|o| !o.status.success()) {
            assert_eq!(o.status.code(), Some(1));
            assert_eq!(stderr(o), "vmtap: no interface named \"dd\" to delete\n");
        }
        let dd_lines: Vec<&String> = console.log.iter().filter(|l| l.contains(": dd:")).collect();
        assert!(
            !dd_lines.is_empty(),
            "the monitor saw the delete: {:?}",
            console.log
        );
        for l in &dd_lines {
            assert!(
                l.starts_with(&format!("Deleted {index}: dd:"))
                    || l.starts_with(&format!("{index}: dd:")),
                "another dd appeared: {l}"
            );
        }
        assert!(!exists("dd"));
    });
}

#[test]
fn inspect_counts_single_queue_users_and_tells_tun_and_foreign_fds_apart() {
    in_netns(|| {
        assert!(
            vmtap(&["create", "sq0", "--owner", "4242"])
                .status
                .success()
        );
        let v = json(&vmtap(&["inspect", "sq0", "--json"]));
        assert_eq!(
            (v["queues"].clone(), v["multi_queue"].clone()),
            (Value::from(0), Value::Bool(false))
        );
        let v = json(&vmtap(&[
            "open",
            "--name",
            "sq0",
            "--attach-existing",
            "--",
            VMTAP,
            "inspect",
            "sq0",
            "--json",
        ]));
        assert_eq!(v["queues"], 1, "one user of a single-queue tap");
        let v = json(&vmtap(&[
            "open",
            "--name",
            "sq0",
            "--attach-existing",
            "--",
            VMTAP,
            "inspect",
            "--fd",
            "3",
            "--json",
        ]));
        assert_eq!(
            (
                v["queues"].clone(),
                v["owner"].clone(),
                v["this_netns"].clone()
            ),
            (Value::from(1), Value::from(4242), Value::Bool(true))
        );

        // An fd of a same-named tap in another network namespace, inspected
        // here: it is not this namespace's sq0 (whose owner is 4242).
        let me = std::fs::read_link("/proc/thread-self").unwrap();
        let here = format!("/proc/{}/ns/net", me.display());
        let script = format!(
            "{VMTAP} open --name sq0 -- nsenter --net={here} {VMTAP} inspect --fd 3 --json"
        );
        let v = json(
            &Command::new("unshare")
                .args(["-n", "sh", "-c", &script])
                .output()
                .unwrap(),
        );
        assert_eq!(v["ifname"], "sq0");
        assert_eq!(v["this_netns"], false, "{v}");
        assert_eq!(v["owner"], Value::Null, "{v}");
        assert_eq!(v["persistent"], false, "{v}");

        // A TUN (layer 3) fd is not a TAP.
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        vmtap_sys::tun_set_iff(
            std::os::fd::AsFd::as_fd(&tun),
            "tn0",
            vmtap::TunFlags::TUN | vmtap::TunFlags::NO_PI,
        )
        .unwrap();
        let o = vmtap(&["inspect", "tn0"]);
        assert!(
            stderr(&o).contains("\"tn0\" exists but is not a TAP device"),
            "{}",
            stderr(&o)
        );
        let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(["inspect", "--fd", "0"])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(tun)))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            "vmtap: fd 0 is bound to \"tn0\", a TUN (layer 3) device, not a TAP\n"
        );
    });
}
