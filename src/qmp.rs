//! A small synchronous QMP client: greeting, capabilities negotiation,
//! commands with replies, asynchronous events kept aside, and fd passing
//! with `SCM_RIGHTS`. Every wait has a timeout.
//!
//! The QMP crates on crates.io do not pass fds with a command, which is the
//! part hot-plug needs, so this is written on `std` + `rustix::net::sendmsg`.

use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use serde_json::{Value, json};

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
    /// The peer does not speak QMP.
    #[error("not a QMP socket: {0}")]
    NotQmp(String),
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection while {0}")]
    Closed(String),
    /// No answer in time.
    #[error("no answer from QEMU within {timeout:?} while {step}")]
    Timeout {
        /// What was being waited for.
        step: String,
        /// The limit.
        timeout: Duration,
    },
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

/// A QMP connection.
pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    timeout: Duration,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to QEMU's QMP unix socket, reads the greeting and enters
    /// command mode (`qmp_capabilities`). `timeout` bounds every wait.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let io = |step: &str| {
            let step = format!("{step} {}", path.display());
            move |source| QmpError::Io { step, source }
        };
        let stream = UnixStream::connect(path).map_err(io("connecting to"))?;
        let reader = BufReader::new(stream.try_clone().map_err(io("connecting to"))?);
        let mut qmp = Qmp {
            stream,
            reader,
            timeout,
            events: Vec::new(),
        };
        let greeting = qmp.next_message("reading the greeting", timeout)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NotQmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The asynchronous events received so far (oldest first).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_with_fds(command, arguments, &[])
    }

    /// Runs `command`, passing `fds` with `SCM_RIGHTS` in the same message
    /// (as `getfd` and `add-fd` expect).
    pub fn execute_with_fds(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        log::debug!("QMP -> {}", line.trim_end());
        let step = format!("sending {command}");
        let write_err = |step: String, source: io::Error| match source.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => QmpError::Closed(step),
            _ => QmpError::Io { step, source },
        };
        if fds.is_empty() {
            self.stream
                .write_all(line.as_bytes())
                .map_err(|e| write_err(step, e))?;
        } else {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(fds));
            let sent = sendmsg(
                &self.stream,
                &[IoSlice::new(line.as_bytes())],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(|e| write_err(step.clone(), e.into()))?;
            self.stream
                .write_all(&line.as_bytes()[sent..])
                .map_err(|e| write_err(step, e))?;
        }
        let waiting = format!("waiting for the reply to {command}");
        loop {
            // Events in between are kept by next_message; skip to the reply.
            let reply = self.next_message(&waiting, self.timeout)?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
        }
    }

    /// Waits until an event named `name` for which `matches` holds has
    /// arrived (or had arrived already), removes it from the kept events
    /// and returns it.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let is_it = |e: &Value| e.get("event").and_then(Value::as_str) == Some(name) && matches(e);
        let deadline = Instant::now() + timeout;
        let step = format!("waiting for event {name}");
        loop {
            if let Some(i) = self.events.iter().position(is_it) {
                return Ok(self.events.remove(i));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let timed_out = QmpError::Timeout {
                step: step.clone(),
                timeout,
            };
            if left.is_zero() {
                return Err(timed_out);
            }
            match self.next_message(&step, left) {
                Err(QmpError::Timeout { .. }) => return Err(timed_out),
                other => other?,
            };
        }
    }

    /// Reads the next message, waiting at most `timeout`. Events are also
    /// kept in `events` for [`Qmp::wait_event`].
    fn next_message(&mut self, step: &str, timeout: Duration) -> Result<Value, QmpError> {
        let io_err = |source| QmpError::Io {
            step: step.to_string(),
            source,
        };
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(io_err)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err(QmpError::Closed(step.to_string())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(QmpError::Timeout {
                    step: step.to_string(),
                    timeout,
                });
            }
            Err(e) => return Err(io_err(e)),
        }
        let value: Value = serde_json::from_str(line.trim())
            .map_err(|e| QmpError::NotQmp(format!("{e} in {:?}", line.trim())))?;
        log::debug!("QMP <- {value}");
        if value.get("event").is_some() {
            self.events.push(value.clone());
        }
        Ok(value)
    }
}
