//! A small synchronous QMP client: greeting, capabilities negotiation,
//! commands with replies matched by `id`, asynchronous events kept aside
//! (bounded), and fd passing with `SCM_RIGHTS`.
//!
//! Every wait obeys one deadline per connection ([`Qmp::deadline`]): it
//! bounds the connect, the greeting and every command and event wait
//! together, so a peer that trickles bytes or floods events cannot stretch
//! it. What is read from the peer is bounded by [`Limits`]: a line longer
//! than [`Limits::max_line`] or more unread events than allowed is an
//! error, never unbounded growth. Partial lines stay buffered across a
//! timeout, and a reply that answers nothing pending (a late one) is
//! dropped, so a late reply is never taken for the answer to the next
//! command.
//!
//! The QMP crates on crates.io do not pass fds with a command, which is the
//! part hot-plug needs, so this is written on `rustix` (non-blocking
//! `connect`, `poll`, `recv`, `send`, `sendmsg`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType, connect, recv, send, sendmsg, socket_with,
};
use serde_json::{Value, json};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Pause between connection attempts while the listen queue is full.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// How much of an offending line an error message quotes.
const PREVIEW: usize = 120;

/// Bounds on what is kept from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line accepted, in bytes, without its newline
    /// (default 1 MiB).
    pub max_line: usize,
    /// The most events kept unread (default 1000).
    pub max_events: usize,
    /// The most bytes of events kept unread, counted as received
    /// (default 1 MiB).
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 1 << 20,
            max_events: 1000,
            max_event_bytes: 1 << 20,
        }
    }
}

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting, reading or writing failed.
    #[error("QMP {step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket path does not exist.
    #[error("QMP socket {0} does not exist")]
    NoSocket(PathBuf),
    /// The path exists but is not a socket.
    #[error("{0} is not a socket")]
    NotASocket(PathBuf),
    /// The socket exists but nobody listens on it (QEMU exited?).
    #[error("nobody listens on the QMP socket {0} (connection refused)")]
    NotListening(PathBuf),
    /// The peer does not speak QMP.
    #[error("not a QMP socket: {0}")]
    NotQmp(String),
    /// A reply QEMU sent is not what the command returns.
    #[error("unexpected reply to {command}: {reply}")]
    Unexpected {
        /// The command.
        command: String,
        /// The start of the reply.
        reply: String,
    },
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection while {0}")]
    Closed(String),
    /// The deadline passed.
    #[error(
        "no answer from QEMU in time while {step} (deadline: {timeout:?} for the whole operation)"
    )]
    Timeout {
        /// What was being waited for.
        step: String,
        /// The time the operation had in all.
        timeout: Duration,
    },
    /// The peer sent a line longer than [`Limits::max_line`].
    #[error("QMP peer sent a line longer than {limit} bytes while {step}")]
    LineTooLong {
        /// What was being waited for.
        step: String,
        /// The limit.
        limit: usize,
    },
    /// More events arrived unread than [`Limits`] allow.
    #[error(
        "QMP peer sent more than {max_events} events or {max_event_bytes} bytes of events, unread, while {step}"
    )]
    TooManyEvents {
        /// What was being waited for.
        step: String,
        /// [`Limits::max_events`].
        max_events: usize,
        /// [`Limits::max_event_bytes`].
        max_event_bytes: usize,
    },
    /// An earlier error left the connection out of step; reconnect.
    #[error("QMP connection unusable after an earlier error ({0}); a new connection is needed")]
    OutOfStep(String),
    /// QEMU refused a command.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

impl QmpError {
    /// True when QEMU answered with an error: the command was refused and
    /// the connection is still in step.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Command { .. })
    }

    /// QEMU's error class of a refusal (`DeviceNotFound`...).
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// A refusal: the `error` member of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// QEMU's error class.
    pub class: String,
    /// QEMU's description.
    pub desc: String,
}

/// One complete message from the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": ...}`).
    Greeting(Value),
    /// A command's reply, with the `id` it echoes (if any).
    Reply {
        /// The echoed `id`.
        id: Option<Value>,
        /// `return`, or `error`.
        result: Result<Value, Refusal>,
    },
    /// An event arrived, with this name; it is kept in the [`Inbox`].
    Event(String),
}

/// The line was longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

/// Splits a byte stream into lines, holding at most `max_line + 1` bytes:
/// bytes are only taken in while there is room for the rest of a line of
/// `max_line` bytes plus its newline.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the bytes not handed out yet.
    start: usize,
    /// Bytes before this index hold no newline.
    scanned: usize,
    max_line: usize,
}

impl Framer {
    /// A framer for lines of up to `max_line` bytes (without the newline).
    pub fn new(max_line: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
        }
    }

    /// Bytes held and not handed out yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes allocated for the buffer.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// How many more bytes may be taken in now.
    pub fn room(&self) -> usize {
        (self.max_line + 1).saturating_sub(self.buffered())
    }

    /// The next complete line, without its `\n`; `Ok(None)` when no line is
    /// complete yet, `Err` when the incomplete line is already longer than
    /// the limit.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        let from = self.scanned.max(self.start);
        if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let (start, end) = (self.start, from + i);
            self.start = end + 1;
            self.scanned = self.start;
            return Ok(Some(&self.buf[start..end]));
        }
        self.scanned = self.buf.len();
        if self.buffered() > self.max_line {
            return Err(LineTooLong);
        }
        Ok(None)
    }

    /// Lets `read` write up to `max` bytes (and no more than
    /// [`Framer::room`]) at the end of the buffer; keeps what it says it
    /// wrote.
    pub fn fill(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        let len = self.buf.len();
        let want = len + self.room().min(max);
        if self.buf.capacity() < want {
            // Grow geometrically, but never past one full line.
            let target = (self.buf.capacity() * 2).clamp(want, (self.max_line + 1).max(want));
            self.buf.reserve_exact(target - len);
        }
        self.buf.resize(want, 0);
        let result = read(&mut self.buf[len..]);
        let got = match &result {
            Ok(n) => (*n).min(want - len),
            Err(_) => 0,
        };
        self.buf.truncate(len + got);
        result.map(|_| got)
    }

    /// Takes in as much of `data` as there is room for; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        self.fill(data.len(), |b| {
            b.copy_from_slice(&data[..b.len()]);
            Ok(b.len())
        })
        .unwrap_or(0)
    }
}

/// What a line is.
enum Classified {
    Blank,
    Greeting(Value),
    Reply {
        id: Option<Value>,
        result: Result<Value, Refusal>,
    },
    Event(String, Value),
}

/// The start of `line`, for messages.
fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(PREVIEW)]);
    let mut s = format!("{:?}", text.trim_end());
    if line.len() > PREVIEW {
        s.push_str(&format!(" ({} bytes)", line.len()));
    }
    s
}

/// Parses and classifies one line from the peer.
fn classify(line: &[u8]) -> Result<Classified, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Classified::Blank);
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("{e} in {}", preview(line)))?;
    let Value::Object(map) = &value else {
        return Err(format!("not a JSON object: {}", preview(line)));
    };
    if map.contains_key("QMP") {
        return Ok(Classified::Greeting(value));
    }
    if let Some(name) = map.get("event").and_then(Value::as_str) {
        return Ok(Classified::Event(name.to_string(), value));
    }
    let id = map.get("id").cloned();
    if let Some(ret) = map.get("return") {
        return Ok(Classified::Reply {
            id,
            result: Ok(ret.clone()),
        });
    }
    if let Some(err) = map.get("error") {
        let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return Ok(Classified::Reply {
            id,
            result: Err(Refusal {
                class: s("class"),
                desc: s("desc"),
            }),
        });
    }
    Err(format!("unexpected message {}", preview(line)))
}

/// The receiving side of a connection, without the socket: frames lines,
/// classifies them, and keeps events (within [`Limits`]).
#[derive(Debug)]
pub struct Inbox {
    framer: Framer,
    events: VecDeque<(Value, usize)>,
    event_bytes: usize,
    limits: Limits,
}

impl Inbox {
    /// An empty inbox.
    pub fn new(limits: Limits) -> Self {
        Inbox {
            framer: Framer::new(limits.max_line),
            events: VecDeque::new(),
            event_bytes: 0,
            limits,
        }
    }

    /// The line framer (to read bytes into it).
    pub fn framer(&mut self) -> &mut Framer {
        &mut self.framer
    }

    /// Takes in as much of `data` as there is room for; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        self.framer.push(data)
    }

    /// The next complete message, or `Ok(None)` when more bytes are needed.
    /// Events are kept (see [`Inbox::events`]) and announced by name.
    /// `step` says what the caller is doing, for errors.
    pub fn next(&mut self, step: &str) -> Result<Option<Message>, QmpError> {
        loop {
            let line = match self.framer.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(LineTooLong) => {
                    return Err(QmpError::LineTooLong {
                        step: step.to_string(),
                        limit: self.limits.max_line,
                    });
                }
            };
            let size = line.len();
            let classified = classify(line);
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("QMP <- {}", preview(line));
            }
            match classified.map_err(QmpError::NotQmp)? {
                Classified::Blank => continue,
                Classified::Greeting(v) => return Ok(Some(Message::Greeting(v))),
                Classified::Reply { id, result } => {
                    return Ok(Some(Message::Reply { id, result }));
                }
                Classified::Event(name, value) => {
                    if self.events.len() >= self.limits.max_events
                        || self.event_bytes + size > self.limits.max_event_bytes
                    {
                        return Err(QmpError::TooManyEvents {
                            step: step.to_string(),
                            max_events: self.limits.max_events,
                            max_event_bytes: self.limits.max_event_bytes,
                        });
                    }
                    self.event_bytes += size;
                    self.events.push_back((value, size));
                    return Ok(Some(Message::Event(name)));
                }
            }
        }
    }

    /// The kept events, oldest first.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Value> {
        self.events.iter().map(|(v, _)| v)
    }

    /// Bytes of kept events, as received.
    pub fn event_bytes(&self) -> usize {
        self.event_bytes
    }

    /// Removes and returns the oldest kept event for which `f` holds.
    pub fn take_event(&mut self, f: impl Fn(&Value) -> bool) -> Option<Value> {
        let i = self.events.iter().position(|(v, _)| f(v))?;
        let (v, size) = self.events.remove(i)?;
        self.event_bytes -= size;
        Some(v)
    }

    /// Removes and returns every kept event.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.event_bytes = 0;
        self.events.drain(..).map(|(v, _)| v).collect()
    }
}

/// Waits until `fd` is ready for `flags` or `until` passes (`Ok(false)`).
fn wait_ready(fd: BorrowedFd<'_>, flags: PollFlags, until: Instant) -> io::Result<bool> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Long waits are done in pieces; the loop re-checks the clock.
        let piece = left.min(Duration::from_secs(3600));
        let ts = Timespec::try_from(piece).map_err(|_| io::Error::from(Errno::INVAL))?;
        let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The error for a failed `connect` to `path`.
fn connect_error(path: &Path, step: &str, e: Errno) -> QmpError {
    match e {
        Errno::NOENT | Errno::NOTDIR => QmpError::NoSocket(path.to_path_buf()),
        Errno::CONNREFUSED => match std::fs::metadata(path) {
            Ok(m) if !m.file_type().is_socket() => QmpError::NotASocket(path.to_path_buf()),
            _ => QmpError::NotListening(path.to_path_buf()),
        },
        e => QmpError::Io {
            step: step.to_string(),
            source: e.into(),
        },
    }
}

/// A non-blocking AF_UNIX connection to `path`, retried while the listen
/// queue is full, until `deadline`.
fn connect_unix(path: &Path, deadline: Instant, budget: Duration) -> Result<OwnedFd, QmpError> {
    let step = format!("connecting to {}", path.display());
    let io_err = |e: Errno| QmpError::Io {
        step: step.clone(),
        source: e.into(),
    };
    let addr = SocketAddrUnix::new(path).map_err(io_err)?;
    loop {
        let sock = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(io_err)?;
        let result = match connect(&sock, &addr) {
            Err(Errno::INPROGRESS) => {
                if !wait_ready(sock.as_fd(), PollFlags::OUT, deadline).map_err(|source| {
                    QmpError::Io {
                        step: step.clone(),
                        source,
                    }
                })? {
                    return Err(QmpError::Timeout {
                        step,
                        timeout: budget,
                    });
                }
                rustix::net::sockopt::socket_error(&sock).map_err(io_err)?
            }
            other => other,
        };
        match result {
            Ok(()) => return Ok(sock),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                // The listen queue is full (QEMU serves one client at a
                // time; others queue up): try again until the deadline.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(QmpError::Timeout {
                        step: format!("{step} (its listen queue stayed full)"),
                        timeout: budget,
                    });
                }
                std::thread::sleep(left.min(CONNECT_RETRY));
            }
            Err(e) => return Err(connect_error(path, &step, e)),
        }
    }
}

/// A prefix for the ids of a new connection's commands, unique to it:
/// QEMU may hand a reply to a command of an earlier connection (of this
/// process or another) to the next client, so ids must not repeat across
/// connections.
fn id_prefix() -> String {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("vmtap-{}-{nanos:x}-{n}", std::process::id())
}

/// A QMP connection.
///
/// All waits end at [`Qmp::deadline`], set when connecting and movable with
/// [`Qmp::set_deadline`].
pub struct Qmp {
    sock: OwnedFd,
    inbox: Inbox,
    /// Prefix of this connection's command ids, unique to it.
    id_prefix: String,
    next_id: u64,
    deadline: Instant,
    budget: Duration,
    out_of_step: Option<String>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("sock", &self.sock)
            .field("id_prefix", &self.id_prefix)
            .field("next_id", &self.next_id)
            .field("budget", &self.budget)
            .field("out_of_step", &self.out_of_step)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to QEMU's QMP unix socket, reads the greeting and enters
    /// command mode (`qmp_capabilities`), with default [`Limits`]. The
    /// connection's deadline is `timeout` from now: it bounds this and
    /// every later wait on the connection.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        Self::connect_until(path, Instant::now() + timeout, Limits::default())
    }

    /// [`Qmp::connect`] with an explicit deadline and limits.
    pub fn connect_until(path: &Path, deadline: Instant, limits: Limits) -> Result<Self, QmpError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let sock = connect_unix(path, deadline, budget)?;
        let mut qmp = Qmp {
            sock,
            inbox: Inbox::new(limits),
            id_prefix: id_prefix(),
            next_id: 0,
            deadline,
            budget,
            out_of_step: None,
        };
        let step = format!("reading the greeting of {}", path.display());
        loop {
            match qmp.read(&step, deadline)? {
                None => return Err(qmp.timed_out(step)),
                Some(Message::Greeting(_)) => break,
                // QEMU writes the reply to a command of the previous
                // client that was executing when it left to whoever is
                // connected next, even before the greeting.
                Some(Message::Event(_)) => {}
                Some(other) => log::debug!("QMP: dropped {other:?} before the greeting"),
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// When every wait on this connection ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline (e.g. for a new operation on the same
    /// connection).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.budget = deadline.saturating_duration_since(Instant::now());
    }

    /// The asynchronous events received and not taken yet (oldest first).
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Value> {
        self.inbox.events()
    }

    /// Removes and returns the events kept so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.inbox.take_events()
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_with_fds(command, arguments, &[])
    }

    /// Runs `command`, passing `fds` with `SCM_RIGHTS` in the same message
    /// (as `getfd` and `add-fd` expect). The command carries an `id`; only
    /// the reply with that `id` is taken, others are dropped.
    pub fn execute_with_fds(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Value, QmpError> {
        self.check_in_step()?;
        let id = format!("{}-{}", self.id_prefix, self.next_id);
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        log::debug!("QMP -> {}", line.trim_end());
        if let Err(e) = self.send_line(line.as_bytes(), fds, &format!("sending {command}")) {
            // Part of the line may have gone out.
            self.out_of_step = Some(e.to_string());
            return Err(e);
        }
        let step = format!("waiting for the reply to {command}");
        loop {
            match self.read(&step, self.deadline)? {
                None => return Err(self.timed_out(step)),
                Some(Message::Reply {
                    id: Some(rid),
                    result,
                }) if rid.as_str() == Some(&id) => {
                    return result.map_err(|r| QmpError::Command {
                        command: command.to_string(),
                        class: r.class,
                        desc: r.desc,
                    });
                }
                Some(Message::Event(_)) => {}
                Some(other) => {
                    log::debug!("QMP: dropped {other:?}: it answers nothing pending");
                }
            }
        }
    }

    /// Waits until an event named `name` for which `matches` holds has
    /// arrived (or had arrived already), removes it from the kept events
    /// and returns it. Fails at the deadline.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, QmpError> {
        let deadline = self.deadline;
        match self.wait_event_until(name, matches, deadline)? {
            Some(e) => Ok(e),
            None => Err(self.timed_out(format!("waiting for event {name}"))),
        }
    }

    /// [`Qmp::wait_event`], but returns `Ok(None)` when `until` passes
    /// first (a deadline that passes first is still an error).
    pub fn wait_event_until(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        until: Instant,
    ) -> Result<Option<Value>, QmpError> {
        self.check_in_step()?;
        let is_it = |e: &Value| e.get("event").and_then(Value::as_str) == Some(name) && matches(e);
        let step = format!("waiting for event {name}");
        loop {
            if let Some(e) = self.inbox.take_event(is_it) {
                return Ok(Some(e));
            }
            let stop = until.min(self.deadline);
            match self.read(&step, stop)? {
                None if until < self.deadline => return Ok(None),
                None => return Err(self.timed_out(step)),
                Some(Message::Event(_)) => {}
                Some(other) => {
                    log::debug!("QMP: dropped {other:?}: it answers nothing pending");
                }
            }
        }
    }

    fn timed_out(&self, step: String) -> QmpError {
        QmpError::Timeout {
            step,
            timeout: self.budget,
        }
    }

    fn check_in_step(&self) -> Result<(), QmpError> {
        match &self.out_of_step {
            Some(why) => Err(QmpError::OutOfStep(why.clone())),
            None => Ok(()),
        }
    }

    /// Sends `line` (with `fds` on its first byte) before the deadline.
    fn send_line(
        &mut self,
        line: &[u8],
        fds: &[BorrowedFd<'_>],
        step: &str,
    ) -> Result<(), QmpError> {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        let mut sent = 0;
        while sent < line.len() {
            let result = if sent == 0 && !fds.is_empty() {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if control.push(SendAncillaryMessage::ScmRights(fds)) {
                    sendmsg(&self.sock, &[IoSlice::new(line)], &mut control, flags)
                } else {
                    Err(Errno::NOBUFS)
                }
            } else {
                send(&self.sock, &line[sent..], flags)
            };
            match result {
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let ready = wait_ready(self.sock.as_fd(), PollFlags::OUT, self.deadline)
                        .map_err(|source| QmpError::Io {
                            step: step.to_string(),
                            source,
                        })?;
                    if !ready {
                        return Err(self.timed_out(step.to_string()));
                    }
                }
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    return Err(QmpError::Closed(step.to_string()));
                }
                Err(e) => {
                    return Err(QmpError::Io {
                        step: step.to_string(),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The next greeting or reply (events are kept, and announced), or
    /// `Ok(None)` when `until` passes first. Bytes of an incomplete line
    /// stay buffered for the next call.
    fn read(&mut self, step: &str, until: Instant) -> Result<Option<Message>, QmpError> {
        let result = self.read_inner(step, until);
        if let Err(e) = &result
            && !matches!(e, QmpError::TooManyEvents { .. } | QmpError::OutOfStep(_))
        {
            self.out_of_step = Some(e.to_string());
        }
        result
    }

    fn read_inner(&mut self, step: &str, until: Instant) -> Result<Option<Message>, QmpError> {
        self.check_in_step()?;
        let io_err = |source| QmpError::Io {
            step: step.to_string(),
            source,
        };
        loop {
            if let Some(m) = self.inbox.next(step)? {
                return Ok(Some(m));
            }
            if !wait_ready(self.sock.as_fd(), PollFlags::IN, until).map_err(io_err)? {
                return Ok(None);
            }
            let sock = &self.sock;
            let got = self.inbox.framer().fill(READ_CHUNK, |buf| {
                recv(sock, buf, RecvFlags::DONTWAIT)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            });
            match got {
                Ok(0) => return Err(QmpError::Closed(step.to_string())),
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                    io::ErrorKind::ConnectionReset => {
                        return Err(QmpError::Closed(step.to_string()));
                    }
                    _ => return Err(io_err(e)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
