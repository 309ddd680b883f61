//! A bridged tap from a bridge helper, as QEMU gets one: for a user
//! without `CAP_NET_ADMIN`, a privileged helper (`vmtap-bridge-helper`,
//! or QEMU's `qemu-bridge-helper` for one queue) opens the tap, sets it
//! up on the bridge and sends its fds back.
//!
//! [`open_with_helper`] runs the helper as QEMU does: a unix stream
//! socketpair, the helper started with `--br=BR --fd=N` (`--use-vnet`
//! unless the vnet header is off; vmtap's `--queues=Q` and `--name=NAME`
//! only when asked), and one reply read with `recvmsg`: exactly the byte
//! `0x00` and Q fds. The socket is the helper's stdin (`--fd=0`), so that
//! no fd of this process is ever made inheritable (another thread forking
//! meanwhile could inherit it). Everything is bounded: the whole exchange
//! has a deadline, after which the helper (and its process group) is
//! killed; its stderr is read as it comes and at most [`STDERR_KEPT`]
//! bytes are kept; at most Q+1 fds are accepted from it. A helper that
//! fails, exits 0 without sending, sends the wrong bytes or number of
//! fds, or hangs is an error, and every fd it sent is closed (the tap goes
//! with them). The fds are then checked with the core's
//! [`Tun::adopt_tap`]: one TAP device, consistent flags, no packet
//! information, the vnet header as asked.

use std::io::{self, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, RecvMsg, SocketFlags,
    SocketType, recvmsg, socketpair,
};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open};

use vmtap::{Tap, Tun, VnetHdr};

use crate::qmp::later;

/// How much of the helper's stderr is kept for the error message.
pub const STDERR_KEPT: usize = 4096;

/// How much of the helper's stderr is read after it exited (from
/// processes it left behind), at most.
const STDERR_DRAIN: usize = 1 << 20;

/// The most queues one reply can carry (`SCM_MAX_FD`).
pub const MAX_QUEUES: usize = 253;

/// The default deadline of the whole exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to ask the helper for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HelperOptions {
    /// The helper program (run directly, not through a shell).
    pub program: PathBuf,
    /// The bridge (`--br=`).
    pub bridge: String,
    /// Queues of one tap (`--queues=` when more than 1: vmtap's helper).
    pub queues: usize,
    /// The vnet header: `--use-vnet` unless `Off`; `On` and `Off` are
    /// checked on the tap received.
    pub vnet_hdr: VnetHdr,
    /// A name or `%d` template (`--name=`: vmtap's helper).
    pub name: Option<String>,
    /// Open one vhost-net fd per queue here, as the caller.
    pub vhost: bool,
    /// The deadline of the whole exchange.
    pub timeout: Duration,
}

impl HelperOptions {
    /// One queue on `bridge` through `program`, vnet header when the
    /// kernel has it, no vhost, [`DEFAULT_TIMEOUT`].
    pub fn new(program: impl Into<PathBuf>, bridge: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            bridge: bridge.into(),
            queues: 1,
            vnet_hdr: VnetHdr::Auto,
            name: None,
            vhost: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
    /// Sets the number of queues.
    pub fn queues(mut self, queues: usize) -> Self {
        self.queues = queues;
        self
    }
    /// Sets the vnet header mode.
    pub fn vnet_hdr(mut self, mode: VnetHdr) -> Self {
        self.vnet_hdr = mode;
        self
    }
    /// Asks for a name or template.
    pub fn name(mut self, name: impl Into<Option<String>>) -> Self {
        self.name = name.into();
        self
    }
    /// Opens vhost-net fds too.
    pub fn vhost(mut self, on: bool) -> Self {
        self.vhost = on;
        self
    }
    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the options without running anything.
    pub fn validate(&self) -> Result<(), HelperError> {
        if !(1..=MAX_QUEUES).contains(&self.queues) {
            return Err(HelperError::Invalid(format!(
                "invalid number of queues {} for a bridge helper: 1 to {MAX_QUEUES} (the fds of one message)",
                self.queues
            )));
        }
        vmtap_net::routed::check_ifname(&self.bridge)
            .map_err(|e| HelperError::Invalid(format!("bridge: {e}")))?;
        if let Some(n) = &self.name {
            vmtap::validate_name(n, true).map_err(|e| HelperError::Invalid(e.to_string()))?;
        }
        if self.timeout.is_zero() {
            return Err(HelperError::Invalid(
                "the bridge helper's timeout must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The helper's arguments, the socket being fd `fd`.
    pub fn args(&self, fd: i32) -> Vec<String> {
        let mut args = Vec::new();
        if self.vnet_hdr != VnetHdr::Off {
            args.push("--use-vnet".to_string());
        }
        args.push(format!("--br={}", self.bridge));
        args.push(format!("--fd={fd}"));
        if self.queues > 1 {
            args.push(format!("--queues={}", self.queues));
        }
        if let Some(n) = &self.name {
            args.push(format!("--name={n}"));
        }
        args
    }
}

/// Why no tap came from the helper (every fd it sent is closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    /// The options cannot be right (nothing was run).
    #[error("{0}")]
    Invalid(String),
    /// The socketpair, or waiting for the helper, failed.
    #[error("bridge helper {}: {what}: {source}", program.display())]
    Io {
        /// The helper.
        program: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The helper could not be started.
    #[error("cannot run the bridge helper {}: {source}", program.display())]
    Spawn {
        /// The helper.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The helper did not finish in time: it was killed.
    #[error("the bridge helper {} did not finish within {timeout:?}: killed{}", program.display(), said(stderr))]
    Timeout {
        /// The helper.
        program: PathBuf,
        /// The deadline.
        timeout: Duration,
        /// What it said on stderr.
        stderr: String,
    },
    /// The helper failed.
    #[error("the bridge helper {} failed ({}){}", program.display(), status_text(status), said(stderr))]
    Failed {
        /// The helper.
        program: PathBuf,
        /// How it ended.
        status: ExitStatus,
        /// What it said on stderr.
        stderr: String,
    },
    /// The helper exited 0 without sending anything.
    #[error("the bridge helper {} exited without sending a tap{}", program.display(), said(stderr))]
    NothingSent {
        /// The helper.
        program: PathBuf,
        /// What it said on stderr.
        stderr: String,
    },
    /// The reply is not one byte 0x00 with the fds asked.
    #[error("the bridge helper {}'s reply is not a tap's: {problem}", program.display())]
    BadReply {
        /// The helper.
        program: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The fds received are not a tap QEMU can use as asked.
    #[error("the bridge helper {} sent fds that are not a usable tap: {source}", program.display())]
    Tap {
        /// The helper.
        program: PathBuf,
        /// The core's check.
        #[source]
        source: vmtap::Error,
    },
}

impl HelperError {
    /// True for invalid options (nothing was run).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

fn status_text(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

/// `: STDERR` (its lines joined with " / "), or nothing.
fn said(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" / "))
    }
}

/// The helper's stderr, read as it comes; the first [`STDERR_KEPT`]
/// bytes are kept.
struct Stderr {
    pipe: Option<ChildStderr>,
    kept: Vec<u8>,
    dropped: usize,
}

impl Stderr {
    /// Reads what is there (one read); false at the end.
    fn read_some(&mut self) -> bool {
        let Some(pipe) = &mut self.pipe else {
            return false;
        };
        let mut buf = [0u8; 4096];
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.pipe = None;
                false
            }
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(self.kept.len()).min(n);
                self.kept.extend_from_slice(&buf[..room]);
                self.dropped += n - room;
                true
            }
        }
    }

    /// Reads what is there without waiting, up to [`STDERR_DRAIN`].
    fn drain(&mut self) {
        let mut read = 0;
        while read < STDERR_DRAIN && self.ready(Duration::ZERO) {
            let before = self.kept.len() + self.dropped;
            if !self.read_some() {
                break;
            }
            read += self.kept.len() + self.dropped - before;
        }
    }

    fn ready(&self, wait: Duration) -> bool {
        let Some(pipe) = &self.pipe else {
            return false;
        };
        let ts = Timespec::try_from(wait).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(pipe, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
    }

    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            s.push_str(&format!(" ({} more bytes)", self.dropped));
        }
        s
    }
}

/// One reply read from the socket.
struct Reply {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// Reads one message without waiting (`None`: nothing there yet).
fn recv_reply(sock: &OwnedFd, max_fds: usize) -> io::Result<Option<Reply>> {
    let mut buf = [0u8; 64];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r: RecvMsg = match recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(Errno::AGAIN | Errno::INTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    Ok(Some(Reply {
        bytes: buf[..r.bytes].to_vec(),
        fds,
        truncated: r.flags.contains(rustix::net::ReturnFlags::CTRUNC),
    }))
}

/// A running helper: killed (with its process group) and reaped unless
/// it was waited for.
struct Running {
    child: Child,
    done: bool,
}

impl Running {
    fn kill(&mut self) {
        if self.done {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            // Its process group (it leads one): a shell helper's children
            // too. The group exists while the leader is not reaped.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the helper and returns the tap it sent (see the module
/// documentation). The tap is opened in `tun`'s network namespace, that
/// of the calling thread; with [`HelperOptions::vhost`], the vhost-net
/// fds are opened by this process, in `tun`.
pub fn open_with_helper(tun: &Tun, opts: &HelperOptions) -> Result<Tap, HelperError> {
    opts.validate()?;
    let program = opts.program.clone();
    let io_err = |what, source| HelperError::Io {
        program: program.clone(),
        what,
        source,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_err("socketpair", e.into()))?;
    let deadline = later(Instant::now(), opts.timeout);
    // The Command (and its copy of the helper's end) is dropped at the end
    // of this statement: only the helper holds that end.
    let child = Command::new(&opts.program)
        .args(opts.args(0))
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| HelperError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut running = Running { child, done: false };
    let mut stderr = Stderr {
        pipe: running.child.stderr.take(),
        kept: Vec::new(),
        dropped: 0,
    };
    let pidfd = Pid::from_raw(running.child.id() as i32)
        .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
    let mut reply: Option<Reply> = None;
    let mut sock_open = true;
    let status = loop {
        if let Some(st) = running
            .child
            .try_wait()
            .map_err(|e| io_err("waiting for it", e))?
        {
            running.done = true;
            break st;
        }
        let now = Instant::now();
        if now >= deadline {
            running.kill();
            stderr.drain();
            return Err(HelperError::Timeout {
                program,
                timeout: opts.timeout,
                stderr: stderr.text(),
            });
        }
        // Without a pidfd (Linux < 5.3) its exit is polled for.
        let slice = if pidfd.is_some() {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        };
        let wait = (deadline - now).min(slice);
        let ts = Timespec::try_from(wait).map_err(|_| io_err("poll", Errno::INVAL.into()))?;
        let mut fds = Vec::with_capacity(3);
        let sock_at = (reply.is_none() && sock_open).then(|| {
            fds.push(PollFd::new(&ours, PollFlags::IN));
            fds.len() - 1
        });
        let err_at = stderr.pipe.as_ref().map(|p| {
            fds.push(PollFd::from_borrowed_fd(p.as_fd(), PollFlags::IN));
            fds.len() - 1
        });
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("poll", e.into())),
        }
        let ready = |i: Option<usize>| i.is_some_and(|i| !fds[i].revents().is_empty());
        let (sock_ready, err_ready) = (ready(sock_at), ready(err_at));
        drop(fds);
        if sock_ready {
            match recv_reply(&ours, opts.queues + 1).map_err(|e| io_err("recvmsg", e))? {
                // The end of the stream: nothing was sent.
                Some(r) if r.bytes.is_empty() && r.fds.is_empty() => sock_open = false,
                Some(r) => reply = Some(r),
                None => {}
            }
        }
        if err_ready {
            stderr.read_some();
        }
    };
    if reply.is_none() && sock_open {
        reply = recv_reply(&ours, opts.queues + 1)
            .map_err(|e| io_err("recvmsg", e))?
            .filter(|r| !(r.bytes.is_empty() && r.fds.is_empty()));
    }
    stderr.drain();
    drop(ours);
    if !status.success() {
        return Err(HelperError::Failed {
            program,
            status,
            stderr: stderr.text(),
        });
    }
    let Some(reply) = reply else {
        return Err(HelperError::NothingSent {
            program,
            stderr: stderr.text(),
        });
    };
    let bad = |problem: String| HelperError::BadReply {
        program: program.clone(),
        problem,
    };
    if reply.bytes != [0u8] {
        return Err(bad(format!(
            "{} byte(s) {:02x?}, not the one byte 00",
            reply.bytes.len(),
            reply.bytes
        )));
    }
    if reply.truncated || reply.fds.len() != opts.queues {
        let got = if reply.truncated {
            format!("more than {}", reply.fds.len())
        } else {
            reply.fds.len().to_string()
        };
        return Err(bad(format!("{got} fd(s), not {}", opts.queues)));
    }
    tun.adopt_tap(reply.fds, opts.vnet_hdr, opts.vhost)
        .map_err(|source| HelperError::Tap { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_as_qemu_passes_them_and_vmtaps_only_when_asked() {
        let o = HelperOptions::new("/h", "br0");
        assert_eq!(o.args(5), ["--use-vnet", "--br=br0", "--fd=5"]);
        let o = o
            .vnet_hdr(VnetHdr::Off)
            .queues(4)
            .name(Some("vm%d".to_string()));
        assert_eq!(
            o.args(0),
            ["--br=br0", "--fd=0", "--queues=4", "--name=vm%d"]
        );
        assert_eq!(
            HelperOptions::new("/h", "br0")
                .vnet_hdr(VnetHdr::On)
                .args(0),
            ["--use-vnet", "--br=br0", "--fd=0"]
        );
    }

    #[test]
    fn options_that_cannot_be_right() {
        for (o, want) in [
            (HelperOptions::new("/h", "br0").queues(0), "1 to 253"),
            (HelperOptions::new("/h", "br0").queues(254), "1 to 253"),
            (HelperOptions::new("/h", "0123456789abcdef"), "bridge"),
            (HelperOptions::new("/h", ""), "bridge"),
            (
                HelperOptions::new("/h", "br0").name(Some("a/b".to_string())),
                "a/b",
            ),
            (
                HelperOptions::new("/h", "br0").timeout(Duration::ZERO),
                "timeout",
            ),
        ] {
            let e = o.validate().unwrap_err();
            assert!(e.is_invalid_input());
            assert!(e.to_string().contains(want), "{e}");
        }
        HelperOptions::new("/h", "br0")
            .queues(253)
            .validate()
            .unwrap();
    }

    #[test]
    fn stderr_is_shown_on_one_line() {
        assert_eq!(said(""), "");
        assert_eq!(said("\n  \n"), "");
        assert_eq!(said("a\n\nb \n"), ": a / b");
    }
}
