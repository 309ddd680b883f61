//! Interface names and device paths: the rules both the tap model and the
//! open policy use.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, NameProblem, Result};
use vmtap_sys::IFNAME_MAX;

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The vhost-net device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";
/// The kernel's limit on queues per tap (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// The device nodes vmtap opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePaths {
    /// The TUN/TAP clone device (default `/dev/net/tun`).
    pub tun: PathBuf,
    /// The vhost-net device (default `/dev/vhost-net`).
    pub vhost_net: PathBuf,
}

impl Default for DevicePaths {
    fn default() -> Self {
        Self {
            tun: TUN_PATH.into(),
            vhost_net: VHOST_NET_PATH.into(),
        }
    }
}

/// Checks an interface name against the kernel's rules before any syscall:
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:`, NUL or byte the kernel's
/// `isspace()` counts as a space (tab, newline, vertical tab, form feed,
/// carriage return, space, and 0xA0, which is inside UTF-8 characters such
/// as `à`), and at most one `%`, only as `%d` (a template; refused when
/// `allow_template` is false). The kernel would cut a long name silently;
/// we refuse it. A name accepted here is created by the kernel exactly as
/// it is (the property tests check this against the kernel).
pub fn validate_name(name: &str, allow_template: bool) -> Result<()> {
    let kernel_space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0);
    let problem = if name.is_empty() {
        Some(NameProblem::Empty)
    } else if name.len() > IFNAME_MAX {
        Some(NameProblem::TooLong(name.len()))
    } else if name == "." || name == ".." {
        Some(NameProblem::Dot)
    } else if let Some(c) = name.chars().find(|c| matches!(c, '/' | ':')) {
        Some(NameProblem::Forbidden(c))
    } else if name.contains('\0') {
        Some(NameProblem::Nul)
    } else if name.bytes().any(|b| b.is_ascii() && kernel_space(b)) {
        Some(NameProblem::Whitespace)
    } else if let Some(c) = name
        .chars()
        .find(|c| c.to_string().bytes().any(kernel_space))
    {
        Some(NameProblem::SpaceByte(c))
    } else if name.matches('%').count() > 1 || (name.contains('%') && !name.contains("%d")) {
        Some(NameProblem::Percent)
    } else if name.contains("%d") && !allow_template {
        Some(NameProblem::Template)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InvalidName {
            name: name.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// The prefix of the names vmtap chooses when the caller gives none.
pub const AUTO_NAME_PREFIX: &str = "tap";
/// The numbers of chosen names are below this: `tap0` to `tap999999`.
pub const AUTO_NAME_SPACE: u32 = 1_000_000;
/// How many chosen names are tried before vmtap leaves the choice to the
/// kernel's `tap%d` (whose cost grows with the number of interfaces).
pub const AUTO_NAME_ATTEMPTS: usize = 32;

/// The next name of this process's sequence, for a tap created without a
/// name: `tapN`, N starting at a random point of `0..AUTO_NAME_SPACE` and
/// counting up, so that a process's taps get consecutive numbers and
/// processes starting together rarely meet. The caller binds it with
/// `IFF_TUN_EXCL` and, when it is taken, calls [`skip_taken_names`] and
/// asks again. Unlike the kernel's `tap%d` (which reads every interface
/// name to find the lowest free number), this costs the same with 10 or
/// 10,000 interfaces.
pub fn next_auto_name() -> String {
    let n = sequence().fetch_add(1, Ordering::Relaxed) % AUTO_NAME_SPACE;
    format!("{AUTO_NAME_PREFIX}{n}")
}

/// Moves this process's sequence of chosen names to a new random point:
/// after a name was taken, its neighbours probably are too (another
/// process's sequence, or taps the kernel numbered).
pub fn skip_taken_names() {
    sequence().store(random_below(AUTO_NAME_SPACE), Ordering::Relaxed);
}

fn sequence() -> &'static AtomicU32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    NEXT.get_or_init(|| AtomicU32::new(random_below(AUTO_NAME_SPACE)))
}

/// A random number below `n`, from the standard library's randomly keyed
/// hasher (seeded from the OS), mixed with the pid and the time.
fn random_below(n: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    (h.finish() % u64::from(n)) as u32
}
