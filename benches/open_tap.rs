//! Library vs bare syscalls, interleaved in one process (run as root):
//!   cargo bench --bench open_tap
//!
//! Two cases, for 1, 4, 32 and 256 queues:
//! - attach: attach N queues to a persistent tap, then close them (no
//!   device is created or destroyed, so the library's own work shows);
//! - create: create a new tap with N queues, then close it (the kernel
//!   unregisters the device, ~16 ms).
//!
//! "bare" is what any tool must do at the least: per queue, open
//! /dev/net/tun and TUNSETIFF with the same flags. The library adds name
//! checks, TUNGETFEATURES, the existence check and TUNGETIFF verification.
//! Prints the median time of each and the ratio library / bare.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use vmtap::{OpenOptions, PersistentOptions, TunFlags, create_persistent, sys};

fn bare(name: &str, queues: usize, exclusive: bool) -> Vec<OwnedFd> {
    let mut flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR;
    flags |= if queues > 1 {
        TunFlags::MULTI_QUEUE
    } else {
        TunFlags::ONE_QUEUE
    };
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

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; nothing to list.
    }
    sys::unshare_network_namespace().expect("run as root: unshare(CLONE_NEWNET)");
    create_persistent(
        "bs0",
        &PersistentOptions {
            vnet_hdr: true,
            ..Default::default()
        },
    )
    .unwrap();
    create_persistent(
        "bm0",
        &PersistentOptions {
            multi_queue: true,
            vnet_hdr: true,
            ..Default::default()
        },
    )
    .unwrap();

    println!(
        "{:<7} {:>6} {:>6} {:>12} {:>12} {:>7}",
        "case", "queues", "rounds", "bare", "library", "ratio"
    );
    for case in ["attach", "create"] {
        for queues in [1usize, 4, 32, 256] {
            let rounds = match (case, queues) {
                ("attach", 256) | ("create", 32) => 41,
                ("create", 256) => 41,
                ("create", _) => 81,
                ("attach", 1) => 3001,
                _ => 1001,
            };
            let name = match (case, queues) {
                ("attach", 1) => "bs0",
                ("attach", _) => "bm0",
                _ => "bn0",
            };
            let lib_opts = OpenOptions::new()
                .name(name)
                .queues(queues)
                .attach_existing(case == "attach");
            let mut t_bare = Vec::new();
            let mut t_lib = Vec::new();
            for r in 0..rounds + 2 {
                let one = |library: bool| {
                    let t = Instant::now();
                    if library {
                        drop(lib_opts.open().unwrap());
                    } else {
                        drop(bare(name, queues, case == "create"));
                    }
                    t.elapsed()
                };
                // Alternate the order each round; drop the first two (warm-up).
                let (a, b) = if r % 2 == 0 {
                    let a = one(false);
                    (a, one(true))
                } else {
                    let b = one(true);
                    (one(false), b)
                };
                if r >= 2 {
                    t_bare.push(a);
                    t_lib.push(b);
                }
            }
            let (mb, ml) = (median(&mut t_bare), median(&mut t_lib));
            println!(
                "{:<7} {:>6} {:>6} {:>10.1}us {:>10.1}us {:>7.3}",
                case,
                queues,
                rounds,
                mb.as_secs_f64() * 1e6,
                ml.as_secs_f64() * 1e6,
                ml.as_secs_f64() / mb.as_secs_f64()
            );
        }
    }
    vmtap::delete_persistent("bs0").unwrap();
    vmtap::delete_persistent("bm0").unwrap();
}
