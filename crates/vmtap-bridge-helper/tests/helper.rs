//! The helper run as QEMU runs it, on real taps, each test in its own
//! network namespace, with `/etc/qemu/bridge.conf` (the fixed path) a file
//! of the test's in a private mount namespace. As root, and as `nobody`
//! with the helper installed setuid root or with `cap_net_admin+ep`; the
//! same cases against Debian's `qemu-bridge-helper`, which must end the
//! same way.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use serde_json::Value;
use vmtap_testkit::helper::*;
use vmtap_testkit::*;

const HELPER: &str = env!("CARGO_BIN_EXE_vmtap-bridge-helper");

/// Skips (or, in CI, fails) a test that needs real root.
fn root() -> bool {
    if is_root() {
        return true;
    }
    skip("needs real root (setuid copies, private mounts)");
    false
}

/// What a bridged tap looks like, its name aside.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TapState {
    mtu: u64,
    mac_first_byte: String,
    master: Option<String>,
    up: bool,
    vnet_hdr: bool,
    pi: bool,
    multi_queue: bool,
}

fn tap_state(name: &str) -> TapState {
    let l: Value = serde_json::from_str(&ip(&["-d", "-j", "link", "show", "dev", name])).unwrap();
    let l = &l[0];
    let data = &l["linkinfo"]["info_data"];
    assert_eq!(data["type"], "tap", "{l}");
    TapState {
        mtu: l["mtu"].as_u64().unwrap(),
        mac_first_byte: l["address"].as_str().unwrap()[..2].to_string(),
        master: l["master"].as_str().map(str::to_string),
        up: l["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some("UP")),
        vnet_hdr: data["vnet_hdr"].as_bool().unwrap(),
        pi: data["pi"].as_bool().unwrap(),
        multi_queue: data["multi_queue"].as_bool().unwrap(),
    }
}

/// What QEMU's helper makes of an allowed bridge `br` (MTU 1400).
fn bridged(vnet_hdr: bool) -> TapState {
    TapState {
        mtu: 1400,
        mac_first_byte: "fe".into(),
        master: Some("br0".into()),
        up: true,
        vnet_hdr,
        pi: false,
        multi_queue: false,
    }
}

/// The name of the tap an fd is bound to.
fn name_of(fd: &OwnedFd) -> String {
    vmtap::Tun::system().inspect_fd(fd.as_fd()).unwrap().name
}

/// The namespace every case starts from: br0 (MTU 1400), a veth pair.
fn host() {
    ip(&["link", "add", "br0", "type", "bridge"]);
    ip(&["link", "set", "br0", "mtu", "1400"]);
    // An alternative name, which the kernel resolves like the name.
    ip(&[
        "link", "property", "add", "dev", "br0", "altname", "br0-alt",
    ]);
    veth("ve0", "ve1");
}

/// `helper ARGS` with this /etc/qemu, as root or (`user`) via setpriv.
fn run(etc: &EtcQemu, user: bool, helper: &Path, args: &[&str]) -> Exchange {
    let mut argv: Vec<String> = if user { as_nobody() } else { Vec::new() };
    argv.push(helper.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    exchange(etc.command(&argv))
}

/// Asserts one line on stderr.
fn one_line(x: &Exchange) {
    assert_eq!(x.stderr.lines().count(), 1, "{:?}", x.stderr);
}

#[test]
fn an_allowed_bridge_gets_one_tap_set_up_as_qemus_helper_does() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        // QEMU's order and arguments.
        let x = run(
            &etc,
            false,
            HELPER.as_ref(),
            &["--use-vnet", "--fd=0", "--br=br0"],
        );
        x.assert_sent(1);
        assert_eq!(x.stderr, "");
        let name = name_of(&x.fds[0]);
        assert_eq!(name, "tap0", "the kernel's tap%d name");
        assert_eq!(tap_state(&name), bridged(true));
        assert_eq!(
            sysfs_read(&name, "tun_flags").len(),
            6,
            "a tap of this namespace"
        );
        drop(x);
        wait_gone("tap0");

        // libvirt's: no --use-vnet, --br before --fd; the socket as fd 5.
        let cmd = etc.command(&[
            "sh",
            "-c",
            "exec \"$0\" \"$@\" 5<&0 </dev/null",
            HELPER,
            "--br=br0",
            "--fd=5",
        ]);
        let x = exchange(cmd);
        x.assert_sent(1);
        assert_eq!(tap_state(&name_of(&x.fds[0])), bridged(false));
        drop(x);
        wait_gone("tap0");
        assert_eq!(interfaces(), ["br0", "lo", "ve0", "ve1"]);
    });
}

#[test]
fn several_queues_of_one_tap_in_one_message_and_a_name() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        let x = run(
            &etc,
            false,
            HELPER.as_ref(),
            &[
                "--use-vnet",
                "--fd=0",
                "--br=br0",
                "--queues=4",
                "--name=vm%d",
            ],
        );
        x.assert_sent(4);
        let fds: Vec<_> = x.fds.iter().map(|f| f.as_fd()).collect();
        let info = vmtap::Tun::system().check_queues(&fds).unwrap();
        assert_eq!(info.name, "vm0");
        assert_eq!(sysfs_tx_queues("vm0"), 4);
        assert_eq!(
            tap_state("vm0"),
            TapState {
                multi_queue: true,
                ..bridged(true)
            }
        );
        // A name in use is refused, and nothing else changes.
        let y = run(
            &etc,
            false,
            HELPER.as_ref(),
            &["--fd=0", "--br=br0", "--name=vm0"],
        );
        y.assert_refused("vm0");
        one_line(&y);
        assert_eq!(interfaces(), ["br0", "lo", "ve0", "ve1", "vm0"]);
        drop(x);
        wait_gone("vm0");
        // The most one message carries.
        let x = run(
            &etc,
            false,
            HELPER.as_ref(),
            &["--fd=0", "--br=br0", "--queues=253"],
        );
        x.assert_sent(253);
        assert_eq!(sysfs_tx_queues("tap0"), 253);
    });
}

/// The refusals every helper must make, with the stderr vmtap's says;
/// each leaves nothing behind and sends nothing.
fn refusals() -> Vec<(&'static str, EtcQemu, Vec<&'static str>, &'static str)> {
    let acl = "allow br0\nallow ve0\nallow nobr0\nallow 0123456789abcde\n";
    vec![
        (
            "denied bridge",
            EtcQemu::with_acl("allow br1\n"),
            vec!["--use-vnet", "--fd=0", "--br=br0"],
            "access to bridge \"br0\" denied by the ACL file /etc/qemu/bridge.conf",
        ),
        (
            "deny wins",
            EtcQemu::with_acl("allow all\ndeny br0\n"),
            vec!["--use-vnet", "--fd=0", "--br=br0"],
            "denied by the ACL file",
        ),
        (
            "missing ACL file",
            EtcQemu::new(),
            vec!["--use-vnet", "--fd=0", "--br=br0"],
            "cannot read the ACL file /etc/qemu/bridge.conf: No such file or directory",
        ),
        (
            "malformed ACL file",
            EtcQemu::with_acl("allow br0\npermit br0\n"),
            vec!["--use-vnet", "--fd=0", "--br=br0"],
            "invalid ACL file: /etc/qemu/bridge.conf:2: unknown keyword \"permit\"",
        ),
        (
            "16-byte bridge name",
            EtcQemu::with_acl("allow all\n"),
            vec!["--use-vnet", "--fd=0", "--br=0123456789abcdef"],
            "bridge name \"0123456789abcdef\" too long: 16 bytes",
        ),
        (
            "an alternative name of a denied bridge",
            EtcQemu::with_acl("allow all\ndeny br0\n"),
            vec!["--use-vnet", "--fd=0", "--br=br0-alt"],
            "\"br0-alt\" is an alternative name of \"br0\": give the bridge's name",
        ),
        (
            "a --name of digits",
            EtcQemu::with_acl(acl),
            vec!["--use-vnet", "--fd=0", "--br=br0", "--name=0"],
            "--name=0: a name of digits only is refused",
        ),
        (
            "a veth as bridge",
            EtcQemu::with_acl(acl),
            vec!["--use-vnet", "--fd=0", "--br=ve0"],
            "\"ve0\" is not a Linux bridge",
        ),
        (
            "a missing bridge",
            EtcQemu::with_acl(acl),
            vec!["--use-vnet", "--fd=0", "--br=nobr0"],
            "bridge \"nobr0\": no such interface",
        ),
        (
            "usage",
            EtcQemu::with_acl(acl),
            vec!["--use-vnet", "--fd=0", "--br=br0", "--bridge=br0"],
            "usage: vmtap-bridge-helper [--use-vnet] --br=BRIDGE --fd=N",
        ),
        (
            "no fd",
            EtcQemu::with_acl(acl),
            vec!["--br=br0"],
            "--br and --fd are required",
        ),
        (
            "an fd that is not open",
            EtcQemu::with_acl(acl),
            vec!["--br=br0", "--fd=77"],
            "--fd=77: not an open fd",
        ),
        (
            "an fd that is not a socket",
            EtcQemu::with_acl(acl),
            vec!["--br=br0", "--fd=1"],
            "--fd=1: not a socket",
        ),
    ]
}

#[test]
fn refusals_as_root_leave_nothing_and_send_nothing() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let before = interfaces();
        for (case, etc, args, want) in refusals() {
            let x = run(&etc, false, HELPER.as_ref(), &args);
            x.assert_refused(want);
            one_line(&x);
            assert!(
                x.stderr.starts_with("vmtap-bridge-helper: "),
                "{case}: {}",
                x.stderr
            );
            assert_eq!(interfaces(), before, "{case}");
        }
    });
}

#[test]
fn a_peer_gone_before_the_reply_leaves_no_tap() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        drop(ours);
        let out = etc
            .command(&[HELPER, "--use-vnet", "--br=br0", "--fd=0"])
            .stdin(theirs)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("sending the fds of tap0 on --fd=0: Broken pipe"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        wait_gone("tap0");
    });
}

/// The unprivileged cases, for one installed copy: allowed works, every
/// refusal leaves nothing.
fn unprivileged_cases(installed: &Installed) {
    let etc = EtcQemu::with_acl("allow br0\n");
    let x = run(
        &etc,
        true,
        &installed.path,
        &["--use-vnet", "--fd=0", "--br=br0"],
    );
    x.assert_sent(1);
    assert_eq!(x.stderr, "");
    let name = name_of(&x.fds[0]);
    assert_eq!(tap_state(&name), bridged(true));
    drop(x);
    wait_gone(&name);

    let x = run(
        &etc,
        true,
        &installed.path,
        &["--fd=0", "--br=br0", "--queues=4"],
    );
    x.assert_sent(4);
    let name = name_of(&x.fds[0]);
    assert_eq!(sysfs_tx_queues(&name), 4);
    drop(x);
    wait_gone(&name);

    let before = interfaces();
    for (case, etc, args, want) in refusals() {
        let x = run(&etc, true, &installed.path, &args);
        x.assert_refused(want);
        one_line(&x);
        assert_eq!(interfaces(), before, "{case}");
    }
}

#[test]
fn as_nobody_installed_setuid_root() {
    if !root() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::Setuid);
    in_netns(move || {
        host();
        unprivileged_cases(&installed);
    });
}

#[test]
fn as_nobody_installed_with_cap_net_admin() {
    if !root() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::FileCapability);
    in_netns(move || {
        host();
        unprivileged_cases(&installed);
    });
}

#[test]
fn as_nobody_without_privileges_it_says_what_is_missing() {
    if !root() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::None);
    in_netns(move || {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        let x = run(&etc, true, &installed.path, &["--fd=0", "--br=br0"]);
        x.assert_refused("no CAP_NET_ADMIN: install the helper setuid root");
        one_line(&x);
        assert_eq!(interfaces(), ["br0", "lo", "ve0", "ve1"]);
    });
}

#[test]
fn as_nobody_the_acl_is_read_as_the_caller() {
    if !root() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::Setuid);
    in_netns(move || {
        host();
        // QEMU's per-user policy: an include only its user can read.
        let etc = EtcQemu::with_acl("include /etc/qemu/nobody.conf\n");
        etc.file("nobody.conf", "allow br0\n", 0o600, 0);
        let x = run(&etc, true, &installed.path, &["--fd=0", "--br=br0"]);
        x.assert_refused("denied by the ACL file");
        etc.file("nobody.conf", "allow br0\n", 0o600, NOBODY);
        let x = run(&etc, true, &installed.path, &["--fd=0", "--br=br0"]);
        x.assert_sent(1);
        // Root (not secure) reads it whoever owns it.
        drop(x);
        wait_gone("tap0");
        etc.file("nobody.conf", "allow br0\n", 0o600, 0);
        run(&etc, false, HELPER.as_ref(), &["--fd=0", "--br=br0"]).assert_sent(1);
    });
}

#[test]
fn as_nobody_loader_variables_are_refused_and_root_is_not_secure() {
    if !root() {
        return;
    }
    let installed = install(HELPER.as_ref(), Privilege::Setuid);
    let with_cap = install(HELPER.as_ref(), Privilege::FileCapability);
    in_netns(move || {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        for (var, value, installed) in [
            ("LD_BIND_NOW", "1", &installed),
            ("MALLOC_ARENA_MAX", "1", &installed),
            ("LD_BIND_NOW", "1", &with_cap),
        ] {
            let mut argv = as_nobody();
            argv.extend([
                installed.path.display().to_string(),
                "--fd=0".into(),
                "--br=br0".into(),
            ]);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut cmd = etc.command(&argv);
            cmd.env(var, value);
            let x = exchange(cmd);
            x.assert_refused(&format!(
                "refusing to run with privileges and \"{var}\" in the environment"
            ));
            one_line(&x);
            assert_eq!(interfaces(), ["br0", "lo", "ve0", "ve1"]);
        }
        // glibc itself removes LD_PRELOAD from a setuid program's
        // environment: it is ignored, not refused.
        let mut argv = as_nobody();
        argv.extend([
            installed.path.display().to_string(),
            "--fd=0".into(),
            "--br=br0".into(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = etc.command(&argv);
        cmd.env("LD_PRELOAD", "/nonexistent/lib.so");
        let x = exchange(cmd);
        x.assert_sent(1);
        drop(x);
        wait_gone("tap0");
        // Without privileges gained at exec, the caller's environment is
        // its own business.
        let mut cmd = etc.command(&[HELPER, "--fd=0", "--br=br0"]);
        cmd.env("LD_BIND_NOW", "1");
        exchange(cmd).assert_sent(1);
    });
}

/// Credentials of process `pid` once it has dropped privileges
/// (`NoNewPrivs` is the last thing set), within 30 s.
fn dropped_credentials(pid: u32) -> String {
    let mut status = String::new();
    wait_until("the helper dropped its privileges", 30, || {
        status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.contains("NoNewPrivs:\t1")
    });
    status
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

#[test]
fn only_cap_net_admin_is_kept_as_the_caller() {
    if !root() {
        return;
    }
    use rustix::pipe::{PipeFlags, fcntl_getpipe_size, pipe_with};
    const NET_ADMIN: &str = "0000000000001000";
    for how in [Privilege::Setuid, Privilege::FileCapability] {
        let installed = install(HELPER.as_ref(), how);
        in_netns(move || {
            host();
            // An include that is a directory makes the helper write an
            // error after it has dropped privileges; with its stderr a
            // full pipe, it waits there while its credentials are read.
            let etc = EtcQemu::with_acl("include /etc/qemu\nallow br0\n");
            let (rd, wr) = pipe_with(PipeFlags::CLOEXEC).unwrap();
            let size = fcntl_getpipe_size(&wr).unwrap();
            rustix::io::write(&wr, &vec![b'.'; size]).unwrap();
            let (ours, theirs) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            let mut argv = as_nobody();
            argv.extend([
                installed.path.display().to_string(),
                "--fd=0".into(),
                "--br=br0".into(),
            ]);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut child =
                KillOnDrop(etc.command(&argv).stdin(theirs).stderr(wr).spawn().unwrap());
            // unshare, sh and setpriv exec in turn: the helper is the
            // process once it has NoNewPrivs (setpriv does not set it).
            let status = dropped_credentials(child.0.id());
            assert!(status.contains("Name:\tvmtap-bridge-h"), "{status}");
            assert_eq!(
                field(&status, "Uid"),
                "65534\t65534\t65534\t65534",
                "{how:?}"
            );
            assert_eq!(
                field(&status, "Gid"),
                "65534\t65534\t65534\t65534",
                "{how:?}"
            );
            assert_eq!(field(&status, "Groups"), "", "{how:?}");
            assert_eq!(field(&status, "CapEff"), NET_ADMIN, "{how:?}");
            assert_eq!(field(&status, "CapPrm"), NET_ADMIN, "{how:?}");
            assert_eq!(field(&status, "CapInh"), "0000000000000000", "{how:?}");
            assert_eq!(field(&status, "CapAmb"), "0000000000000000", "{how:?}");
            if how == Privilege::Setuid {
                // Root could (CAP_SETPCAP): the bounding set went too.
                assert_eq!(field(&status, "CapBnd"), NET_ADMIN, "{how:?}");
            }
            // Let it go on: it finishes as it would have.
            let reader = std::thread::spawn(move || {
                let mut all = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut all);
                all
            });
            let st = child.0.wait().unwrap();
            let err = reader.join().unwrap();
            let err = String::from_utf8_lossy(&err[size..]);
            // An include that is not a regular file refuses the ACL.
            assert_eq!(st.code(), Some(1), "{err}");
            assert!(
                err.contains("/etc/qemu") && err.contains("not a regular file"),
                "{err}"
            );
            let (bytes, fds) = drain(&ours);
            assert_eq!((bytes.len(), fds.len()), (0, 0));
        });
    }
}

/// Debian's helper, installed setuid root, and vmtap's, given the same
/// cases as `nobody`: the same exit codes, the same resulting tap (its
/// name aside), nothing left by either on failure.
#[test]
fn the_same_cases_end_as_with_debians_qemu_bridge_helper() {
    if !root() {
        return;
    }
    if !Path::new(QEMU_HELPER).exists() {
        skip(&format!(
            "{QEMU_HELPER} (qemu-system-common) is not installed"
        ));
        return;
    }
    let ours = install(HELPER.as_ref(), Privilege::Setuid);
    let qemus = install(QEMU_HELPER.as_ref(), Privilege::Setuid);
    in_netns(move || {
        host();
        let before = interfaces();
        let mut cases: Vec<(&str, EtcQemu, Vec<&str>, i32)> = vec![
            (
                "allowed",
                EtcQemu::with_acl("allow br0\n"),
                vec!["--use-vnet", "--fd=0", "--br=br0"],
                0,
            ),
            (
                "allowed, libvirt's arguments",
                EtcQemu::with_acl("allow all\n"),
                vec!["--br=br0", "--fd=0"],
                0,
            ),
            (
                "an include only root can read",
                EtcQemu::with_acl("include /etc/qemu/root.conf\n"),
                vec!["--use-vnet", "--fd=0", "--br=br0"],
                1,
            ),
        ];
        cases[2].1.file("root.conf", "allow br0\n", 0o600, 0);
        // The parser's corners, QEMU's way.
        for (case, acl, code) in [
            (
                "a tab separator, blanks, comments",
                "# x\n\n  \tallow\tbr0\n",
                0,
            ),
            ("spaces around a name", "allow   br0   \n", 0),
            ("a keyword without argument", "allow br0\nallow\n", 1),
            ("a tab, then a space", "allow\tbr0 \n", 1),
            ("a comment after a rule", "allow br0 # the lab\n", 1),
            (
                "a missing include",
                "include /etc/qemu/none.conf\nallow br0\n",
                0,
            ),
            (
                "an invalid include",
                "include /etc/qemu/bad.conf\nallow br0\n",
                0,
            ),
            (
                "a deny in an include",
                "include /etc/qemu/deny.conf\nallow br0\n",
                1,
            ),
            (
                "a relative include, then a deny, in an include",
                "allow all\ninclude /etc/qemu/site.conf\n",
                1,
            ),
        ] {
            let etc = EtcQemu::with_acl(acl);
            etc.file("bad.conf", "permit all\n", 0o644, 0);
            etc.file("deny.conf", "deny br0\n", 0o644, 0);
            etc.file("site.conf", "include rel.conf\ndeny br0\n", 0o644, 0);
            cases.push((case, etc, vec!["--use-vnet", "--fd=0", "--br=br0"], code));
        }
        cases.extend(
            refusals()
                .into_iter()
                // QEMU's helper has no such checks of its socket before
                // it creates the tap, nor a name in its usage.
                // nor alternative names or --name (QEMU's takes br0-alt
                // for br0, and has no --name).
                .filter(|(case, ..)| {
                    !case.contains("fd")
                        && *case != "usage"
                        && !case.contains("alternative")
                        && !case.contains("--name")
                })
                .map(|(case, etc, args, _)| (case, etc, args, 1)),
        );
        for (case, etc, args, code) in &cases {
            let a = run(etc, true, &ours.path, args);
            let a_state = a.fds.first().map(|f| tap_state(&name_of(f)));
            let a_sent = (a.bytes.clone(), a.fds.len());
            drop(a.fds);
            wait_until(&format!("{case}: vmtap's tap is gone"), 30, || {
                interfaces() == before
            });
            let q = run(etc, true, &qemus.path, args);
            let q_state = q.fds.first().map(|f| tap_state(&name_of(f)));
            let q_sent = (q.bytes.clone(), q.fds.len());
            drop(q.fds);
            wait_until(&format!("{case}: QEMU's tap is gone"), 30, || {
                interfaces() == before
            });
            eprintln!(
                "{case}: vmtap's helper: exit {:?} {:?}; QEMU's: exit {:?} {:?}",
                a.code,
                a.stderr.trim(),
                q.code,
                q.stderr.trim()
            );
            assert_eq!(a.code, Some(*code), "{case}: {}", a.stderr);
            assert_eq!(a.code, q.code, "{case}: exit codes");
            assert_eq!(a_sent, q_sent, "{case}: what was sent");
            assert_eq!(a_state, q_state, "{case}: the tap");
            if a.code == Some(0) {
                assert!(
                    a_state.is_some_and(|s| s.master.as_deref() == Some("br0")),
                    "{case}"
                );
            }
        }
    });
}
