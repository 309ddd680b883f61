//! Privileges: whatever the helper was started with (setuid root, the file
//! capability `cap_net_admin+ep`, real root, or libvirt's
//! `CAP_NET_ADMIN`-only root), it keeps `CAP_NET_ADMIN` and nothing else,
//! as the calling user, before it reads anything the caller controls
//! beyond its arguments.
//!
//! Setuid root (real uid not 0, effective uid 0), as QEMU's helper with
//! libcap-ng: every capability but `CAP_NET_ADMIN` leaves the bounding
//! set; with `PR_SET_KEEPCAPS` the real, effective and saved ids (group
//! first) become the caller's, supplementary groups kept (per-user include
//! files may be protected by group); then the capability sets are set to
//! exactly `CAP_NET_ADMIN` (permitted and effective), nothing inheritable,
//! no ambient capability. Every other start only narrows the capability
//! sets the same way. Last, `PR_SET_NO_NEW_PRIVS`. The result is read back
//! (`/proc/self/status`) and checked.
//!
//! ids are per thread for the kernel (rustix's `set_thread_res_uid` is the
//! raw system call, not glibc's all-threads `setresuid`), so the change is
//! made only while the process has one thread (checked).

use std::fmt;

use rustix::process::{Gid, Uid, getegid, geteuid, getgid, getuid};
use rustix::thread::{
    CapabilitySet, CapabilitySets, capabilities, clear_ambient_capability_set,
    remove_capability_from_bounding_set, set_capabilities, set_keep_capabilities, set_no_new_privs,
    set_thread_res_gid, set_thread_res_uid,
};

/// The one capability kept.
pub const KEEP: CapabilitySet = CapabilitySet::NET_ADMIN;

/// How the helper runs once privileges are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The kernel started it in secure mode (`AT_SECURE`: setuid, setgid
    /// or file capabilities): the caller's environment is not trusted.
    pub secure: bool,
    /// `CAP_NET_ADMIN` is effective.
    pub net_admin: bool,
}

/// A step of the drop that failed.
#[derive(Debug)]
pub struct PrivError {
    step: &'static str,
    source: std::io::Error,
}

impl fmt::Display for PrivError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot drop privileges ({}): {}", self.step, self.source)
    }
}

fn step<T>(step: &'static str, r: Result<T, impl Into<std::io::Error>>) -> Result<T, PrivError> {
    r.map_err(|e| PrivError {
        step,
        source: e.into(),
    })
}

fn failed(step: &'static str, why: String) -> PrivError {
    PrivError {
        step,
        source: std::io::Error::other(why),
    }
}

/// `AT_SECURE` from the auxiliary vector; `None` when `/proc` cannot tell
/// (a process that gained capabilities from its file cannot read its own
/// `auxv`: the file is root's and mode 0400).
fn at_secure() -> Option<bool> {
    const AT_SECURE: usize = 23;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let word = |c: &[u8]| usize::from_ne_bytes(c.try_into().expect("a word"));
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .find(|(key, _)| *key == AT_SECURE)
        .map(|(_, v)| v != 0)
}

/// Drops to `CAP_NET_ADMIN` as the caller (see the module documentation).
pub fn drop_privileges() -> Result<Dropped, PrivError> {
    let (ruid, euid, rgid, egid) = (getuid(), geteuid(), getgid(), getegid());
    let before = step("capget", capabilities(None))?;
    // Without /proc, anything unusual counts as secure.
    let secure = at_secure().unwrap_or(
        ruid != euid || rgid != egid || (!ruid.is_root() && !before.permitted.is_empty()),
    );
    // ids and capabilities are per thread for the kernel.
    match vmtap_sys::thread_count() {
        Ok(1) => {}
        Ok(n) => return Err(failed("threads", format!("{n} threads, not 1"))),
        Err(e) => {
            return Err(PrivError {
                step: "counting threads",
                source: e,
            });
        }
    }
    let setuid = !ruid.is_root() && euid.is_root();
    if setuid {
        if before.effective.contains(CapabilitySet::SETPCAP) {
            for cap in bounding_set_to_drop() {
                // A capability this kernel does not have is not there.
                match remove_capability_from_bounding_set(cap) {
                    Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                    Err(e) => {
                        return Err(PrivError {
                            step: "PR_CAPBSET_DROP",
                            source: e.into(),
                        });
                    }
                }
            }
        }
        step("PR_SET_KEEPCAPS", set_keep_capabilities(true))?;
        step("setresgid", set_thread_res_gid(rgid, rgid, rgid))?;
        step("setresuid", set_thread_res_uid(ruid, ruid, ruid))?;
        step("PR_SET_KEEPCAPS", set_keep_capabilities(false))?;
    }
    // Setuid: the permitted set survived the uid change (KEEPCAPS);
    // otherwise it is what the process was given.
    let now = step("capget", capabilities(None))?;
    let keep = now.permitted & KEEP;
    step(
        "capset",
        set_capabilities(
            None,
            CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: CapabilitySet::empty(),
            },
        ),
    )?;
    step(
        "clearing ambient capabilities",
        clear_ambient_capability_set(),
    )?;
    step("PR_SET_NO_NEW_PRIVS", set_no_new_privs(true))?;
    // No core dump and no ptrace by the caller, whatever fs.suid_dumpable
    // says (the uid change above set it from there).
    step(
        "PR_SET_DUMPABLE",
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable),
    )?;
    verify(ruid, rgid, keep)?;
    Ok(Dropped {
        secure,
        net_admin: keep == KEEP,
    })
}

/// Every capability this kernel knows but the one kept.
fn bounding_set_to_drop() -> impl Iterator<Item = CapabilitySet> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    (0..=last)
        .map(|n| CapabilitySet::from_bits_retain(1 << n))
        .filter(|c| *c != KEEP)
}

/// Reads the credentials back from `/proc/self/status` (when there is a
/// `/proc`) and checks them.
fn verify(ruid: Uid, rgid: Gid, keep: CapabilitySet) -> Result<(), PrivError> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // No /proc: the calls above succeeded, which is what they promise.
        return Ok(());
    };
    let creds = Creds::parse(&status).map_err(|why| failed("reading /proc/self/status", why))?;
    let want = Creds {
        uids: [ruid.as_raw(); 4],
        gids: [rgid.as_raw(); 4],
        effective: keep.bits(),
        permitted: keep.bits(),
        inheritable: 0,
        ambient: 0,
        no_new_privs: true,
    };
    if creds != want {
        return Err(failed(
            "checking the result",
            format!("credentials are {creds:?}, not {want:?}"),
        ));
    }
    Ok(())
}

/// The credential lines of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gids.
    pub gids: [u32; 4],
    /// `CapEff`.
    pub effective: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapAmb`.
    pub ambient: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

impl Creds {
    /// Parses the credential lines of a `/proc/PID/status` text.
    pub fn parse(status: &str) -> Result<Self, String> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| format!("no {name} line"))
        };
        let ids = |name: &str| -> Result<[u32; 4], String> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(|x| x.parse().map_err(|_| format!("bad {name} line")))
                .collect::<Result<_, _>>()?;
            v.try_into().map_err(|_| format!("bad {name} line"))
        };
        let caps = |name: &str| {
            u64::from_str_radix(field(name)?, 16).map_err(|_| format!("bad {name} line"))
        };
        Ok(Self {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            effective: caps("CapEff")?,
            permitted: caps("CapPrm")?,
            inheritable: caps("CapInh")?,
            ambient: caps("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }
}

/// Whether an environment variable changes how a program or its C
/// library loads or behaves in ways a privileged program must not accept
/// from its caller: the dynamic loader's `LD_*`, glibc's tunables and
/// `MALLOC_*`, and the paths glibc itself ignores in secure mode. (glibc
/// already removes many of them from a secure program's environment; any
/// left means a surprise.)
pub fn unsafe_variable(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 10] = [
        b"GCONV_PATH",
        b"GETCONF_DIR",
        b"GLIBC_TUNABLES",
        b"HOSTALIASES",
        b"LOCALDOMAIN",
        b"LOCPATH",
        b"NIS_PATH",
        b"NLSPATH",
        b"RESOLV_HOST_CONF",
        b"RES_OPTIONS",
    ];
    name.starts_with(b"LD_") || name.starts_with(b"MALLOC_") || NAMES.contains(&name)
}

/// In secure mode, the first variable of `vars` that [`unsafe_variable`]
/// refuses (an empty `GLIBC_TUNABLES`, which glibc leaves after filtering,
/// is fine).
pub fn refused_variable<'a>(
    secure: bool,
    vars: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<&'a [u8]> {
    if !secure {
        return None;
    }
    vars.into_iter()
        .find(|(k, v)| unsafe_variable(k) && !(*k == b"GLIBC_TUNABLES" && v.is_empty()))
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_variables_are_refused_only_in_secure_mode() {
        let env: Vec<(&[u8], &[u8])> = vec![
            (b"PATH", b"/usr/bin"),
            (b"HOME", b"/root"),
            (b"LD_BIND_NOW", b"1"),
        ];
        assert_eq!(
            refused_variable(true, env.clone()),
            Some(&b"LD_BIND_NOW"[..])
        );
        assert_eq!(refused_variable(false, env), None);
        for bad in [
            &b"LD_PRELOAD"[..],
            b"LD_LIBRARY_PATH",
            b"LD_AUDIT",
            b"LD_",
            b"MALLOC_ARENA_MAX",
            b"GCONV_PATH",
            b"LOCPATH",
            b"NLSPATH",
            b"RES_OPTIONS",
        ] {
            assert!(unsafe_variable(bad), "{}", String::from_utf8_lossy(bad));
            assert_eq!(refused_variable(true, [(bad, &b"x"[..])]), Some(bad));
        }
        for fine in [
            &b"PATH"[..],
            b"LANG",
            b"TERM",
            b"XLD_PRELOAD",
            b"ld_preload",
            b"TMPDIR",
        ] {
            assert!(!unsafe_variable(fine), "{}", String::from_utf8_lossy(fine));
        }
        assert_eq!(
            refused_variable(true, [(&b"GLIBC_TUNABLES"[..], &b""[..])]),
            None
        );
        assert!(
            refused_variable(
                true,
                [(&b"GLIBC_TUNABLES"[..], &b"glibc.malloc.check=3"[..])]
            )
            .is_some()
        );
    }

    #[test]
    fn status_credentials_parse() {
        let status = "Name:\tx\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
                      CapInh:\t0000000000000000\nCapPrm:\t0000000000001000\nCapEff:\t0000000000001000\n\
                      CapBnd:\t0000000000001000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let c = Creds::parse(status).unwrap();
        assert_eq!(c.uids, [65534; 4]);
        assert_eq!(c.effective, KEEP.bits());
        assert_eq!(c.permitted, 1 << 12);
        assert!(c.no_new_privs);
        assert!(Creds::parse("Uid:\t1\t2\n").is_err());
        // This process's own status parses.
        Creds::parse(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
    }

    #[test]
    fn the_bounding_set_to_drop_spares_net_admin() {
        let caps: Vec<CapabilitySet> = bounding_set_to_drop().collect();
        assert!(!caps.contains(&KEEP));
        assert!(caps.contains(&CapabilitySet::SYS_ADMIN));
        assert!(caps.contains(&CapabilitySet::SETUID));
        assert!(caps.iter().all(|c| c.bits().count_ones() == 1));
    }
}
