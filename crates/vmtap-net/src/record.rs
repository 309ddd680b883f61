//! The record of what a NIC set-up changed on the host, kept on disk so
//! that another process (`vmtap ifdown`, `vmtap hotplug del`) can undo
//! exactly that. One JSON file per interface and network namespace, saved
//! after every step (so a set-up killed half-way can still be undone), and
//! a lock file beside it so that two processes never work on one NIC at
//! once.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::LinkError;
use crate::setup::{NicMode, Step};

/// Where records are kept unless `VMTAP_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/vmtap";
/// The largest record read (a record is a few hundred bytes).
const MAX_RECORD: u64 = 1 << 20;
/// How long to wait for another process working on the same NIC.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The directory of NIC records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// `$VMTAP_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
    pub fn from_env() -> Self {
        match std::env::var_os("VMTAP_STATE_DIR") {
            Some(d) if !d.is_empty() => Self(d.into()),
            _ => Self(DEFAULT_STATE_DIR.into()),
        }
    }

    fn check_absolute(&self) -> Result<(), LinkError> {
        if self.0.is_absolute() {
            Ok(())
        } else {
            Err(LinkError::UnsafeStateDir {
                path: self.0.clone(),
                problem: "not an absolute path".into(),
            })
        }
    }

    /// This directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    fn nics(&self) -> PathBuf {
        self.0.join("nics")
    }
}

/// Who set a NIC up, when it was a hot-plug: `hotplug del` finds the
/// record by this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The NIC's device and netdev id.
    pub id: String,
}

/// What a NIC set-up changed, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub version: u32,
    pub ifname: String,
    /// The interface index the steps were made on: a tap of the same name
    /// made later is another device.
    pub index: u32,
    pub mode: Option<NicMode>,
    /// What identifies the NIC beyond the name (see `LinkOptions::nic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// The Open vSwitch database used, for undoing an OVS port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs_db: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    pub steps: Vec<Step>,
}

/// The network namespace of the calling thread (tests give each thread
/// its own), by its cookie: never reused, so a record of a namespace that
/// is gone is never taken for one of a new namespace.
fn netns_id() -> io::Result<u64> {
    vmtap_sys::netns_cookie()
}

fn netns_error(source: io::Error) -> LinkError {
    LinkError::Netns(source)
}

fn state_error(path: &Path, source: io::Error) -> LinkError {
    LinkError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `path` is a directory (not a symlink) of this user that
/// nobody else may write: records tell vmtap, as root, what to undo.
fn check_dir(path: &Path) -> Result<(), LinkError> {
    let m = fs::symlink_metadata(path).map_err(|e| state_error(path, e))?;
    let euid = rustix::process::geteuid().as_raw();
    let problem = if !m.is_dir() {
        Some("not a directory (or a symbolic link)".to_string())
    } else if m.uid() != euid {
        Some(format!("owned by uid {}, not {euid}", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!("writable by others (mode {:o})", m.mode() & 0o7777))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(LinkError::UnsafeStateDir {
            path: path.to_path_buf(),
            problem,
        }),
    }
}

/// Opens a file of the state directory, never through a symbolic link
/// and never blocking (a FIFO planted there cannot hang us).
fn open_nofollow(opts: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let f = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// What in a record is not about `ifname`: a record that would make
/// vmtap touch another interface is refused whole.
fn foreign_step(r: &Record, ifname: &str) -> Option<String> {
    if r.ifname != ifname {
        return Some(format!("it is the record of \"{}\"", r.ifname));
    }
    for step in &r.steps {
        match step {
            Step::Rule { rule } if rule.iif != ifname => {
                return Some(format!("it holds a rule of \"{}\"", rule.iif));
            }
            Step::OvsPort { .. } if !matches!(r.mode, Some(NicMode::Openvswitch { .. })) => {
                return Some("it holds an Open vSwitch port of a NIC of another mode".into());
            }
            _ => {}
        }
    }
    None
}

/// A NIC's record, locked for the life of this value.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    pub record: Option<Record>,
}

fn nic_paths(dir: &StateDir, ifname: &str) -> Result<(PathBuf, PathBuf), LinkError> {
    let ns = netns_id().map_err(netns_error)?;
    let nics = dir.nics();
    let base = format!("{ns}-{ifname}");
    Ok((
        nics.join(format!("{base}.json")),
        nics.join(format!("{base}.lock")),
    ))
}

impl Journal {
    /// Locks and reads the record of `ifname` in this network namespace
    /// (none when there is no file), making the directory if `create`.
    pub fn open(dir: &StateDir, ifname: &str, create: bool) -> Result<Self, LinkError> {
        let paths = nic_paths(dir, ifname)?;
        Self::open_at(dir, ifname, create, paths)
    }

    fn open_at(
        dir: &StateDir,
        ifname: &str,
        create: bool,
        (path, lock_path): (PathBuf, PathBuf),
    ) -> Result<Self, LinkError> {
        dir.check_absolute()?;
        let nics = dir.nics();
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&nics)
                .map_err(|e| state_error(&nics, e))?;
        }
        check_dir(dir.path())?;
        check_dir(&nics)?;
        let lock = lock(&lock_path)?;
        let record = read_record(&path)?;
        if let Some(r) = &record
            && let Some(problem) = foreign_step(r, ifname)
        {
            return Err(LinkError::BadRecord { path, problem });
        }
        // A new copy left by a process killed while saving.
        let _ = fs::remove_file(path.with_extension("json.new"));
        Ok(Self {
            path,
            lock_path,
            _lock: lock,
            record,
        })
    }

    /// [`Journal::open`] when there is a record to open: `None` (and
    /// nothing made) when there is none.
    pub fn open_existing(dir: &StateDir, ifname: &str) -> Result<Option<Self>, LinkError> {
        let paths = nic_paths(dir, ifname)?;
        match fs::symlink_metadata(&paths.0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_error(&paths.0, e)),
            Ok(_) => {}
        }
        let j = Self::open_at(dir, ifname, false, paths)?;
        Ok(j.record.is_some().then_some(j))
    }

    /// Replaces the last `old` step on record by `new`, and saves.
    pub fn replace(&mut self, old: &Step, new: Vec<Step>) -> Result<(), LinkError> {
        self.replace_unsaved(old, new);
        self.save()
    }

    /// [`Journal::replace`] without saving.
    pub fn replace_unsaved(&mut self, old: &Step, new: Vec<Step>) {
        if let Some(r) = &mut self.record {
            crate::setup::replace_step(&mut r.steps, old, new);
        }
    }

    /// Writes the record (atomically: a new file renamed over the old),
    /// or removes it when it holds no step.
    pub fn save(&self) -> Result<(), LinkError> {
        match &self.record {
            Some(r) if !r.steps.is_empty() => {
                let tmp = self.path.with_extension("json.new");
                let write = || -> io::Result<()> {
                    let text = serde_json::to_vec(r).map_err(io::Error::other)?;
                    // Created exclusively: never written through a file
                    // planted there (one left by a crash went in open()).
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&tmp)?;
                    f.write_all(&text)?;
                    fs::rename(&tmp, &self.path)
                };
                write().map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    state_error(&self.path, e)
                })
            }
            _ => self.remove(),
        }
    }
    fn remove(&self) -> Result<(), LinkError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(state_error(&self.path, e)),
        }
    }

    /// Removes the record (the NIC is gone from the host's books); the
    /// lock file goes when this is dropped.
    pub fn finish(mut self) -> Result<(), LinkError> {
        self.record = None;
        self.remove()
    }
}

impl Drop for Journal {
    /// A NIC with nothing on record leaves no file: the lock file goes
    /// too, while its lock is still held. Another process waiting for it
    /// sees the file gone and takes a new one (see [`lock`]).
    fn drop(&mut self) {
        if self.record.as_ref().is_none_or(|r| r.steps.is_empty()) && !self.path.exists() {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// Takes the lock file's lock, waiting up to [`LOCK_WAIT`]. A lock file
/// removed (by [`Journal::finish`]) while we waited is not the lock any
/// more: then we take the new one.
fn lock(path: &Path) -> Result<File, LinkError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let f = open_nofollow(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            path,
        )
        .map_err(|e| state_error(path, e))?;
        match f.try_lock() {
            Ok(()) => {
                let held = f.metadata().map_err(|e| state_error(path, e))?;
                match fs::metadata(path) {
                    Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(f),
                    _ => continue,
                }
            }
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(LinkError::Busy {
                        path: path.to_path_buf(),
                        seconds: LOCK_WAIT.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::Error(e)) => return Err(state_error(path, e)),
        }
    }
}

fn read_record(path: &Path) -> Result<Option<Record>, LinkError> {
    let f = match open_nofollow(OpenOptions::new().read(true), path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(path, e)),
    };
    let mut text = Vec::new();
    f.take(MAX_RECORD + 1)
        .read_to_end(&mut text)
        .map_err(|e| state_error(path, e))?;
    if text.len() as u64 > MAX_RECORD {
        return Err(LinkError::BadRecord {
            path: path.to_path_buf(),
            problem: format!("larger than {MAX_RECORD} bytes"),
        });
    }
    let r: Record = serde_json::from_slice(&text).map_err(|e| LinkError::BadRecord {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    if r.version != 1 {
        return Err(LinkError::BadRecord {
            path: path.to_path_buf(),
            problem: format!("version {} (this vmtap reads version 1)", r.version),
        });
    }
    Ok(Some(r))
}

/// The interface names of the records owned by `owner` in this network
/// namespace. Looks at no more than `limit` entries.
pub(crate) fn find_owned(
    dir: &StateDir,
    owner: &Owner,
    limit: usize,
) -> Result<Vec<String>, LinkError> {
    Ok(
        find_records(dir, limit, |r| r.owner.as_ref() == Some(owner))?
            .into_iter()
            .map(|(ifname, _)| ifname)
            .collect(),
    )
}

/// The records of this network namespace that `pred` accepts (at most
/// `limit` files are looked at), by interface name. Unreadable records are
/// skipped with a warning.
pub(crate) fn find_records(
    dir: &StateDir,
    limit: usize,
    pred: impl Fn(&Record) -> bool,
) -> Result<Vec<(String, Record)>, LinkError> {
    let nics = dir.nics();
    let entries = match fs::read_dir(&nics) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_error(&nics, e)),
    };
    check_dir(&nics)?;
    let ns = netns_id().map_err(netns_error)?;
    let prefix = format!("{ns}-");
    let mut found = Vec::new();
    for entry in entries.take(limit) {
        let entry = entry.map_err(|e| state_error(&nics, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(ifname) = name
            .strip_prefix(&prefix)
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        match read_record(&entry.path()) {
            Ok(Some(r)) if r.ifname == ifname && pred(&r) => found.push((ifname.to_string(), r)),
            Ok(_) => {}
            Err(e) => log::warn!("skipping a record: {e}"),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}
