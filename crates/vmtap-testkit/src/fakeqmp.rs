//! A fake QEMU QMP monitor on a unix socket, for tests without QEMU.
//!
//! It behaves like QEMU 7.2 where hot-plug depends on it: one client at a
//! time (others wait in the listen queue, without a greeting), replies echo
//! the command's `id`, named fds (`getfd`) belong to the monitor and
//! survive a reconnect, `netdev_add` consumes the names it uses (also when
//! it fails), `netdev_del`/`device_del` of a missing id answer
//! `DeviceNotFound`, `device_del` starts an unplug that completes later
//! with two `DEVICE_DELETED` events (one with `data.device`), a second
//! `device_del` meanwhile is "already in the process of unplug", and a
//! command being executed when the client leaves still completes, its
//! reply going to the next client (QEMU 7.2 sends it before the greeting;
//! [`Config::stale_after_greeting`] sends it after). Only devices with a
//! netdev are NICs in `info network`, each followed by its netdev
//! (` \ ID: ...`).
//!
//! A script says, per connection and command, how to misbehave: refuse,
//! hang up, go silent, answer late (after a time, or only once the client
//! sends its next command or leaves: a condition, not a race), trickle,
//! flood events, send an endless line or garbage. [`Config::between`] lets
//! another client act between two connections.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use serde_json::{Value, json};

/// QEMU 7.2's greeting.
pub const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n";

/// What the monitor does with one command.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// Behave like QEMU.
    Normal,
    /// Refuse with a GenericError (nothing done).
    Fail,
    /// Close the connection without doing it.
    HangUp,
    /// Never answer (nothing done); wait for the client to leave.
    Silence,
    /// Wait this long, then do it and answer (to a client that may have
    /// left: a command being executed completes).
    Late(Duration),
    /// Do it and answer only once the client sends its next command (so
    /// after the client gave up waiting), or leaves (then the reply goes
    /// to the next client).
    UntilNext,
    /// Do it only once the client leaves; the reply goes to the next
    /// client (commands sent meanwhile are dropped, as QEMU does).
    UntilClose,
    /// Do it, send the first half of the reply, and the rest once the
    /// client sends its next command.
    SplitUntilNext,
    /// Do it, then close the connection without answering.
    DoThenHangUp,
    /// Do it, and answer with this JSON text as the `return`.
    Return(&'static str),
    /// Do it, send the first half of the reply, wait this long, send the
    /// rest.
    Split(Duration),
    /// Do it, then send the reply one byte at a time, this far apart.
    Trickle(Duration),
    /// Answer with a line that is not JSON (nothing done).
    Garbage,
    /// Send events without end instead of answering (nothing done).
    Flood,
    /// Start a line and never end it (nothing done).
    Endless,
}

/// How the monitor greets a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Greet {
    /// QEMU's greeting.
    Normal,
    /// Nothing: wait for the client to leave.
    Silent,
    /// These bytes, then serve commands.
    Raw(&'static str),
    /// The greeting, one byte at a time, this far apart.
    Trickle(Duration),
    /// Events without end.
    Flood,
    /// A line without end.
    Endless,
}

/// A command as the script sees it.
pub struct Cmd<'a> {
    /// Connection number, from 0.
    pub conn: usize,
    /// Command number on this connection, from 0 (`qmp_capabilities`).
    pub n: usize,
    /// The command.
    pub name: &'a str,
    /// Its arguments.
    pub args: &'a Value,
}

type ActFn = Box<dyn Fn(&Cmd) -> Act + Send>;
type GreetFn = Box<dyn Fn(usize) -> Greet + Send>;
type BetweenFn = Box<dyn Fn(usize, &mut State) + Send>;

/// How the fake behaves.
pub struct Config {
    act: ActFn,
    greet: GreetFn,
    unplug_delay: Duration,
    deleted_events: bool,
    event_before_reply: Option<String>,
    noise: Option<(String, usize)>,
    stale_after_greeting: bool,
    between: Option<BetweenFn>,
    pcie: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            act: Box::new(|_| Act::Normal),
            greet: Box::new(|_| Greet::Normal),
            unplug_delay: Duration::ZERO,
            deleted_events: true,
            event_before_reply: None,
            noise: None,
            stale_after_greeting: false,
            between: None,
            pcie: false,
        }
    }
}

impl Config {
    /// The script for commands.
    pub fn act(mut self, f: impl Fn(&Cmd) -> Act + Send + 'static) -> Self {
        self.act = Box::new(f);
        self
    }
    /// The script for greetings, by connection number.
    pub fn greet(mut self, f: impl Fn(usize) -> Greet + Send + 'static) -> Self {
        self.greet = Box::new(f);
        self
    }
    /// How long the guest takes to release a device after `device_del`.
    pub fn unplug_delay(mut self, d: Duration) -> Self {
        self.unplug_delay = d;
        self
    }
    /// Never send `DEVICE_DELETED` (as if it went to another client).
    pub fn no_deleted_events(mut self) -> Self {
        self.deleted_events = false;
        self
    }
    /// Send this event line before every normal reply.
    pub fn event_before_reply(mut self, ev: &str) -> Self {
        self.event_before_reply = Some(ev.to_string());
        self
    }
    /// Send `count` copies of this event line before every normal reply.
    pub fn noise(mut self, ev: &str, count: usize) -> Self {
        self.noise = Some((ev.to_string(), count));
        self
    }
    /// Run `f` on the state after connection `n` closed and before the
    /// next is accepted: another client served in between.
    pub fn between(mut self, f: impl Fn(usize, &mut State) + Send + 'static) -> Self {
        self.between = Some(Box::new(f));
        self
    }
    /// Refuse a second `device_del` during an unplug as a PCIe slot does
    /// ("guest is busy (power indicator blinking)").
    pub fn pcie(mut self) -> Self {
        self.pcie = true;
        self
    }
    /// Send a reply left from the previous client after the greeting.
    pub fn stale_after_greeting(mut self) -> Self {
        self.stale_after_greeting = true;
        self
    }
    /// Start the monitor.
    pub fn start(self) -> FakeQemu {
        FakeQemu::start(self)
    }
}

/// A command as the monitor received it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The connection it came on (from 0).
    pub conn: usize,
    /// The command.
    pub name: String,
    /// Its arguments.
    pub args: Value,
    /// Its id.
    pub id: Option<Value>,
    /// Fds that came with it.
    pub fds: usize,
    /// Whether it was executed successfully.
    pub ok: bool,
}

/// A device in the fake QEMU.
#[derive(Debug)]
pub struct Device {
    /// Its driver.
    pub driver: String,
    /// Its netdev; empty for a device that is not a NIC.
    pub netdev: String,
    /// When the guest will have released it (after `device_del`).
    pub unplug_at: Option<Instant>,
}

/// The monitor's state, as QEMU would hold it.
#[derive(Default, Debug)]
pub struct State {
    /// Commands received.
    pub log: Vec<Logged>,
    /// Named fds (`getfd`).
    pub named: BTreeMap<String, OwnedFd>,
    /// Netdevs and the fds they consumed.
    pub netdevs: BTreeMap<String, Vec<OwnedFd>>,
    /// Devices.
    pub devices: BTreeMap<String, Device>,
}

impl State {
    /// The names of the commands received on connection `conn`.
    pub fn commands(&self, conn: usize) -> Vec<&str> {
        self.log
            .iter()
            .filter(|l| l.conn == conn)
            .map(|l| l.name.as_str())
            .collect()
    }
    /// Nothing named, no netdev, no device.
    pub fn is_clean(&self) -> bool {
        self.named.is_empty() && self.netdevs.is_empty() && self.devices.is_empty()
    }
}

/// A running fake monitor, on a socket in a temporary directory; it is
/// stopped when dropped.
pub struct FakeQemu {
    /// Its socket.
    pub path: PathBuf,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vmtap-fakeqmp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Receives one chunk and the fds that came with it; `None` on a read
/// timeout, `Some((0, _))` at the end.
fn recv(sock: &UnixStream, buf: &mut [u8]) -> Option<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = match recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return None,
        Err(_) => return Some((0, Vec::new())),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    Some((r.bytes, fds))
}

/// Reads and discards until the client leaves (or the fake stops).
fn wait_for_close(sock: &UnixStream, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if let Some((0, _)) = recv(sock, &mut buf) {
            return;
        }
    }
}

/// Writes `bytes` one at a time, `gap` apart; false if the client left.
fn trickle(mut sock: &UnixStream, bytes: &[u8], gap: Duration, stop: &AtomicBool) -> bool {
    for b in bytes {
        if stop.load(Ordering::Relaxed) || sock.write_all(&[*b]).is_err() {
            return false;
        }
        std::thread::sleep(gap);
    }
    true
}

/// Reads until a whole line is pending (true) or the client left (false).
fn wait_line(
    sock: &UnixStream,
    pending: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    stop: &AtomicBool,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    while !pending.contains(&b'\n') {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match recv(sock, &mut buf) {
            None => {}
            Some((0, _)) => return false,
            Some((n, got)) => {
                fds.extend(got);
                pending.extend_from_slice(&buf[..n]);
            }
        }
    }
    true
}

/// Sends events until the client leaves.
fn flood(mut sock: &UnixStream, stop: &AtomicBool) {
    let ev = "{\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": 1, \"qom-path\": \"/machine/unattached/device[0]\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n";
    let batch = ev.repeat(100);
    while !stop.load(Ordering::Relaxed) && sock.write_all(batch.as_bytes()).is_ok() {}
}

/// Starts a line and never ends it.
fn endless(mut sock: &UnixStream, stop: &AtomicBool) {
    let chunk = vec![b'a'; 64 * 1024];
    if sock.write_all(b"{\"return\": \"").is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) && sock.write_all(&chunk).is_ok() {}
}

impl FakeQemu {
    /// A monitor that behaves like QEMU.
    pub fn normal() -> FakeQemu {
        Config::default().start()
    }

    fn start(cfg: Config) -> FakeQemu {
        let dir = temp_dir();
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (st, stp, conns) = (state.clone(), stop.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            // Output for a client that left, which the next one gets.
            let mut stale = Vec::new();
            for conn in 0.. {
                let Ok((sock, _)) = listener.accept() else {
                    return;
                };
                if stp.load(Ordering::Relaxed) {
                    return;
                }
                conns.store(conn + 1, Ordering::Relaxed);
                // Unplugs that completed while nobody was connected: their
                // events went to nobody.
                tick(&cfg, &st, None);
                serve(conn, &sock, &cfg, &st, &stp, &mut stale);
                drop(sock);
                if let Some(f) = &cfg.between {
                    f(conn, &mut st.lock().unwrap());
                }
            }
        });
        FakeQemu {
            path,
            state,
            connections,
            stop,
            thread: Some(thread),
            _dir: TempDir(dir),
        }
    }

    /// The state now.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops the monitor (the client must have left) and returns its state.
    pub fn finish(mut self) -> State {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.state())
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = UnixStream::connect(&self.path);
            let _ = t.join();
        }
    }
}

/// Completes the unplugs that are due, sending their events to `sock`.
fn tick(cfg: &Config, state: &Mutex<State>, sock: Option<&UnixStream>) {
    let now = Instant::now();
    let mut st = state.lock().unwrap();
    let due: Vec<String> = st
        .devices
        .iter()
        .filter(|(_, d)| d.unplug_at.is_some_and(|t| t <= now))
        .map(|(id, _)| id.clone())
        .collect();
    for id in due {
        st.devices.remove(&id);
        if let (Some(mut s), true) = (sock, cfg.deleted_events) {
            let path = format!("/machine/peripheral/{id}");
            let a = json!({"event": "DEVICE_DELETED", "data": {"path": format!("{path}/virtio-backend")}});
            let b = json!({"event": "DEVICE_DELETED", "data": {"device": id, "path": path}});
            let _ = write!(s, "{a}\r\n{b}\r\n");
        }
    }
}

fn serve(
    conn: usize,
    sock: &UnixStream,
    cfg: &Config,
    state: &Mutex<State>,
    stop: &AtomicBool,
    stale: &mut Vec<u8>,
) {
    let mut out = sock;
    if !cfg.stale_after_greeting && out.write_all(&std::mem::take(stale)).is_err() {
        return;
    }
    match (cfg.greet)(conn) {
        Greet::Normal => {
            if out.write_all(GREETING.as_bytes()).is_err() {
                return;
            }
        }
        Greet::Silent => return wait_for_close(sock, stop),
        Greet::Raw(bytes) => {
            let _ = out.write_all(bytes.as_bytes());
        }
        Greet::Trickle(gap) => {
            if !trickle(sock, GREETING.as_bytes(), gap, stop) {
                return;
            }
        }
        Greet::Flood => return flood(sock, stop),
        Greet::Endless => return endless(sock, stop),
    }
    if out.write_all(&std::mem::take(stale)).is_err() {
        return;
    }
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut pending = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tick(cfg, state, Some(sock));
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Some((len, got)) = recv(sock, &mut buf) else {
            continue;
        };
        if len == 0 {
            return;
        }
        fds.extend(got);
        pending.extend_from_slice(&buf[..len]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let msg: Value = serde_json::from_slice(&line).unwrap();
            let name = msg["execute"].as_str().unwrap_or("").to_string();
            let args = msg.get("arguments").cloned().unwrap_or(json!({}));
            let id = msg.get("id").cloned();
            let act = (cfg.act)(&Cmd {
                conn,
                n,
                name: &name,
                args: &args,
            });
            n += 1;
            let logged = Logged {
                conn,
                name: name.clone(),
                args: args.clone(),
                id: id.clone(),
                fds: fds.len(),
                ok: false,
            };
            let reply = |result: Result<Value, (&str, String)>| {
                let mut r = match result {
                    Ok(v) => json!({ "return": v }),
                    Err((class, desc)) => json!({"error": {"class": class, "desc": desc}}),
                };
                if let Some(id) = &id {
                    r["id"] = id.clone();
                }
                format!("{r}\r\n")
            };
            let run = |fds: &mut Vec<OwnedFd>| {
                let mut st = state.lock().unwrap();
                let result = execute(&mut st, cfg, &name, &args, fds);
                st.log.push(Logged {
                    ok: result.is_ok(),
                    ..logged.clone()
                });
                fds.clear();
                reply(result)
            };
            let not_run = |fds: &mut Vec<OwnedFd>| {
                state.lock().unwrap().log.push(logged.clone());
                fds.clear();
            };
            match act {
                Act::Normal => {
                    let r = run(&mut fds);
                    if let Some(ev) = &cfg.event_before_reply {
                        let _ = write!(out, "{ev}\r\n");
                    }
                    if let Some((ev, count)) = &cfg.noise {
                        let _ = out.write_all(format!("{ev}\r\n").repeat(*count).as_bytes());
                    }
                    if out.write_all(r.as_bytes()).is_err() {
                        return;
                    }
                }
                Act::Fail => {
                    not_run(&mut fds);
                    let r = reply(Err(("GenericError", format!("{name} refused"))));
                    if out.write_all(r.as_bytes()).is_err() {
                        return;
                    }
                }
                Act::HangUp => return not_run(&mut fds),
                Act::Silence => {
                    not_run(&mut fds);
                    return wait_for_close(sock, stop);
                }
                Act::Late(d) => {
                    std::thread::sleep(d);
                    let r = run(&mut fds);
                    if out.write_all(r.as_bytes()).is_err() {
                        // The client left: the next one gets it.
                        *stale = r.into_bytes();
                        return;
                    }
                }
                Act::UntilNext => {
                    let mut mine = std::mem::take(&mut fds);
                    let more = wait_line(sock, &mut pending, &mut fds, stop);
                    let r = run(&mut mine);
                    if !more || out.write_all(r.as_bytes()).is_err() {
                        *stale = r.into_bytes();
                        return;
                    }
                }
                Act::UntilClose => {
                    let mut mine = std::mem::take(&mut fds);
                    wait_for_close(sock, stop);
                    *stale = run(&mut mine).into_bytes();
                    return;
                }
                Act::SplitUntilNext => {
                    let r = run(&mut fds);
                    let half = r.len() / 2;
                    let _ = out.write_all(&r.as_bytes()[..half]);
                    if !wait_line(sock, &mut pending, &mut fds, stop) {
                        return;
                    }
                    let _ = out.write_all(&r.as_bytes()[half..]);
                }
                Act::DoThenHangUp => {
                    run(&mut fds);
                    return;
                }
                Act::Return(raw) => {
                    let r = run(&mut fds);
                    let mut line = format!("{{\"return\": {raw}");
                    if let Some(id) = &id {
                        line.push_str(&format!(", \"id\": {id}"));
                    }
                    line.push_str("}\r\n");
                    drop(r);
                    if out.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
                Act::Split(d) => {
                    let r = run(&mut fds);
                    let half = r.len() / 2;
                    let _ = out.write_all(&r.as_bytes()[..half]);
                    std::thread::sleep(d);
                    let _ = out.write_all(&r.as_bytes()[half..]);
                }
                Act::Trickle(gap) => {
                    let r = run(&mut fds);
                    if !trickle(sock, r.as_bytes(), gap, stop) {
                        return;
                    }
                }
                Act::Garbage => {
                    not_run(&mut fds);
                    let _ = out.write_all(b"this is not JSON\r\n");
                }
                Act::Flood => {
                    not_run(&mut fds);
                    return flood(sock, stop);
                }
                Act::Endless => {
                    not_run(&mut fds);
                    return endless(sock, stop);
                }
            }
        }
    }
}

/// What QEMU does with the commands hot-plug sends.
fn execute(
    m: &mut State,
    cfg: &Config,
    cmd: &str,
    args: &Value,
    fds: &mut Vec<OwnedFd>,
) -> Result<Value, (&'static str, String)> {
    let generic = |s: String| ("GenericError", s);
    let not_found = |id: &str| ("DeviceNotFound", format!("Device '{id}' not found"));
    let name = |k: &str| args[k].as_str().unwrap_or("").to_string();
    match cmd {
        "qmp_capabilities" => Ok(json!({})),
        "echo" => Ok(args.clone()),
        "getfd" => {
            let fd = fds
                .pop()
                .ok_or_else(|| generic("No file descriptor supplied via SCM_RIGHTS".into()))?;
            // An existing name is replaced (its fd closed).
            m.named.insert(name("fdname"), fd);
            Ok(json!({}))
        }
        "closefd" => m
            .named
            .remove(&name("fdname"))
            .map(|_| json!({}))
            .ok_or_else(|| {
                generic(format!(
                    "File descriptor named '{}' not found",
                    name("fdname")
                ))
            }),
        "netdev_add" => {
            let id = name("id");
            if m.netdevs.contains_key(&id) {
                return Err(generic(format!("Duplicate ID '{id}'")));
            }
            let mut names: Vec<String> = Vec::new();
            for key in ["fd", "fds", "vhostfd", "vhostfds"] {
                if let Some(v) = args[key].as_str() {
                    names.extend(v.split(':').map(str::to_string));
                }
            }
            let mut taken = Vec::new();
            for n in names {
                // Consumed as found, even if a later one is missing.
                taken.push(m.named.remove(&n).ok_or_else(|| {
                    generic(format!("File descriptor named '{n}' has not been found"))
                })?);
            }
            m.netdevs.insert(id, taken);
            Ok(json!({}))
        }
        "netdev_del" => m
            .netdevs
            .remove(&name("id"))
            .map(|_| json!({}))
            .ok_or_else(|| not_found(&name("id"))),
        "device_add" => {
            let (driver, id, netdev) = (name("driver"), name("id"), name("netdev"));
            if driver != "virtio-net-pci" {
                return Err(generic(format!(
                    "'{driver}' is not a valid device model name"
                )));
            }
            if m.devices.contains_key(&id) {
                return Err(generic(format!("Duplicate device ID '{id}'")));
            }
            if !m.netdevs.contains_key(&netdev) {
                return Err(generic(format!(
                    "Property 'virtio-net-device.netdev' can't find value '{netdev}'"
                )));
            }
            m.devices.insert(
                id,
                Device {
                    driver,
                    netdev,
                    unplug_at: None,
                },
            );
            Ok(json!({}))
        }
        "device_del" => {
            let id = name("id");
            let d = m.devices.get_mut(&id).ok_or_else(|| not_found(&id))?;
            if d.unplug_at.is_some() {
                return Err(generic(if cfg.pcie {
                    "Hot-unplug failed: guest is busy (power indicator blinking)".to_string()
                } else {
                    format!("Device {id} is already in the process of unplug")
                }));
            }
            d.unplug_at = Some(Instant::now() + cfg.unplug_delay);
            Ok(json!({}))
        }
        "qom-list" if args["path"] == "/machine/peripheral" => {
            let mut list = vec![json!({"name": "type", "type": "string"})];
            for (id, d) in &m.devices {
                list.push(json!({"name": id, "type": format!("child<{}>", d.driver)}));
            }
            Ok(Value::Array(list))
        }
        "human-monitor-command" if args["command-line"] == "info network" => {
            let mut out = String::new();
            let mut shown = Vec::new();
            for (id, d) in m.devices.iter().filter(|(_, d)| !d.netdev.is_empty()) {
                out.push_str(&format!(
                    "{id}: index=0,type=nic,model={},macaddr=52:54:00:12:34:56\r\n",
                    d.driver
                ));
                if m.netdevs.contains_key(&d.netdev) {
                    out.push_str(&format!(" \\ {}: index=0,type=tap,fd=12\r\n", d.netdev));
                    shown.push(d.netdev.clone());
                }
            }
            for id in m.netdevs.keys().filter(|n| !shown.contains(n)) {
                out.push_str(&format!("{id}: index=0,type=tap,fd=13\r\n"));
            }
            Ok(Value::String(out))
        }
        other => Err((
            "CommandNotFound",
            format!("The command {other} has not been found"),
        )),
    }
}
