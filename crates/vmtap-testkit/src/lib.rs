//! Helpers for tests on real devices: each test runs on a thread that has
//! entered a fresh network namespace, so it never touches the host's
//! interfaces and tests can run in parallel.
//!
//! Needs CAP_SYS_ADMIN: run as root, or as a user inside `unshare -Urn`.
#![forbid(unsafe_code)]

pub mod fakeqmp;
pub mod frames;
pub mod helper;
pub mod ovs;

use std::process::Command;

/// Runs `f` on a new thread inside a new, empty network namespace.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        vmtap_sys::unshare_network_namespace()
            .expect("unshare(CLONE_NEWNET): run the tests as root (or under `unshare -Urn`)");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs a command in the calling thread's namespace; returns stdout, or
/// Err(stderr) when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `ip ARGS` in the calling thread's namespace; panics on failure.
pub fn ip(args: &[&str]) -> String {
    run("ip", args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

/// Names of the interfaces in the calling thread's namespace.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Whether `name` exists in the calling thread's namespace.
pub fn exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).is_ok()
}

/// Waits up to `secs` seconds for `cond` to hold, polling; panics with
/// `what` when it does not. For what the kernel does asynchronously (a
/// device unregisters once the last copy of its fds is closed, and a
/// sibling test's child may hold copies until it execs).
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "still not the case after {secs} s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (up to 30 s) until interface `name` is gone.
pub fn wait_gone(name: &str) {
    wait_until(&format!("{name} is gone"), 30, || !exists(name));
}

/// Waits (up to 30 s) until tap `name` has no queue attached: the fds of
/// its creator (or of a holder just dropped) can live on in a child that a
/// sibling test is forking, longer than the library's short grace under
/// load.
pub fn wait_unused(name: &str) {
    wait_until(&format!("{name} has no queue attached"), 30, || {
        vmtap::Tun::system()
            .status(name)
            .is_ok_and(|s| s.users() == 0)
    });
}

/// Whether a test that cannot run here must fail instead of skipping:
/// `scripts/test` (and so CI) sets VMTAP_REQUIRE=1 (VMTAP_REQUIRE_QEMU=1
/// is the older name).
pub fn skips_are_failures() -> bool {
    ["VMTAP_REQUIRE", "VMTAP_REQUIRE_QEMU"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

/// Skips a test that cannot run here, loudly (written past the test
/// harness's capture), or fails it when skips are failures.
pub fn skip(why: &str) {
    assert!(!skips_are_failures(), "test required but cannot run: {why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// Reports a test that this kernel cannot run (a feature it was built
/// without, such as bridge VLAN filtering), loudly, without failing: such
/// a test runs where the kernel has the feature (the guest-kernel lane).
/// `VMTAP_REQUIRE_KERNEL=1` makes it a failure, for that lane.
pub fn not_run_here(why: &str) {
    assert!(
        std::env::var("VMTAP_REQUIRE_KERNEL").as_deref() != Ok("1"),
        "test required but this kernel cannot run it: {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOT RUN (this kernel): {why}");
}

/// Makes bridge `name` with VLAN filtering; false (after
/// [`not_run_here`]) when this kernel cannot filter VLANs on a bridge.
pub fn vlan_filtering_bridge(name: &str) -> bool {
    let made = run(
        "ip",
        &["link", "add", name, "type", "bridge", "vlan_filtering", "1"],
    );
    if made.is_err() {
        not_run_here("bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)");
    }
    made.is_ok()
}

/// `ip -d link show dev NAME` in the calling thread's namespace.
pub fn ip_details(name: &str) -> String {
    ip(&["-d", "link", "show", "dev", name])
}

/// Runs a shell snippet with a fresh sysfs mounted in a private mount
/// namespace, so that /sys/class/net shows *this* network namespace
/// (a sysfs mounted elsewhere shows the namespace of whoever mounted it).
pub fn with_sysfs(script: &str) -> String {
    let full = format!("mount -t sysfs sysfs /sys && {script}");
    run(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &full],
    )
    .unwrap_or_else(|e| panic!("sysfs script {script:?}: {e}"))
}

/// Number of attached queues of `name`, counted in sysfs (`queues/tx-N`).
pub fn sysfs_tx_queues(name: &str) -> usize {
    with_sysfs(&format!("ls /sys/class/net/{name}/queues"))
        .split_whitespace()
        .filter(|q| q.starts_with("tx-"))
        .count()
}

/// `/sys/class/net/NAME/FILE` from this namespace's sysfs.
pub fn sysfs_read(name: &str, file: &str) -> String {
    with_sysfs(&format!("cat /sys/class/net/{name}/{file}"))
        .trim()
        .to_string()
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Creates a veth pair `a`/`b` in the calling thread's namespace.
pub fn veth(a: &str, b: &str) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
}

/// The test guest's kernel and initrd (built by scripts/build-guest into
/// $VMTAP_GUEST_DIR, default /var/tmp/vmtap-guest), or `None` to skip when
/// QEMU or the guest is missing, unless skips are failures (CI).
pub fn guest() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::path::PathBuf::from(
        std::env::var("VMTAP_GUEST_DIR").unwrap_or_else(|_| "/var/tmp/vmtap-guest".into()),
    );
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    let qemu = run("sh", &["-c", "command -v qemu-system-x86_64"]).is_ok();
    if qemu && kernel.exists() && initrd.exists() {
        return Some((kernel, initrd));
    }
    let why = format!(
        "qemu-system-x86_64 present: {qemu}; guest in {}: {} (build it with scripts/build-guest)",
        dir.display(),
        kernel.exists()
    );
    skip(&format!("QEMU test: {why}"));
    None
}

/// QEMU arguments that boot the test guest (TCG, 2 vCPUs, serial console
/// on stdout) with `vmtap.ip=IP` for the NICs it will get. No NIC is added
/// here: callers add `-netdev`/`-device`, or `-nic none` for hot-plug.
pub fn guest_qemu_args(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    ip: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push("-kernel".into());
    args.push(kernel.display().to_string());
    args.push("-initrd".into());
    args.push(initrd.display().to_string());
    args.push("-append".into());
    args.push(format!("console=ttyS0 panic=-1 quiet vmtap.ip={ip}"));
    args
}

/// A child process that is killed (and reaped) when dropped, even when
/// the test panics.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's output, read on a thread.
pub struct Console {
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line seen so far.
    pub log: Vec<String>,
}

impl Console {
    /// Reads `out` (and `err`, prefixed with "stderr: ") line by line.
    pub fn new(
        out: impl std::io::Read + Send + 'static,
        err: Option<Box<dyn std::io::Read + Send>>,
    ) -> Console {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        if let Some(err) = err {
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx2.send(format!("stderr: {l}"));
                }
            });
        }
        Console {
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits up to 120 s for a line containing `needle` that satisfies `ok`.
    pub fn wait_for(&mut self, needle: &str, ok: impl Fn(&str) -> bool) -> String {
        let secs = std::time::Duration::from_secs(120);
        self.wait_within(needle, ok, secs).unwrap_or_else(|| {
            panic!(
                "no console line with {needle:?}; it said:\n{}",
                self.log.join("\n")
            )
        })
    }

    /// Waits up to `limit` for a line containing `needle` that satisfies
    /// `ok`; `None` when none came.
    pub fn wait_within(
        &mut self,
        needle: &str,
        ok: impl Fn(&str) -> bool,
        limit: std::time::Duration,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) && ok(&l) {
                        return Some(l);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }
}

/// For benches: re-executes this program in a new network and mount
/// namespace with a sysfs of its own (as a tool on a host sees it),
/// unless it runs there already. Needs root.
pub fn reexec_in_private_namespace() {
    use std::os::unix::process::CommandExt;
    const MARK: &str = "VMTAP_BENCH_IN_NETNS";
    if std::env::var_os(MARK).is_some() {
        return;
    }
    let me = std::env::current_exe().unwrap();
    let err = Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t sysfs sysfs /sys && exec \"$0\" \"$@\"")
        .arg(me)
        .args(std::env::args().skip(1))
        .env(MARK, "1")
        .exec();
    panic!("run as root: unshare -n -m: {err}");
}

/// For benches: the median of `v` (sorted in place).
pub fn median(v: &mut [std::time::Duration]) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// This test process's directory of NIC records, under `tmp` (the test's
/// `CARGO_TARGET_TMPDIR`): never the host's `/run/vmtap`. Named by pid and
/// start time so that no run sees another's records.
pub fn state_dir(tmp: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        std::path::Path::new(tmp).join(format!("state-{}-{t}", std::process::id()))
    })
    .clone()
}

/// A command for the vmtap binary `bin` with its NIC records in
/// [`state_dir`]`(tmp)`.
pub fn vmtap_command(bin: &str, tmp: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("VMTAP_STATE_DIR", state_dir(tmp));
    c
}

/// [`vmtap_command`] with exactly the variables `vars` and PATH, and the
/// records in [`state_dir`]`(tmp)`: nothing of the test's own environment
/// leaks in (as for a NIC script run by Ganeti).
pub fn vmtap_command_with(bin: &str, tmp: &str, vars: &[(&str, &str)]) -> Command {
    let mut c = vmtap_command(bin, tmp);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("VMTAP_STATE_DIR", state_dir(tmp))
        .envs(vars.iter().copied());
    c
}

/// Asserts that a command exited 0, showing its exit code and stderr.
pub fn assert_success(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}
