//! Many taps in one network namespace (run as root):
//!   cargo bench -p vmtap-cli --bench many [-- naming|cli|delete]
//!
//! - `naming`, in-process: 4,096 taps created in one namespace, four ways
//!   taking turns (so each eighth of the namespace's growth is measured
//!   for all four at the same size): vmtap without a name (it picks a free
//!   `tapN`), vmtap with the caller's name, the floor (open `/dev/net/tun`
//!   and `TUNSETIFF` with the caller's name and the same flags, nothing
//!   else), and vmtap with the kernel's `tap%d` template (what naming cost
//!   before). Only the creation is timed; the taps are deleted between
//!   rounds by one link-group delete, untimed.
//! - `cli`: the same through the command: `vmtap create` (vmtap picks),
//!   `vmtap create NAME` (the floor for the command), `vmtap create tap%d`
//!   and `ip tuntap add mode tap` (the kernel picks), persistent taps.
//! - `delete`: 1,000 persistent taps removed by one `vmtap delete NAME...`
//!   (and by the library's `delete_persistent_many`), against 1,000 serial
//!   `ip link del NAME`. Creating them is not timed.
//!
//! Each eighth reports the median per tap; the ratio is vmtap without a
//! name over the caller-named floor. The bench re-executes itself in a
//! private network and mount namespace (`unshare`).

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmtap::sys::TunFlags;
use vmtap::{OpenOptions, PersistentOptions, Tun, VnetHdr};
use vmtap_sys::rtnl::Netlink;

const TAPS: usize = 4096;
const EIGHTH: usize = TAPS / 8;
const DELETE: usize = 1000;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(v: &mut [Duration]) -> Duration {
    vmtap_testkit::median(v)
}

/// Deletes every tun/tap link of the namespace in one batch (untimed
/// teardown): all into one link group, then one `RTM_DELLINK` of it.
fn delete_all_taps() {
    let mut nl = Netlink::open().unwrap();
    let links = nl.links().unwrap();
    let taps: Vec<u32> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("tun"))
        .map(|l| l.index)
        .collect();
    if taps.is_empty() {
        return;
    }
    for i in &taps {
        nl.set_group(*i, 4242).unwrap();
    }
    nl.delete_group(4242).unwrap();
    assert_eq!(nl.links().unwrap().len(), links.len() - taps.len());
}

fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = (TAPS as u64) * 2 + 256;
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c >= want) {
        return;
    }
    let max = cur.maximum.map_or(want, |m| m.max(want));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(max),
        },
    )
    .expect("raising RLIMIT_NOFILE (run as root)");
}

/// One row per eighth: the median per tap of each way, and the ratio of
/// the first (vmtap picks) to the second (the floor).
fn report(title: &str, labels: &[&str], samples: &mut [Vec<Vec<Duration>>]) {
    println!("{title}");
    print!("{:<12}", "taps");
    for l in labels {
        print!("{l:>20}");
    }
    println!("{:>14}", "picks/floor");
    for e in 0..8 {
        print!("{:<12}", format!("{}-{}", e * EIGHTH, (e + 1) * EIGHTH));
        let mut med = Vec::new();
        for way in samples.iter_mut() {
            let m = us(median(&mut way[e]));
            med.push(m);
            print!("{:>18.1}us", m);
        }
        println!("{:>14.3}", med[0] / med[1]);
    }
}

fn naming(rounds: usize) {
    raise_fd_limit();
    let tun = Tun::system();
    let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::VNET_HDR | TunFlags::ONE_QUEUE;
    let labels = [
        "vmtap, no name",
        "floor, named",
        "vmtap, named",
        "vmtap, tap%d",
    ];
    let mut samples: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); 8]; labels.len()];
    for round in 0..rounds {
        let mut taps = Vec::with_capacity(TAPS);
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(TAPS);
        for i in 0..TAPS {
            // The ways take turns; each round starts with another one.
            let way = (i + round) % labels.len();
            let name = format!("n{round}x{i}");
            let t = Instant::now();
            match way {
                0 => taps.push(tun.open(&OpenOptions::new().vnet_hdr(VnetHdr::On)).unwrap()),
                1 => {
                    let fd: OwnedFd = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/net/tun")
                        .unwrap()
                        .into();
                    vmtap_sys::tun_set_iff(fd.as_fd(), &name, flags | TunFlags::TUN_EXCL).unwrap();
                    fds.push(fd);
                }
                2 => taps.push(
                    tun.open(&OpenOptions::new().name(&name).vnet_hdr(VnetHdr::On))
                        .unwrap(),
                ),
                _ => taps.push(
                    tun.open(&OpenOptions::new().name("tap%d").vnet_hdr(VnetHdr::On))
                        .unwrap(),
                ),
            }
            let d = t.elapsed();
            samples[way][i / EIGHTH].push(d);
        }
        delete_all_taps();
        drop(taps);
        drop(fds);
    }
    report(
        &format!(
            "In-process: {TAPS} taps in one namespace, {rounds} rounds, median per tap in each eighth"
        ),
        &labels,
        &mut samples,
    );
}

fn vmtap_cmd() -> Command {
    let mut c =
        vmtap_testkit::vmtap_command(env!("CARGO_BIN_EXE_vmtap"), env!("CARGO_TARGET_TMPDIR"));
    c.stdout(Stdio::null()).stderr(Stdio::inherit());
    c
}

fn run_ok(mut c: Command) {
    let st = c.status().unwrap();
    assert!(st.success(), "{c:?}");
}

fn cli(rounds: usize) {
    let labels = [
        "vmtap create",
        "create NAME",
        "create tap%d",
        "ip tuntap add",
    ];
    let mut samples: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); 8]; labels.len()];
    for round in 0..rounds {
        for i in 0..TAPS {
            let way = (i + round) % labels.len();
            let name = format!("c{round}x{i}");
            let c = match way {
                0 => {
                    let mut c = vmtap_cmd();
                    c.arg("create");
                    c
                }
                1 => {
                    let mut c = vmtap_cmd();
                    c.args(["create", &name]);
                    c
                }
                2 => {
                    let mut c = vmtap_cmd();
                    c.args(["create", "tap%d"]);
                    c
                }
                _ => {
                    let mut c = Command::new("ip");
                    c.args(["tuntap", "add", "mode", "tap"]);
                    c
                }
            };
            let t = Instant::now();
            run_ok(c);
            samples[way][i / EIGHTH].push(t.elapsed());
        }
        delete_all_taps();
    }
    report(
        &format!(
            "Command: {TAPS} persistent taps in one namespace, {rounds} rounds, median per tap in each eighth"
        ),
        &labels,
        &mut samples,
    );
}

fn make_persistent(names: &[String]) {
    let tun = Tun::system();
    for n in names {
        tun.create_persistent(n, &PersistentOptions::new()).unwrap();
    }
}

fn delete(rounds: usize, serial_rounds: usize) {
    let names: Vec<String> = (0..DELETE).map(|i| format!("d{i}")).collect();
    let (mut cmd, mut lib, mut serial) = (Vec::new(), Vec::new(), Vec::new());
    let before = Netlink::open().unwrap().links().unwrap().len();
    for round in 0..rounds {
        make_persistent(&names);
        let mut c = vmtap_cmd();
        c.arg("delete").args(&names);
        let t = Instant::now();
        run_ok(c);
        cmd.push(t.elapsed());
        assert_eq!(Netlink::open().unwrap().links().unwrap().len(), before);

        make_persistent(&names);
        let t = Instant::now();
        let out = Tun::system().delete_persistent_many(&names);
        lib.push(t.elapsed());
        assert!(out.iter().all(|(_, r)| r.is_ok()));

        if round < serial_rounds {
            make_persistent(&names);
            let t = Instant::now();
            for n in &names {
                let mut c = Command::new("ip");
                c.args(["link", "del", n]);
                run_ok(c);
            }
            serial.push(t.elapsed());
        }
        assert_eq!(Netlink::open().unwrap().links().unwrap().len(), before);
    }
    let (c, l, s) = (median(&mut cmd), median(&mut lib), median(&mut serial));
    println!(
        "Delete {DELETE} persistent taps ({rounds} rounds; serial ip: {serial_rounds}), medians"
    );
    println!(
        "serial `ip link del` x{DELETE}   {:>10.3}s",
        s.as_secs_f64()
    );
    println!(
        "vmtap delete NAME x{DELETE}       {:>10.3}s   ratio {:.4}",
        c.as_secs_f64(),
        c.as_secs_f64() / s.as_secs_f64()
    );
    println!(
        "delete_persistent_many         {:>10.3}s   ratio {:.4}",
        l.as_secs_f64(),
        l.as_secs_f64() / s.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    vmtap_testkit::reexec_in_private_namespace();
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    if want("naming") {
        naming(5);
    }
    if want("cli") {
        cli(2);
    }
    if want("delete") {
        delete(5, 2);
    }
}
