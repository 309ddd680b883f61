//! A small synchronous QMP client: greeting, capabilities negotiation,
//! commands with replies matched by `id`, asynchronous events kept aside
//! (only those asked for, bounded), and fd passing with `SCM_RIGHTS`.
//!
//! Every wait obeys one deadline per connection ([`Qmp::deadline`]): it
//! bounds the connect, the greeting and every command and event wait
//! together, so a peer that trickles bytes or floods events cannot stretch
//! it. Memory held for the peer is bounded by [`Limits`]: a line longer
//! than [`Limits::max_line`] or more kept events than allowed is an error,
//! never unbounded growth. Lines are classified without building a
//! `serde_json::Value`: an event nobody waits for, or a reply to no pending
//! command, is dropped as soon as it is read; a kept event is kept as the
//! bytes received; only the `return` of the reply being waited for is
//! parsed, into the type the caller asks for. Partial lines stay buffered
//! across a timeout, and a reply that answers nothing pending (a late one)
//! is dropped, so a late reply is never taken for the answer to the next
//! command: after a timeout the connection stays in step
//! ([`Qmp::is_in_step`]) and can be used again.
//!
//! The QMP crates on crates.io do not pass fds with a command, which is the
//! part hot-plug needs, so this is written on `rustix` (non-blocking
//! `connect`, `poll`, `recv`, `send`, `sendmsg`).

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
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
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Pause between connection attempts while the listen queue is full.
const CONNECT_RETRY: Duration = Duration::from_millis(10);
/// How much of an offending line an error message quotes.
const PREVIEW: usize = 120;
/// Said when nothing at all comes from QEMU's socket.
const ONE_CLIENT_HINT: &str =
    "QEMU serves one QMP client at a time: another client may be connected";

/// Bounds on what is kept from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line accepted, in bytes, without its newline
    /// (default 256 KiB; QEMU's replies to hot-plug's commands are a few
    /// KiB).
    pub max_line: usize,
    /// The most kept events unread (default 1000). Only events someone can
    /// wait for are kept ([`Qmp::keep_events`]); others are dropped.
    pub max_events: usize,
    /// The most bytes of kept events unread (default 1 MiB): an event is
    /// kept as the bytes received, so this is the memory they hold.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 256 << 10,
            max_events: 1000,
            max_event_bytes: 1 << 20,
        }
    }
}

/// A far deadline, for a timeout too large for the clock.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `from + d`, or a far instant when that does not fit the clock (never a
/// panic).
pub fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(from)
}

/// When an operation must end, and the timeout it was given (which error
/// messages quote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` from now (far in the future for a timeout too large for
    /// the clock).
    pub fn after(timeout: Duration) -> Self {
        Deadline {
            at: later(Instant::now(), timeout),
            timeout,
        }
    }

    /// The instant it passes.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The timeout it was made from.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("no answer from QEMU in time while {step} (timeout: {timeout:?})")]
    Timeout {
        /// What was being waited for.
        step: String,
        /// The timeout of the operation (as configured, not the time
        /// left).
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
    /// More kept events arrived unread than [`Limits`] allow.
    #[error(
        "QMP peer sent more than {max_events} events or {max_event_bytes} bytes of events that are waited for ({names}), unread, while {step}"
    )]
    TooManyEvents {
        /// What was being waited for.
        step: String,
        /// The names of the kept events.
        names: String,
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

    /// QEMU's description of a refusal.
    pub fn desc(&self) -> Option<&str> {
        match self {
            Self::Command { desc, .. } => Some(desc),
            _ => None,
        }
    }
}

/// A refusal: the `error` member of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refusal {
    /// QEMU's error class.
    #[serde(default)]
    pub class: String,
    /// QEMU's description.
    #[serde(default)]
    pub desc: String,
}

/// An event, kept as the line received (parsed only when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    name: String,
    line: Box<str>,
}

impl Event {
    /// The event's name (`DEVICE_DELETED`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line as received (a JSON object).
    pub fn json(&self) -> &str {
        &self.line
    }

    /// The event's `data` member as a `T`, or `None` when it has none or
    /// it is not a `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Option<T> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow, default)]
            data: Option<&'a RawValue>,
        }
        let d: Data<'_> = serde_json::from_str(&self.line).ok()?;
        serde_json::from_str(d.data?.get()).ok()
    }
}

/// One complete message from the peer that the reader wants.
#[derive(Debug, Clone)]
pub enum Message {
    /// The greeting (`{"QMP": ...}`).
    Greeting,
    /// The reply to the command waited for: its `return` (as received), or
    /// its `error`.
    Reply(Result<Box<RawValue>, Refusal>),
    /// A kept event arrived, with this name; it is in the [`Inbox`].
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

/// The members of a message that tell what it is, borrowed from the line:
/// nothing else in it is built (unknown members are skipped without
/// allocating, whatever their nesting).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "QMP", borrow, default)]
    greeting: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "return", borrow, default)]
    ret: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// What a line is.
enum Classified<'a> {
    Blank,
    Greeting,
    Reply {
        id: Option<&'a RawValue>,
        result: Result<&'a RawValue, &'a RawValue>,
    },
    Event(Cow<'a, str>),
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

/// Classifies one line from the peer, building nothing but the event name.
fn classify(line: &[u8]) -> Result<Classified<'_>, String> {
    let Some(first) = line.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(Classified::Blank);
    };
    if *first != b'{' {
        return Err(format!("not a JSON object: {}", preview(line)));
    }
    let text = std::str::from_utf8(line).map_err(|e| format!("{e} in {}", preview(line)))?;
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| format!("{e} in {}", preview(line)))?;
    if env.greeting.is_some() {
        return Ok(Classified::Greeting);
    }
    if let Some(name) = env.event {
        return Ok(Classified::Event(name));
    }
    let result = match (env.ret, env.error) {
        (Some(ret), _) => Ok(ret),
        (None, Some(err)) => Err(err),
        (None, None) => return Err(format!("unexpected message {}", preview(line))),
    };
    Ok(Classified::Reply { id: env.id, result })
}

/// Whether a reply's `id` is the string `want`.
fn id_is(id: Option<&RawValue>, want: &str) -> bool {
    id.and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok()) == Some(want)
}

/// The receiving side of a connection, without the socket: frames lines,
/// classifies them, keeps the events asked for (within [`Limits`]) and
/// drops the rest.
#[derive(Debug)]
pub struct Inbox {
    framer: Framer,
    keep: BTreeSet<String>,
    events: VecDeque<Event>,
    event_bytes: usize,
    dropped_events: u64,
    dropped_replies: u64,
    received: u64,
    limits: Limits,
}

impl Inbox {
    /// An empty inbox that keeps no events.
    pub fn new(limits: Limits) -> Self {
        Inbox {
            framer: Framer::new(limits.max_line),
            keep: BTreeSet::new(),
            events: VecDeque::new(),
            event_bytes: 0,
            dropped_events: 0,
            dropped_replies: 0,
            received: 0,
            limits,
        }
    }

    /// Keeps events named `name` from now on (others are dropped as they
    /// arrive).
    pub fn keep_event(&mut self, name: &str) {
        if !self.keep.contains(name) {
            self.keep.insert(name.to_string());
        }
    }

    /// The line framer (to read bytes into it).
    pub fn framer(&mut self) -> &mut Framer {
        &mut self.framer
    }

    /// Takes in as much of `data` as there is room for; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = self.framer.push(data);
        self.received += n as u64;
        n
    }

    /// Reads into the framer with `read` (see [`Framer::fill`]).
    pub fn fill(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let n = self.framer.fill(max, read)?;
        self.received += n as u64;
        Ok(n)
    }

    /// The next message the caller wants, or `Ok(None)` when more bytes
    /// are needed. `expecting` is the `id` of the command waited for: only
    /// its reply is returned; other replies (late ones, or answers to
    /// another client) are dropped. Kept events are stored (see
    /// [`Inbox::events`]) and announced by name; other events are dropped.
    /// `step` says what the caller is doing, for errors.
    pub fn next(
        &mut self,
        step: &str,
        expecting: Option<&str>,
    ) -> Result<Option<Message>, QmpError> {
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
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("QMP <- {}", preview(line));
            }
            match classify(line).map_err(QmpError::NotQmp)? {
                Classified::Blank => {}
                Classified::Greeting => return Ok(Some(Message::Greeting)),
                Classified::Reply { id, result } => {
                    if expecting.is_some_and(|want| id_is(id, want)) {
                        let result = match result {
                            Ok(ret) => Ok(ret.to_owned()),
                            Err(err) => {
                                Err(serde_json::from_str::<Refusal>(err.get()).map_err(|e| {
                                    QmpError::NotQmp(format!(
                                        "{e} in the error of {}",
                                        preview(line)
                                    ))
                                })?)
                            }
                        };
                        return Ok(Some(Message::Reply(result)));
                    }
                    self.dropped_replies += 1;
                    log::debug!("QMP: dropped a reply that answers nothing pending");
                }
                Classified::Event(name) => {
                    if !self.keep.contains(name.as_ref()) {
                        self.dropped_events += 1;
                        log::debug!("QMP: dropped event {name} (nobody waits for it)");
                        continue;
                    }
                    let size = line.len() + name.len();
                    if self.events.len() >= self.limits.max_events
                        || self.event_bytes + size > self.limits.max_event_bytes
                    {
                        return Err(QmpError::TooManyEvents {
                            step: step.to_string(),
                            names: self.keep.iter().cloned().collect::<Vec<_>>().join(", "),
                            max_events: self.limits.max_events,
                            max_event_bytes: self.limits.max_event_bytes,
                        });
                    }
                    // Valid UTF-8: it parsed as JSON text.
                    let text = String::from_utf8_lossy(line).into_owned();
                    let name = name.into_owned();
                    self.event_bytes += size;
                    self.events.push_back(Event {
                        name: name.clone(),
                        line: text.into_boxed_str(),
                    });
                    return Ok(Some(Message::Event(name)));
                }
            }
        }
    }

    /// The kept events, oldest first.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Event> {
        self.events.iter()
    }

    /// Bytes held by kept events.
    pub fn event_bytes(&self) -> usize {
        self.event_bytes
    }

    /// Events dropped because nobody waits for them.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Replies dropped because they answer nothing pending.
    pub fn dropped_replies(&self) -> u64 {
        self.dropped_replies
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Removes and returns the oldest kept event for which `f` holds.
    pub fn take_event(&mut self, f: impl Fn(&Event) -> bool) -> Option<Event> {
        let i = self.events.iter().position(f)?;
        let e = self.events.remove(i)?;
        self.event_bytes -= e.line.len() + e.name.len();
        Some(e)
    }

    /// Removes and returns every kept event.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.event_bytes = 0;
        self.events.drain(..).collect()
    }
}

thread_local! {
    static INTERRUPT: std::cell::RefCell<Option<std::rc::Rc<dyn Fn() -> bool>>> =
        const { std::cell::RefCell::new(None) };
}

/// How often an interruptible wait asks whether to stop.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Runs `f` with `stop` asked during every wait on a QMP socket that `f`
/// makes on this thread: every 100 ms, and whenever a signal interrupts
/// the wait. When `stop` returns true the wait fails with
/// [`io::ErrorKind::Interrupted`], and the operation ends as after a
/// timeout (a hot-plug is rolled back). For front ends whose users
/// interrupt a call (Python's Ctrl-C); waits are not interruptible
/// otherwise, only bounded by their deadline.
pub fn interruptible<T>(stop: std::rc::Rc<dyn Fn() -> bool>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<std::rc::Rc<dyn Fn() -> bool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            INTERRUPT.with(|i| *i.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(INTERRUPT.with(|i| i.replace(Some(stop))));
    f()
}

/// Waits until `fd` is ready for `flags` or `until` passes (`Ok(false)`);
/// see [`interruptible`].
fn wait_ready(fd: BorrowedFd<'_>, flags: PollFlags, until: Instant) -> io::Result<bool> {
    let stop = INTERRUPT.with(|i| i.borrow().clone());
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Long waits are done in pieces; the loop re-checks the clock.
        let piece = left.min(match stop {
            Some(_) => INTERRUPT_POLL,
            None => Duration::from_secs(3600),
        });
        let ts = Timespec::try_from(piece).map_err(|_| io::Error::from(Errno::INVAL))?;
        let mut fds = [PollFd::from_borrowed_fd(fd, flags)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => {
                if stop.as_ref().is_some_and(|stop| stop()) {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "interrupted by the caller",
                    ));
                }
            }
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
fn connect_unix(path: &Path, deadline: Deadline) -> Result<OwnedFd, QmpError> {
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
                if !wait_ready(sock.as_fd(), PollFlags::OUT, deadline.at).map_err(|source| {
                    QmpError::Io {
                        step: step.clone(),
                        source,
                    }
                })? {
                    return Err(QmpError::Timeout {
                        step,
                        timeout: deadline.timeout,
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
                let left = deadline.at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(QmpError::Timeout {
                        step: format!("{step} (its listen queue stayed full; {ONE_CLIENT_HINT})"),
                        timeout: deadline.timeout,
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
/// [`Qmp::set_deadline`]. Events are dropped unless their name was given
/// to [`Qmp::keep_events`] (or waited for).
pub struct Qmp {
    sock: OwnedFd,
    inbox: Inbox,
    /// Prefix of this connection's command ids, unique to it.
    id_prefix: String,
    next_id: u64,
    deadline: Deadline,
    out_of_step: Option<String>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("sock", &self.sock)
            .field("id_prefix", &self.id_prefix)
            .field("next_id", &self.next_id)
            .field("deadline", &self.deadline)
            .field("out_of_step", &self.out_of_step)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// The pid of the process at the other end (QEMU), as the kernel
    /// tells it (`SO_PEERCRED`): the owner `hotplug add` records on the
    /// tap it plugs. `None` when that process is in another pid namespace.
    /// (For a socket another program made and handed to QEMU, this is the
    /// process that called `listen()`.)
    pub fn peer_pid(&self) -> std::io::Result<Option<u32>> {
        vmtap_sys::peer_pid(self.sock.as_fd())
    }

    /// Connects to QEMU's QMP unix socket, reads the greeting and enters
    /// command mode (`qmp_capabilities`), with default [`Limits`]. The
    /// connection's deadline is `timeout` from now: it bounds this and
    /// every later wait on the connection.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        Self::connect_until(path, Deadline::after(timeout), Limits::default())
    }

    /// [`Qmp::connect`] with an explicit deadline and limits.
    pub fn connect_until(
        path: &Path,
        deadline: Deadline,
        limits: Limits,
    ) -> Result<Self, QmpError> {
        let sock = connect_unix(path, deadline)?;
        let mut qmp = Qmp {
            sock,
            inbox: Inbox::new(limits),
            id_prefix: id_prefix(),
            next_id: 0,
            deadline,
            out_of_step: None,
        };
        let step = format!("reading the greeting of {}", path.display());
        loop {
            // QEMU writes the reply to a command of the previous client
            // that was executing when it left to whoever is connected
            // next, even before the greeting: it is dropped (it answers no
            // id of ours).
            match qmp.read(&step, None, deadline.at)? {
                None if qmp.inbox.received() == 0 => {
                    return Err(qmp.timed_out(format!("{step} ({ONE_CLIENT_HINT})")));
                }
                None => return Err(qmp.timed_out(step)),
                Some(Message::Greeting) => break,
                Some(_) => {}
            }
        }
        qmp.execute::<serde::de::IgnoredAny>("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// When every wait on this connection ends.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// Moves the deadline (e.g. for a new operation on the same
    /// connection).
    pub fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = deadline;
    }

    /// False once an error (a hang-up, garbage, a line too long, a command
    /// partly sent) left the connection out of step: it cannot be used
    /// any more. A timeout waiting for a reply, a refusal or too many
    /// events keep it in step: what is received later is matched by id.
    pub fn is_in_step(&self) -> bool {
        self.out_of_step.is_none()
    }

    /// Keeps the events with these names from now on, to be waited for
    /// ([`Qmp::wait_event`]) or taken ([`Qmp::take_events`]); other events
    /// are dropped as they arrive.
    pub fn keep_events(&mut self, names: &[&str]) {
        for name in names {
            self.inbox.keep_event(name);
        }
    }

    /// The kept events received and not taken yet (oldest first).
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Event> {
        self.inbox.events()
    }

    /// Removes and returns the kept events received so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.inbox.take_events()
    }

    /// How many events were dropped because nobody waits for them.
    pub fn dropped_events(&self) -> u64 {
        self.inbox.dropped_events()
    }

    /// Runs `command` with `arguments` and returns its `return` value as a
    /// `T` (use `serde::de::IgnoredAny` to ignore it).
    ///
    /// Only the reply being waited for is parsed, and only into `T`. With
    /// `T = serde_json::Value` a hostile peer can make that cost many times
    /// the reply's size (at most [`Limits::max_line`]): deeply nested
    /// objects take about a hundred times their text; prefer a typed `T`.
    pub fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        self.execute_with_fds(command, arguments, &[])
    }

    /// [`Qmp::execute`], passing `fds` with `SCM_RIGHTS` in the same
    /// message (as `getfd` and `add-fd` expect). The command carries an
    /// `id`; only the reply with that `id` is taken, others are dropped.
    pub fn execute_with_fds<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<T, QmpError> {
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
        self.send_line(line.as_bytes(), fds, &format!("sending {command}"))?;
        let step = format!("waiting for the reply to {command}");
        loop {
            match self.read(&step, Some(&id), self.deadline.at)? {
                None => return Err(self.timed_out(step)),
                Some(Message::Reply(Ok(ret))) => {
                    return serde_json::from_str(ret.get()).map_err(|e| QmpError::Unexpected {
                        command: command.to_string(),
                        reply: format!("{e} in {}", preview(ret.get().as_bytes())),
                    });
                }
                Some(Message::Reply(Err(r))) => {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class: r.class,
                        desc: r.desc,
                    });
                }
                Some(Message::Greeting | Message::Event(_)) => {}
            }
        }
    }

    /// Waits until an event named `name` for which `matches` holds has
    /// arrived (or had arrived already, if events of that name were kept),
    /// removes it from the kept events and returns it. Fails at the
    /// deadline. Events named `name` are kept from now on.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        let until = self.deadline.at;
        match self.wait_event_until(name, matches, until)? {
            Some(e) => Ok(e),
            None => Err(self.timed_out(format!("waiting for event {name}"))),
        }
    }

    /// [`Qmp::wait_event`], but returns `Ok(None)` when `until` passes
    /// first (a deadline that passes first is still an error).
    pub fn wait_event_until(
        &mut self,
        name: &str,
        matches: impl Fn(&Event) -> bool,
        until: Instant,
    ) -> Result<Option<Event>, QmpError> {
        self.check_in_step()?;
        self.inbox.keep_event(name);
        let is_it = |e: &Event| e.name() == name && matches(e);
        let step = format!("waiting for event {name}");
        loop {
            if let Some(e) = self.inbox.take_event(is_it) {
                return Ok(Some(e));
            }
            let stop = until.min(self.deadline.at);
            match self.read(&step, None, stop)? {
                None if until < self.deadline.at => return Ok(None),
                None => return Err(self.timed_out(step)),
                Some(_) => {}
            }
        }
    }

    fn timed_out(&self, step: String) -> QmpError {
        QmpError::Timeout {
            step,
            timeout: self.deadline.timeout,
        }
    }

    fn check_in_step(&self) -> Result<(), QmpError> {
        match &self.out_of_step {
            Some(why) => Err(QmpError::OutOfStep(why.clone())),
            None => Ok(()),
        }
    }

    /// Sends `line` (with `fds` on its first byte) before the deadline. A
    /// failure once part of the line went out leaves the connection out of
    /// step.
    fn send_line(
        &mut self,
        line: &[u8],
        fds: &[BorrowedFd<'_>],
        step: &str,
    ) -> Result<(), QmpError> {
        let mut sent = 0;
        let result = self.send_inner(line, fds, step, &mut sent);
        if let Err(e) = &result
            && sent > 0
        {
            self.out_of_step = Some(e.to_string());
        }
        result
    }

    fn send_inner(
        &mut self,
        line: &[u8],
        fds: &[BorrowedFd<'_>],
        step: &str,
        sent: &mut usize,
    ) -> Result<(), QmpError> {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        while *sent < line.len() {
            let result = if *sent == 0 && !fds.is_empty() {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if control.push(SendAncillaryMessage::ScmRights(fds)) {
                    sendmsg(&self.sock, &[IoSlice::new(line)], &mut control, flags)
                } else {
                    Err(Errno::NOBUFS)
                }
            } else {
                send(&self.sock, &line[*sent..], flags)
            };
            match result {
                Ok(n) => *sent += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let ready = wait_ready(self.sock.as_fd(), PollFlags::OUT, self.deadline.at)
                        .map_err(|source| QmpError::Io {
                            step: step.to_string(),
                            source,
                        })?;
                    if !ready {
                        return Err(self.timed_out(step.to_string()));
                    }
                }
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    // Nothing more can be read or sent.
                    self.out_of_step = Some(format!("QEMU closed the connection while {step}"));
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

    /// The next greeting, reply to `expecting` or kept event, or
    /// `Ok(None)` when `until` passes first. Bytes of an incomplete line
    /// stay buffered for the next call.
    fn read(
        &mut self,
        step: &str,
        expecting: Option<&str>,
        until: Instant,
    ) -> Result<Option<Message>, QmpError> {
        let result = self.read_inner(step, expecting, until);
        if let Err(e) = &result
            && !matches!(e, QmpError::TooManyEvents { .. } | QmpError::OutOfStep(_))
        {
            self.out_of_step = Some(e.to_string());
        }
        result
    }

    fn read_inner(
        &mut self,
        step: &str,
        expecting: Option<&str>,
        until: Instant,
    ) -> Result<Option<Message>, QmpError> {
        self.check_in_step()?;
        let io_err = |source| QmpError::Io {
            step: step.to_string(),
            source,
        };
        loop {
            if let Some(m) = self.inbox.next(step, expecting)? {
                return Ok(Some(m));
            }
            if !wait_ready(self.sock.as_fd(), PollFlags::IN, until).map_err(io_err)? {
                return Ok(None);
            }
            let sock = &self.sock;
            let got = self.inbox.fill(READ_CHUNK, |buf| {
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
