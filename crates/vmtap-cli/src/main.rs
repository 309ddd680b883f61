//! The `vmtap` command: open TAP backends and hand them to QEMU.
//!
//! Thin by design: it turns arguments into library calls, and errors into
//! one line on stderr with exit code 2 (invalid arguments, nothing touched)
//! or 1 (a failure from the system).

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use vmtap::{OpenOptions, Owner, Ownership, PersistentOptions, TapSummary, Tun, VnetHdr};
use vmtap_net::{self as link, LinkError, LinkOptions, MacAddr, NicMode};
use vmtap_qemu::{hotplug, launch, qmp};

const AFTER_HELP: &str = "\
Examples:
  vmtap features --json
  vmtap open --queues 4 --up -- qemu-system-x86_64 ... -netdev {netdev} -device virtio-net-pci,{device}
  vmtap open --bridge br0 --vhost -- qemu-system-x86_64 ... -netdev {netdev} -device virtio-net-pci,{device}
  vmtap open --mode routed --ip 192.0.2.10 --link 100 -- qemu-system-x86_64 ...
  vmtap open --mode openvswitch --link sw0 --vlan .100:200 -- qemu-system-x86_64 ...
  vmtap open --helper /usr/local/libexec/vmtap-bridge-helper --bridge br0 --queues 4 -- qemu-system-x86_64 ...
  INTERFACE=tap0 MODE=bridged LINK=br0 VLAN=.100 vmtap ifup
  vmtap ifdown tap0
  vmtap create vm1tap --multi-queue --vnet-hdr --owner qemu
  vmtap inspect vm1tap --json
  vmtap create --owner-pid 4242 --tag vm1
  vmtap list --json
  vmtap gc --dry-run
  vmtap delete vm1tap
  vmtap delete --tag vm1";

#[derive(Parser, Debug)]
#[command(name = "vmtap", version, about = "Open TAP network backends for QEMU/KVM virtual machines", after_help = AFTER_HELP)]
struct Cli {
    /// Log each step on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what the kernel's TUN driver supports.
    #[command(after_help = "Examples:\n  vmtap features\n  vmtap features --json")]
    Features {
        /// Print JSON: flags, tap, vnet_hdr, multi_queue, vhost_net.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        paths: DevicePaths,
    },
    /// Open a tap, set up its host side, then exec PROGRAM with the fds.
    #[command(after_help = OPEN_HELP)]
    Open(OpenArgs),
    /// Create a persistent tap that an unprivileged QEMU can open by name.
    #[command(
        after_help = "Examples:\n  vmtap create vm1tap --multi-queue --vnet-hdr --owner qemu --group kvm\n  qemu-system-x86_64 ... -netdev tap,id=n0,ifname=vm1tap,script=no,downscript=no,queues=4"
    )]
    Create {
        /// Interface name (a `%d` template lets the kernel number it;
        /// none: vmtap picks a free tapN). The name is printed.
        name: Option<String>,
        /// The process the tap belongs to: `vmtap gc` deletes the tap once
        /// that process is gone (recorded with its start time, so a reused
        /// pid does not count).
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
        owner_pid: Option<u32>,
        /// A tag recorded in the tap's alias (`vmtap list`, `vmtap delete --tag`).
        #[arg(long, value_name = "TAG", value_parser = parse_tag)]
        tag: Option<String>,
        /// Multi-queue device.
        #[arg(long)]
        multi_queue: bool,
        /// Packets carry a virtio-net header.
        #[arg(long)]
        vnet_hdr: bool,
        /// User (name or uid) allowed to open it.
        #[arg(long, value_name = "USER|UID")]
        owner: Option<String>,
        /// Group (name or gid) allowed to open it.
        #[arg(long, value_name = "GROUP|GID")]
        group: Option<String>,
        #[command(flatten)]
        paths: DevicePaths,
    },
    /// Delete persistent taps that nobody uses (refuses anything else),
    /// many at once in one batch.
    #[command(
        after_help = "Examples:\n  vmtap delete vm1tap\n  vmtap delete tap1 tap2 tap3 --json\n  vmtap delete --tag ci-job-42\n\nEach name is reported: an error on stderr (nothing for a success), or with\n--json one object per name. Exit status: 0 when every tap was deleted, 2\nwhen a name was invalid, else 1."
    )]
    Delete {
        /// Interface names.
        #[arg(required_unless_present = "tag")]
        names: Vec<String>,
        /// Also every tap vmtap tagged with TAG.
        #[arg(long, value_name = "TAG", value_parser = parse_tag)]
        tag: Option<String>,
        /// Print one JSON object per name: {"ifname", "deleted", "error"}.
        #[arg(long)]
        json: bool,
    },
    /// List the taps vmtap tagged: owner, tag, state.
    #[command(after_help = "Examples:\n  vmtap list\n  vmtap list --json")]
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete the persistent taps whose owner is gone and that nobody
    /// uses, and undo what routed and openvswitch modes left for
    /// interfaces that no longer exist. Never touches a tap vmtap did not
    /// tag.
    #[command(after_help = "Examples:\n  vmtap gc --dry-run\n  vmtap gc --json")]
    Gc {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON: {"taps": [...], "leftovers": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Hot-plug a NIC into a running QEMU over QMP, or remove it.
    #[command(subcommand)]
    Hotplug(HotplugCmd),
    /// Set up a NIC's host side from Ganeti's NIC script variables (a
    /// drop-in for Ganeti's kvm-ifup).
    #[command(after_help = IFUP_HELP)]
    Ifup {
        /// The tap [default: $INTERFACE].
        iface: Option<String>,
    },
    /// Undo what `vmtap ifup` (or a NIC mode of `open`/`hotplug add`) set
    /// up for a NIC, and nothing else.
    #[command(
        after_help = "Example:\n  vmtap ifdown tap0\n\nWorks when the tap is gone too: the routing rules and the Open vSwitch port\nthat outlive it are removed. Records are kept in $VMTAP_STATE_DIR (default\n/run/vmtap)."
    )]
    Ifdown {
        /// The tap [default: $INTERFACE].
        iface: Option<String>,
    },
    /// Show a tap's settings, by name or by an inherited fd.
    #[command(
        after_help = "Examples:\n  vmtap inspect vm1tap --json\n  vmtap inspect --fd 3 --json 3<>/dev/net/tun"
    )]
    Inspect {
        /// Interface name.
        #[arg(required_unless_present = "fd", conflicts_with = "fd")]
        name: Option<String>,
        /// An fd this process inherited.
        #[arg(long, value_name = "N")]
        fd: Option<i32>,
        /// Print JSON: ifname, persistent, owner, group, multi_queue, vnet_hdr, queues.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum HotplugCmd {
    /// Open a tap and hot-add it as a NIC: getfd, netdev_add, device_add.
    #[command(
        after_help = "Example:\n  vmtap hotplug add --qmp /run/vm1.qmp --id nic1 --queues 2 --bridge br0 --json"
    )]
    Add(Box<HotplugAddArgs>),
    /// Hot-remove a NIC: device_del, wait for DEVICE_DELETED, netdev_del.
    #[command(after_help = "Example:\n  vmtap hotplug del --qmp /run/vm1.qmp --id nic1")]
    Del {
        /// QEMU's QMP unix socket.
        #[arg(long, value_name = "PATH")]
        qmp: PathBuf,
        /// Device and netdev id.
        #[arg(long)]
        id: String,
        /// Seconds for the whole operation: connect, device_del, waiting for
        /// the guest to release the device, netdev_del. If it runs out, run
        /// del again: it finishes the job.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

#[derive(Args, Debug)]
struct HotplugAddArgs {
    /// QEMU's QMP unix socket.
    #[arg(long, value_name = "PATH")]
    qmp: PathBuf,
    /// Device and netdev id.
    #[arg(long)]
    id: String,
    #[command(flatten)]
    tap: TapArgs,
    /// Guest MAC address.
    #[arg(long, value_parser = parse_mac)]
    mac: Option<MacAddr>,
    /// Device driver.
    #[arg(long, default_value = "virtio-net-pci")]
    driver: String,
    /// Bring the host link up.
    #[arg(long)]
    up: bool,
    #[command(flatten)]
    nic: ModeArgs,
    /// Print JSON: ifname, id.
    #[arg(long)]
    json: bool,
    /// Seconds for the whole operation: connect, QMP commands and waits.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Seconds for undoing a failed add, from when the rollback starts
    /// [default: --timeout, at least 1].
    #[arg(long, value_name = "SECONDS")]
    rollback_timeout: Option<f64>,
    #[command(flatten)]
    helper: HelperArgs,
}

/// A tap from a bridge helper: shared by `open` and `hotplug add`.
#[derive(Args, Debug)]
struct HelperArgs {
    /// Get the bridged tap from this bridge helper (vmtap-bridge-helper,
    /// or QEMU's qemu-bridge-helper for one queue): for a user without
    /// CAP_NET_ADMIN. Needs --bridge.
    #[arg(long, value_name = "PATH")]
    helper: Option<PathBuf>,
    /// Seconds the bridge helper has to send the tap.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    helper_timeout: f64,
}

impl HelperArgs {
    /// The helper's options, when --helper is given: the bridge from a
    /// bridged mode without VLANs; `set` lists the options given that the
    /// helper's tap cannot take (it sets the tap up itself).
    fn options(
        &self,
        tap: &TapArgs,
        nic: &ModeArgs,
        set: &[(bool, &str)],
    ) -> Result<Option<vmtap_qemu::helper::HelperOptions>, CliError> {
        let Some(path) = &self.helper else {
            return Ok(None);
        };
        if let Some((_, opt)) = set.iter().find(|(given, _)| *given) {
            return Err(CliError::Invalid(format!(
                "{opt} cannot be used with --helper: the bridge helper sets the tap up (the bridge's MTU, a 0xfe MAC, up)"
            )));
        }
        let bridge = match nic.mode()? {
            Some(NicMode::Bridged { bridge, vlan: None }) => bridge,
            Some(NicMode::Bridged { vlan: Some(_), .. }) => {
                return Err(CliError::Invalid(
                    "--vlan cannot be used with --helper: the bridge helper makes a port without VLANs"
                        .into(),
                ));
            }
            _ => {
                return Err(CliError::Invalid(
                    "--helper needs --bridge BR: the bridge helper makes a bridged tap".into(),
                ));
            }
        };
        let opts = vmtap_qemu::helper::HelperOptions::new(path, bridge)
            .queues(usize::from(tap.queues))
            .vnet_hdr(tap.vnet_hdr)
            .name(tap.name.clone())
            .vhost(tap.vhost)
            .timeout(seconds("--helper-timeout", self.helper_timeout)?);
        opts.validate()?;
        Ok(Some(opts))
    }
}

const IFUP_HELP: &str = "\
Variables (as Ganeti sets them for its NIC scripts):
  INTERFACE  the tap (or give it as the argument)
  MODE       bridged, routed or openvswitch
  LINK       the bridge, the Open vSwitch switch, or the routing table (routed;
             empty: main). BRIDGE is read too in bridged mode.
  VLAN       .N or N (access), :N[:M...] (trunk), .N:M[:...] (hybrid)
  IP         the NIC's address (routed: required; IPv4 or IPv6)
  MAC        the guest's MAC (checked only)
  ACTION     up (when set)
Others (INSTANCE, TAGS, NETWORK_*, ...) are ignored.

Run twice, it changes nothing the second time. Exit 0 on success, 1 on a
failure from the system (the steps already done are undone), 2 on invalid or
missing variables (nothing touched).

Example (Ganeti node: point the NIC script at a wrapper that runs this):
  INTERFACE=tap0 MODE=routed IP=192.0.2.10 LINK=100 vmtap ifup";

const OPEN_HELP: &str = "\
In PROGRAM's arguments these are replaced:
  {ifname}    the interface name
  {fds}       the tap fd numbers joined with ':'
  {vhostfds}  the vhost-net fd numbers joined with ':'
  {netdev}    a QEMU -netdev value: tap,id=ID,fd=N or tap,id=ID,fds=A:B:...
              (plus ,vhost=on,vhostfd(s)=... with --vhost)
  {device}    the virtio-net options: netdev=ID (plus ,mq=on,vectors=2N+2)

Examples:
  vmtap open --queues 2 --up -- qemu-system-x86_64 -m 256 -kernel vmlinuz \\
      -netdev {netdev} -device virtio-net-pci,{device}
  vmtap open --name vm1 --bridge br0 --vhost --queues 4 -- qemu-system-x86_64 ... \\
      -netdev {netdev} -device virtio-net-pci,{device},mac=52:54:00:12:34:56
  vmtap open --name vm1tap --attach-existing --queues 4 -- ...

Without CAP_NET_ADMIN, a bridge helper installed with privileges makes the tap:
  vmtap open --helper /usr/local/libexec/vmtap-bridge-helper --bridge br0 --queues 4 -- \
      qemu-system-x86_64 ... -netdev {netdev} -device virtio-net-pci,{device}";

#[derive(Args, Debug, Clone)]
struct DevicePaths {
    /// The TUN clone device.
    #[arg(long, value_name = "PATH", default_value = vmtap::TUN_PATH, env = "VMTAP_TUN", hide = true)]
    tun_device: PathBuf,
    /// The vhost-net device.
    #[arg(long, value_name = "PATH", default_value = vmtap::VHOST_NET_PATH, env = "VMTAP_VHOST_NET")]
    vhost_device: PathBuf,
}

impl DevicePaths {
    /// The real kernel with these device nodes.
    fn tun(&self) -> Tun {
        Tun::with(
            Arc::new(vmtap::Kernel),
            vmtap::DevicePaths {
                tun: self.tun_device.clone(),
                vhost_net: self.vhost_device.clone(),
            },
        )
    }
}

/// The NIC mode: shared by `open` and `hotplug add`.
#[derive(Args, Debug)]
struct ModeArgs {
    /// NIC mode, as Ganeti's: bridged, routed or openvswitch.
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// The bridge (bridged), the Open vSwitch switch (openvswitch) or the
    /// routing table, by name or number (routed; default: main).
    #[arg(long, value_name = "LINK")]
    link: Option<String>,
    /// VLANs (bridged, openvswitch): .N or N (access), :N[:M...] (trunk),
    /// .N:M[:...] (hybrid).
    #[arg(long, value_name = "SPEC")]
    vlan: Option<String>,
    /// The NIC's address (routed; repeat for IPv4 and IPv6).
    #[arg(long, value_name = "ADDR")]
    ip: Vec<String>,
    /// Short for --mode bridged --link BR.
    #[arg(long, value_name = "BR", conflicts_with_all = ["mode", "link"])]
    bridge: Option<String>,
}

impl ModeArgs {
    fn mode(&self) -> Result<Option<NicMode>, CliError> {
        let mode = match (&self.mode, &self.bridge) {
            (Some(m), _) => m.as_str(),
            (None, Some(_)) => "bridged",
            (None, None) => {
                if self.link.is_some() || self.vlan.is_some() || !self.ip.is_empty() {
                    return Err(CliError::Invalid(
                        "--link, --vlan and --ip need --mode (or --bridge)".into(),
                    ));
                }
                return Ok(None);
            }
        };
        if mode != "routed" && !self.ip.is_empty() {
            return Err(CliError::Invalid(format!(
                "--ip is for a routed NIC, not a {mode} one"
            )));
        }
        let link = self.link.as_deref().or(self.bridge.as_deref());
        let ips: Vec<&str> = self.ip.iter().map(String::as_str).collect();
        Ok(Some(NicMode::parse(
            mode,
            link,
            self.vlan.as_deref(),
            &ips,
        )?))
    }
}

/// How to open the tap: shared by `open` and `hotplug add`.
#[derive(Args, Debug)]
struct TapArgs {
    /// Interface name or `%d` template (default: vmtap picks a free tapN).
    #[arg(long)]
    name: Option<String>,
    /// A tag recorded with the owner in the tap's alias (`vmtap list`,
    /// `vmtap delete --tag`).
    #[arg(long, value_name = "TAG", value_parser = parse_tag)]
    tag: Option<String>,
    /// Number of queues (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    queues: u16,
    /// Virtio-net header: auto (when supported), on, off.
    #[arg(long, default_value = "auto", value_parser = parse_vnet_hdr)]
    vnet_hdr: VnetHdr,
    /// Open one /dev/vhost-net fd per queue too.
    #[arg(long)]
    vhost: bool,
    #[command(flatten)]
    paths: DevicePaths,
}

impl TapArgs {
    fn options(&self) -> OpenOptions {
        let opts = OpenOptions::new()
            .queues(usize::from(self.queues))
            .vnet_hdr(self.vnet_hdr)
            .vhost(self.vhost);
        match &self.name {
            Some(name) => opts.name(name),
            None => opts,
        }
    }
}

#[derive(Args, Debug)]
struct OpenArgs {
    #[command(flatten)]
    tap: TapArgs,
    /// Attach to an existing tap (e.g. persistent) instead of refusing it.
    #[arg(long)]
    attach_existing: bool,
    /// QEMU netdev id used in {netdev} and {device}.
    #[arg(long, default_value = "net0")]
    id: String,
    /// MTU of the tap, 68 to 65521 (default when bridged: the bridge's).
    #[arg(long, value_parser = parse_mtu)]
    mtu: Option<u32>,
    /// MAC of the tap (default when bridged: its own with first byte 0xfe).
    #[arg(long, value_parser = parse_mac)]
    mac: Option<MacAddr>,
    #[command(flatten)]
    nic: ModeArgs,
    /// Bring the link up.
    #[arg(long)]
    up: bool,
    #[command(flatten)]
    helper: HelperArgs,
    /// The program to exec, and its arguments.
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    program: Vec<String>,
}

fn parse_tag(s: &str) -> Result<String, String> {
    vmtap::owner::check_tag(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_vnet_hdr(s: &str) -> Result<VnetHdr, String> {
    s.parse().map_err(|e: vmtap::Error| e.to_string())
}

fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.parse().map_err(|e: LinkError| e.to_string())
}

fn parse_mtu(s: &str) -> Result<u32, String> {
    let mtu: u32 = s
        .parse()
        .map_err(|_| format!("invalid MTU \"{s}\": not a number"))?;
    link::check_tap_mtu(mtu).map_err(|e| e.to_string())
}

/// A failure of the command, with its exit code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Core(#[from] vmtap::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Hotplug(#[from] hotplug::HotplugError),
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error(transparent)]
    Launch(#[from] vmtap_qemu::launch::LaunchError),
    #[error(transparent)]
    Helper(#[from] vmtap_qemu::helper::HelperError),
    #[error("{0}")]
    Invalid(String),
    /// Failures already reported one by one; the exit code.
    #[error("")]
    Reported(u8),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Core(e) if e.is_invalid_input() => 2,
            Self::Link(e) if e.is_invalid_input() => 2,
            Self::Invalid(_) => 2,
            Self::Reported(code) => *code,
            Self::Hotplug(e) if e.is_invalid_input() => 2,
            Self::Launch(e) if e.is_invalid_input() => 2,
            Self::Helper(e) if e.is_invalid_input() => 2,
            _ => 1,
        }
    }
}

/// The message and its causes on one line, without repeating a cause the
/// message already contains, control characters escaped.
fn one_line(err: &CliError) -> String {
    // Names, paths and QEMU's own words can hold newlines or other control
    // characters: escaped, so the message stays one line.
    vmtap::error::escape_controls(&vmtap::error::full_message(err))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(e) => {
            // A closed or full stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "vmtap: {}", one_line(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes `text` to stdout and flushes it: a closed pipe or a full disk is
/// an error (exit 1), never a panic. (A stdout closed with `>&-` is not
/// seen: Rust's runtime puts /dev/null on a closed fd 0-2 before `main`,
/// which also keeps a tap fd from ever landing on fd 1.)
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Io {
            what: "writing to standard output".into(),
            source,
        })
}

fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format(|buf, record| {
            writeln!(
                buf,
                "vmtap: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Features { json, paths } => features(json, &paths),
        Command::Open(args) => open(args),
        Command::Create {
            name,
            owner_pid,
            tag,
            multi_queue,
            vnet_hdr,
            owner,
            group,
            paths,
        } => {
            let opts = PersistentOptions::new()
                .multi_queue(multi_queue)
                .vnet_hdr(vnet_hdr)
                .owner(owner.as_deref().map(vmtap::owner_uid).transpose()?)
                .group(group.as_deref().map(vmtap::owner_gid).transpose()?)
                .ownership(
                    Ownership::new()
                        .owner(owner_pid.map(Owner::of_pid).transpose()?)
                        .tag(tag)?,
                );
            let tun = paths.tun();
            let info = match &name {
                Some(name) => tun.create_persistent(name, &opts)?,
                None => tun.create_persistent_auto(&opts)?,
            };
            log::debug!("created persistent tap {}", info.name);
            emit(&format!("{}\n", info.name))
        }
        Command::Delete { names, tag, json } => delete(names, tag, json),
        Command::List { json } => list(json),
        Command::Gc { dry_run, json } => gc(dry_run, json),
        Command::Inspect { name, fd, json } => inspect(name, fd, json),
        Command::Ifup { iface } => {
            let nic = link::ganeti::from_env(link::ganeti::Action::Up, iface.as_deref(), |k| {
                std::env::var(k).ok()
            })?;
            let opts = LinkOptions::new().mode(nic.mode).nic(nic.nic);
            link::configure(&nic.ifname, &opts)?.keep();
            Ok(())
        }
        Command::Ifdown { iface } => {
            let nic = link::ganeti::from_env(link::ganeti::Action::Down, iface.as_deref(), |k| {
                std::env::var(k).ok()
            })?;
            let dir = link::StateDir::from_env();
            let done = match &nic.nic {
                Some(id) => link::ifdown_nic(&nic.ifname, id, &dir)?,
                None => link::ifdown(&nic.ifname, &dir)?,
            };
            match done {
                link::Ifdown::NoRecord => {
                    log::info!("no record of a set-up of {}: nothing to undo", nic.ifname)
                }
                link::Ifdown::OtherNic => log::warn!(
                    "{} is set up for another NIC now (the name was reused): left alone",
                    nic.ifname
                ),
                done => log::debug!("{}: {done:?}", nic.ifname),
            }
            Ok(())
        }
        Command::Hotplug(HotplugCmd::Add(args)) => hotplug_add(*args),
        Command::Hotplug(HotplugCmd::Del { qmp, id, timeout }) => {
            hotplug::validate_id(&id)?;
            let monitor = hotplug::Monitor::new(qmp, seconds("--timeout", timeout)?);
            hotplug::del(&monitor, &id)?;
            Ok(())
        }
    }
}

fn features(as_json: bool, paths: &DevicePaths) -> Result<(), CliError> {
    let report = paths.tun().features()?;
    let has = |f: vmtap::TunFlags| report.has(f);
    let out = json!({
        "flags": report.flags.map(|f| f.bits()),
        "tun": has(vmtap::TunFlags::TUN),
        "tap": has(vmtap::TunFlags::TAP),
        "no_pi": has(vmtap::TunFlags::NO_PI),
        "vnet_hdr": has(vmtap::TunFlags::VNET_HDR),
        "multi_queue": has(vmtap::TunFlags::MULTI_QUEUE),
        "napi": has(vmtap::TunFlags::NAPI),
        "vhost_net": report.vhost_net,
    });
    print_object(&out, as_json)
}

/// Prints a JSON object as JSON, or as `key: value` lines.
fn print_object(out: &serde_json::Value, as_json: bool) -> Result<(), CliError> {
    let mut text = String::new();
    if as_json {
        text = format!("{out}\n");
    } else {
        for (k, v) in out.as_object().into_iter().flatten() {
            text.push_str(&format!("{k}: {v}\n"));
        }
    }
    emit(&text)
}

fn open(args: OpenArgs) -> Result<(), CliError> {
    let Some((program, program_args)) = args.program.split_first() else {
        return Err(CliError::Invalid(
            "vmtap open needs a PROGRAM after -- (the tap would vanish when vmtap exits; \
             use `vmtap create` for a tap that stays)"
                .into(),
        ));
    };
    let tun = args.tap.paths.tun();
    let helper = args.helper.options(
        &args.tap,
        &args.nic,
        &[
            (args.attach_existing, "--attach-existing"),
            (args.mtu.is_some(), "--mtu"),
            (args.mac.is_some(), "--mac"),
            (args.up, "--up"),
            (args.tap.tag.is_some(), "--tag"),
        ],
    )?;
    if let Some(helper) = helper {
        return Err(launch::open_with_helper_and_exec(
            &tun,
            &helper,
            &args.id,
            program,
            program_args,
        )
        .into());
    }
    // vmtap execs the program: this pid (with its start time) is QEMU's.
    let opts = args
        .tap
        .options()
        .attach_existing(args.attach_existing)
        .ownership(
            Ownership::new()
                .owner(this_process_as_owner())
                .tag(args.tap.tag.clone())?,
        );
    let link_opts = LinkOptions::new()
        .mtu(args.mtu)
        .mac(args.mac)
        .up(args.up)
        .mode(args.nic.mode()?);
    Err(launch::open_and_exec(&tun, &opts, &link_opts, &args.id, program, program_args).into())
}

/// This process as the tap's owner; without `/proc` the tap is made all
/// the same, with no owner recorded (`vmtap gc` then never takes it).
fn this_process_as_owner() -> Option<Owner> {
    Owner::this_process()
        .map_err(|e| log::warn!("cannot record this process as the tap's owner: {e}"))
        .ok()
}

/// The longest `--timeout` or `--rollback-timeout` accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;

fn seconds(option: &str, s: f64) -> Result<std::time::Duration, CliError> {
    if s > MAX_SECONDS {
        return Err(CliError::Invalid(format!(
            "invalid {option} {s}: must be at most {MAX_SECONDS} seconds (a day)"
        )));
    }
    std::time::Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CliError::Invalid(format!("invalid {option} {s}: must be positive")))
}

fn hotplug_add(args: HotplugAddArgs) -> Result<(), CliError> {
    let helper = args.helper.options(
        &args.tap,
        &args.nic,
        &[(args.up, "--up"), (args.tap.tag.is_some(), "--tag")],
    )?;
    let link = match &helper {
        Some(_) => LinkOptions::new(),
        None => LinkOptions::new().up(args.up).mode(args.nic.mode()?),
    };
    // QEMU's pid is added as the owner once connected.
    let opts = hotplug::HotplugOptions::new(&args.id)
        .open(
            args.tap
                .options()
                .ownership(Ownership::new().tag(args.tap.tag.clone())?),
        )
        .link(link)
        .driver(&args.driver)
        .mac(args.mac);
    // Invalid input is refused before anything is opened or connected.
    hotplug::validate_id(&opts.id)?;
    opts.open.validate()?;
    let mut monitor = hotplug::Monitor::new(&args.qmp, seconds("--timeout", args.timeout)?);
    if let Some(r) = args.rollback_timeout {
        monitor.rollback_timeout = seconds("--rollback-timeout", r)?;
    }
    let ifname = match &helper {
        Some(h) => hotplug::add_with_helper(
            &args.tap.paths.tun(),
            &monitor,
            &opts.id,
            h,
            &opts.driver,
            opts.mac,
        )?,
        None => hotplug::add(&args.tap.paths.tun(), &monitor, &opts)?,
    };
    let text = if args.json {
        format!("{}\n", json!({ "ifname": ifname, "id": args.id }))
    } else {
        format!("{ifname}\n")
    };
    // The NIC is in the guest now: a failure to say so must not read as
    // a failed add (a retry would find the id in use).
    emit(&text).map_err(|e| match e {
        CliError::Io { source, .. } => CliError::Io {
            what: format!(
                "the NIC {} is plugged with host tap {ifname}, but printing that to standard output failed",
                args.id
            ),
            source,
        },
        other => other,
    })
}

/// Reports per name: errors on stderr (or every name as JSON), then an
/// exit status for the worst.
fn report(outcomes: vmtap::Outcomes, as_json: bool, verb: &str) -> Result<(), CliError> {
    let mut worst = 0u8;
    let mut lines = String::new();
    for (ifname, r) in &outcomes {
        match r {
            Ok(()) => {
                log::debug!("{verb} {ifname}");
                if as_json {
                    lines.push_str(&format!(
                        "{}\n",
                        json!({ "ifname": ifname, verb: true, "error": null })
                    ));
                }
            }
            Err(e) => {
                let msg = vmtap::error::escape_controls(&vmtap::error::full_message(e));
                worst = worst.max(if e.is_invalid_input() { 2 } else { 1 });
                if as_json {
                    lines.push_str(&format!(
                        "{}\n",
                        json!({ "ifname": ifname, verb: false, "error": msg, "errno": e.errno() })
                    ));
                } else {
                    let _ = writeln!(std::io::stderr(), "vmtap: {msg}");
                }
            }
        }
    }
    emit(&lines)?;
    match worst {
        0 => Ok(()),
        code => Err(CliError::Reported(code)),
    }
}

fn delete(names: Vec<String>, tag: Option<String>, as_json: bool) -> Result<(), CliError> {
    let tun = Tun::system();
    let mut outcomes = if names.is_empty() {
        Vec::new()
    } else {
        tun.delete_persistent_many(&names)
    };
    if let Some(tag) = &tag {
        let tagged = tun.delete_tagged(tag)?;
        if tagged.is_empty() {
            log::warn!("no tap is tagged {tag}");
        }
        outcomes.extend(tagged);
    }
    report(outcomes, as_json, "deleted")
}

fn tagged_json(t: &vmtap::TaggedTap) -> serde_json::Value {
    json!({
        "ifname": t.status.name,
        "index": t.status.index,
        "persistent": t.status.persistent,
        "up": t.up,
        "queues": t.status.queues,
        "disabled_queues": t.status.disabled_queues,
        "in_use": t.status.users() > 0,
        "owner_pid": t.ownership.owner.map(|o| o.pid),
        "owner_start_time": t.ownership.owner.map(|o| o.start_time),
        "owner_alive": t.owner_alive,
        "tag": t.ownership.tag,
        "garbage": t.is_garbage(),
    })
}

fn list(as_json: bool) -> Result<(), CliError> {
    let taps = Tun::system().tagged_taps()?;
    if as_json {
        let all: Vec<_> = taps.iter().map(tagged_json).collect();
        return emit(&format!("{}\n", serde_json::Value::Array(all)));
    }
    let mut text = String::from("IFNAME           STATE  PERSIST QUEUES OWNER        TAG\n");
    for t in &taps {
        let owner = match (t.ownership.owner, t.owner_alive) {
            (None, _) => "-".to_string(),
            (Some(o), Some(false)) => format!("{} (gone)", o.pid),
            (Some(o), _) => o.pid.to_string(),
        };
        text.push_str(&format!(
            "{:<16} {:<6} {:<7} {:<6} {:<12} {}\n",
            vmtap::error::escape_controls(&t.status.name),
            if t.up { "up" } else { "down" },
            if t.status.persistent { "yes" } else { "no" },
            t.status.users(),
            owner,
            t.ownership.tag.as_deref().unwrap_or("-"),
        ));
    }
    emit(&text)
}

fn gc(dry_run: bool, as_json: bool) -> Result<(), CliError> {
    let taps = Tun::system().collect_garbage(dry_run)?;
    // The taps are reported even when the records cannot be read.
    let (stale, stale_error) = match link::collect_stale(&link::StateDir::from_env(), dry_run) {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(vmtap::error::full_message(&e))),
    };
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut worst = 0u8;
    let mut text = String::new();
    let mut tap_json = Vec::new();
    for (ifname, r) in &taps {
        match r {
            Ok(()) => text.push_str(&format!(
                "{verb} tap {}\n",
                vmtap::error::escape_controls(ifname)
            )),
            Err(e) => {
                worst = 1;
                let _ = writeln!(
                    std::io::stderr(),
                    "vmtap: {}",
                    vmtap::error::escape_controls(&vmtap::error::full_message(e))
                );
            }
        }
        tap_json.push(json!({
            "ifname": ifname,
            "deleted": !dry_run && r.is_ok(),
            "error": r.as_ref().err().map(|e| vmtap::error::full_message(e)),
        }));
    }
    let mut stale_json = Vec::new();
    for s in &stale {
        let verb = if dry_run { "would undo" } else { "undid" };
        match &s.result {
            Ok(()) => {
                for l in &s.leftovers {
                    text.push_str(&format!(
                        "{verb} {} (of {})\n",
                        vmtap::error::escape_controls(l),
                        vmtap::error::escape_controls(&s.ifname)
                    ));
                }
            }
            Err(e) => {
                worst = 1;
                let _ = writeln!(
                    std::io::stderr(),
                    "vmtap: {}: {}",
                    s.ifname,
                    vmtap::error::escape_controls(&vmtap::error::full_message(e))
                );
            }
        }
        stale_json.push(json!({
            "ifname": s.ifname,
            "leftovers": s.leftovers,
            "undone": !dry_run && s.result.is_ok(),
            "error": s.result.as_ref().err().map(|e| vmtap::error::full_message(e)),
        }));
    }
    if let Some(e) = &stale_error {
        worst = 1;
        let _ = writeln!(
            std::io::stderr(),
            "vmtap: cannot look for what gone NICs left behind: {}",
            vmtap::error::escape_controls(e)
        );
    }
    if as_json {
        text = format!(
            "{}\n",
            json!({
                "dry_run": dry_run,
                "taps": tap_json,
                "leftovers": stale_json,
                "leftovers_error": stale_error,
            })
        );
    }
    emit(&text)?;
    match worst {
        0 => Ok(()),
        code => Err(CliError::Reported(code)),
    }
}

fn inspect(name: Option<String>, fd: Option<i32>, as_json: bool) -> Result<(), CliError> {
    let tun = Tun::system();
    let t = match (name, fd) {
        (_, Some(n)) => tun.inspect_inherited_fd(n)?.summary(),
        (Some(name), None) => TapSummary::from(&tun.status(&name)?),
        (None, None) => return Err(CliError::Invalid("inspect needs NAME or --fd N".into())),
    };
    let out = json!({
        "ifname": t.ifname,
        "this_netns": t.this_netns,
        "persistent": t.persistent,
        "owner": t.owner,
        "group": t.group,
        "multi_queue": t.multi_queue,
        "vnet_hdr": t.vnet_hdr,
        "queues": t.queues,
        "disabled_queues": t.disabled_queues,
    });
    print_object(&out, as_json)
}
