//! The QMP client and hot-plug against a fake QEMU monitor
//! (tests/fakeqmp), on the fake kernel: no root, no QEMU (but for the
//! tests at the end, on real taps in a private network namespace).
//!
//! Time bounds are generous upper bounds (a loaded 2-core machine must not
//! fail them by chance); what would break them is a wait per name or per
//! read instead of one deadline per operation.

use vmtap_testkit as common;
use vmtap_testkit::fakeqmp;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakeqmp::{Act, Config, FakeQemu, Greet};
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use vmtap::fake::FakeKernel;

/// The context of a fake kernel.
fn kt(k: &std::sync::Arc<FakeKernel>) -> vmtap::Tun {
    vmtap::Tun::with(k.clone(), vmtap::DevicePaths::default())
}
use vmtap::{OpenOptions, Tun};
use vmtap_net::LinkOptions;
use vmtap_qemu::hotplug::{self, HotplugError, HotplugOptions, Leftover, Monitor, add, del, plug};
use vmtap_qemu::qmp::{Deadline, Limits, Qmp, QmpError};

/// Slack on top of a computed bound, for a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// A timeout for exchanges that are expected to complete.
const LONG: Duration = Duration::from_secs(10);

/// A NIC on tap0 (named, so that messages are known; the names vmtap
/// picks are tested in `add_picks_a_name_and_records_qemu_as_the_owner`).
fn opts(queues: usize, vhost: bool) -> HotplugOptions {
    HotplugOptions::new("nic1")
        .open(OpenOptions::new().name("tap0").queues(queues).vhost(vhost))
        .mac("52:54:00:12:34:56".parse::<vmtap_net::MacAddr>().unwrap())
}

fn monitor(q: &FakeQemu, timeout: Duration) -> Monitor {
    Monitor::new(&q.path, timeout)
}

/// The step error's parts (the step as its text).
fn step_parts(e: &HotplugError) -> (String, &QmpError, &[Leftover], Option<&QmpError>) {
    match e {
        HotplugError::Step {
            step,
            source,
            remaining,
            rollback,
            ..
        } => (
            step.to_string(),
            source.as_ref(),
            remaining,
            rollback.as_deref(),
        ),
        other => panic!("expected a step error, got {other:?}"),
    }
}

fn assert_within(t: Instant, bound: Duration, what: &str) {
    let e = t.elapsed();
    assert!(e <= bound, "{what}: took {e:?}, more than {bound:?}");
}

// --- The QMP client ---

#[test]
fn commands_events_and_errors() {
    let event = r#"{"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "x"}}"#;
    let q = Config::default().event_before_reply(event).start();
    let mut c = Qmp::connect(&q.path, LONG).unwrap();
    // The event before the reply to qmp_capabilities was not kept: nobody
    // asked for it.
    assert_eq!((c.events().len(), c.dropped_events()), (0, 1));
    c.keep_events(&["NIC_RX_FILTER_CHANGED"]);
    assert_eq!(
        c.execute::<Value>("echo", Some(json!({"a": 1}))).unwrap(),
        json!({"a": 1})
    );
    // Kept events that arrive between commands and replies are kept.
    assert_eq!(c.events().len(), 1);
    assert!(c.events().all(|e| e.name() == "NIC_RX_FILTER_CHANGED"));
    match c.execute::<IgnoredAny>("no_such_command", None) {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(
                (command.as_str(), class.as_str()),
                ("no_such_command", "CommandNotFound")
            );
            assert!(desc.contains("has not been found"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.take_events().len(), 2);
    assert_eq!(c.events().len(), 0);
    // A reply that is not what the caller asked for: a clear error, and
    // the connection stays usable.
    let err = c
        .execute::<String>("echo", Some(json!({"a": 1})))
        .unwrap_err();
    assert!(matches!(err, QmpError::Unexpected { .. }), "{err}");
    assert!(c.is_in_step());
    drop(c);
    let m = q.finish();
    // Every command carried an id, each a different one.
    let ids: Vec<&Value> = m.log.iter().map(|l| l.id.as_ref().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    let unique: std::collections::BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(unique.len(), 4, "{ids:?}");
}

#[test]
fn events_are_waited_for_within_the_deadline() {
    let q = FakeQemu::normal();
    let mut c = Qmp::connect(&q.path, LONG).unwrap();
    c.keep_events(&["DEVICE_DELETED"]);
    q.state().devices.insert(
        "d".into(),
        fakeqmp::Device {
            driver: "virtio-net-pci".into(),
            netdev: "n".into(),
            unplug_at: None,
        },
    );
    c.execute::<IgnoredAny>("device_del", Some(json!({"id": "d"})))
        .unwrap();
    let ev = c
        .wait_event("DEVICE_DELETED", |e| {
            e.data::<Value>().is_some_and(|d| d["device"] == "d")
        })
        .unwrap();
    assert_eq!(ev.data::<Value>().unwrap()["device"], "d");
    // The other DEVICE_DELETED (the virtio backend's) is still kept.
    assert_eq!(c.events().len(), 1);
    // An event that never comes: Ok(None) at `until`, an error at the
    // deadline, which quotes the timeout as set.
    let t = Instant::now();
    let until = t + Duration::from_millis(200);
    assert!(
        c.wait_event_until("NOPE", |_| true, until)
            .unwrap()
            .is_none()
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
    c.set_deadline(Deadline::after(Duration::from_millis(200)));
    let t = Instant::now();
    let err = c.wait_event("NOPE", |_| true).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(err.to_string().ends_with("(timeout: 200ms)"), "{err}");
    assert_within(t, Duration::from_millis(200) + SLACK, "wait_event");
    drop(c);
    q.finish();
}

#[test]
fn fds_travel_with_getfd() {
    let q = FakeQemu::normal();
    let mut c = Qmp::connect(&q.path, LONG).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    c.execute_with_fds::<IgnoredAny>("getfd", Some(json!({"fdname": "x"})), &[a.as_fd()])
        .unwrap();
    // Without an fd, QEMU's getfd fails: so the one above did arrive.
    let err = c
        .execute::<IgnoredAny>("getfd", Some(json!({"fdname": "y"})))
        .unwrap_err();
    assert!(err.to_string().contains("SCM_RIGHTS"), "{err}");
    drop(c);
    let m = q.finish();
    assert_eq!((m.log[1].name.as_str(), m.log[1].fds), ("getfd", 1));
    assert!(m.named.contains_key("x"));
}

/// The reply to command 1 is half sent, and the rest only once the client
/// has given up on it and sent command 2: the partial line survives the
/// timeout, the connection stays in step, and the late reply (to command
/// 1) is not taken for the reply to command 2.
#[test]
fn a_late_reply_is_never_taken_for_the_next_one() {
    let q = Config::default()
        .act(|c| {
            if c.n == 1 {
                Act::SplitUntilNext
            } else {
                Act::Normal
            }
        })
        .start();
    let mut c = Qmp::connect(&q.path, LONG).unwrap();
    c.set_deadline(Deadline::after(Duration::from_millis(300)));
    let t = Instant::now();
    let err = c
        .execute::<Value>("echo", Some(json!({"x": 1})))
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(err.to_string().ends_with("(timeout: 300ms)"), "{err}");
    assert_within(t, Duration::from_millis(300) + SLACK, "first command");
    assert!(c.is_in_step());
    c.set_deadline(Deadline::after(LONG));
    assert_eq!(
        c.execute::<Value>("echo", Some(json!({"x": 2}))).unwrap(),
        json!({"x": 2})
    );
    assert_eq!(
        c.execute::<Value>("echo", Some(json!({"x": 3}))).unwrap(),
        json!({"x": 3})
    );
    drop(c);
    q.finish();
}

/// QEMU hands the reply to a command that was executing when its client
/// left to the next client (7.2 was seen sending it before the greeting).
/// The next client drops it, before or after the greeting (and ids never
/// repeat across connections, so it cannot match one of its commands).
#[test]
fn a_reply_left_from_an_earlier_connection_is_not_taken() {
    for after_greeting in [false, true] {
        let mut cfg = Config::default().act(|c| {
            if c.conn == 0 && c.n == 1 {
                Act::UntilClose
            } else {
                Act::Normal
            }
        });
        if after_greeting {
            cfg = cfg.stale_after_greeting();
        }
        let q = cfg.start();
        let mut c = Qmp::connect(&q.path, LONG).unwrap();
        c.set_deadline(Deadline::after(Duration::from_millis(300)));
        let err = c
            .execute::<Value>("echo", Some(json!({"x": 1})))
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        drop(c);
        let mut c = Qmp::connect(&q.path, LONG).unwrap();
        assert_eq!(
            c.execute::<Value>("echo", Some(json!({"x": 2}))).unwrap(),
            json!({"x": 2}),
            "stale reply after the greeting: {after_greeting}"
        );
        drop(c);
        let m = q.finish();
        assert_eq!(m.commands(1), ["qmp_capabilities", "echo"]);
        assert!(m.log.iter().filter(|l| l.name == "echo").all(|l| l.ok));
    }
}

#[test]
fn not_qmp_closed_and_silent_peers_give_clear_errors() {
    for greeting in ["SSH-2.0-OpenSSH_9.2\r\n", "{\"hello\": 1}\n", "[1]\n"] {
        let q = Config::default()
            .greet(move |_| Greet::Raw(greeting))
            .start();
        let err = Qmp::connect(&q.path, LONG).unwrap_err();
        assert!(err.to_string().contains("not a QMP socket"), "{err}");
    }

    let q = Config::default().act(|_| Act::HangUp).start();
    let err = Qmp::connect(&q.path, LONG).unwrap_err();
    assert!(
        err.to_string().contains("closed the QMP connection"),
        "{err}"
    );
    q.finish();

    // No greeting at all, or one that trickles: the wait is bounded by
    // the deadline, not by each read.
    // Silence hints that another client may hold the monitor; the
    // message quotes the timeout as given, not the time left.
    for greet in [Greet::Silent, Greet::Trickle(Duration::from_millis(100))] {
        let q = Config::default().greet(move |_| greet).start();
        let t = Instant::now();
        let err = Qmp::connect(&q.path, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{greet:?}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("greeting"), "{msg}");
        assert!(msg.ends_with("(timeout: 500ms)"), "{msg}");
        assert_eq!(
            msg.contains("QEMU serves one QMP client at a time: another client may be connected"),
            greet == Greet::Silent,
            "{msg}"
        );
        assert_within(t, Duration::from_millis(500) + SLACK, "greeting");
    }
}

#[test]
fn connect_says_what_is_wrong_with_the_path() {
    let dir = fakeqmp::temp_dir();
    let missing = dir.join("missing.sock");
    let err = Qmp::connect(&missing, LONG).unwrap_err();
    assert!(matches!(err, QmpError::NoSocket(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let err = Qmp::connect(&file, LONG).unwrap_err();
    assert!(matches!(err, QmpError::NotASocket(_)), "{err}");
    assert!(err.to_string().contains("is not a socket"), "{err}");

    let dead = dir.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let err = Qmp::connect(&dead, LONG).unwrap_err();
    assert!(matches!(err, QmpError::NotListening(_)), "{err}");
    assert!(err.to_string().contains("nobody listens"), "{err}");

    // A listener whose queue is full (QEMU serves one client at a time):
    // connect retries until the deadline, then says so.
    use rustix::net::{
        AddressFamily, SocketAddrUnix, SocketFlags, SocketType, bind, connect, listen, socket_with,
    };
    let busy = dir.join("busy.sock");
    let addr = SocketAddrUnix::new(&busy).unwrap();
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    bind(&listener, &addr).unwrap();
    listen(&listener, 0).unwrap();
    let mut queued = Vec::new();
    loop {
        let s = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match connect(&s, &addr) {
            Ok(()) => queued.push(s),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(queued.len() < 100, "the listen queue never filled");
    }
    let t = Instant::now();
    let err = Qmp::connect(&busy, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("listen queue"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_within(t, Duration::from_millis(300) + SLACK, "full queue");
    // Once there is room, connect gets in (and then waits for a greeting
    // that a busy QEMU only sends when the client before has left).
    drop(queued);
    let _accepted = rustix::net::accept(&listener).unwrap();
    let t = Instant::now();
    let err = Qmp::connect(&busy, Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("greeting"), "{err}");
    assert!(
        err.to_string().contains("another client may be connected"),
        "{err}"
    );
    assert_within(t, Duration::from_millis(300) + SLACK, "no greeting");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- Hot-plug ---

#[test]
fn add_picks_a_name_and_records_qemu_as_the_owner() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::normal();
    let mon = monitor(&q, LONG);
    let o = HotplugOptions::new("nic1").open(
        OpenOptions::new()
            .queues(2)
            .ownership(vmtap::Ownership::new().tag("vm7".to_string()).unwrap()),
    );
    let ifname = add(&kt(&k), &mon, &o).unwrap();
    assert!(ifname.starts_with("tap") && ifname != "tap0", "{ifname}");
    // The fake QEMU is this process: its pid and start time, and the tag.
    let me = vmtap::Owner::this_process().unwrap();
    assert_eq!(
        k.devices()[&ifname].alias.as_deref(),
        Some(format!("{} tag=vm7", vmtap::Ownership::new().owner(me).to_alias()).as_str())
    );
    del(&mon, "nic1").unwrap();
    q.finish();
    assert!(k.devices().is_empty());
}

#[test]
fn add_sends_ganeti_sequence_and_del_waits_for_the_device() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::normal();
    let mon = monitor(&q, LONG);
    let ifname = add(&kt(&k), &mon, &opts(2, true)).unwrap();
    assert_eq!(ifname, "tap0");
    // Only QEMU's copies (2 tap + 2 vhost) are open; the tap lives on them.
    assert_eq!(k.open_fds(), 4);
    assert_eq!(k.devices()["tap0"].queue_fds(), 2);
    del(&mon, "nic1").unwrap();
    let m = q.finish();
    assert_eq!(k.open_fds(), 0, "after netdev_del nobody holds an fd");
    assert!(k.devices().is_empty(), "and the tap is gone");
    assert_eq!(
        m.commands(0),
        [
            "qmp_capabilities",
            "human-monitor-command",
            "qom-list",
            "getfd",
            "getfd",
            "getfd",
            "getfd",
            "netdev_add",
            "device_add",
        ]
    );
    let del_cmds: Vec<&str> = m
        .commands(1)
        .into_iter()
        .filter(|c| *c != "qom-list" && *c != "human-monitor-command")
        .collect();
    assert_eq!(del_cmds, ["qmp_capabilities", "device_del", "netdev_del"]);
    let getfds: Vec<_> = m.log.iter().filter(|l| l.name == "getfd").collect();
    assert!(getfds.iter().all(|l| l.fds == 1), "{:?}", m.log);
    let names: Vec<&str> = getfds
        .iter()
        .map(|l| l.args["fdname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nic1-0", "nic1-1", "nic1-vhost-0", "nic1-vhost-1"]);
    assert!(m.is_clean(), "{m:?}");
}

#[test]
fn netdev_and_device_arguments_are_what_qemu_accepts() {
    let q = FakeQemu::normal();
    let k = Arc::new(FakeKernel::new());
    let tap = kt(&k)
        .open(&OpenOptions::new().queues(4).vhost(true))
        .unwrap();
    plug(&monitor(&q, LONG), "n9", &tap, "virtio-net-pci", None).unwrap();
    let m = q.finish();
    assert_eq!(
        m.netdevs["n9"].len(),
        8,
        "4 tap + 4 vhost fds consumed by netdev_add"
    );
    let args = |name: &str| m.log.iter().find(|l| l.name == name).unwrap().args.clone();
    assert_eq!(
        args("netdev_add"),
        json!({"type": "tap", "id": "n9", "fds": "n9-0:n9-1:n9-2:n9-3", "vhost": true,
               "vhostfds": "n9-vhost-0:n9-vhost-1:n9-vhost-2:n9-vhost-3"})
    );
    assert_eq!(
        args("device_add"),
        json!({"driver": "virtio-net-pci", "netdev": "n9", "id": "n9", "mq": true, "vectors": 10})
    );
    assert!(m.devices.contains_key("n9"));
    assert!(m.named.is_empty());
    drop(tap);
    assert_eq!(k.open_fds(), 8, "QEMU's copies");
    drop(m);
    assert_eq!(k.open_fds(), 0);
}

/// What an add that failed at `step` may have left, as its error must say
/// when the rollback could not run: the names sent up to that step, the
/// netdev once `netdev_add` was sent, the device once `device_add` was.
fn sent_up_to(step: &str, queues: usize, vhost: bool) -> Vec<Leftover> {
    let names: Vec<String> = (0..queues)
        .map(|i| format!("nic1-{i}"))
        .chain((0..if vhost { queues } else { 0 }).map(|i| format!("nic1-vhost-{i}")))
        .collect();
    let mut r = Vec::new();
    match step {
        "device_add" => {
            r.push(Leftover::Device("nic1".into()));
            r.push(Leftover::Netdev("nic1".into()));
        }
        "netdev_add" => {
            r.push(Leftover::Netdev("nic1".into()));
            r.extend(names.into_iter().map(Leftover::FdName));
        }
        getfd => {
            let last = getfd.strip_prefix("getfd ").expect(getfd);
            let n = names.iter().position(|x| x == last).unwrap() + 1;
            r.extend(names.into_iter().take(n).map(Leftover::FdName));
        }
    }
    r
}

/// Fails at every step of an add in turn, in every way: QEMU refuses,
/// hangs up (before or after doing the step), goes silent, answers late,
/// sends garbage, floods unrelated events, sends an endless line. Our fds
/// are always closed.
///
/// - Refused, or answered late: undone on the same connection (no new
///   connection is made), and nothing stays in QEMU; a late `device_add`
///   is a success.
/// - Silent or flooding (no answer at all): the undo on the same
///   connection cannot finish either; the error lists exactly what was
///   sent, and the host tap.
/// - Hung up, garbage, endless line (out of step): undone on a new
///   connection, nothing sent after the failure on the old one; a device
///   found there is not taken for ours: it and its netdev are reported.
#[test]
fn a_failure_at_any_step_is_rolled_back() {
    let acts = [
        Act::Fail,
        Act::UntilNext,
        Act::HangUp,
        Act::DoThenHangUp,
        Act::Garbage,
        Act::Endless,
        Act::Silence,
        Act::Flood,
    ];
    let configs = [(1usize, false), (2, true)];
    let threads: Vec<_> = configs
        .into_iter()
        .map(|(queues, vhost)| {
            std::thread::spawn(move || {
                // qmp_capabilities, human-monitor-command, qom-list,
                // getfd..., netdev_add, device_add
                let steps = 3 + queues * (1 + usize::from(vhost)) + 2;
                for fail_at in 0..steps {
                    for act in acts {
                        failure_case(queues, vhost, fail_at, act);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn failure_case(queues: usize, vhost: bool, fail_at: usize, act: Act) {
    let case = format!("{queues} queue(s), step {fail_at}, {act:?}");
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(move |c| {
            if c.conn == 0 && c.n == fail_at {
                act
            } else {
                Act::Normal
            }
        })
        .start();
    // Only waits that are meant to run out get a short timeout.
    let no_answer = matches!(act, Act::Silence | Act::Flood);
    let timeout = match act {
        Act::Silence | Act::Flood | Act::UntilNext => Duration::from_millis(300),
        _ => LONG,
    };
    let mut mon = monitor(&q, timeout);
    mon.rollback_timeout = if no_answer {
        Duration::from_millis(300)
    } else {
        LONG
    };
    let result = add(&kt(&k), &mon, &opts(queues, vhost));
    let last_step = fail_at + 1 == 3 + queues * (1 + usize::from(vhost)) + 2;
    let connections = q.connections();
    let m = q.finish();
    if act == Act::UntilNext && last_step {
        // device_add was only late: the NIC is plugged.
        assert_eq!(result.unwrap(), "tap0", "{case}");
        assert!(m.devices.contains_key("nic1"), "{case}");
        assert_eq!(connections, 1, "{case}: undone on the same connection");
        return;
    }
    let err = result.expect_err("a failing step fails the add");
    let msg = err.to_string();
    let words = match act {
        Act::Fail => "refused",
        Act::HangUp | Act::DoThenHangUp => "closed",
        Act::Silence | Act::Flood | Act::UntilNext => "no answer",
        Act::Garbage => "not a QMP socket",
        Act::Endless => "longer than",
        _ => unreachable!(),
    };
    assert!(msg.contains(words), "{case}: {msg}");
    assert!(msg.contains("\"nic1\""), "{case}: {msg}");
    let HotplugError::Step {
        step,
        remaining,
        left_alone,
        ..
    } = &err
    else {
        panic!("{case}: {err:?}")
    };
    let in_step = matches!(act, Act::Fail | Act::UntilNext | Act::Silence | Act::Flood);
    if fail_at < 3 {
        // Connect, or the id check: nothing was done yet.
        assert!(remaining.is_empty(), "{case}: {msg}");
    } else if no_answer {
        // The fake did nothing, but vmtap cannot know: it lists what it
        // sent, and says the tap stays.
        assert_eq!(
            remaining,
            &sent_up_to(&step.to_string(), queues, vhost),
            "{case}: {msg}"
        );
        assert!(
            msg.contains("the tap tap0 stays on the host while QEMU holds its fds"),
            "{case}: {msg}"
        );
    } else if act == Act::DoThenHangUp && last_step {
        // On a new connection the device cannot be shown to be ours.
        assert_eq!(
            remaining,
            &[
                Leftover::Device("nic1".into()),
                Leftover::Netdev("nic1".into())
            ],
            "{case}: {msg}"
        );
        assert!(*left_alone && msg.contains("left alone"), "{case}: {msg}");
        assert!(m.devices.contains_key("nic1"), "{case}");
    } else {
        assert!(remaining.is_empty(), "{case}: {msg}");
        assert!(m.is_clean(), "{case}: QEMU keeps {m:?}");
    }
    if fail_at >= 3 {
        if in_step {
            assert_eq!(connections, 1, "{case}: undone on the same connection");
        } else {
            // Nothing after the failed command on its connection.
            assert_eq!(m.commands(0).len(), fail_at + 1, "{case}: {:?}", m.log);
        }
    }
    drop(m);
    assert_eq!(k.open_fds(), 0, "{case}: fd leaked");
    assert!(k.devices().is_empty(), "{case}: tap left");
}

/// getfd of the second name is answered only after the client gave up on
/// it (QEMU was slow, but did it). The add fails, and the undo, on the
/// same connection, after the late getfd, really closes that name too.
#[test]
fn a_late_answer_is_undone_on_the_same_connection() {
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(|c| {
            if c.conn == 0 && c.name == "getfd" && c.args["fdname"] == "nic1-1" {
                Act::UntilNext
            } else {
                Act::Normal
            }
        })
        .start();
    let mut mon = monitor(&q, Duration::from_millis(500));
    mon.rollback_timeout = LONG;
    let t = Instant::now();
    let err = add(&kt(&k), &mon, &opts(2, false)).unwrap_err();
    assert_within(t, Duration::from_millis(500) + SLACK, "add");
    let (step, source, remaining, rollback) = step_parts(&err);
    assert_eq!(step, "getfd nic1-1");
    assert!(matches!(source, QmpError::Timeout { .. }), "{err}");
    assert!(remaining.is_empty() && rollback.is_none(), "{err}");
    assert_eq!(q.connections(), 1);
    let m = q.finish();
    assert!(m.is_clean(), "{m:?}");
    // The late getfd did happen (it is logged as done), then the undo of
    // both names.
    assert!(m.log.iter().filter(|l| l.name == "getfd").all(|l| l.ok));
    let undo: Vec<(&str, bool)> = m
        .log
        .iter()
        .filter(|l| l.name == "closefd")
        .map(|l| (l.args["fdname"].as_str().unwrap(), l.ok))
        .collect();
    assert_eq!(undo, [("nic1-1", true), ("nic1-0", true)]);
    drop(m);
    assert_eq!(k.open_fds(), 0);
}

/// device_add is answered only after the client gave up on it, but QEMU
/// did it: the NIC is fully plugged, so the add reports success.
#[test]
fn a_late_device_add_that_happened_is_a_success() {
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(|c| {
            if c.conn == 0 && c.name == "device_add" {
                Act::UntilNext
            } else {
                Act::Normal
            }
        })
        .start();
    let mut mon = monitor(&q, Duration::from_millis(500));
    mon.rollback_timeout = LONG;
    let ifname = add(&kt(&k), &mon, &opts(1, true)).unwrap();
    assert_eq!(ifname, "tap0");
    assert_eq!(q.connections(), 1);
    let m = q.finish();
    assert!(m.devices.contains_key("nic1") && m.named.is_empty());
    assert_eq!(m.netdevs["nic1"].len(), 2);
    assert_eq!(m.commands(0).last(), Some(&"qom-list"));
    assert_eq!(k.open_fds(), 2, "QEMU's copies only");
}

fn add_other_nic(st: &mut fakeqmp::State, id: &str) {
    st.netdevs.insert(id.into(), Vec::new());
    st.devices.insert(
        id.into(),
        fakeqmp::Device {
            driver: "virtio-net-pci".into(),
            netdev: id.into(),
            unplug_at: None,
        },
    );
}

/// Another client adds the same id as soon as the first one's connection
/// closes (QEMU serves one client at a time). The first one's undo never
/// removes the other's NIC or netdev:
/// - after a timeout it undoes on its own connection, so nobody gets in
///   between (it never reconnects);
/// - after a hang-up it must reconnect, and there leaves a netdev with a
///   NIC attached alone, and says so.
#[test]
fn another_clients_nic_is_never_touched() {
    for act in [Act::Silence, Act::HangUp] {
        let k = Arc::new(FakeKernel::new());
        let q = Config::default()
            .act(move |c| {
                if c.conn == 0 && c.name == "netdev_add" {
                    act
                } else {
                    Act::Normal
                }
            })
            .between(|conn, st| {
                if conn == 0 {
                    add_other_nic(st, "nic1");
                }
            })
            .start();
        let mut mon = monitor(&q, Duration::from_millis(500));
        mon.rollback_timeout = Duration::from_millis(500);
        let err = add(&kt(&k), &mon, &opts(1, false)).unwrap_err();
        let msg = err.to_string();
        let (step, _, remaining, _) = step_parts(&err);
        assert_eq!(step, "netdev_add", "{msg}");
        match act {
            Act::Silence => {
                assert_eq!(q.connections(), 1, "{msg}");
                assert_eq!(
                    remaining,
                    [
                        Leftover::Netdev("nic1".into()),
                        Leftover::FdName("nic1-0".into())
                    ],
                    "{msg}"
                );
            }
            _ => {
                assert_eq!(q.connections(), 2, "{msg}");
                // The fd name was ours (the other client's were consumed).
                assert_eq!(remaining, [Leftover::Netdev("nic1".into())], "{msg}");
                assert!(msg.contains("another client may have added"), "{msg}");
            }
        }
        let m = q.finish();
        assert!(
            m.netdevs.contains_key("nic1") && m.devices.contains_key("nic1"),
            "{act:?}: the other client's NIC was touched: {m:?}"
        );
        assert!(
            !m.log.iter().any(|l| l.name == "netdev_del"),
            "{act:?}: {:?}",
            m.log
        );
        drop(m);
        assert_eq!(k.open_fds(), 0);
    }
}

/// A peer that sends one byte every 0.5 s: `add` with a 2 s timeout ends
/// in about 2 × 2 s (the add, then a rollback on the same connection,
/// which the trickle also holds up), and says exactly which name may
/// remain, and that the tap stays.
#[test]
fn a_trickling_peer_cannot_stretch_the_deadline() {
    let gap = Duration::from_millis(500);
    let timeout = Duration::from_secs(2);
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(move |c| {
            if c.conn == 0 && c.name == "getfd" {
                Act::Trickle(gap)
            } else {
                Act::Normal
            }
        })
        .start();
    let t = Instant::now();
    let err = add(&kt(&k), &monitor(&q, timeout), &opts(1, false)).unwrap_err();
    assert_within(t, 2 * timeout + SLACK, "add against a trickling peer");
    let (step, source, remaining, rollback) = step_parts(&err);
    assert_eq!(step, "getfd nic1-0");
    assert!(matches!(source, QmpError::Timeout { .. }), "{err}");
    assert!(matches!(rollback, Some(QmpError::Timeout { .. })), "{err}");
    assert_eq!(remaining, [Leftover::FdName("nic1-0".into())]);
    assert!(
        err.to_string().contains(
            "may remain in QEMU: fd name nic1-0; the tap tap0 stays on the host while QEMU holds its fds"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("(timeout: 2s)"), "{err}");
    // And it does: QEMU's copy of the fd keeps it.
    assert!(k.devices().contains_key("tap0"));
    let m = q.finish();
    assert!(
        m.named.contains_key("nic1-0"),
        "the trickled getfd was done"
    );
    drop(m);
    assert_eq!(k.open_fds(), 0);

    // Trickling from the greeting on: the connect alone uses the deadline.
    let q = Config::default()
        .greet(move |_| Greet::Trickle(gap))
        .start();
    let t = Instant::now();
    let err = add(&kt(&k), &monitor(&q, timeout), &opts(1, false)).unwrap_err();
    assert_within(t, timeout + SLACK, "connect to a trickling peer");
    assert_eq!(step_parts(&err).0, "connect");
    assert_eq!(k.open_fds(), 0);
}

/// A peer that goes silent in the middle of a 64- or 256-queue add, and
/// stays silent: one deadline for the add and one for the rollback, not
/// one per name; the error lists exactly the names sent.
#[test]
fn a_silent_peer_costs_two_timeouts_whatever_the_queue_count() {
    let timeout = Duration::from_secs(2);
    for queues in [64usize, 256] {
        let k = Arc::new(FakeKernel::new());
        let q = Config::default()
            .act(move |c| {
                if c.conn == 0 && c.name == "getfd" && c.args["fdname"] == "nic1-vhost-10" {
                    Act::Silence
                } else {
                    Act::Normal
                }
            })
            .start();
        let mon = monitor(&q, timeout);
        assert_eq!(mon.rollback_timeout, timeout);
        let t = Instant::now();
        let err = add(&kt(&k), &mon, &opts(queues, true)).unwrap_err();
        assert_within(t, 2 * timeout + SLACK, &format!("{queues} queues"));
        let (_, source, remaining, rollback) = step_parts(&err);
        assert!(matches!(source, QmpError::Timeout { .. }), "{err}");
        assert!(rollback.is_some(), "{err}");
        let m = q.finish();
        let sent: Vec<Leftover> = m
            .log
            .iter()
            .filter(|l| l.name == "getfd")
            .map(|l| Leftover::FdName(l.args["fdname"].as_str().unwrap().into()))
            .collect();
        assert!(!sent.is_empty());
        assert_eq!(remaining, &sent[..], "exactly the names sent");
        assert!(
            err.to_string()
                .contains(&format!("fd names nic1-0 to nic1-{}", queues - 1)),
            "{err}"
        );
        drop(m);
        assert_eq!(k.open_fds(), 0);
    }
}

#[test]
fn an_id_in_use_touches_nothing() {
    for (netdev, device) in [(true, false), (false, true), (true, true)] {
        let k = Arc::new(FakeKernel::new());
        let q = FakeQemu::normal();
        {
            let mut st = q.state();
            if netdev {
                st.netdevs.insert("nic1".into(), Vec::new());
            }
            if device {
                st.devices.insert(
                    "nic1".into(),
                    fakeqmp::Device {
                        driver: "virtio-net-pci".into(),
                        netdev: "other".into(),
                        unplug_at: None,
                    },
                );
            }
        }
        let err = add(&kt(&k), &monitor(&q, LONG), &opts(2, true)).unwrap_err();
        match &err {
            HotplugError::IdInUse {
                id,
                netdev: n,
                device: d,
            } => assert_eq!((id.as_str(), *n, *d), ("nic1", netdev, device)),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("netdev_add"), "{err}");
        assert!(k.calls().is_empty(), "no tap opened");
        let m = q.finish();
        assert_eq!(
            m.commands(0),
            ["qmp_capabilities", "human-monitor-command", "qom-list"]
        );
        assert_eq!(
            (
                m.netdevs.contains_key("nic1"),
                m.devices.contains_key("nic1")
            ),
            (netdev, device)
        );
    }
}

#[test]
fn invalid_ids_and_missing_vhost_touch_nothing() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::normal();
    let mon = monitor(&q, LONG);
    for bad in ["", "1abc", "a,b", "a b"] {
        let mut o = opts(1, false);
        o.id = bad.into();
        let err = add(&kt(&k), &mon, &o).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
    assert_eq!(q.connections(), 0, "invalid input: not even connected");
    k.remove_path(vmtap::VHOST_NET_PATH);
    let err = add(&kt(&k), &mon, &opts(2, true)).unwrap_err();
    assert!(
        err.to_string().contains("vhost-net is not available"),
        "{err}"
    );
    assert_eq!(k.open_fds(), 0);
    let m = q.finish();
    assert_eq!(
        m.commands(0),
        ["qmp_capabilities", "human-monitor-command", "qom-list"]
    );
}

/// A huge timeout is a far deadline, not an overflow.
#[test]
fn huge_timeouts_do_not_overflow() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::normal();
    let mut mon = monitor(&q, Duration::MAX);
    mon.rollback_timeout = Duration::MAX;
    add(&kt(&k), &mon, &opts(1, false)).unwrap();
    del(&mon, "nic1").unwrap();
    assert!(q.finish().is_clean());
}

/// A guest can make QEMU send events at a high rate (BLOCK_IO_ERROR):
/// they are dropped as they come, so add and del still work.
#[test]
fn unrelated_events_are_dropped_not_counted_against_the_caps() {
    let ev = r#"{"event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "disk0", "operation": "write", "action": "report", "nospace": false, "reason": "Input/output error"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .noise(ev, 1500)
        .unplug_delay(Duration::from_millis(300))
        .start();
    let mon = monitor(&q, LONG);
    add(&kt(&k), &mon, &opts(1, false)).unwrap();
    del(&mon, "nic1").unwrap();
    let m = q.finish();
    assert!(m.is_clean(), "{m:?}");
    drop(m);
    assert_eq!(k.open_fds(), 0);

    // A peer that floods the one event del waits for is lying: a clear
    // error, and what may remain.
    let ev = r#"{"event": "DEVICE_DELETED", "data": {"device": "other", "path": "/machine/peripheral/other"}}"#;
    let q = Config::default().noise(ev, 1500).start();
    let k = Arc::new(FakeKernel::new());
    add(&kt(&k), &monitor(&q, LONG), &opts(1, false)).unwrap();
    let err = del(&monitor(&q, LONG), "nic1").unwrap_err();
    assert!(
        err.to_string()
            .contains("events that are waited for (DEVICE_DELETED)"),
        "{err}"
    );
    assert!(err.to_string().contains("hot-unplug of \"nic1\""), "{err}");
}

// --- del ---

/// Adds nic1 on `q` (normal behaviour).
fn add_nic(q: &FakeQemu, k: &Arc<FakeKernel>) {
    add(&kt(k), &monitor(q, LONG), &opts(1, false)).unwrap();
}

#[test]
fn del_of_a_device_already_gone_still_removes_the_netdev() {
    let k = Arc::new(FakeKernel::new());
    let q = FakeQemu::normal();
    add_nic(&q, &k);
    // The device went away (an earlier del) but its netdev stayed.
    q.state().devices.clear();
    del(&monitor(&q, LONG), "nic1").unwrap();
    let m = q.finish();
    assert!(m.is_clean(), "{m:?}");
    let last: Vec<(&str, bool)> = m
        .log
        .iter()
        .filter(|l| l.conn == 1)
        .map(|l| (l.name.as_str(), l.ok))
        .collect();
    assert_eq!(
        last,
        [
            ("qmp_capabilities", true),
            ("human-monitor-command", true),
            ("qom-list", true),
            ("netdev_del", true)
        ]
    );
    drop(m);
    assert_eq!(k.open_fds(), 0);
}

#[test]
fn del_of_nothing_is_an_error_naming_device_del() {
    let q = FakeQemu::normal();
    let err = del(&monitor(&q, LONG), "nothere").unwrap_err();
    assert!(matches!(err, HotplugError::NoSuchNic(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("device_del") && msg.contains("no NIC"),
        "{msg}"
    );
    q.finish();
}

/// del removes NICs only: a device that is not one (a virtio-rng), or a
/// netdev that a NIC of another id uses, is a clear error, and nothing is
/// touched.
#[test]
fn del_touches_nothing_but_nics() {
    let q = FakeQemu::normal();
    {
        let mut st = q.state();
        st.devices.insert(
            "rng0".into(),
            fakeqmp::Device {
                driver: "virtio-rng-pci".into(),
                netdev: String::new(),
                unplug_at: None,
            },
        );
        st.netdevs.insert("n2".into(), Vec::new());
        st.devices.insert(
            "dev2".into(),
            fakeqmp::Device {
                driver: "virtio-net-pci".into(),
                netdev: "n2".into(),
                unplug_at: None,
            },
        );
    }
    let err = del(&monitor(&q, LONG), "rng0").unwrap_err();
    assert!(matches!(err, HotplugError::NotANic(_)), "{err}");
    assert!(err.to_string().contains("is not a NIC"), "{err}");
    let err = del(&monitor(&q, LONG), "n2").unwrap_err();
    assert!(matches!(err, HotplugError::NetdevInUse { .. }), "{err}");
    assert!(
        err.to_string().contains("attached to NIC \"dev2\""),
        "{err}"
    );
    let m = q.finish();
    assert_eq!(m.devices.len(), 2);
    assert!(m.netdevs.contains_key("n2"));
    assert!(
        !m.log
            .iter()
            .any(|l| l.name == "device_del" || l.name == "netdev_del"),
        "{:?}",
        m.log
    );
}

/// The guest takes 1.5 s to release the device; a del with 0.5 s times
/// out waiting (and says what remains); run again, it finishes the job
/// (QEMU says the device is "already in the process of unplug", or on a
/// PCIe slot "guest is busy (power indicator blinking)").
#[test]
fn a_del_that_timed_out_can_be_retried() {
    for pcie in [false, true] {
        let k = Arc::new(FakeKernel::new());
        let mut cfg = Config::default().unplug_delay(Duration::from_millis(1500));
        if pcie {
            cfg = cfg.pcie();
        }
        let q = cfg.start();
        add_nic(&q, &k);
        let t = Instant::now();
        let err = del(&monitor(&q, Duration::from_millis(500)), "nic1").unwrap_err();
        assert_within(t, Duration::from_millis(500) + SLACK, "first del");
        let (step, source, remaining, _) = step_parts(&err);
        assert!(step.contains("DEVICE_DELETED"), "{err}");
        assert!(matches!(source, QmpError::Timeout { .. }), "{err}");
        assert_eq!(
            remaining,
            [
                Leftover::Device("nic1".into()),
                Leftover::Netdev("nic1".into())
            ]
        );
        assert!(q.state().netdevs.contains_key("nic1"));
        del(&monitor(&q, LONG), "nic1").unwrap();
        let m = q.finish();
        assert!(m.is_clean(), "{m:?}");
        let retry = m
            .log
            .iter()
            .find(|l| l.conn == 2 && l.name == "device_del")
            .expect("the device was still there: device_del again");
        assert!(!retry.ok, "QEMU refused it: an unplug is under way");
        drop(m);
        assert_eq!(k.open_fds(), 0);
    }
}

/// QEMU refuses device_del: the NIC is still there, and the error says so.
#[test]
fn a_refused_device_del_lists_what_remains() {
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(|c| {
            if c.conn == 1 && c.name == "device_del" {
                Act::Fail
            } else {
                Act::Normal
            }
        })
        .start();
    add_nic(&q, &k);
    let err = del(&monitor(&q, LONG), "nic1").unwrap_err();
    let (step, source, remaining, _) = step_parts(&err);
    assert_eq!(step, "device_del");
    assert!(source.is_refusal(), "{err}");
    assert_eq!(
        remaining,
        [
            Leftover::Device("nic1".into()),
            Leftover::Netdev("nic1".into())
        ]
    );
    assert!(
        err.to_string()
            .ends_with("may remain in QEMU: device nic1, netdev nic1"),
        "{err}"
    );
}

/// DEVICE_DELETED never reaches this connection (it went to an earlier
/// one): del still notices the device is gone, by asking.
#[test]
fn del_notices_a_device_gone_without_its_event() {
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .unplug_delay(Duration::from_millis(300))
        .no_deleted_events()
        .start();
    add_nic(&q, &k);
    let t = Instant::now();
    del(&monitor(&q, LONG), "nic1").unwrap();
    assert_within(t, Duration::from_millis(300) + SLACK, "del");
    let m = q.finish();
    assert!(m.is_clean(), "{m:?}");
    assert!(m.commands(1).contains(&"qom-list"));
}

/// Limits are per monitor: a small line limit is enforced on every
/// connection, including the rollback's.
#[test]
fn limits_apply_to_the_rollback_connection_too() {
    let k = Arc::new(FakeKernel::new());
    let q = Config::default()
        .act(|c| {
            if c.conn == 0 && c.name == "netdev_add" {
                Act::HangUp
            } else {
                Act::Normal
            }
        })
        .greet(|conn| {
            if conn == 0 {
                Greet::Normal
            } else {
                Greet::Endless
            }
        })
        .start();
    let mut mon = monitor(&q, LONG);
    mon.limits = Limits {
        max_line: 4096,
        ..Limits::default()
    };
    let err = add(&kt(&k), &mon, &opts(1, false)).unwrap_err();
    let (step, _, remaining, rollback) = step_parts(&err);
    assert_eq!(step, "netdev_add");
    assert!(
        matches!(rollback, Some(QmpError::LineTooLong { limit: 4096, .. })),
        "{err}"
    );
    // netdev_add was not executed, but vmtap cannot know that.
    assert_eq!(
        remaining,
        [
            Leftover::Netdev("nic1".into()),
            Leftover::FdName("nic1-0".into())
        ]
    );
    drop(q.finish());
    assert_eq!(k.open_fds(), 0);
}

#[test]
fn presence_reads_info_network_and_qom() {
    let q = FakeQemu::normal();
    let k = Arc::new(FakeKernel::new());
    add_nic(&q, &k);
    q.state().netdevs.insert("lone".into(), Vec::new());
    let mut c = Qmp::connect(&q.path, LONG).unwrap();
    let p = |c: &mut Qmp, id: &str| hotplug::presence(c, id).unwrap();
    assert_eq!(
        p(&mut c, "nic1"),
        hotplug::Presence {
            netdev: true,
            device: true,
            nic: true,
            attached_to: Some("nic1".into()),
        }
    );
    assert_eq!(
        p(&mut c, "lone"),
        hotplug::Presence {
            netdev: true,
            ..Default::default()
        }
    );
    assert_eq!(p(&mut c, "none"), hotplug::Presence::default());
    assert!(p(&mut c, "none").is_free());
    drop(c);
    q.finish();
}

// --- The command, and real taps (root, private network namespace) ---

/// Whether this runs as root; otherwise the test is skipped (a failure
/// under VMTAP_REQUIRE=1).
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ok = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !ok {
        common::skip("needs root: a real tap in a private network namespace");
    }
    ok
}

/// Whether link `name` is administratively up.
fn is_up(name: &str) -> bool {
    let line = common::ip(&["-o", "link", "show", "dev", name]);
    let flags = line.split('<').nth(1).and_then(|r| r.split('>').next());
    flags.is_some_and(|f| f.split(',').any(|x| x == "UP"))
}

/// On a tap that was attached to (not created by the add), the link
/// changes the add made are put back when plugging fails, and kept when
/// it succeeds.
#[test]
fn link_changes_on_an_attached_tap_are_undone_when_plugging_fails() {
    if !root() {
        return;
    }
    common::in_netns(|| {
        Tun::system()
            .create_persistent("hpx0", &vmtap::PersistentOptions::new().vnet_hdr(true))
            .unwrap();
        common::wait_unused("hpx0");
        assert!(!is_up("hpx0"));
        let q = Config::default()
            .act(|c| {
                if c.name == "device_add" {
                    Act::Fail
                } else {
                    Act::Normal
                }
            })
            .start();
        let mut o = opts(1, false);
        o.open = OpenOptions::new().name("hpx0").attach_existing(true);
        o.link = LinkOptions::new().up(true);
        let err = hotplug::add(&Tun::system(), &monitor(&q, LONG), &o).unwrap_err();
        assert!(err.to_string().contains("failed at device_add"), "{err}");
        assert!(err.to_string().contains("(host tap hpx0)"), "{err}");
        assert!(!is_up("hpx0"), "the attached tap was left up");
        assert!(common::exists("hpx0"));
        assert!(q.finish().is_clean());
        common::wait_unused("hpx0");

        let q = FakeQemu::normal();
        assert_eq!(
            hotplug::add(&Tun::system(), &monitor(&q, LONG), &o).unwrap(),
            "hpx0"
        );
        assert!(is_up("hpx0"), "a successful add keeps its changes");
        drop(q.finish());
        common::wait_unused("hpx0");
        vmtap::Tun::system().delete_persistent("hpx0").unwrap();
    });
}
