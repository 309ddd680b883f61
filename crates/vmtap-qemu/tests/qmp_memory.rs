#![forbid(unsafe_code)]

//! Memory held for a QMP peer is bounded by the limits, whatever it sends:
//! an endless line or a flood of events is a clear error, and the worst
//! lines within the limits (a `[0,0,...]` array, objects nested
//! `{"a":{"a":...` as deep as serde_json would parse, in events kept or
//! dropped, in replies taken or dropped) cost at most what
//! [`bound`] derives from the limits: the line buffer, a copy of one line,
//! the parser's scratch, and the kept events. Measured with a counting
//! global allocator (this binary only), per thread: the client runs on its
//! own thread, the fake monitor on another.

use vmtap_testkit::fakeqmp;

use std::sync::Arc;
use std::time::Duration;

use fakeqmp::{Act, Config, Greet};
use serde::de::IgnoredAny;
use vmtap::OpenOptions;
use vmtap::fake::FakeKernel;

/// The context of a fake kernel.
fn kt(k: &std::sync::Arc<FakeKernel>) -> vmtap::Tun {
    vmtap::Tun::with(k.clone(), vmtap::DevicePaths::default())
}
use vmtap_qemu::hotplug::{self, HotplugError, HotplugOptions, Monitor};
use vmtap_qemu::qmp::{Deadline, Limits, Qmp, QmpError};
use vmtap_sys::counting_alloc::{CountingAlloc, thread_peak};

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

/// Runs `f` on a new thread; returns its result and the most heap it held
/// at once, above what it started with.
fn peak<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, isize) {
    thread_peak(f)
}

const LONG: Duration = Duration::from_secs(10);

/// The most heap a connection may hold with `limits`: the line buffer
/// (one line and its newline), a copy of one line (a kept event, or the
/// `return` waited for), the parser's scratch (at most a line), the kept
/// events with their bookkeeping, and 64 KiB for the rest (the connection,
/// commands, messages).
fn bound(l: Limits) -> isize {
    (3 * (l.max_line + 1) + l.max_event_bytes + l.max_events * 128 + (64 << 10)) as isize
}

/// JSON text of exactly `len` bytes: `[0,0,...]`, or objects nested
/// `depth` deep (within serde_json's recursion limit of 128) in an array.
fn payload(len: usize, nested: bool) -> String {
    let unit = if nested {
        let depth = 100;
        format!("{}0{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        "0".to_string()
    };
    let mut s = String::from("[");
    s.push_str(&unit);
    // Room for ",UNIT" and the closing "]".
    while s.len() + 1 + unit.len() < len {
        s.push(',');
        s.push_str(&unit);
    }
    while s.len() + 1 < len {
        s.push(' ');
    }
    s.push(']');
    assert_eq!(s.len(), len);
    s
}

/// A line of exactly `max_line` bytes: `prefix`, a payload, `suffix`.
fn line(max_line: usize, prefix: &str, suffix: &str, nested: bool) -> String {
    let s = format!(
        "{prefix}{}{suffix}",
        payload(max_line - prefix.len() - suffix.len(), nested)
    );
    assert_eq!(s.len(), max_line);
    s
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn an_endless_line_is_an_error_within_the_line_limit() {
    for (greet, act) in [(Greet::Endless, Act::Normal), (Greet::Normal, Act::Endless)] {
        let q = Config::default()
            .greet(move |_| greet)
            .act(move |c| if c.n == 0 { act } else { Act::Normal })
            .start();
        let path = q.path.clone();
        let (err, bytes) = peak(move || Qmp::connect(&path, LONG).unwrap_err());
        assert!(
            matches!(err, QmpError::LineTooLong { limit, .. } if limit == 256 << 10),
            "{err}"
        );
        let b = bound(Limits::default());
        assert!(
            bytes < b,
            "{greet:?}/{act:?}: held {bytes} bytes, bound {b}"
        );
        // The same with a small limit: the bound follows it.
        let path = q.path.clone();
        let limits = Limits {
            max_line: 4096,
            ..Limits::default()
        };
        let (err, bytes) =
            peak(move || Qmp::connect_until(&path, Deadline::after(LONG), limits).unwrap_err());
        assert!(matches!(err, QmpError::LineTooLong { .. }), "{err}");
        let small = (3 * 4097 + (64 << 10)) as isize;
        assert!(bytes < small, "{greet:?}/{act:?}: held {bytes} bytes");
        q.finish();
    }
}

/// The worst lines within the limits, each kind many times over: events
/// nobody waits for and replies to nobody (before the greeting and
/// after), events waited for up to the caps, and a reply waited for whose
/// `return` is not what the command returns. None costs more than the
/// bound; and a kept event costs what it weighs, not what a parsed value
/// would (about 16 times a `[0,...]` array, 100 times nested objects).
#[test]
fn the_worst_lines_cost_no_more_than_the_limits_say() {
    let limits = Limits::default();
    // Lines end with "\r\n": with the "\r", exactly the limit.
    let max = limits.max_line - 1;
    for nested in [false, true] {
        let dropped_event = line(
            max,
            "{\"event\": \"BLOCK_IO_ERROR\", \"data\": ",
            "}",
            nested,
        );
        let dropped_reply = line(max, "{\"id\": \"other\", \"return\": ", "}", nested);
        let kept_event = line(
            max,
            "{\"event\": \"DEVICE_DELETED\", \"data\": ",
            "}",
            nested,
        );
        let ret = leak(payload(max - 200, nested));
        let before_greeting = leak(format!(
            "{}{}{}",
            format!("{dropped_reply}\r\n{dropped_event}\r\n").repeat(4),
            fakeqmp::GREETING,
            format!("{dropped_event}\r\n").repeat(4),
        ));
        let q = Config::default()
            .greet(move |_| Greet::Raw(before_greeting))
            .noise(&format!("{dropped_event}\r\n{dropped_reply}"), 4)
            .act(move |c| {
                if c.name == "human-monitor-command" || c.name == "qom-list" {
                    Act::Return(ret)
                } else {
                    Act::Normal
                }
            })
            .start();
        let path = q.path.clone();
        let ((dropped, unexpected, ignored), bytes) = peak(move || {
            let mut c = Qmp::connect_until(&path, Deadline::after(LONG), limits).unwrap();
            let _: IgnoredAny = c.execute("echo", None).unwrap();
            // What hot-plug asks, with typed replies: a clear error.
            let unexpected = vmtap_qemu::hotplug::presence(&mut c, "nic1").unwrap_err();
            // A reply whose return is ignored costs no parsing.
            let ignored = c.execute::<IgnoredAny>(
                "qom-list",
                Some(serde_json::json!({"path": "/machine/peripheral"})),
            );
            (c.dropped_events(), unexpected, ignored.is_ok())
        });
        let b = bound(limits);
        assert!(bytes < b, "nested {nested}: held {bytes} bytes, bound {b}");
        assert!(dropped >= 8, "{dropped}");
        assert!(
            matches!(unexpected, QmpError::Unexpected { .. }),
            "{unexpected}"
        );
        assert!(ignored);
        q.finish();

        // Kept events up to the caps.
        let q = Config::default().noise(&kept_event, 2).start();
        let q2 = q.path.clone();
        let (err, bytes) = peak(move || {
            let mut c = Qmp::connect_until(&q2, Deadline::after(LONG), limits).unwrap();
            c.keep_events(&["DEVICE_DELETED"]);
            loop {
                if let Err(e) = c.execute::<IgnoredAny>("echo", None) {
                    break e;
                }
            }
        });
        assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
        assert!(
            bytes < b,
            "nested {nested}: held {bytes} bytes with kept events, bound {b}"
        );
        q.finish();
        eprintln!("nested {nested}: at most {bytes} bytes held, bound {b}");
        // The bound does tell: one such event parsed into a Value (as
        // before) costs more than it.
        let (_, parsed) = peak(move || serde_json::from_str::<serde_json::Value>(&kept_event));
        assert!(parsed > b, "nested {nested}: a Value costs {parsed} bytes");
        eprintln!("nested {nested}: one line as a Value: {parsed} bytes");
    }
}

#[test]
fn an_event_flood_is_an_error_within_the_event_caps() {
    let q = Config::default()
        .act(|c| if c.n == 1 { Act::Flood } else { Act::Normal })
        .start();
    let path = q.path.clone();
    let (err, bytes) = peak(move || {
        let mut c = Qmp::connect(&path, LONG).unwrap();
        c.keep_events(&["RTC_CHANGE"]);
        c.execute::<IgnoredAny>("echo", None).unwrap_err()
    });
    assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
    let b = bound(Limits::default());
    assert!(bytes < b, "held {bytes} bytes, bound {b}");
    q.finish();

    // Events nobody waits for are dropped as they come: the wait ends at
    // its deadline, holding next to nothing.
    let q = Config::default()
        .act(|c| if c.n == 1 { Act::Flood } else { Act::Normal })
        .start();
    let path = q.path.clone();
    let ((err, dropped), bytes) = peak(move || {
        let mut c = Qmp::connect(&path, LONG).unwrap();
        c.set_deadline(Deadline::after(Duration::from_millis(500)));
        let e = c.execute::<IgnoredAny>("echo", None).unwrap_err();
        (e, c.dropped_events())
    });
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(dropped > 0);
    assert!(bytes < (256 << 10) + (64 << 10) + 1, "held {bytes} bytes");
    q.finish();
}

/// The whole add against a monitor that sends an endless line at one step
/// and on the next connection: a clear error, bounded memory, what may
/// remain and the tap that stays.
#[test]
fn hotplug_add_against_a_hostile_monitor_stays_bounded() {
    let q = Config::default()
        .act(|c| {
            if c.conn == 0 && c.name == "netdev_add" {
                Act::Endless
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
    let path = q.path.clone();
    let (err, bytes) = peak(move || {
        let k = Arc::new(FakeKernel::new());
        let opts = HotplugOptions::new("nic1").open(OpenOptions::new().name("tap0").queues(2));
        hotplug::add(&kt(&k), &Monitor::new(path, LONG), &opts).unwrap_err()
    });
    let b = bound(Limits::default());
    assert!(bytes < b, "held {bytes} bytes, bound {b}");
    let msg = err.to_string();
    match &err {
        HotplugError::Step {
            source, rollback, ..
        } => {
            assert!(matches!(**source, QmpError::LineTooLong { .. }), "{msg}");
            assert!(
                matches!(rollback.as_deref(), Some(QmpError::LineTooLong { .. })),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        msg.contains(
            "may remain in QEMU: netdev nic1, fd name nic1-0, fd name nic1-1; the tap tap0 stays"
        ),
        "{msg}"
    );
    q.finish();
}
