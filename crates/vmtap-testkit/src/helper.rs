//! Running a bridge helper (vmtap's or QEMU's) as QEMU does, for tests:
//! a private `/etc/qemu` in a private mount namespace (nothing of the host
//! changes, even when the host has no `/etc/qemu`), copies of a binary
//! installed setuid root or with `cap_net_admin+ep` in a directory every
//! user can reach, and the exchange itself (a socketpair, the reply's
//! bytes and fds, the exit code and stderr), with a deadline.

use std::io::{IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags, SocketType,
    recvmsg, socketpair,
};

/// The uid and gid tests run unprivileged helpers as (`nobody`).
pub const NOBODY: u32 = 65534;

/// Debian's helper (package qemu-system-common).
pub const QEMU_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";

/// Whether this process is root (setuid copies and private mounts need
/// it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A directory under the system's temporary directory, mode 0755 (every
/// user can reach what is in it), removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("vmtap-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(d)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Gives it to user and group `id` (needs root).
    pub fn give_to(&self, id: u32) {
        rustix::fs::chown(
            &self.0,
            Some(rustix::process::Uid::from_raw(id)),
            Some(rustix::process::Gid::from_raw(id)),
        )
        .unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a helper copy gets its privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Owned by root, mode 4755 (`install -m 4755`).
    Setuid,
    /// Mode 0755 with `setcap cap_net_admin+ep`.
    FileCapability,
    /// Mode 0755, nothing else (as Debian ships QEMU's).
    None,
}

/// A copy of a helper binary in a directory of its own.
pub struct Installed {
    _dir: TempDir,
    /// The copy.
    pub path: PathBuf,
}

/// Copies `bin` into a fresh directory and gives it `how` (needs root).
pub fn install(bin: &Path, how: Privilege) -> Installed {
    let dir = TempDir::new("helper");
    let path = dir.path().join(bin.file_name().unwrap());
    copy_in_child(bin, &path);
    rustix::fs::chown(
        &path,
        Some(rustix::process::Uid::ROOT),
        Some(rustix::process::Gid::ROOT),
    )
    .unwrap();
    let mode = if how == Privilege::Setuid {
        0o4755
    } else {
        0o755
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    if how == Privilege::FileCapability {
        let out = Command::new("setcap")
            .arg("cap_net_admin+ep")
            .arg(&path)
            .output()
            .expect("setcap (libcap2-bin) is needed");
        assert!(
            out.status.success(),
            "setcap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Installed { _dir: dir, path }
}

/// The files of a private `/etc/qemu`.
pub struct EtcQemu {
    files: TempDir,
    scratch: TempDir,
    bin: TempDir,
}

/// The script that makes the private `/etc/qemu`; `$1` a scratch
/// directory, `$2` the files, then the command.
const PRIVATE_ETC: &str = r#"set -e
T=$1 SRC=$2; shift 2
mount -t tmpfs tmpfs "$T"
if [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    mknod -m 666 "$T/tun" c 10 200
    mount --bind "$T/tun" /dev/net/tun
fi
if [ ! -d /etc/qemu ]; then
    mkdir "$T/upper" "$T/work"
    mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/upper,workdir=$T/work" /etc
    mkdir /etc/qemu
fi
mount -t tmpfs -o mode=0755 tmpfs /etc/qemu
cp -a "$SRC/." /etc/qemu/
exec "$@""#;

/// Writes an executable shell script `name` with `body` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    let src = dir.join(format!(".{name}.src"));
    std::fs::write(&src, format!("#!/bin/sh\n{body}\n")).unwrap();
    copy_in_child(&src, &p);
    std::fs::remove_file(&src).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Copies `from` to `to` in a child process (`cp`), so that the only fd
/// ever open for writing on `to` is the child's: written in this process,
/// a thread's concurrent fork could inherit it until that child execs, and
/// running `to` meanwhile fails with `ETXTBSY`.
fn copy_in_child(from: &Path, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

impl Default for EtcQemu {
    fn default() -> Self {
        Self::new()
    }
}

impl EtcQemu {
    /// An empty `/etc/qemu` (no `bridge.conf`).
    pub fn new() -> Self {
        Self {
            files: TempDir::new("etc-qemu"),
            scratch: TempDir::new("etc-scratch"),
            bin: TempDir::new("etc-bin"),
        }
    }

    /// `/etc/qemu/bridge.conf` with `text`.
    pub fn with_acl(text: &str) -> Self {
        let e = Self::new();
        e.file("bridge.conf", text, 0o644, 0);
        e
    }

    /// `/etc/qemu/NAME` with `text`, this mode and owner.
    pub fn file(&self, name: &str, text: &str, mode: u32, uid: u32) -> &Self {
        let p = self.files.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        rustix::fs::chown(
            &p,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(uid)),
        )
        .unwrap();
        self
    }

    /// `argv` run in a private mount namespace whose `/etc/qemu` is a
    /// tmpfs holding exactly these files (when the host has no
    /// `/etc/qemu`, `/etc` is first covered by an overlay in which it is
    /// made), and whose `/dev/net/tun` is mode 0666 as Debian's udev makes
    /// it (a node of the same device is bound over it when the host's is
    /// not, as in a container without udev). Inherits the calling
    /// thread's network namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            PRIVATE_ETC,
            "sh",
        ])
        .arg(self.scratch.path())
        .arg(self.files.path())
        .args(argv);
        c
    }
}

impl EtcQemu {
    /// An executable script that runs `argv` and its own arguments as
    /// [`EtcQemu::command`] does: a program to give where a path is asked
    /// (a bridge helper for `vmtap open --helper`). The words of `argv`
    /// must not contain `'`.
    pub fn wrapper(&self, argv: &[&str]) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let quote = |w: &str| {
            assert!(!w.contains('\''), "{w}");
            format!("'{w}'")
        };
        let words: Vec<String> = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            PRIVATE_ETC,
            "sh",
        ]
        .iter()
        .map(|w| quote(w))
        .chain([
            quote(&self.scratch.path().display().to_string()),
            quote(&self.files.path().display().to_string()),
        ])
        .chain(argv.iter().map(|w| quote(w)))
        .collect();
        let name = format!("wrapper-{}", N.fetch_add(1, Ordering::Relaxed));
        script(
            self.bin.path(),
            &name,
            &format!("exec {} \"$@\"", words.join(" ")),
        )
    }
}

/// `setpriv` arguments that run a program as `nobody`, without groups.
pub fn as_nobody() -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
    ]
}

/// What a helper did.
#[derive(Debug)]
pub struct Exchange {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stderr.
    pub stderr: String,
    /// The bytes it sent.
    pub bytes: Vec<u8>,
    /// The fds it sent.
    pub fds: Vec<OwnedFd>,
}

impl Exchange {
    /// Exit 0, exactly one byte 0x00 and `n` fds.
    pub fn assert_sent(&self, n: usize) {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        assert_eq!(self.bytes, [0u8], "stderr: {}", self.stderr);
        assert_eq!(self.fds.len(), n, "stderr: {}", self.stderr);
    }

    /// Exit 1, nothing sent, and one line on stderr containing `want`
    /// (QEMU's helper: its own line, maybe after others).
    pub fn assert_refused(&self, want: &str) {
        assert_eq!(self.code, Some(1), "stderr: {}", self.stderr);
        assert!(self.bytes.is_empty() && self.fds.is_empty(), "{self:?}");
        assert!(
            self.stderr.contains(want),
            "wanted {want:?} in: {}",
            self.stderr
        );
    }
}

/// Runs `cmd` with one end of a new unix stream socketpair as its stdin
/// (so `--fd=0`; a wrapper may move it, as `sh -c 'exec ... 5<&0'`),
/// waits (up to 60 s, then kills it and panics) for it to exit, and
/// collects what it sent on the socket.
pub fn exchange(mut cmd: Command) -> Exchange {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut child = cmd
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the helper");
    drop(cmd);
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the helper did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap();
    let (bytes, fds) = drain(&ours);
    Exchange {
        code: status.code(),
        stderr,
        bytes,
        fds,
    }
}

/// Everything queued on `sock`, without waiting: bytes and fds.
pub fn drain(sock: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut buf = [0u8; 256];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(300))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("recvmsg: {e}"),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if r.bytes == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..r.bytes]);
    }
    (bytes, fds)
}
