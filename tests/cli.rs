//! The `vmtap` command's contract, each test in its own network namespace.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

fn vmtap(args: &[&str]) -> Output {
    Command::new(VMTAP).args(args).output().expect("run vmtap")
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
    // This host has no vhost-net; a stand-in path proves the key follows it.
    for (path, usable) in [("/nonexistent", false), ("/dev/null", true)] {
        let v = json(&vmtap(&["features", "--json", "--vhost-device", path]));
        assert_eq!(v["vhost_net"], Value::Bool(usable), "{path}");
    }
}

#[test]
fn open_substitutes_placeholders_and_passes_only_the_tap_fds() {
    in_netns(|| {
        let script = "echo \"{ifname}|{fds}|{vhostfds}|{netdev}|{device}\"; ls /proc/$$/fd | sort -n | tr '\\n' ' '";
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
        // The program has the fds a plain child of this test has (0, 1, 2
        // and whatever the test inherited), plus the three taps: nothing
        // else vmtap opened leaks through exec.
        let fds = |text: &str| -> std::collections::BTreeSet<u32> {
            text.split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect()
        };
        let baseline = Command::new("sh")
            .args(["-c", "ls /proc/$$/fd"])
            .output()
            .unwrap();
        let mut want = fds(&stdout(&baseline));
        want.extend([3, 4, 5]);
        assert_eq!(fds(out.lines().nth(1).unwrap()), want, "{out}");

        let o = vmtap(&["open", "--", "sh", "-c", "echo {netdev} {device}"]);
        assert_eq!(stdout(&o).trim(), "tap,id=net0,fd=3 netdev=net0");
        assert_eq!(interfaces(), vec!["lo"], "taps vanish with the program");
    });
}

#[test]
fn open_with_vhost_on_a_stand_in_device() {
    in_netns(|| {
        let o = vmtap(&[
            "open",
            "--queues",
            "2",
            "--vhost",
            "--vhost-device",
            "/dev/null",
            "--",
            "sh",
            "-c",
            "echo {netdev}; readlink /proc/self/fd/5",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.starts_with("tap,id=net0,fds="), "{out}");
        assert!(out.contains(",vhost=on,vhostfds="), "{out}");
        assert!(out.contains("/dev/null"), "vhost fds are inherited: {out}");

        let o = vmtap(&[
            "open",
            "--vhost",
            "--vhost-device",
            "/nonexistent/vhost-net",
            "--",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("vhost-net is not available on this host"),
            "{}",
            stderr(&o)
        );
        assert_eq!(interfaces(), vec!["lo"]);
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
                &["open", "--mtu", "50", "--up", "--", "true"],
                "setting MTU 50",
            ),
            (
                &["open", "--name", "t0", "--", "/nonexistent/qemu"],
                "cannot run \"/nonexistent/qemu\"",
            ),
            (&["delete", "ve0"], "not a TAP device"),
            (&["delete", "nope0"], "no interface named"),
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
    let o = Command::new(VMTAP)
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
    if !run("id", &["-u"]).unwrap().trim().eq("0") {
        eprintln!("skipping: needs root to become nobody");
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
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("CAP_NET_ADMIN"), "{}", stderr(&o));
}
