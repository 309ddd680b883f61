//! Private Open vSwitch daemons for tests: an `ovsdb-server` and an
//! `ovs-vswitchd` (userspace datapath: no kernel module), with every
//! OVS directory in a temporary directory of their own, running in the
//! calling thread's network namespace (see [`crate::in_netns`]: children
//! inherit the thread's namespace, so the bridges' devices and the ports'
//! interfaces are the test's own).
//!
//! ```no_run
//! vmtap_testkit::in_netns(|| {
//!     let Some(ovs) = vmtap_testkit::ovs::OvsDaemons::start() else {
//!         return; // skipped: Open vSwitch is not installed
//!     };
//!     ovs.add_bridge("br0");
//!     assert_eq!(ovs.vsctl(&["list-br"]), "br0");
//! });
//! ```

use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a daemon may take to start, and ovs-vsctl to answer.
const START_SECS: u64 = 30;
/// How long a daemon may take to stop after SIGTERM (then SIGKILL).
const STOP_SECS: u64 = 10;

/// Where the daemons live when `PATH` lacks sbin.
const SBIN: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The OVS programs, found.
#[derive(Debug, Clone)]
struct Programs {
    vsctl: PathBuf,
    tool: PathBuf,
    server: PathBuf,
    vswitchd: PathBuf,
    schema: PathBuf,
}

/// The path of `name` in `PATH` or an sbin directory, if it is there.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn programs() -> Result<Programs, String> {
    let find = |name: &str| find_program(name).ok_or_else(|| format!("no {name}"));
    let schema = std::env::var_os("OVS_PKGDATADIR")
        .map_or_else(|| PathBuf::from("/usr/share/openvswitch"), PathBuf::from)
        .join("vswitch.ovsschema");
    if !schema.is_file() {
        return Err(format!("no {}", schema.display()));
    }
    Ok(Programs {
        vsctl: find("ovs-vsctl")?,
        tool: find("ovsdb-tool")?,
        server: find("ovsdb-server")?,
        vswitchd: find("ovs-vswitchd")?,
        schema,
    })
}

/// The real `ovs-vsctl`, or `None` after [`crate::skip`] when Open
/// vSwitch is not installed.
pub fn ovs_vsctl() -> Option<PathBuf> {
    match programs() {
        Ok(p) => Some(p.vsctl),
        Err(why) => {
            skip_why(&why);
            None
        }
    }
}

/// The datapath bridges are made on: `system` in the guest-kernel lane or
/// when `VMTAP_OVS_DATAPATH` says so, else `netdev`.
pub fn datapath() -> String {
    match std::env::var("VMTAP_OVS_DATAPATH") {
        Ok(d) if !d.is_empty() => d,
        _ if std::env::var("VMTAP_GUEST_KERNEL").as_deref() == Ok("1") => "system".into(),
        _ => "netdev".into(),
    }
}

fn skip_why(why: &str) {
    crate::skip(&format!(
        "Open vSwitch is not installed ({why}): scripts/install-deps installs openvswitch-switch"
    ));
}

/// A private `ovsdb-server` (and, unless started with
/// [`OvsDaemons::start_db_only`], an `ovs-vswitchd`) in a temporary
/// directory. Dropping it stops both (by the pids in their pid files,
/// waiting for them to exit) and removes the directory.
#[derive(Debug)]
pub struct OvsDaemons {
    dir: PathBuf,
    programs: Programs,
    vswitchd: bool,
}

impl OvsDaemons {
    /// Starts `ovsdb-server` and `ovs-vswitchd` in the calling thread's
    /// network namespace; `None` after [`crate::skip`] when Open vSwitch
    /// is not installed. Panics when a daemon does not start in time.
    pub fn start() -> Option<Self> {
        Self::start_with(true)
    }

    /// Starts `ovsdb-server` alone: the database takes changes, but no
    /// `ovs-vswitchd` applies them (so `ovs-vsctl` waits for it, unless
    /// `--no-wait`).
    pub fn start_db_only() -> Option<Self> {
        Self::start_with(false)
    }

    fn start_with(vswitchd: bool) -> Option<Self> {
        let programs = match programs() {
            Ok(p) => p,
            Err(why) => {
                skip_why(&why);
                return None;
            }
        };
        // The value is built first, so that a panic below stops whatever
        // was started and removes the directory.
        let daemons = Self {
            dir: private_dir(),
            programs,
            vswitchd,
        };
        for sub in ["run", "db", "log", "etc"] {
            std::fs::create_dir(daemons.dir.join(sub)).unwrap();
        }
        let db = daemons.dir.join("db/conf.db");
        let p = &daemons.programs;
        daemons.run_bounded(
            "ovsdb-tool create",
            daemons
                .command(&p.tool)
                .arg("create")
                .arg(&db)
                .arg(&p.schema),
        );
        let run = daemons.dir.join("run");
        let log = daemons.dir.join("log");
        daemons.run_bounded(
            "ovsdb-server",
            daemons
                .command(&p.server)
                .arg(&db)
                .arg(arg("--remote=punix:", &daemons.db_path()))
                .arg("--remote=db:Open_vSwitch,Open_vSwitch,manager_options")
                .arg(arg("--pidfile=", &run.join("ovsdb-server.pid")))
                .arg(arg("--unixctl=", &run.join("ovsdb-server.ctl")))
                .arg(arg("--log-file=", &log.join("ovsdb-server.log")))
                .args(["--detach", "-vconsole:off", "-vsyslog:off"]),
        );
        crate::wait_until("ovsdb-server listens", START_SECS, || {
            daemons.db_path().exists()
        });
        daemons.vsctl(&["--no-wait", "init"]);
        if vswitchd {
            daemons.run_bounded(
                "ovs-vswitchd",
                daemons
                    .command(&p.vswitchd)
                    .arg(arg("unix:", &daemons.db_path()))
                    .arg(arg("--pidfile=", &run.join("ovs-vswitchd.pid")))
                    .arg(arg("--unixctl=", &run.join("ovs-vswitchd.ctl")))
                    .arg(arg("--log-file=", &log.join("ovs-vswitchd.log")))
                    .args(["--detach", "-vconsole:off", "-vsyslog:off"]),
            );
        }
        Some(daemons)
    }

    /// The private directory (`run`, `db`, `log`, `etc` under it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database socket (`run/db.sock`).
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("run/db.sock")
    }

    /// The real `ovs-vsctl`.
    pub fn ovs_vsctl(&self) -> &Path {
        &self.programs.vsctl
    }

    /// Runs `ovs-vsctl ARGS` on this database (with a 30 s `--timeout`);
    /// its standard output without the final newlines, or its standard
    /// error when it fails.
    pub fn try_vsctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(&self.programs.vsctl)
            .arg(format!("--timeout={START_SECS}"))
            .arg(arg("--db=unix:", &self.db_path()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ovs-vsctl: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim_end_matches('\n')
                .to_string())
        } else {
            Err(format!(
                "ovs-vsctl {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ))
        }
    }

    /// [`OvsDaemons::try_vsctl`]; panics when it fails.
    pub fn vsctl(&self, args: &[&str]) -> String {
        self.try_vsctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Adds a bridge and, with ovs-vswitchd, waits until it has created
    /// it: on the userspace datapath (`datapath_type=netdev`), or on the
    /// kernel's (`system`, the openvswitch module) in the guest-kernel
    /// lane (`VMTAP_GUEST_KERNEL=1`) or with `VMTAP_OVS_DATAPATH=system`.
    pub fn add_bridge(&self, name: &str) {
        let mut args = vec![];
        if !self.vswitchd {
            args.push("--no-wait");
        }
        let datapath = format!("datapath_type={}", datapath());
        args.extend(["--", "add-br", name, "--", "set", "Bridge", name, &datapath]);
        self.vsctl(&args);
    }

    /// The last lines of a daemon's log, for a failure message.
    pub fn log_tail(&self, daemon: &str) -> String {
        let log =
            std::fs::read_to_string(self.dir.join(format!("log/{daemon}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A command with the OVS directories set to the private ones, and no
    /// standard input.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (var, sub) in [
            ("OVS_RUNDIR", "run"),
            ("OVS_DBDIR", "db"),
            ("OVS_LOGDIR", "log"),
            ("OVS_SYSCONFDIR", "etc"),
        ] {
            cmd.env(var, self.dir.join(sub));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a command that ends by itself (a daemon with `--detach` ends
    /// when the daemon is ready), with a deadline; its output goes to a
    /// file, so that a daemon never holds a pipe of ours. Panics when it
    /// fails or takes too long.
    fn run_bounded(&self, what: &str, cmd: &mut Command) {
        let out_path = self.dir.join(format!("log/{}.out", what.replace(' ', "-")));
        let out = std::fs::File::create(&out_path).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let mut child = crate::KillOnDrop(child);
        let mut status = None;
        crate::wait_until(&format!("{what} has finished"), START_SECS, || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        });
        let status = status.unwrap();
        assert!(
            status.success(),
            "{what}: {status}: {}",
            std::fs::read_to_string(&out_path).unwrap_or_default()
        );
    }
}

impl Drop for OvsDaemons {
    fn drop(&mut self) {
        // The switch first: it leaves the database cleanly.
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            stop(&self.dir, daemon);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `PREFIX` followed by a path.
fn arg(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut a = std::ffi::OsString::from(prefix);
    a.push(path);
    a
}

/// A new directory (mode 0700) under the system temp dir.
fn private_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vmtap-ovs-{}-{n}", std::process::id()));
    // Left over by an earlier process with this pid.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&d)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

/// Stops the daemon whose pid is in `DIR/run/DAEMON.pid`: SIGTERM, then
/// after a while SIGKILL, and waits until it has exited. Never panics
/// (this runs in `drop`); says on stderr when a daemon would not stop.
fn stop(dir: &Path, daemon: &str) {
    let pidfile = dir.join(format!("run/{daemon}.pid"));
    let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return;
    };
    for (signal, secs) in [(Signal::TERM, STOP_SECS), (Signal::KILL, STOP_SECS)] {
        if !running(pid, dir) {
            return;
        }
        let _ = rustix::process::kill_process(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while running(pid, dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if running(pid, dir) {
        let _ = writeln!(
            std::io::stderr(),
            "{daemon} (pid {}) of {} would not stop",
            pid.as_raw_nonzero(),
            dir.display()
        );
    }
}

/// Whether `pid` is a live (not zombie) process started for `dir`: its
/// command line names the directory, so that a reused pid is never taken
/// for the daemon's.
fn running(pid: Pid, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{}", pid.as_raw_nonzero()));
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    // A zombie has an empty command line.
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}
