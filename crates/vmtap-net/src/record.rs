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

/// A NIC's record, locked for the life of this value.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    pub record: Option<Record>,
}

impl Journal {
    /// Locks and reads the record of `ifname` in this network namespace
    /// (none when there is no file).
    pub fn open(dir: &StateDir, ifname: &str) -> Result<Self, LinkError> {
        let nics = dir.nics();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&nics)
            .map_err(|e| state_error(&nics, e))?;
        let ns = netns_id().map_err(netns_error)?;
        let base = format!("{ns}-{ifname}");
        let path = nics.join(format!("{base}.json"));
        let lock_path = nics.join(format!("{base}.lock"));
        let lock = lock(&lock_path)?;
        let record = read_record(&path)?;
        Ok(Self {
            path,
            lock_path,
            _lock: lock,
            record,
        })
    }

    /// Writes the record (atomically: a new file renamed over the old),
    /// or removes it when it is empty.
    pub fn save(&self) -> Result<(), LinkError> {
        match &self.record {
            Some(r) if !r.steps.is_empty() => {
                let tmp = self.path.with_extension("json.new");
                let text = serde_json::to_vec(r).map_err(io::Error::other);
                text.and_then(|text| {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&text)?;
                    fs::rename(&tmp, &self.path)
                })
                .map_err(|e| state_error(&self.path, e))
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
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
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
    let f = match File::open(path) {
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

/// The interface name of the record owned by `owner` in this network
/// namespace, if any. Looks at no more than `limit` entries.
pub(crate) fn find_owned(
    dir: &StateDir,
    owner: &Owner,
    limit: usize,
) -> Result<Option<String>, LinkError> {
    let nics = dir.nics();
    let entries = match fs::read_dir(&nics) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(&nics, e)),
    };
    let ns = netns_id().map_err(netns_error)?;
    let prefix = format!("{ns}-");
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
        // A record that cannot be read is not ours to judge here.
        if let Ok(Some(r)) = read_record(&entry.path())
            && r.owner.as_ref() == Some(owner)
        {
            return Ok(Some(ifname.to_string()));
        }
    }
    Ok(None)
}
