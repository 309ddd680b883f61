//! The command line: QEMU's `[--use-vnet] --br=BR --fd=N`, in any order,
//! and vmtap's extensions `--queues=N` and `--name=NAME` (which QEMU never
//! passes, so its use is untouched).

use std::ffi::OsString;

/// The usage line, printed on stderr for anything else.
pub const USAGE: &str =
    "usage: vmtap-bridge-helper [--use-vnet] --br=BRIDGE --fd=N [--queues=N] [--name=NAME]";

/// The most fds one `SCM_RIGHTS` message carries (`SCM_MAX_FD` in the
/// kernel), and so the most queues.
pub const MAX_QUEUES: usize = 253;

/// Longest interface name, without the trailing NUL (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = vmtap_sys::IFNAME_MAX;

/// What the caller asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--use-vnet`: a virtio-net header when the kernel has it.
    pub use_vnet: bool,
    /// `--br=BR`: the bridge.
    pub bridge: String,
    /// `--fd=N`: the inherited unix socket to send the fds on.
    pub fd: i32,
    /// `--queues=N`: queues of one multi-queue tap (default 1).
    pub queues: usize,
    /// `--name=NAME`: the tap's name or `%d` template (default: the
    /// kernel's `tap%d`).
    pub name: Option<String>,
}

/// Why the arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// Not QEMU's interface: the usage line is printed.
    Usage(String),
    /// A value that cannot be right (QEMU: "name `X' too long").
    Invalid(String),
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(why) => write!(f, "{why}; {USAGE}"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, ArgError> {
    let mut use_vnet = false;
    let mut bridge = None;
    let mut fd = None;
    let mut queues = None;
    let mut name = None;
    for arg in args {
        let Some(arg) = arg.to_str() else {
            return Err(ArgError::Usage(format!(
                "argument {} is not valid UTF-8",
                crate::quote(&arg.to_string_lossy())
            )));
        };
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        match (key, value) {
            ("--use-vnet", None) => use_vnet = true,
            ("--br", Some(v)) => {
                once(key, &bridge)?;
                bridge = Some(v.to_string());
            }
            ("--fd", Some(v)) => {
                once(key, &fd)?;
                fd = Some(number(key, v, i32::MAX as usize)? as i32);
            }
            ("--queues", Some(v)) => {
                once(key, &queues)?;
                let q = number(key, v, MAX_QUEUES)?;
                if q == 0 {
                    return Err(ArgError::Invalid(format!(
                        "--queues={v}: 1 to {MAX_QUEUES} queues"
                    )));
                }
                queues = Some(q);
            }
            ("--name", Some(v)) => {
                once(key, &name)?;
                // A name of digits reads as an interface index to many
                // tools ("%d" alone makes one).
                if v.bytes().all(|b| b.is_ascii_digit()) || v == "%d" {
                    return Err(ArgError::Invalid(format!(
                        "--name={}: a name of digits only is refused (it reads as an interface index)",
                        crate::escape(v)
                    )));
                }
                name = Some(v.to_string());
            }
            _ => {
                return Err(ArgError::Usage(format!(
                    "unknown argument {}",
                    crate::quote(arg)
                )));
            }
        }
    }
    let (Some(bridge), Some(fd)) = (bridge, fd) else {
        return Err(ArgError::Usage("--br and --fd are required".into()));
    };
    check_ifname("bridge", &bridge)?;
    if let Some(n) = &name {
        vmtap::validate_name(n, true).map_err(|e| ArgError::Invalid(format!("--name: {e}")))?;
    }
    Ok(Args {
        use_vnet,
        bridge,
        fd,
        queues: queues.unwrap_or(1),
        name,
    })
}

/// Each option at most once.
fn once<T>(key: &str, slot: &Option<T>) -> Result<(), ArgError> {
    match slot {
        Some(_) => Err(ArgError::Usage(format!("{key} given twice"))),
        None => Ok(()),
    }
}

/// A decimal number from 0 to `max`, digits only.
fn number(key: &str, v: &str, max: usize) -> Result<usize, ArgError> {
    let bad = || {
        ArgError::Invalid(format!(
            "{key}={}: not a number from 0 to {max}",
            crate::escape(v)
        ))
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse::<usize>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(bad)
}

/// An interface name as the kernel takes it: 1 to 15 bytes (QEMU's
/// helper refuses 16 or more: the CVE-2019-13164 overflow), no `/`, no
/// whitespace, no `:`, not `.` or `..`.
fn check_ifname(what: &str, name: &str) -> Result<(), ArgError> {
    if name.len() > IFNAME_MAX {
        return Err(ArgError::Invalid(format!(
            "{what} name {} too long: {} bytes (at most {IFNAME_MAX})",
            crate::quote(name),
            name.len()
        )));
    }
    vmtap_net::routed::check_ifname(name)
        .map_err(|e| ArgError::Invalid(format!("{what}: {}", crate::escape(&e.to_string()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, ArgError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn qemus_and_libvirts_orders() {
        let want = Args {
            use_vnet: true,
            bridge: "br0".into(),
            fd: 7,
            queues: 1,
            name: None,
        };
        // QEMU: --use-vnet --fd=N --br=BR; libvirt: [--use-vnet] --br=BR --fd=N.
        assert_eq!(p(&["--use-vnet", "--fd=7", "--br=br0"]).unwrap(), want);
        assert_eq!(p(&["--use-vnet", "--br=br0", "--fd=7"]).unwrap(), want);
        assert_eq!(p(&["--br=br0", "--fd=7", "--use-vnet"]).unwrap(), want);
        assert_eq!(
            p(&["--br=br0", "--fd=7"]).unwrap(),
            Args {
                use_vnet: false,
                ..want.clone()
            }
        );
        assert_eq!(
            p(&["--fd=0", "--br=br0", "--queues=4", "--name=vm%d"]).unwrap(),
            Args {
                use_vnet: false,
                fd: 0,
                queues: 4,
                name: Some("vm%d".into()),
                ..want
            }
        );
    }

    #[test]
    fn anything_else_is_a_usage_error() {
        for args in [
            &[][..],
            &["--help"],
            &["--br=br0"],
            &["--fd=3"],
            &["--br=br0", "--fd=3", "--verbose"],
            &["--br=br0", "--fd=3", "extra"],
            &["--br", "br0", "--fd=3"],
            &["--br=br0", "--fd=3", "--use-vnet=1"],
            &["--br=br0", "--br=br1", "--fd=3"],
            &["--br=br0", "--fd=3", "--fd=4"],
            &["--br=br0", "--fd=3", "--queues=2", "--queues=2"],
            &["-br=br0", "--fd=3"],
        ] {
            match p(args) {
                Err(e @ ArgError::Usage(_)) => {
                    assert!(e.to_string().ends_with(USAGE), "{e}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let bad = OsString::from(
            std::os::unix::ffi::OsStrExt::from_bytes(b"--br=\xff") as &std::ffi::OsStr
        );
        assert!(matches!(
            parse([bad, "--fd=3".into()]),
            Err(ArgError::Usage(_))
        ));
    }

    #[test]
    fn values_that_cannot_be_right() {
        for (args, want) in [
            (
                &["--br=0123456789abcdef", "--fd=3"][..],
                "too long: 16 bytes",
            ),
            (&["--br=0123456789abcdefgh", "--fd=3"], "too long: 18 bytes"),
            (&["--br=", "--fd=3"], "bridge: invalid interface name"),
            (&["--br=a/b", "--fd=3"], "contains '/'"),
            (&["--br=a b", "--fd=3"], "counts as a space"),
            (&["--br=br0", "--fd=-1"], "--fd=-1: not a number"),
            (&["--br=br0", "--fd=3x"], "not a number"),
            (&["--br=br0", "--fd="], "not a number"),
            (&["--br=br0", "--fd=+3"], "not a number"),
            (&["--br=br0", "--fd=99999999999"], "not a number"),
            (&["--br=br0", "--fd=3", "--queues=0"], "1 to 253"),
            (&["--br=br0", "--fd=3", "--queues=254"], "from 0 to 253"),
            (&["--br=br0", "--fd=3", "--name=0123456789abcdef"], "--name"),
            (&["--br=br0", "--fd=3", "--name=a:b"], "--name"),
        ] {
            match p(args) {
                Err(ArgError::Invalid(e)) => assert!(e.contains(want), "{args:?}: {e}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        // 15 bytes is the longest name.
        assert_eq!(
            p(&["--br=0123456789abcde", "--fd=3"]).unwrap().bridge.len(),
            15
        );
    }
}
