//! The whole command against a minimal C program, interleaved (run as root;
//! needs a C compiler, `cc`):
//!   cargo bench --bench command
//!
//! `vmtap open --name bq0 --queues 4 --attach-existing -- STAMP` on a
//! persistent multi-queue tap, against a minimal C program, built by this
//! bench, that makes the same syscalls as bare as they come (per queue:
//! open /dev/net/tun, TUNSETIFF with the tap's flags) and execs STAMP.
//! STAMP, also built here, prints CLOCK_MONOTONIC as its first act, so two
//! times are measured per run:
//! - time to exec: from before the spawn until STAMP runs (what a VM
//!   manager waits before QEMU starts);
//! - whole process: from before the spawn until the exit status is back.
//!
//! vmtap does more than the C program, on purpose: it reads the tap over
//! netlink (and its complete flags from sysfs) before binding, so that
//! attaching never creates or changes a tap, and checks every queue. It
//! runs in a private network and mount namespace with its own sysfs (the
//! bench re-executes itself under `unshare`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};
use vmtap::PersistentOptions;

const QUEUES: usize = 4;
const ROUNDS: usize = 301;

const MINIMAL_C: &str = r#"
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* minimal NAME QUEUES PROGRAM: per queue, open /dev/net/tun and TUNSETIFF
   (multi-queue, vnet header, no PI), then exec PROGRAM with the fds. */
int main(int argc, char **argv) {
    int queues = atoi(argv[2]);
    for (int i = 0; i < queues; i++) {
        int fd = open("/dev/net/tun", O_RDWR);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
        if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0)
            return 1;
    }
    execv(argv[3], argv + 3);
    return 1;
}
"#;

const STAMP_C: &str = r#"
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    printf("%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    return 0;
}
"#;

/// Compiles `source` into `dir/name` with `cc -O2`.
fn build_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("a C compiler (cc)");
    assert!(st.success(), "cc {name}.c");
    bin
}

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs `cmd`; returns (time to exec, whole process).
fn run(cmd: &mut Command) -> (Duration, Duration) {
    let start = now_ns();
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    let end = now_ns();
    assert!(out.status.success(), "{cmd:?}");
    let stamp: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (
        Duration::from_nanos(stamp - start),
        Duration::from_nanos(end - start),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    vmtap_testkit::reexec_in_private_namespace();
    let dir = std::env::temp_dir().join(format!("vmtap-bench-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let minimal = build_c(&dir, "minimal", MINIMAL_C);
    let stamp = build_c(&dir, "stamp", STAMP_C);
    let opts = PersistentOptions::new().multi_queue(true).vnet_hdr(true);
    vmtap::Tun::system()
        .create_persistent("bq0", &opts)
        .unwrap();
    let q = QUEUES.to_string();
    let mut vmtap =
        vmtap_testkit::vmtap_command(env!("CARGO_BIN_EXE_vmtap"), env!("CARGO_TARGET_TMPDIR"));
    vmtap
        .args([
            "open",
            "--name",
            "bq0",
            "--queues",
            &q,
            "--attach-existing",
            "--",
        ])
        .arg(&stamp);
    let mut bare = Command::new(&minimal);
    bare.args(["bq0", &q]).arg(&stamp);

    let (mut ve, mut vw, mut be, mut bw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS + 4 {
        let (v, b) = if r % 2 == 0 {
            let v = run(&mut vmtap);
            (v, run(&mut bare))
        } else {
            let b = run(&mut bare);
            (run(&mut vmtap), b)
        };
        if r >= 4 {
            ve.push(v.0);
            vw.push(v.1);
            be.push(b.0);
            bw.push(b.1);
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "vmtap open --queues {QUEUES} --attach-existing -- STAMP vs a minimal C program, {ROUNDS} rounds (medians)"
    );
    for (what, v, b) in [
        (
            "time to exec",
            vmtap_testkit::median(&mut ve),
            vmtap_testkit::median(&mut be),
        ),
        (
            "whole process",
            vmtap_testkit::median(&mut vw),
            vmtap_testkit::median(&mut bw),
        ),
    ] {
        println!(
            "{what:<14} minimal C {:>7.0}us   vmtap {:>7.0}us   ratio {:.3}",
            us(b),
            us(v),
            us(v) / us(b)
        );
    }
    vmtap::Tun::system().delete_persistent("bq0").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
