//! The whole command against a minimal program, interleaved (run as root):
//!   cargo bench --bench command
//!
//! `vmtap open --name bq0 --queues 4 --attach-existing -- /bin/true` on a
//! persistent multi-queue tap, against this same binary run in "bare" mode:
//! a minimal Rust program that makes the same syscalls (per queue: open
//! /dev/net/tun, TUNSETIFF) and execs /bin/true. Prints the medians and
//! their ratio.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use vmtap::{PersistentOptions, TunFlags, sys};

const QUEUES: usize = 4;
const ROUNDS: usize = 301;

fn bare_child(name: &str, queues: usize) -> ! {
    let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR | TunFlags::MULTI_QUEUE;
    let fds: Vec<OwnedFd> = (0..queues)
        .map(|_| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            sys::tun_set_iff(f.as_fd(), name, flags).unwrap();
            sys::set_cloexec(f.as_fd(), false).unwrap();
            OwnedFd::from(f)
        })
        .collect();
    let err = Command::new("/bin/true").exec();
    drop(fds);
    panic!("exec /bin/true: {err}");
}

fn time(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let status = cmd.status().unwrap();
    let d = t.elapsed();
    assert!(status.success(), "{cmd:?}");
    d
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.get(1).map(String::as_str) == Some("--bare-child") {
        bare_child(&args[2], args[3].parse().unwrap());
    }
    sys::unshare_network_namespace().expect("run as root: unshare(CLONE_NEWNET)");
    let opts = PersistentOptions {
        multi_queue: true,
        vnet_hdr: true,
        ..Default::default()
    };
    vmtap::create_persistent("bq0", &opts).unwrap();
    let me = std::env::current_exe().unwrap();
    let q = QUEUES.to_string();
    let mut vmtap = Command::new(env!("CARGO_BIN_EXE_vmtap"));
    vmtap.args([
        "open",
        "--name",
        "bq0",
        "--queues",
        &q,
        "--attach-existing",
        "--",
        "/bin/true",
    ]);
    let mut bare = Command::new(&me);
    bare.args(["--bare-child", "bq0", &q]);

    let (mut tv, mut tb) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS + 4 {
        let (v, b) = if r % 2 == 0 {
            let v = time(&mut vmtap);
            (v, time(&mut bare))
        } else {
            let b = time(&mut bare);
            (time(&mut vmtap), b)
        };
        if r >= 4 {
            tv.push(v);
            tb.push(b);
        }
    }
    tv.sort();
    tb.sort();
    let (mv, mb) = (tv[tv.len() / 2], tb[tb.len() / 2]);
    println!(
        "vmtap open --queues {QUEUES} --attach-existing -- /bin/true vs a minimal program, {ROUNDS} rounds"
    );
    println!(
        "median: minimal {:.0}us, vmtap {:.0}us, ratio {:.3}",
        mb.as_secs_f64() * 1e6,
        mv.as_secs_f64() * 1e6,
        mv.as_secs_f64() / mb.as_secs_f64()
    );
    vmtap::delete_persistent("bq0").unwrap();
}
