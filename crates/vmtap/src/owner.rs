//! Who owns a tap: a process (pid and start time) and a free tag, kept in
//! the link's alias (`IFLA_IFALIAS`) where any tool can see it (`ip -d
//! link` shows `alias vmtap pid=4242 start=1234567 tag=web`) and where it
//! lasts as long as the link.
//!
//! The start time (in clock ticks since boot, field 22 of
//! `/proc/PID/stat`) tells a pid reused by another process apart from the
//! owner. Pids are those of the pid namespace of the process that records
//! and of the one that checks: run `vmtap gc` where the VMs run.

use std::fmt;
use std::io::{self, Read};

use crate::error::{Error, Result};

/// The first word of every alias vmtap writes.
pub const ALIAS_MARK: &str = "vmtap";
/// The longest tag.
pub const MAX_TAG: usize = 64;

/// A process, as a pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks since boot (`/proc/PID/stat`).
    pub start_time: u64,
    /// The pid namespace the pid belongs to (the inode of
    /// `/proc/self/ns/pid` of the process that recorded it), when known:
    /// from another pid namespace the owner cannot be checked.
    pub pidns: Option<u64>,
}

/// The inode of this process's pid namespace, when `/proc` is this pid
/// namespace's (`/proc/self` is this process): else `None`, and no pid
/// read from `/proc` can be trusted.
fn this_pidns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::read_link("/proc/self").ok()?;
    if me.to_str()? != std::process::id().to_string() {
        return None;
    }
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

impl Owner {
    /// The process `pid`, now.
    pub fn of_pid(pid: u32) -> Result<Self> {
        match start_time(pid) {
            Ok(Proc::Running(start_time)) => Ok(Self {
                pid,
                start_time,
                pidns: this_pidns(),
            }),
            Ok(_) => Err(Error::NoSuchProcess(pid)),
            Err(source) => Err(Error::ProcessInfo { pid, source }),
        }
    }

    /// This process (which stays the owner across `exec`: `vmtap open`
    /// becomes QEMU).
    pub fn this_process() -> Result<Self> {
        Self::of_pid(std::process::id())
    }

    /// Whether this process still runs: a process with this pid and this
    /// start time exists. `None` when that cannot be told: the owner was
    /// recorded in another pid namespace, `/proc` is not this pid
    /// namespace's, or the pid is hidden (`hidepid`) yet exists.
    pub fn is_alive(&self) -> Option<bool> {
        let here = this_pidns()?;
        if self.pidns.is_some_and(|ns| ns != here) {
            return None;
        }
        match start_time(self.pid) {
            Ok(Proc::Running(t)) => Some(t == self.start_time),
            // It runs no VM, whoever it was.
            Ok(Proc::Zombie) => Some(false),
            // Not in /proc: gone, unless /proc hides it from us.
            Ok(Proc::Missing) => {
                // A pid no process can have is gone.
                let Some(pid) = i32::try_from(self.pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                else {
                    return Some(false);
                };
                match rustix::process::test_kill_process(pid) {
                    Err(e) if e == rustix::io::Errno::SRCH => Some(false),
                    _ => None,
                }
            }
            Err(_) => None,
        }
    }
}

/// What `/proc/PID/stat` says of a pid.
enum Proc {
    /// It runs, started at this time.
    Running(u64),
    /// It exited and waits to be reaped.
    Zombie,
    /// No such entry.
    Missing,
}

/// The start time of `pid` from `/proc/PID/stat`.
fn start_time(pid: u32) -> io::Result<Proc> {
    if pid == 0 {
        return Ok(Proc::Missing);
    }
    let mut buf = Vec::with_capacity(512);
    match std::fs::File::open(format!("/proc/{pid}/stat")) {
        // The file is short (under 1 KiB); a bound all the same.
        Ok(f) => f.take(4096).read_to_end(&mut buf)?,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => {
            return Ok(Proc::Missing);
        }
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&buf);
    // The command name (field 2) is in parentheses and may hold anything,
    // parentheses and spaces included: fields 3.. follow the last ')'.
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat");
    let rest = text.rfind(')').map(|i| &text[i + 1..]).ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Field 3 is the state, field 22 the start time.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return Ok(Proc::Zombie);
    }
    let start = fields.get(22 - 3).ok_or_else(bad)?;
    start.parse().map(Proc::Running).map_err(|_| bad())
}

/// What vmtap records about who owns a tap: a process, a tag, both or
/// neither (a tap `vmtap create` made for nobody in particular).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ownership {
    /// The process the tap belongs to.
    pub owner: Option<Owner>,
    /// A free tag (a VM's name, a job's id), checked by [`check_tag`].
    pub tag: Option<String>,
}

/// Checks a tag: 1 to [`MAX_TAG`] bytes of ASCII letters, digits and
/// `. _ - : @ +` (no space: the alias is space-separated words).
pub fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTag(tag.to_string()))
    }
}

impl Ownership {
    /// No owner, no tag (still marks the tap as vmtap's).
    pub fn new() -> Self {
        Self::default()
    }

    /// Owned by `owner`.
    pub fn owner(mut self, owner: impl Into<Option<Owner>>) -> Self {
        self.owner = owner.into();
        self
    }

    /// With tag `tag` (checked).
    pub fn tag(mut self, tag: impl Into<Option<String>>) -> Result<Self> {
        let tag = tag.into();
        if let Some(t) = &tag {
            check_tag(t)?;
        }
        self.tag = tag;
        Ok(self)
    }

    /// The alias that records it: `vmtap[ pid=P start=T][ tag=TAG]`.
    pub fn to_alias(&self) -> String {
        self.to_string()
    }

    /// Reads an alias vmtap wrote; `None` for any other alias (a tap vmtap
    /// did not tag). Unknown words are ignored (a later version may add
    /// some); a malformed known word makes it not vmtap's.
    pub fn from_alias(alias: &str) -> Option<Self> {
        let mut words = alias.split(' ');
        if words.next()? != ALIAS_MARK {
            return None;
        }
        let (mut pid, mut start, mut pidns, mut tag) = (None, None, None, None);
        for word in words {
            match word.split_once('=') {
                Some(("pid", v)) => pid = Some(v.parse::<u32>().ok()?),
                Some(("start", v)) => start = Some(v.parse::<u64>().ok()?),
                Some(("pidns", v)) => pidns = Some(v.parse::<u64>().ok()?),
                Some(("tag", v)) => {
                    check_tag(v).ok()?;
                    tag = Some(v.to_string());
                }
                _ => {}
            }
        }
        let owner = match (pid, start) {
            (Some(pid), Some(start_time)) => Some(Owner {
                pid,
                start_time,
                pidns,
            }),
            (None, None) if pidns.is_none() => None,
            _ => return None,
        };
        Some(Self { owner, tag })
    }
}

impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ALIAS_MARK)?;
        if let Some(o) = &self.owner {
            write!(f, " pid={} start={}", o.pid, o.start_time)?;
            if let Some(ns) = o.pidns {
                write!(f, " pidns={ns}")?;
            }
        }
        if let Some(t) = &self.tag {
            write!(f, " tag={t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_round_trip_and_foreign_ones_are_not_taken() {
        let o = Owner {
            pid: 42,
            start_time: 123_456,
            pidns: Some(4_026_531_836),
        };
        for own in [
            Ownership::new(),
            Ownership::new().owner(o),
            Ownership::new().tag("vm-1.web".to_string()).unwrap(),
            Ownership::new()
                .owner(o)
                .tag("a@b:c+d_e".to_string())
                .unwrap(),
        ] {
            assert_eq!(Ownership::from_alias(&own.to_alias()), Some(own.clone()));
        }
        assert_eq!(
            Ownership::new().owner(o).to_alias(),
            "vmtap pid=42 start=123456 pidns=4026531836"
        );
        for foreign in [
            "",
            "vm1 uplink",
            "vmtapx pid=1 start=2",
            "vmtap pid=1",
            "vmtap start=1",
            "vmtap pid=x start=1",
            "vmtap pid=1 start=-1",
            "vmtap pidns=1",
            "vmtap pid=1 start=2 pidns=x",
            "vmtap tag=",
            "VMTAP",
        ] {
            assert_eq!(Ownership::from_alias(foreign), None, "{foreign:?}");
        }
        // A later version's extra words are ignored.
        assert_eq!(
            Ownership::from_alias("vmtap pid=1 start=2 vm=x tag=t"),
            Some(
                Ownership::new()
                    .owner(Owner {
                        pid: 1,
                        start_time: 2,
                        pidns: None,
                    })
                    .tag("t".to_string())
                    .unwrap()
            )
        );
    }

    #[test]
    fn tags_are_checked() {
        for bad in ["", "a b", "x/y", "é", "a=b", &"t".repeat(65)] {
            assert!(
                matches!(check_tag(bad), Err(Error::InvalidTag(_))),
                "{bad:?}"
            );
        }
        check_tag(&"t".repeat(64)).unwrap();
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::this_process().unwrap();
        assert_eq!(me.is_alive(), Some(true));
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(reused.is_alive(), Some(false));
        assert!(matches!(Owner::of_pid(0), Err(Error::NoSuchProcess(0))));
        // Recorded in another pid namespace: cannot be told.
        let elsewhere = Owner {
            pidns: me.pidns.map(|n| n + 1),
            ..me
        };
        assert_eq!(elsewhere.is_alive(), None);
        // A pid that no process has.
        let gone = Owner {
            pid: 4_000_000_000,
            ..me
        };
        assert_eq!(gone.is_alive(), Some(false));
    }
}
