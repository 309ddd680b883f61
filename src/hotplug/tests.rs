//! The QMP client and hot-plug rollback against a fake QEMU monitor, on the
//! fake kernel (no root, no QEMU).

use std::collections::BTreeMap;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use serde_json::{Value, json};

use super::*;
use crate::fake::FakeKernel;
use crate::qmp::{Qmp, QmpError};

/// What the fake monitor does with command number `n` (from 0, counting
/// `qmp_capabilities`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// Behave like QEMU.
    Normal,
    /// Answer with a GenericError.
    Fail,
    /// Close the connection without answering.
    HangUp,
    /// Never answer.
    Silence,
}

/// The fake monitor's state, as QEMU would hold it.
#[derive(Default, Debug)]
struct Monitor {
    /// Commands received, with the number of fds that came with each.
    log: Vec<(String, usize)>,
    /// Named fds (`getfd`).
    named: BTreeMap<String, OwnedFd>,
    /// Netdevs and the fds they consumed.
    netdevs: BTreeMap<String, Vec<OwnedFd>>,
    /// Devices.
    devices: Vec<String>,
}

struct FakeQemu {
    path: PathBuf,
    state: Arc<Mutex<Monitor>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vmtap-fakeqmp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Receives one chunk and the fds that came with it.
fn recv(sock: &UnixStream, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = match recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(_) => return (0, Vec::new()),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    (r.bytes, fds)
}

impl FakeQemu {
    /// A monitor with a greeting, acting on command `n` as `script(n, cmd)`
    /// says; it may send an event before a reply (`event_before`).
    fn start(
        greeting: &'static str,
        script: impl Fn(usize, &str) -> Act + Send + 'static,
        event_before: Option<&'static str>,
    ) -> FakeQemu {
        let dir = temp_dir();
        let path = dir.0.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(Mutex::new(Monitor::default()));
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            if !greeting.is_empty() {
                sock.write_all(greeting.as_bytes()).unwrap();
            }
            let mut pending = Vec::new();
            let mut fds: Vec<OwnedFd> = Vec::new();
            let mut n = 0;
            loop {
                let mut buf = [0u8; 4096];
                let (len, got) = recv(&sock, &mut buf);
                if len == 0 {
                    return;
                }
                fds.extend(got);
                pending.extend_from_slice(&buf[..len]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let msg: Value = serde_json::from_slice(&line).unwrap();
                    let cmd = msg["execute"].as_str().unwrap_or("").to_string();
                    let args = msg["arguments"].clone();
                    let mut m = st.lock().unwrap();
                    m.log.push((cmd.clone(), fds.len()));
                    let act = script(n, &cmd);
                    n += 1;
                    match act {
                        Act::HangUp => return,
                        Act::Silence => {
                            // Never answer; stop when the client gives up.
                            drop(m);
                            while recv(&sock, &mut buf).0 > 0 {}
                            return;
                        }
                        Act::Fail => {
                            fds.clear();
                            let reply = json!({"error": {"class": "GenericError", "desc": format!("{cmd} refused")}});
                            writeln!(sock, "{reply}").unwrap();
                            continue;
                        }
                        Act::Normal => {}
                    }
                    let reply = match execute(&mut m, &cmd, &args, &mut fds) {
                        Ok(v) => json!({ "return": v }),
                        Err(desc) => json!({"error": {"class": "GenericError", "desc": desc}}),
                    };
                    if let Some(ev) = event_before {
                        writeln!(sock, "{ev}").unwrap();
                    }
                    writeln!(sock, "{reply}").unwrap();
                    if cmd == "device_del" {
                        let id = args["id"].as_str().unwrap_or("");
                        let ev = json!({"event": "DEVICE_DELETED", "data": {"device": id}});
                        writeln!(sock, "{ev}").unwrap();
                    }
                }
            }
        });
        FakeQemu {
            path,
            state,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn connect(&self) -> Result<Qmp, QmpError> {
        Qmp::connect(&self.path, Duration::from_secs(2))
    }

    /// Waits for the monitor thread (the client must have hung up).
    fn finish(mut self) -> Monitor {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.state.lock().unwrap())
    }
}

const GREETING: &str =
    "{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\n";

/// What QEMU does with the commands hot-plug sends.
fn execute(
    m: &mut Monitor,
    cmd: &str,
    args: &Value,
    fds: &mut Vec<OwnedFd>,
) -> Result<Value, String> {
    let name = |k: &str| args[k].as_str().unwrap_or("").to_string();
    match cmd {
        "qmp_capabilities" => Ok(json!({})),
        "getfd" => {
            let fd = fds
                .pop()
                .ok_or("No file descriptor supplied via SCM_RIGHTS")?;
            m.named.insert(name("fdname"), fd);
            Ok(json!({}))
        }
        "closefd" => m
            .named
            .remove(&name("fdname"))
            .map(|_| json!({}))
            .ok_or_else(|| format!("File descriptor named '{}' not found", name("fdname"))),
        "netdev_add" => {
            let id = name("id");
            if m.netdevs.contains_key(&id) {
                return Err(format!("Duplicate ID '{id}' for netdev"));
            }
            let mut names: Vec<String> = Vec::new();
            for key in ["fd", "fds", "vhostfd", "vhostfds"] {
                if let Some(v) = args[key].as_str() {
                    names.extend(v.split(':').map(str::to_string));
                }
            }
            let mut taken = Vec::new();
            for n in names {
                taken.push(m.named.remove(&n).ok_or(format!("fd '{n}' not found"))?);
            }
            m.netdevs.insert(id, taken);
            Ok(json!({}))
        }
        "netdev_del" => m
            .netdevs
            .remove(&name("id"))
            .map(|_| json!({}))
            .ok_or_else(|| "Device not found".to_string()),
        "device_add" => {
            if args["driver"] != "virtio-net-pci" {
                return Err(format!(
                    "'{}' is not a valid device model name",
                    args["driver"]
                ));
            }
            m.devices.push(name("id"));
            Ok(json!({}))
        }
        "device_del" => {
            let id = name("id");
            let before = m.devices.len();
            m.devices.retain(|d| *d != id);
            if m.devices.len() == before {
                return Err(format!("Device '{id}' not found"));
            }
            Ok(json!({}))
        }
        other => Err(format!("The command {other} has not been found")),
    }
}

fn opts(queues: usize, vhost: bool) -> HotplugOptions {
    HotplugOptions {
        id: "nic1".into(),
        open: OpenOptions::new().queues(queues).vhost(vhost),
        link: LinkOptions::default(),
        driver: "virtio-net-pci".into(),
        mac: Some("52:54:00:12:34:56".parse().unwrap()),
    }
}

// --- The QMP client ---

#[test]
fn commands_events_and_errors() {
    let event = r#"{"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "x"}}"#;
    let q = FakeQemu::start(GREETING, |_, _| Act::Normal, Some(event));
    let mut c = q.connect().unwrap();
    assert_eq!(
        c.execute(
            "device_add",
            Some(json!({"driver": "virtio-net-pci", "id": "d"}))
        )
        .unwrap(),
        json!({})
    );
    // Events that arrive between commands and replies are kept.
    assert!(
        c.events()
            .iter()
            .all(|e| e["event"] == "NIC_RX_FILTER_CHANGED")
    );
    assert_eq!(c.events().len(), 2);
    match c.execute("no_such_command", None) {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(
                (command.as_str(), class.as_str()),
                ("no_such_command", "GenericError")
            );
            assert!(desc.contains("has not been found"));
        }
        other => panic!("{other:?}"),
    }
    c.execute("device_del", Some(json!({"id": "d"}))).unwrap();
    let ev = c
        .wait_event(
            "DEVICE_DELETED",
            |e| e["data"]["device"] == "d",
            Duration::from_secs(2),
        )
        .unwrap();
    assert_eq!(ev["data"]["device"], "d");
    let t = Instant::now();
    let err = c
        .wait_event("DEVICE_DELETED", |_| true, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(c);
    q.finish();
}

#[test]
fn fds_travel_with_getfd() {
    let q = FakeQemu::start(GREETING, |_, _| Act::Normal, None);
    let mut c = q.connect().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    c.execute_with_fds("getfd", Some(json!({"fdname": "x"})), &[a.as_fd()])
        .unwrap();
    // Without an fd, QEMU's getfd fails: so the one above did arrive.
    let err = c
        .execute("getfd", Some(json!({"fdname": "y"})))
        .unwrap_err();
    assert!(err.to_string().contains("SCM_RIGHTS"), "{err}");
    drop(c);
    let m = q.finish();
    assert_eq!(m.log[1], ("getfd".to_string(), 1));
    assert!(m.named.contains_key("x"));
}

#[test]
fn not_qmp_closed_and_silent_peers_give_clear_errors() {
    let q = FakeQemu::start("SSH-2.0-OpenSSH_9.2\r\n", |_, _| Act::Normal, None);
    let err = q.connect().err().unwrap();
    assert!(err.to_string().contains("not a QMP socket"), "{err}");
    drop(q);

    let q = FakeQemu::start("{\"hello\": 1}\n", |_, _| Act::Normal, None);
    let err = q.connect().err().unwrap();
    assert!(err.to_string().contains("not a QMP socket"), "{err}");
    drop(q);

    let q = FakeQemu::start(GREETING, |_, _| Act::HangUp, None);
    let err = q.connect().err().unwrap();
    assert!(
        err.to_string().contains("closed the QMP connection"),
        "{err}"
    );
    q.finish();

    // No greeting at all: the wait is bounded.
    let q = FakeQemu::start("", |_, _| Act::Normal, None);
    let t = Instant::now();
    let err = Qmp::connect(&q.path, Duration::from_millis(300))
        .err()
        .unwrap();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

// --- Hot-plug ---

#[test]
fn add_sends_ganeti_sequence_and_del_waits_for_the_event() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::start(GREETING, |_, _| Act::Normal, None);
    let mut c = q.connect().unwrap();
    let ifname = add_with(k.clone(), &mut c, &opts(2, true)).unwrap();
    assert_eq!(ifname, "tap0");
    // Only QEMU's copies (2 tap + 2 vhost) are open; the tap lives on them.
    assert_eq!(k.open_fds(), 4);
    assert_eq!(k.devices()["tap0"].queue_fds(), 2);
    del(&mut c, "nic1", Duration::from_secs(2)).unwrap();
    drop(c);
    let m = q.finish();
    assert_eq!(k.open_fds(), 0, "after netdev_del nobody holds an fd");
    assert!(k.devices().is_empty(), "and the tap is gone");
    let cmds: Vec<&str> = m.log.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        cmds,
        [
            "qmp_capabilities",
            "getfd",
            "getfd",
            "getfd",
            "getfd",
            "netdev_add",
            "device_add",
            "device_del",
            "netdev_del"
        ]
    );
    assert!(m.log[1..5].iter().all(|(_, fds)| *fds == 1), "{:?}", m.log);
    assert!(
        m.named.is_empty() && m.netdevs.is_empty() && m.devices.is_empty(),
        "{m:?}"
    );
}

#[test]
fn netdev_and_device_arguments_are_what_qemu_accepts() {
    let q = FakeQemu::start(GREETING, |_, _| Act::Normal, None);
    let mut c = q.connect().unwrap();
    let k = Arc::new(FakeKernel::new());
    let tap = open_tap_with(k.clone(), &OpenOptions::new().queues(4).vhost(true)).unwrap();
    plug(&mut c, "n9", &tap, "virtio-net-pci", None).unwrap();
    drop(c);
    let m = q.finish();
    assert_eq!(
        m.netdevs["n9"].len(),
        8,
        "4 tap + 4 vhost fds consumed by netdev_add"
    );
    assert_eq!(m.devices, vec!["n9".to_string()]);
    assert!(m.named.is_empty());
    drop(tap);
    assert_eq!(k.open_fds(), 8, "QEMU's copies");
    drop(m);
    assert_eq!(k.open_fds(), 0);
}

/// Fails (or hangs up, or goes silent at) every step of a successful add in
/// turn: our fds are closed, no tap is left, and QEMU holds no named fd,
/// netdev or device (when the connection survives to undo).
#[test]
fn a_failure_at_any_step_is_rolled_back() {
    for (queues, vhost) in [(1, false), (2, true)] {
        let steps = 1 + queues * (1 + usize::from(vhost)) + 2;
        for fail_at in 0..steps {
            for act in [Act::Fail, Act::HangUp, Act::Silence] {
                let k = Arc::new(FakeKernel::new());
                let q = FakeQemu::start(
                    GREETING,
                    move |n, _| if n == fail_at { act } else { Act::Normal },
                    None,
                );
                let result = Qmp::connect(&q.path, Duration::from_millis(300))
                    .map_err(|e| HotplugError::Step {
                        id: "nic1".into(),
                        step: "connect".into(),
                        source: e,
                    })
                    .and_then(|mut c| add_with(k.clone(), &mut c, &opts(queues, vhost)));
                let err = result.expect_err("a failing step fails the add");
                let msg = err.to_string();
                match act {
                    Act::Fail => assert!(msg.contains("refused"), "{msg}"),
                    Act::HangUp => assert!(msg.contains("closed"), "{msg}"),
                    Act::Silence => assert!(msg.contains("no answer"), "{msg}"),
                    Act::Normal => unreachable!(),
                }
                let m = q.finish();
                if act == Act::Fail {
                    assert!(
                        m.named.is_empty() && m.netdevs.is_empty() && m.devices.is_empty(),
                        "step {fail_at}: QEMU keeps {m:?}"
                    );
                }
                // With QEMU's side gone (undone, or its connection ended),
                // nothing holds an fd: ours were all closed.
                drop(m);
                assert_eq!(k.open_fds(), 0, "step {fail_at} {act:?}: fd leaked");
                assert!(k.devices().is_empty(), "step {fail_at} {act:?}: tap left");
            }
        }
    }
}

#[test]
fn invalid_ids_and_missing_vhost_touch_nothing() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::start(GREETING, |_, _| Act::Normal, None);
    let mut c = q.connect().unwrap();
    for bad in ["", "1abc", "a,b", "a b"] {
        let mut o = opts(1, false);
        o.id = bad.into();
        let err = add_with(k.clone(), &mut c, &o).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
    k.remove_path(crate::open::VHOST_NET_PATH);
    let err = add_with(k.clone(), &mut c, &opts(2, true)).unwrap_err();
    assert!(
        err.to_string().contains("vhost-net is not available"),
        "{err}"
    );
    assert_eq!(k.open_fds(), 0);
    drop(c);
    let m = q.finish();
    assert_eq!(
        m.log.len(),
        1,
        "only qmp_capabilities was sent: {:?}",
        m.log
    );
}
