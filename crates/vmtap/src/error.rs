//! The error type of the tap core (model and policy).
//!
//! Every message says which step failed, on which interface, and the
//! kernel's reason in plain words; the raw OS error stays available as the
//! [`std::error::Error::source`].

use std::io;

use std::path::PathBuf;
use vmtap_sys::TunFlags;

/// Why an interface name was refused (checked before any syscall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is empty where a name is required.
    Empty,
    /// Longer than the kernel's 15 bytes (it would cut it silently).
    TooLong(usize),
    /// `.` or `..`.
    Dot,
    /// A character the kernel refuses (`/`, `:`).
    Forbidden(char),
    /// Space, tab, newline, vertical tab, form feed or carriage return.
    Whitespace,
    /// A character whose UTF-8 encoding has the byte 0xA0, which the
    /// kernel's `isspace()` counts as a space (`à`, `Ġ`, `ꀠ`...).
    SpaceByte(char),
    /// A NUL byte.
    Nul,
    /// A `%` other than one `%d`.
    Percent,
    /// A `%d` template where a concrete name is required.
    Template,
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "is empty"),
            Self::TooLong(n) => write!(
                f,
                "is {n} bytes long, more than the kernel's limit of {}",
                vmtap_sys::IFNAME_MAX
            ),
            Self::Dot => write!(f, "is not allowed (\".\" and \"..\" are reserved)"),
            Self::Forbidden(c) => write!(f, "contains '{c}'"),
            Self::Whitespace => write!(f, "contains whitespace"),
            Self::SpaceByte(c) => write!(
                f,
                "contains '{c}', whose UTF-8 byte 0xa0 the kernel counts as a space"
            ),
            Self::Nul => write!(f, "contains a NUL byte"),
            Self::Percent => write!(f, "has a '%' that is not a single \"%d\" template"),
            Self::Template => write!(f, "is a \"%d\" template where an exact name is needed"),
        }
    }
}

/// How an existing tap differs from what was asked (attaching never
/// changes a tap, so any difference is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// The tap is multi-queue (`tap: true`) but one queue was asked, or
    /// the other way round.
    MultiQueue {
        /// Whether the tap is multi-queue.
        tap: bool,
    },
    /// `vnet_hdr` on or off was asked and the tap has the other.
    VnetHdr {
        /// Whether the tap has a virtio-net header.
        tap: bool,
    },
    /// The tap sends packet-information headers (no `IFF_NO_PI`), which
    /// QEMU cannot use.
    PacketInfo,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MultiQueue { tap: true } => f.write_str(
                "its multi-queue setting differs (the tap is multi-queue, 1 queue was asked)",
            ),
            Self::MultiQueue { tap: false } => f.write_str(
                "its multi-queue setting differs (the tap is single-queue, more than 1 queue was asked)",
            ),
            Self::VnetHdr { tap: true } => f.write_str("vnet_hdr is on but off was asked"),
            Self::VnetHdr { tap: false } => f.write_str("vnet_hdr is off but on was asked"),
            Self::PacketInfo => f.write_str(
                "it has packet-information headers (pi on); QEMU needs a tap without them",
            ),
        }
    }
}

/// Why a set of fds is not one tap with consistent flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueProblem {
    /// No fds were given.
    NoFds,
    /// The device is a TUN (layer 3), not a TAP.
    Tun {
        /// The device.
        ifname: String,
    },
    /// Several fds of a single-queue device.
    NotMultiQueue {
        /// The device.
        ifname: String,
        /// How many fds were given.
        fds: usize,
    },
    /// Two fds are bound to different devices.
    OtherDevice {
        /// The first fd and its device.
        first: (i32, String),
        /// The other fd and its device.
        other: (i32, String),
    },
    /// Two fds of one device report different flags.
    OtherFlags {
        /// The first fd and its flags.
        first: (i32, TunFlags),
        /// The other fd and its flags.
        other: (i32, TunFlags),
    },
}

impl std::fmt::Display for QueueProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoFds => f.write_str("no fds were given"),
            Self::Tun { ifname } => write!(f, "\"{ifname}\" is a TUN device, not a TAP"),
            Self::NotMultiQueue { ifname, fds } => {
                write!(
                    f,
                    "{fds} fds were given but \"{ifname}\" is not multi-queue"
                )
            }
            Self::OtherDevice { first, other } => write!(
                f,
                "fd {} is bound to \"{}\" but fd {} to \"{}\"",
                first.0, first.1, other.0, other.1
            ),
            Self::OtherFlags { first, other } => write!(
                f,
                "fd {} has flags {:?} but fd {} has {:?}",
                first.0, first.1, other.0, other.1
            ),
        }
    }
}

/// Why a vhost-net path was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VhostProblem {
    /// A character device, but another one (vhost-vsock, vhost-scsi...).
    #[error("it is character device {major}:{minor}, not vhost-net's 10:238")]
    OtherDevice {
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
    /// Not a character device at all.
    #[error("it is not a character device")]
    NotCharDevice,
    /// `fstat` on it failed.
    #[error("fstat failed: {0}")]
    Fstat(#[source] io::Error),
    /// `VHOST_GET_FEATURES` failed (a stale node: no vhost_net module).
    #[error("VHOST_GET_FEATURES failed: {0}")]
    GetFeatures(#[source] io::Error),
}

/// What the caller was doing with an existing tap, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Attaching queues to it.
    Attach,
    /// Deleting it.
    Delete,
    /// Inspecting it.
    Inspect,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Attach => "attach to",
            Self::Delete => "delete",
            Self::Inspect => "inspect",
        })
    }
}

/// What the caller was doing when `TUNSETIFF` failed; picks the explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Creating a new interface, refusing to share an existing one.
    Create,
    /// Attaching to an existing interface on purpose.
    Attach,
    /// Adding queue k > 0 to the interface this call created.
    AddQueue,
}

/// Errors of the tap core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An interface name broke one of the kernel's rules.
    #[error("interface name \"{name}\" {problem}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it broke.
        problem: NameProblem,
    },
    /// The queue count is outside 1..=256.
    #[error("invalid queue count {0}: must be 1 to 256 (the kernel's MAX_TAP_QUEUES)")]
    InvalidQueues(usize),
    /// No user or group of that name (for a tap's owner or group).
    #[error("no {kind} named {name:?}")]
    NoSuchOwner {
        /// `user` or `group`.
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A numeric uid or gid the kernel does not take: `(uid_t)-1` means
    /// "none" to `TUNSETOWNER`/`TUNSETGROUP`.
    #[error("invalid {kind} id {id}: must be below 4294967295")]
    InvalidOwnerId {
        /// `user` or `group`.
        kind: &'static str,
        /// The id given.
        id: u32,
    },
    /// Looking a user or group up failed (NSS).
    #[error("looking up {kind} {name:?}: {source}")]
    OwnerLookup {
        /// `user` or `group`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An fd number given to inspect is not open in this process.
    #[error("fd {fd} is not open: {source}")]
    FdNotOpen {
        /// The fd number.
        fd: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `vnet_hdr` must be `auto`, `on` or `off`.
    #[error("vnet_hdr must be auto, on or off, not {0:?}")]
    InvalidVnetHdr(String),
    /// Attaching to an existing tap needs its name.
    #[error("attaching to an existing tap needs its name")]
    AttachNeedsName,
    /// A device node could not be opened.
    #[error("cannot open {path}: {cause}", path = path.display())]
    OpenDevice {
        /// The node.
        path: PathBuf,
        /// The reason in plain words.
        cause: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `/dev/vhost-net` (or the configured path) cannot be used.
    #[error("vhost-net is not available on this host: cannot open {path}: {cause}", path = path.display())]
    VhostUnavailable {
        /// The vhost-net node that was tried.
        path: PathBuf,
        /// The reason in plain words.
        cause: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `vnet_hdr=on` but the kernel lacks `IFF_VNET_HDR`.
    #[error("vnet_hdr=on was asked, but this kernel does not support IFF_VNET_HDR")]
    VnetHdrUnsupported,
    /// Several queues but the kernel lacks `IFF_MULTI_QUEUE`.
    #[error(
        "{0} queues were asked, but this kernel does not support IFF_MULTI_QUEUE (use 1 queue)"
    )]
    MultiQueueUnsupported(usize),
    /// `TUNSETIFF` failed.
    #[error("cannot {action} tap \"{ifname}\" (queue {queue}): {cause}", action = match mode {
        BindMode::Create => "create",
        BindMode::Attach => "attach to",
        BindMode::AddQueue => "add a queue to",
    })]
    Bind {
        /// What was being done.
        mode: BindMode,
        /// The interface name (or template) asked for.
        ifname: String,
        /// Queue index, from 0.
        queue: usize,
        /// The reason in plain words.
        cause: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No interface of that name exists (nothing was created).
    #[error("no interface named \"{ifname}\" to {action}")]
    NoSuchInterface {
        /// The name.
        ifname: String,
        /// What was to be done with it.
        action: Action,
    },
    /// An existing tap's settings differ from what was asked (nothing was
    /// attached or changed).
    #[error("tap \"{ifname}\" exists with different settings: {difference}")]
    Mismatch {
        /// The interface.
        ifname: String,
        /// What differs.
        difference: Difference,
    },
    /// The fds of a tap opened elsewhere ([`crate::Tun::adopt_tap`]) are
    /// not what was asked (they were closed).
    #[error("the fds of tap \"{ifname}\" are not what was asked: {difference}")]
    NotAsAsked {
        /// The interface.
        ifname: String,
        /// What differs.
        difference: Difference,
    },
    /// The named interface exists but is not a TAP device.
    #[error("\"{0}\" exists but is not a TAP device")]
    NotATap(String),
    /// The named tap is not persistent (it lives while its fds are open).
    #[error("tap \"{0}\" is not persistent (it goes away when its users close it)")]
    NotPersistent(String),
    /// The tap has queues attached: someone is using it.
    #[error("tap \"{ifname}\" is in use ({queues} queue(s) attached): stop its users first")]
    InUse {
        /// The interface.
        ifname: String,
        /// Queues attached (including detached-but-open ones).
        queues: u32,
    },
    /// The tap was removed (or replaced) while vmtap was attaching to it
    /// or about to delete it; whatever vmtap had bound was closed.
    #[error("tap \"{0}\" was removed or replaced meanwhile (vmtap kept nothing of it)")]
    Vanished(String),
    /// A netlink request of the core (looking up or deleting a link) failed.
    #[error("{step} \"{ifname}\" over netlink: {source}")]
    Netlink {
        /// What was being done ("looking up", "deleting").
        step: &'static str,
        /// The interface.
        ifname: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The vhost-net path is not a usable vhost-net device.
    #[error("{path} is not a vhost-net device: {problem}", path = path.display())]
    NotVhostNet {
        /// The path given.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        problem: VhostProblem,
    },
    /// An ioctl on a bound fd failed.
    #[error("{op} failed on \"{ifname}\": {cause}")]
    Ioctl {
        /// The ioctl's name.
        op: &'static str,
        /// The interface (empty when not known yet).
        ifname: String,
        /// The reason in plain words.
        cause: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An fd is not a bound TUN/TAP fd.
    #[error("fd {fd} is not a TUN/TAP fd: {cause}")]
    NotATapFd {
        /// The fd number (for the message only).
        fd: i32,
        /// The reason in plain words.
        cause: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An fd is bound to a TUN (layer 3) device, not a TAP.
    #[error("fd {fd} is bound to \"{ifname}\", a TUN (layer 3) device, not a TAP")]
    FdIsTun {
        /// The fd number (for the message only).
        fd: i32,
        /// The device.
        ifname: String,
    },
    /// A set of fds does not form one device with consistent flags.
    #[error("the fds do not belong to one tap with consistent flags: {0}")]
    InconsistentQueues(QueueProblem),
    /// An ownership tag broke the rules (1 to 64 bytes of letters, digits,
    /// `.`, `_`, `-`, `:`, `@`, `+`).
    #[error("invalid tag {0:?}: 1 to 64 characters from A-Z a-z 0-9 . _ - : @ +")]
    InvalidTag(String),
    /// No process with this pid (for a tap's owner).
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// A process's start time could not be read from `/proc`.
    #[error("cannot read the start time of pid {pid} from /proc/{pid}/stat")]
    ProcessInfo {
        /// The pid.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Recording the owner in the tap's alias failed.
    #[error("cannot record the owner of \"{ifname}\" in its alias")]
    Tagging {
        /// The tap.
        ifname: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A tap `vmtap gc` found was no longer garbage when it came to delete
    /// it (its owner or a user came back): left alone.
    #[error("\"{0}\" is no longer garbage (it has an owner or a user again): left alone")]
    NotGarbage(String),
    /// A bulk delete failed as a whole (listing the links, or the kernel's
    /// delete of the group); the taps it names are left as they were.
    #[error("deleting the taps at once failed while {step}")]
    BulkDelete {
        /// What was being done.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for errors caused by the caller's input (nothing was touched):
    /// the command exits 2 for these, 1 for system failures.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidName { .. }
                | Self::InvalidQueues(_)
                | Self::InvalidVnetHdr(_)
                | Self::AttachNeedsName
                | Self::NoSuchOwner { .. }
                | Self::InvalidOwnerId { .. }
                | Self::InvalidTag(_)
                | Self::NoSuchProcess(_)
        )
    }

    /// The OS error number behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::OpenDevice { source, .. }
            | Self::VhostUnavailable { source, .. }
            | Self::Bind { source, .. }
            | Self::Ioctl { source, .. }
            | Self::Netlink { source, .. }
            | Self::Tagging { source, .. }
            | Self::BulkDelete { source, .. }
            | Self::ProcessInfo { source, .. }
            | Self::NotATapFd { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// An error's message followed by its causes (`message: cause: ...`),
/// without repeating a cause the message already contains: what the
/// command and the Python module show.
pub fn full_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), so that
/// names, paths and a peer's words cannot break a line or drive a
/// terminal.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The OS error number behind an error or any of its causes (the first
/// `io::Error` with one), if any.
pub fn os_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut source = Some(err);
    while let Some(s) = source {
        if let Some(n) = s
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        source = s.source();
    }
    None
}

/// A `Result` with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Plain words for a failure to open a device node.
pub(crate) fn explain_open(err: &io::Error, what: &str) -> String {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => format!(
            "the device node is missing ({what} module not loaded, or no such node in this container)"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied (the node must be readable and writable by this user)".to_string()
        }
        _ => err.to_string(),
    }
}

/// Plain words for a failed `TUNSETIFF` on `name`.
pub(crate) fn explain_bind(err: &io::Error, mode: BindMode, name: &str) -> String {
    let template = name.is_empty() || name.contains("%d");
    match (err.raw_os_error(), mode) {
        (Some(libc::ENFILE) | Some(libc::EEXIST), _) if template => {
            "every name this template gives (cut to 15 bytes) is taken".into()
        }
        (Some(libc::EPERM), BindMode::Create) => {
            "permission denied: creating a tap needs CAP_NET_ADMIN in the network namespace's user namespace".into()
        }
        (Some(libc::EPERM), _) => {
            "permission denied: attaching to this tap needs CAP_NET_ADMIN or to be its owner/group".into()
        }
        (Some(libc::EBUSY), BindMode::Create) => {
            "an interface with this name already exists (vmtap never shares a tap by accident; attach to an existing tap explicitly if that is what you want)".into()
        }
        (Some(libc::EBUSY), _) => {
            "the tap is in use: it is single-queue and already open elsewhere".into()
        }
        (Some(libc::EINVAL), BindMode::Create) => {
            "the kernel refused the name or flags".into()
        }
        (Some(libc::EINVAL), _) => {
            "the interface exists but is not a TAP device, or its multi-queue setting differs".into()
        }
        (Some(libc::E2BIG), _) => "more than 256 queues (the kernel's MAX_TAP_QUEUES)".into(),
        (Some(libc::EEXIST), _) => "an interface with this name already exists".into(),
        (Some(libc::ENOMEM), _) => "out of memory".into(),
        _ => err.to_string(),
    }
}

/// Plain words for a failed ioctl on a bound fd.
pub(crate) fn explain_ioctl(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EBADFD) => "the fd is not bound to a tap yet".into(),
        Some(libc::ENOTTY) => "the fd is not a TUN/TAP fd".into(),
        Some(libc::EPERM) => "permission denied (needs CAP_NET_ADMIN)".into(),
        Some(libc::EINVAL) => "the kernel refused the value (invalid argument)".into(),
        _ => err.to_string(),
    }
}
