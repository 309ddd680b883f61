//! Library vs bare syscalls, interleaved in one process (run as root):
//!   cargo bench --bench open_tap
//!
//! It runs in a private network namespace with that namespace's own sysfs
//! (it re-executes itself under `unshare -n -m`), as a tool running on a
//! host sees it.
//!
//! Opening and closing are timed apart, so that what the kernel does when
//! a device goes (an RCU wait of ~16 ms per unregistered tap) is not
//! mixed into the cost of opening:
//! - attach: attach N queues to a persistent tap (open), then close them
//!   (close: the tap stays);
//! - create: create a new tap with N queues (open), then close it (close:
//!   the kernel unregisters the device).
//!
//! Baselines, in the same run:
//! - "bare": per queue, open /dev/net/tun and TUNSETIFF with the tap's
//!   flags: the least any tool does (and what attaching without looking
//!   first does, which can create or change a tap);
//! - "floor" (attach only): one netlink RTM_GETLINK of the tap, then bare:
//!   the least a tool does that reads the tap before binding to it, as
//!   vmtap does so that attaching never creates or changes a tap.
//!
//! The library adds name checks, TUNGETFEATURES (create), the sysfs read of
//! the complete flags and a MAC/flags check per queue (attach). Prints the
//! median of each and the ratios.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use vmtap::{OpenOptions, PersistentOptions, Tun, TunFlags};
use vmtap_sys as sys;
use vmtap_sys::rtnl::Netlink;

/// Per queue: open /dev/net/tun and TUNSETIFF.
fn bare(name: &str, queues: usize, flags: TunFlags, exclusive: bool) -> Vec<OwnedFd> {
    (0..queues)
        .map(|k| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            let fl = if exclusive && k == 0 {
                flags | TunFlags::TUN_EXCL
            } else {
                flags
            };
            sys::tun_set_iff(f.as_fd(), name, fl).unwrap();
            OwnedFd::from(f)
        })
        .collect()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times `open`, then the drop of what it returned, apart.
fn timed<T>(open: impl FnOnce() -> T) -> (Duration, Duration) {
    let t = Instant::now();
    let held = open();
    let opened = t.elapsed();
    let t = Instant::now();
    drop(held);
    (opened, t.elapsed())
}

struct Row {
    case: &'static str,
    queues: usize,
    rounds: usize,
    /// Medians of (open, close) for bare, floor (attach only) and library.
    bare: (Duration, Duration),
    floor: Option<(Duration, Duration)>,
    lib: (Duration, Duration),
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; nothing to list.
    }
    vmtap_testkit::reexec_in_private_namespace();
    let sq = PersistentOptions::new().vnet_hdr(true);
    let mq = PersistentOptions::new().multi_queue(true).vnet_hdr(true);
    Tun::system().create_persistent("bs0", &sq).unwrap();
    Tun::system().create_persistent("bm0", &mq).unwrap();

    let mut rows = Vec::new();
    for case in ["attach", "create"] {
        for queues in [1usize, 4, 32, 256] {
            let rounds = match (case, queues) {
                ("attach", 1) => 3001,
                ("attach", 256) => 41,
                ("attach", _) => 1001,
                ("create", 256) | ("create", 32) => 41,
                _ => 81,
            };
            let name = match (case, queues) {
                ("attach", 1) => "bs0",
                ("attach", _) => "bm0",
                _ => "bn0",
            };
            let attach = case == "attach";
            // The tap's own flags (attach), or the library's (create).
            let mut flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR;
            if queues > 1 {
                flags |= TunFlags::MULTI_QUEUE;
            } else if !attach {
                flags |= TunFlags::ONE_QUEUE;
            }
            let lib_opts = OpenOptions::new()
                .name(name)
                .queues(queues)
                .attach_existing(attach);
            let variants = if attach { 3 } else { 2 };
            let mut times: Vec<(Vec<Duration>, Vec<Duration>)> =
                vec![(Vec::new(), Vec::new()); variants];
            for r in 0..rounds + 2 {
                for i in 0..variants {
                    // Rotate the order each round; drop two rounds (warm-up).
                    let v = (i + r) % variants;
                    let (o, c) = match v {
                        0 => timed(|| bare(name, queues, flags, !attach)),
                        1 if attach => timed(|| {
                            let link = Netlink::open().unwrap().link(name).unwrap();
                            assert!(link.is_some());
                            bare(name, queues, flags, false)
                        }),
                        _ => timed(|| lib_opts.open().unwrap()),
                    };
                    if r >= 2 {
                        times[v].0.push(o);
                        times[v].1.push(c);
                    }
                }
            }
            let mut meds: Vec<(Duration, Duration)> = times
                .iter_mut()
                .map(|(o, c)| (vmtap_testkit::median(o), vmtap_testkit::median(c)))
                .collect();
            let lib = meds.pop().unwrap();
            let floor = if attach { meds.pop() } else { None };
            rows.push(Row {
                case,
                queues,
                rounds,
                bare: meds[0],
                floor,
                lib,
            });
        }
    }

    println!("open: from the first open until every queue is bound (medians, µs)");
    println!(
        "{:<7} {:>6} {:>6} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "case", "queues", "rounds", "bare", "floor", "library", "lib/bare", "lib/floor"
    );
    for r in &rows {
        let floor = r.floor.map(|f| f.0);
        println!(
            "{:<7} {:>6} {:>6} {:>10.1} {:>10} {:>10.1} {:>9.3} {:>9}",
            r.case,
            r.queues,
            r.rounds,
            us(r.bare.0),
            floor.map_or("-".into(), |f| format!("{:.1}", us(f))),
            us(r.lib.0),
            us(r.lib.0) / us(r.bare.0),
            floor.map_or("-".into(), |f| format!("{:.3}", us(r.lib.0) / us(f))),
        );
    }
    println!();
    println!("close: dropping the fds (create: the kernel unregisters the tap) (medians, µs)");
    println!(
        "{:<7} {:>6} {:>10} {:>10} {:>10} {:>9}",
        "case", "queues", "bare", "floor", "library", "lib/bare"
    );
    for r in &rows {
        println!(
            "{:<7} {:>6} {:>10.1} {:>10} {:>10.1} {:>9.3}",
            r.case,
            r.queues,
            us(r.bare.1),
            r.floor.map_or("-".into(), |f| format!("{:.1}", us(f.1))),
            us(r.lib.1),
            us(r.lib.1) / us(r.bare.1)
        );
    }
    vmtap::Tun::system().delete_persistent("bs0").unwrap();
    vmtap::Tun::system().delete_persistent("bm0").unwrap();
}
