//! Open vSwitch ports through ovs-vsctl. Tests on a real switch run each
//! in its own network namespace with its own daemons (userspace datapath),
//! and skip when Open vSwitch is not installed (they fail instead with
//! VMTAP_REQUIRE=1). Tests of failures use fake `ovs-vsctl` programs.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmtap::{OpenOptions, VnetHdr};
use vmtap_net::VlanSpec;
use vmtap_net::ovs::{Ovs, OvsError, OvsPort};
use vmtap_testkit::frames::{Port, VlanPorts, vlan_frame_checks};
use vmtap_testkit::ovs::OvsDaemons;
use vmtap_testkit::{in_netns, ip, wait_until};

/// The library on these daemons, with room for a loaded machine.
fn ovs_for(d: &OvsDaemons) -> Ovs {
    Ovs::from_env()
        .program(d.ovs_vsctl())
        .db(d.db_path())
        .timeout(Duration::from_secs(30))
}

fn vlan(s: &str) -> VlanSpec {
    s.parse().unwrap()
}

/// Persistent taps made with `ip`, for ports whose frames are not read.
fn taps(names: &[&str]) {
    for n in names {
        ip(&["tuntap", "add", "dev", n, "mode", "tap"]);
    }
}

fn port(name: &str, bridge: &str, tag: Option<u16>, trunks: &[u16], mode: Option<&str>) -> OvsPort {
    OvsPort {
        name: name.into(),
        bridge: bridge.into(),
        tag,
        trunks: trunks.to_vec(),
        vlan_mode: mode.map(str::to_string),
    }
}

/// `tag`, `trunks` and `vlan_mode` of a port, as ovs-vsctl prints them.
fn columns(d: &OvsDaemons, p: &str) -> String {
    d.vsctl(&["get", "Port", p, "tag", "trunks", "vlan_mode"])
        .replace('\n', " ")
}

#[test]
fn every_vlan_form_is_set_and_read_back() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("br0");
        let ovs = ovs_for(&d);
        taps(&["p0", "p1", "p2", "p3", "p4"]);
        for (p, spec, columns_now, read) in [
            ("p0", None, "[] [] []", port("p0", "br0", None, &[], None)),
            (
                "p1",
                Some(".100"),
                "100 [] []",
                port("p1", "br0", Some(100), &[], None),
            ),
            (
                "p2",
                Some("100"),
                "100 [] []",
                port("p2", "br0", Some(100), &[], None),
            ),
            (
                "p3",
                Some(":100:200"),
                "[] [100, 200] []",
                port("p3", "br0", None, &[100, 200], None),
            ),
            (
                "p4",
                Some(".100:200"),
                "100 [200] native-untagged",
                port("p4", "br0", Some(100), &[200], Some("native-untagged")),
            ),
        ] {
            let spec = spec.map(vlan);
            let stale = ovs.add_port("br0", p, spec.as_ref()).unwrap();
            assert_eq!(stale, None, "{p}: a new port replaces nothing");
            assert_eq!(columns(&d, p), columns_now, "{p} {spec:?}");
            assert_eq!(ovs.port(p).unwrap(), Some(read), "{p}");
            assert_eq!(d.vsctl(&["port-to-br", p]), "br0");
        }
        assert_eq!(d.vsctl(&["list-ports", "br0"]), "p0\np1\np2\np3\np4");
        // Another form on the same port: what it no longer has is cleared.
        let was = ovs.add_port("br0", "p4", None).unwrap();
        assert_eq!(
            was,
            Some(port(
                "p4",
                "br0",
                Some(100),
                &[200],
                Some("native-untagged")
            ))
        );
        assert_eq!(columns(&d, "p4"), "[] [] []");
        ovs.add_port("br0", "p4", Some(&vlan(":300:4094:1")))
            .unwrap();
        assert_eq!(columns(&d, "p4"), "[] [1, 300, 4094] []");
        assert_eq!(ovs.port("nosuch").unwrap(), None);
        assert!(ovs.bridge_exists("br0").unwrap());
        assert!(!ovs.bridge_exists("br1").unwrap());
    });
}

#[test]
fn re_adding_is_idempotent_and_moves_a_stale_port() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("br0");
        d.add_bridge("br1");
        let ovs = ovs_for(&d);
        taps(&["vm1"]);
        assert_eq!(
            ovs.add_port("br0", "vm1", Some(&vlan(".100"))).unwrap(),
            None
        );
        // Again, the same: the port it replaced is itself.
        let again = ovs.add_port("br0", "vm1", Some(&vlan(".100"))).unwrap();
        assert_eq!(again, Some(port("vm1", "br0", Some(100), &[], None)));
        assert_eq!(d.vsctl(&["list-ports", "br0"]), "vm1");
        assert_eq!(columns(&d, "vm1"), "100 [] []");
        // A stale port of that name on another bridge is moved, and said.
        let stale = ovs.add_port("br1", "vm1", Some(&vlan(":200"))).unwrap();
        assert_eq!(stale, Some(port("vm1", "br0", Some(100), &[], None)));
        assert_eq!(d.vsctl(&["list-ports", "br0"]), "");
        assert_eq!(d.vsctl(&["list-ports", "br1"]), "vm1");
        assert_eq!(d.vsctl(&["port-to-br", "vm1"]), "br1");
        assert_eq!(columns(&d, "vm1"), "[] [200] []");
        // One interface, the tap.
        assert_eq!(d.vsctl(&["list-ifaces", "br1"]), "vm1");
        assert_eq!(
            d.vsctl(&["--bare", "--columns=name", "list", "Interface"])
                .lines()
                .filter(|l| *l == "vm1")
                .count(),
            1
        );
    });
}

#[test]
fn del_port_removes_only_from_its_bridge() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("br0");
        d.add_bridge("br1");
        let ovs = ovs_for(&d);
        taps(&["vm1", "vm2"]);
        ovs.add_port("br1", "vm1", None).unwrap();
        ovs.add_port("br0", "vm2", Some(&vlan("7"))).unwrap();
        // On the wrong bridge: nothing happens.
        assert!(!ovs.del_port("br0", "vm1").unwrap());
        assert_eq!(d.vsctl(&["port-to-br", "vm1"]), "br1");
        assert!(ovs.del_port("br1", "vm1").unwrap());
        assert_eq!(d.vsctl(&["list-ports", "br1"]), "");
        assert_eq!(ovs.port("vm1").unwrap(), None);
        // Gone already.
        assert!(!ovs.del_port("br1", "vm1").unwrap());
        // No such bridge: said, and nothing happens.
        match ovs.del_port("nobr", "vm2") {
            Err(OvsError::NoSuchBridge(b)) => assert_eq!(b, "nobr"),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.vsctl(&["list-ports", "br0"]), "vm2");
        // A bridge's own port is not a port to remove.
        match ovs.del_port("br0", "br0") {
            Err(OvsError::Refused { operation, message }) => {
                assert_eq!(operation, "del-port br0 br0");
                assert!(message.contains("local port"), "{message}");
                assert!(!message.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
        assert!(ovs.bridge_exists("br0").unwrap());
        assert!(ovs.del_port("br0", "vm2").unwrap());
    });
}

#[test]
fn a_bridge_that_does_not_exist_is_said_and_nothing_changes() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("br0");
        let ovs = ovs_for(&d);
        taps(&["vm1"]);
        ovs.add_port("br0", "vm1", Some(&vlan(".5"))).unwrap();
        // The stale port would be removed in the same transaction: it
        // stays, since the transaction fails as a whole.
        match ovs.add_port("nobr", "vm1", None) {
            Err(OvsError::NoSuchBridge(b)) => assert_eq!(b, "nobr"),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.vsctl(&["port-to-br", "vm1"]), "br0");
        assert_eq!(columns(&d, "vm1"), "5 [] []");
        let e = ovs.add_port("nobr", "vm2", None).unwrap_err();
        assert_eq!(e.to_string(), "no Open vSwitch bridge named \"nobr\"");
    });
}

#[test]
fn without_ovs_vswitchd_a_change_times_out_in_time() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start_db_only() else {
            return;
        };
        d.add_bridge("br0");
        let ovs = ovs_for(&d).timeout(Duration::from_secs(1));
        // Reads need only the database.
        assert!(ovs.bridge_exists("br0").unwrap());
        let start = Instant::now();
        let err = ovs.add_port("br0", "vm1", Some(&vlan(".100"))).unwrap_err();
        let took = start.elapsed();
        match &err {
            OvsError::Timeout { operation, seconds } => {
                assert_eq!((operation.as_str(), *seconds), ("add-port br0 vm1", 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("ovs-vswitchd"), "{err}");
        // ovs-vsctl's own timeout (1 s), or ours a second later.
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        // As the error says: the database took the change.
        assert_eq!(d.vsctl(&["list-ports", "br0"]), "vm1");
        assert_eq!(ovs.port("vm1").unwrap().unwrap().tag, Some(100));
    });
}

// ---- Frames through the switch ----

#[test]
fn frames_go_where_the_vlans_say() {
    in_netns(|| {
        let Some(d) = OvsDaemons::start() else { return };
        d.add_bridge("br0");
        if vmtap_testkit::ovs::datapath() == "system" {
            // The kernel datapath (the openvswitch module) is in use.
            assert_eq!(
                d.vsctl(&["get", "Bridge", "br0", "datapath_type"]).trim(),
                "system"
            );
            wait_until("the kernel datapath's ovs-system device", 30, || {
                vmtap_testkit::exists("ovs-system")
            });
        }
        let ovs = ovs_for(&d);
        let open = |name: &'static str, mac: u8, spec: &str| {
            let tap = OpenOptions::new()
                .name(name)
                .vnet_hdr(VnetHdr::Off)
                .open()
                .unwrap();
            ip(&["link", "set", name, "up"]);
            assert_eq!(ovs.add_port("br0", name, Some(&vlan(spec))).unwrap(), None);
            Port::new(name, mac, tap)
        };
        let ports = VlanPorts {
            a1: open("a1", 1, ".100"),
            a2: open("a2", 2, "100"),
            b1: open("b1", 3, ".200"),
            tr: open("tr", 4, ":100:200"),
            hy: open("hy", 5, ".100:200"),
        };
        vlan_frame_checks(&ports);
        drop(ports);
    });
}

// ---- Failures, with fake programs ----

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(vmtap_testkit::fakeqmp::temp_dir())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable `sh` script and waits until it can be run (a
/// sibling test's fork may hold the written file open for a moment, and
/// `exec` then fails with ETXTBSY).
fn fake(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    let script = format!("#!/bin/sh\n[ \"$1\" = --vmtap-probe ] && exit 0\n{body}\n");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_until(
        "the fake program can be run",
        30,
        || match std::process::Command::new(&path)
            .arg("--vmtap-probe")
            .status()
        {
            Ok(s) => s.success(),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => false,
            Err(e) => panic!("{}: {e}", path.display()),
        },
    );
    path
}

/// A socket something listens on (and never answers), for the check
/// before a run.
fn listening(dir: &TempDir) -> (UnixListener, PathBuf) {
    let path = dir.path("db.sock");
    (UnixListener::bind(&path).unwrap(), path)
}

fn alive(pid: u32) -> bool {
    // A zombie (of another parent) counts as gone: it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn a_program_that_is_not_there_is_not_installed() {
    let dir = TempDir::new();
    let not_exec = dir.path("not-exec");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    for program in [
        PathBuf::from("/nonexistent/ovs-vsctl"),
        PathBuf::from("vmtap-no-such-ovs-vsctl"),
        PathBuf::from(""),
        dir.0.clone(),
        not_exec,
    ] {
        // Checked first: no database either.
        let ovs = Ovs::from_env()
            .program(&program)
            .db(dir.path("nosuch.sock"));
        match ovs.bridge_exists("br0") {
            Err(e @ OvsError::NotInstalled { .. }) => {
                assert!(e.to_string().contains("openvswitch-switch"), "{e}");
                assert!(!e.is_invalid_input());
            }
            other => panic!("{}: {other:?}", program.display()),
        }
    }
}

#[test]
fn no_database_socket_is_not_running_and_nothing_runs() {
    let dir = TempDir::new();
    let ran = dir.path("ran");
    let program = fake(&dir, "ovs-vsctl", &format!("touch {}", ran.display()));
    std::fs::write(dir.path("file"), "").unwrap();
    for db in [
        dir.path("nosuch.sock"),
        dir.path("file"),
        dir.path("file/x"),
    ] {
        let ovs = Ovs::from_env().program(&program).db(&db);
        for err in [
            ovs.bridge_exists("br0").unwrap_err(),
            ovs.port("p").unwrap_err(),
            ovs.add_port("br0", "p", None).unwrap_err(),
            ovs.del_port("br0", "p").unwrap_err(),
        ] {
            match &err {
                OvsError::NotRunning { db: d, .. } => assert_eq!(d, &db),
                other => panic!("{}: {other:?}", db.display()),
            }
            let msg = err.to_string();
            assert!(msg.contains("OVS_RUNDIR") && msg.contains("start"), "{msg}");
        }
    }
    assert!(!ran.exists(), "the program never ran");
}

#[test]
fn a_socket_nobody_listens_on_is_not_running() {
    let dir = TempDir::new();
    let (listener, db) = listening(&dir);
    drop(listener); // The socket file stays: a crashed ovsdb-server.
    // A fake that fails as ovs-vsctl does here, and the real one.
    let fake = fake(&dir, "ovs-vsctl", "echo 'connection failed' >&2; exit 1");
    let mut programs = vec![fake];
    programs.extend(vmtap_testkit::ovs::ovs_vsctl());
    for program in programs {
        let ovs = Ovs::from_env()
            .program(&program)
            .db(&db)
            .timeout(Duration::from_secs(5));
        match ovs.port("p") {
            Err(OvsError::NotRunning { problem, .. }) => {
                assert!(problem.contains("nobody listens"), "{problem}")
            }
            other => panic!("{}: {other:?}", program.display()),
        }
    }
}

#[test]
fn invalid_names_and_vlans_are_refused_before_anything_runs() {
    let dir = TempDir::new();
    let ran = dir.path("ran");
    let program = fake(&dir, "ovs-vsctl", &format!("touch {}", ran.display()));
    let (_listener, db) = listening(&dir);
    let ovs = Ovs::from_env().program(&program).db(&db);
    for bad in [
        "",
        "-x",
        "--db=x",
        "a/b",
        "a:b",
        "a b",
        "a\nb",
        "..",
        ".",
        "0123456789abcdef",
    ] {
        let errs = [
            ovs.bridge_exists(bad).unwrap_err(),
            ovs.port(bad).unwrap_err(),
            ovs.add_port(bad, "p", None).unwrap_err(),
            ovs.add_port("br0", bad, None).unwrap_err(),
            ovs.del_port(bad, "p").unwrap_err(),
            ovs.del_port("br0", bad).unwrap_err(),
        ];
        for e in errs {
            assert!(
                matches!(&e, OvsError::InvalidName { name, .. } if name == bad),
                "{bad:?}: {e:?}"
            );
            assert!(e.is_invalid_input());
        }
    }
    let hand_made = VlanSpec {
        untagged: None,
        tagged: vec![],
    };
    let e = ovs.add_port("br0", "p", Some(&hand_made)).unwrap_err();
    assert!(matches!(e, OvsError::InvalidVlan(_)), "{e:?}");
    let e = Ovs::from_env()
        .program(&program)
        .db(dir.path("a,b"))
        .port("p")
        .unwrap_err();
    assert!(
        matches!(e, OvsError::InvalidDb { .. }) && e.is_invalid_input(),
        "{e:?}"
    );
    assert!(!ran.exists(), "the program never ran");
}

#[test]
fn the_command_lines() {
    let dir = TempDir::new();
    let (_listener, db) = listening(&dir);
    let log = dir.path("argv");
    // Records its arguments, refuses `del-port` (as ovs-vsctl does when
    // the port is not on that bridge) when told to, and answers with the
    // tables of a read: port p on br0 (VLAN 100), bridges br0 and br1.
    let tables = r#"{"data":[[["uuid","0a4cffee-4766-4adc-be9b-fe8b2d7ac37b"],"p",100,["set",[]],["set",[]]]],"headings":["_uuid","name","tag","trunks","vlan_mode"]}
{"data":[["br0",["uuid","0a4cffee-4766-4adc-be9b-fe8b2d7ac37b"]],["br1",["set",[]]]],"headings":["name","ports"]}"#;
    let record = format!(
        "printf '%s\\n' \"$@\" >> {log}\necho ---- >> {log}",
        log = log.display()
    );
    let refuse = "case \" $* \" in *' -- del-port '*) echo 'ovs-vsctl: refused' >&2; exit 1;; esac";
    let answer = format!("cat <<'EOF'\n{tables}\nEOF");
    let ovs = |name, body: &str| {
        Ovs::from_env()
            .program(fake(&dir, name, body))
            .db(&db)
            .timeout(Duration::from_millis(2500))
    };
    let runs = || -> Vec<String> {
        let runs = std::fs::read_to_string(&log)
            .unwrap()
            .split("----\n")
            .filter(|r| !r.is_empty())
            .map(|r| r.trim_end().replace('\n', " "))
            .collect();
        std::fs::remove_file(&log).unwrap();
        runs
    };
    let head = format!("--timeout=3 --db=unix:{}", db.display());
    let read = "--format=json \
                -- --if-exists --columns=_uuid,name,tag,trunks,vlan_mode list Port p \
                -- --columns=name,ports list Bridge";

    let ok = ovs("ovs-vsctl", &format!("{record}\n{answer}"));
    let was = ok
        .add_port("br1", "p", Some(&vlan(".100:200:300")))
        .unwrap();
    assert_eq!(was, Some(port("p", "br0", Some(100), &[], None)));
    assert!(ok.bridge_exists("br0").unwrap());
    assert!(ok.del_port("br0", "p").unwrap());
    assert_eq!(ok.port("p").unwrap(), was);
    assert_eq!(
        runs(),
        [
            format!(
                "{head} {read} -- --if-exists del-port p -- add-port br1 p \
                 -- set Port p tag=100 trunks=[200,300] vlan_mode=native-untagged"
            ),
            format!("{head} -- br-exists br0"),
            format!("{head} -- del-port br0 p"),
            format!("{head} {read}"),
        ]
    );

    // A refused del-port is followed by a read: the port is on br0.
    let refusing = ovs(
        "ovs-vsctl-refusing",
        &format!("{record}\n{refuse}\n{answer}"),
    );
    assert!(!refusing.del_port("br1", "p").unwrap());
    match refusing.del_port("br0", "p") {
        Err(OvsError::Refused { message, .. }) => assert_eq!(message, "refused"),
        other => panic!("{other:?}"),
    }
    match refusing.del_port("br2", "p") {
        Err(OvsError::NoSuchBridge(b)) => assert_eq!(b, "br2"),
        other => panic!("{other:?}"),
    }
    let del_then_read = |br: &str| {
        [
            format!("{head} -- del-port {br} p"),
            format!("{head} {read}"),
        ]
    };
    assert_eq!(
        runs(),
        [
            del_then_read("br1"),
            del_then_read("br0"),
            del_then_read("br2")
        ]
        .concat()
    );
}

#[test]
fn a_program_that_never_ends_is_killed_and_reaped_in_time() {
    let dir = TempDir::new();
    let (_listener, db) = listening(&dir);
    let pids = dir.path("pids");
    // It ignores --timeout, and leaves a child holding its output.
    let program = fake(
        &dir,
        "ovs-vsctl",
        &format!(
            "echo $$ > {p}.tmp\nsleep 1000 &\necho $! >> {p}.tmp\nmv {p}.tmp {p}\nwait",
            p = pids.display()
        ),
    );
    let ovs = Ovs::from_env()
        .program(&program)
        .db(&db)
        .timeout(Duration::from_secs(2));
    let start = Instant::now();
    let err = ovs.add_port("br0", "p", None).unwrap_err();
    let took = start.elapsed();
    match &err {
        OvsError::Timeout { seconds: 2, .. } => {}
        other => panic!("{other:?}"),
    }
    // Our deadline: a second after ovs-vsctl's own.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    // The script was reaped (no zombie of ours); its child was killed
    // with it (the kernel's init reaps that one).
    assert!(
        !Path::new(&format!("/proc/{}", pids[0])).exists(),
        "the fake is reaped"
    );
    wait_until("the fake's child is gone", 10, || !alive(pids[1]));
}

#[test]
fn a_flood_of_output_is_cut_short() {
    let dir = TempDir::new();
    let (_listener, db) = listening(&dir);
    for (i, (body, stream)) in [
        ("exec yes", "standard output"),
        ("exec yes >&2", "standard error"),
        ("yes & exec yes >&2", "standard"),
    ]
    .into_iter()
    .enumerate()
    {
        let program = fake(&dir, &format!("ovs-vsctl-{i}"), body);
        let ovs = Ovs::from_env()
            .program(&program)
            .db(&db)
            .timeout(Duration::from_secs(30));
        let start = Instant::now();
        match ovs.port("p") {
            Err(OvsError::BadOutput { problem, .. }) => {
                assert!(problem.contains(stream), "{body}: {problem}");
                assert!(problem.contains("more than"), "{body}: {problem}");
            }
            other => panic!("{body}: {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{body}");
    }
}

#[test]
fn output_that_is_not_the_tables_asked_is_bad_output() {
    let dir = TempDir::new();
    let (_listener, db) = listening(&dir);
    for (i, out) in [
        "",
        "hello",
        r#"{"data":[[1,2]],"headings":["name","ports"]}"#,
        "{\"data\":[],\"headings\":[\"_uuid\",\"name\",\"tag\",\"trunks\",\"vlan_mode\"]}\n{\"data\":[[\"br0\",7]],\"headings\":[\"name\",\"ports\"]}",
    ]
    .into_iter()
    .enumerate()
    {
        let program = fake(&dir, &format!("ovs-vsctl-{i}"), &format!("cat <<'EOF'\n{out}\nEOF"));
        let ovs = Ovs::from_env().program(&program).db(&db);
        match ovs.port("p") {
            Err(OvsError::BadOutput { operation, .. }) => assert_eq!(operation, "reading port p"),
            other => panic!("{out}: {other:?}"),
        }
    }
    // A failure's message is ovs-vsctl's standard error, on one line.
    let program = fake(
        &dir,
        "ovs-vsctl-fails",
        "printf 'ovs-vsctl: first\\nsecond\\033[1m\\n' >&2; exit 1",
    );
    let ovs = Ovs::from_env().program(&program).db(&db);
    match ovs.add_port("br0", "p", None) {
        Err(OvsError::Refused { operation, message }) => {
            assert_eq!(operation, "add-port br0 p");
            assert_eq!(message, "first; second\\u{1b}[1m");
        }
        other => panic!("{other:?}"),
    }
}
