//! Memory read from a QMP peer is bounded: an endless line or a flood of
//! events is a clear error after at most a few MiB, never an abort on a
//! huge allocation or unbounded growth. Measured with a counting global
//! allocator (this binary only), per thread: the client runs on its own
//! thread, the fake monitor on another.

mod fakeqmp;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use fakeqmp::{Act, Config, Greet};
use vmtap::OpenOptions;
use vmtap::fake::FakeKernel;
use vmtap::hotplug::{HotplugError, HotplugOptions, Monitor, add_with};
use vmtap::link::LinkOptions;
use vmtap::qmp::{Limits, Qmp, QmpError};

const MIB: isize = 1 << 20;

struct Counting;

thread_local! {
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    let _ = NOW.try_with(|n| {
        let v = n.get() + delta;
        n.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: forwards to the system allocator; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` on a new thread; returns its result and the most heap it held
/// at once, above what it started with.
fn peak<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, isize) {
    std::thread::spawn(move || {
        let base = NOW.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let r = f();
        (r, PEAK.with(Cell::get) - base)
    })
    .join()
    .unwrap()
}

const LONG: Duration = Duration::from_secs(10);

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
            matches!(err, QmpError::LineTooLong { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(bytes < 3 * MIB, "{greet:?}/{act:?}: held {bytes} bytes");
        // The same with a small limit: the bound follows it.
        let path = q.path.clone();
        let limits = Limits {
            max_line: 4096,
            ..Limits::default()
        };
        let (err, bytes) = peak(move || {
            Qmp::connect_until(&path, std::time::Instant::now() + LONG, limits).unwrap_err()
        });
        assert!(matches!(err, QmpError::LineTooLong { .. }), "{err}");
        assert!(bytes < MIB / 4, "{greet:?}/{act:?}: held {bytes} bytes");
        q.finish();
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
        c.execute("echo", None).unwrap_err()
    });
    assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
    assert!(bytes < 8 * MIB, "held {bytes} bytes");
    q.finish();
}

/// The whole add against a monitor that floods events at one step and
/// sends an endless line on the next connection: a clear error, bounded
/// memory, and the names that may remain.
#[test]
fn hotplug_add_against_a_hostile_monitor_stays_bounded() {
    let q = Config::default()
        .act(|c| {
            if c.conn == 0 && c.name == "netdev_add" {
                Act::Flood
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
        let opts = HotplugOptions {
            id: "nic1".into(),
            open: OpenOptions::new().queues(2),
            link: LinkOptions::default(),
            driver: "virtio-net-pci".into(),
            mac: None,
        };
        add_with(k, &Monitor::new(path, LONG), &opts).unwrap_err()
    });
    assert!(bytes < 8 * MIB, "held {bytes} bytes");
    let msg = err.to_string();
    match &err {
        HotplugError::Step {
            source, rollback, ..
        } => {
            assert!(matches!(**source, QmpError::TooManyEvents { .. }), "{msg}");
            assert!(
                matches!(rollback.as_deref(), Some(QmpError::LineTooLong { .. })),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        msg.contains("may remain in QEMU: netdev nic1, fd name nic1-0, fd name nic1-1"),
        "{msg}"
    );
    q.finish();
}
