//! Ganeti's routed mode, as primitives: policy rules that send what comes
//! in on a tap to a routing table (`ip rule ... iif TAP lookup TABLE`),
//! host routes to the guest's address through the tap (`ip route replace
//! IP table TABLE proto static dev TAP`), the per-interface sysctls
//! (`proxy_arp`, `forwarding`, `proxy_ndp`), and routing table names as
//! iproute2 reads them. IPv4 and IPv6; over rtnetlink and `/proc/sys`, in
//! the calling thread's network namespace; spawns nothing.
//!
//! The ifup/ifdown sequence itself (which rule to delete first, what to
//! undo) is left to the caller.

use std::cmp::Reverse;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use vmtap_sys::IFNAME_MAX;
use vmtap_sys::rtnl::netlink_packet_core::{DefaultNla, Nla};
use vmtap_sys::rtnl::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use vmtap_sys::rtnl::netlink_packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage,
};
use vmtap_sys::rtnl::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use vmtap_sys::rtnl::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};

use crate::Rtnl;

/// The main routing table (`RT_TABLE_MAIN`): where a routed NIC's host
/// route goes when no table is given.
pub const MAIN_TABLE: u32 = 254;
/// The `default` table (`RT_TABLE_DEFAULT`).
pub const DEFAULT_TABLE: u32 = 253;
/// The `local` table (`RT_TABLE_LOCAL`).
pub const LOCAL_TABLE: u32 = 255;

/// What a rule or route header carries for a table above 255 (the real
/// number is in the `FRA_TABLE`/`RTA_TABLE` attribute).
const RT_TABLE_COMPAT: u8 = 252;
/// `FRA_*` attribute numbers (include/uapi/linux/fib_rules.h) that
/// [`IifRule`] keeps or compares.
const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_FWMARK: u16 = 10;
const FRA_FWMASK: u16 = 16;
const FRA_OIFNAME: u16 = 17;
const FRA_IP_PROTO: u16 = 22;
const FRA_SPORT_RANGE: u16 = 23;
const FRA_DPORT_RANGE: u16 = 24;

/// The most of one rt_tables file that is read.
const MAX_TABLES_FILE: u64 = 1 << 20;
/// The most `*.conf` files read from one `rt_tables.d` directory, and
/// the most entries of it looked at.
const MAX_CONF_FILES: usize = 1024;
const MAX_DIR_ENTRIES: usize = 65536;
/// iproute2 reads rt_tables with `fgets` into 512 bytes: a longer line is
/// read as several.
const FGETS_MAX: usize = 511;
/// The most of a sysctl file that is read.
const MAX_SYSCTL: u64 = 64;
/// The most routes [`Rtnl::del_host_route`] deletes in one call (one per
/// metric; there is never more than a few).
const MAX_ROUTE_DELETES: usize = 64;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The prefix length of a host route: 32 or 128.
    pub fn host_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The `/proc/sys/net` directory of the family: `ipv4` or `ipv6`.
    fn proc_dir(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The step of routed set-up that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoutedStep {
    /// Listing the rules of a family.
    ListRules(Family),
    /// Adding the rule `iif IF lookup TABLE`.
    AddRule {
        /// The family of the rule.
        family: Family,
        /// The table it looks up.
        table: u32,
    },
    /// Deleting a rule.
    DeleteRule {
        /// The family of the rule.
        family: Family,
        /// Its priority (none: 0).
        priority: Option<u32>,
        /// The table it looks up.
        table: u32,
    },
    /// Listing the routes of a table.
    ListRoutes {
        /// The family listed.
        family: Family,
        /// The table.
        table: u32,
    },
    /// Adding or replacing the host route to an address.
    ReplaceRoute {
        /// The address.
        ip: IpAddr,
        /// The table.
        table: u32,
    },
    /// Deleting the host route to an address.
    DeleteRoute {
        /// The address.
        ip: IpAddr,
        /// The table.
        table: u32,
    },
}

impl fmt::Display for RoutedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ListRules(family) => write!(f, "listing the {family} rules"),
            Self::AddRule { family, table } => {
                write!(f, "adding the {family} rule to look up table {table}")
            }
            Self::DeleteRule {
                family,
                priority,
                table,
            } => write!(
                f,
                "deleting the {family} rule with priority {} that looks up table {table}",
                priority.unwrap_or(0)
            ),
            Self::ListRoutes { family, table } => {
                write!(f, "listing the {family} routes of table {table}")
            }
            Self::ReplaceRoute { ip, table } => write!(
                f,
                "replacing the route to {ip}/{} in table {table}",
                Family::of(*ip).host_prefix_len()
            ),
            Self::DeleteRoute { ip, table } => write!(
                f,
                "deleting the route to {ip}/{} in table {table}",
                Family::of(*ip).host_prefix_len()
            ),
        }
    }
}

/// Why IPv6 is off for an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ipv6Off {
    /// The host has no IPv6 at all (no `/proc/sys/net/ipv6`: booted with
    /// `ipv6.disable=1`, or built without it).
    Host,
    /// The interface has no IPv6 configuration (no
    /// `/proc/sys/net/ipv6/conf/IF`): the kernel removes it from a device
    /// whose MTU is below 1280.
    Interface,
    /// `net.ipv6.conf.IF.disable_ipv6` is set.
    Disabled,
}

impl fmt::Display for Ipv6Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "this host has no IPv6 (no /proc/sys/net/ipv6)",
            Self::Interface => {
                "the interface has no IPv6 configuration (the kernel removes it when the MTU is below 1280)"
            }
            Self::Disabled => "disable_ipv6 is set on it",
        })
    }
}

/// Errors of routed set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutedError {
    /// A netlink request failed.
    #[error("{step} on \"{ifname}\": {source}")]
    Netlink {
        /// What was being done.
        step: RoutedStep,
        /// The interface (`index N` when its name could not be found).
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A name that cannot be an interface's.
    #[error("invalid interface name {name:?}: {problem}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Interface index 0, which is no interface (and would match any in a
    /// deletion).
    #[error("interface index 0 names no interface")]
    InvalidIndex,
    /// A table that is not one: 0, a number out of range, or malformed.
    #[error(
        "invalid routing table \"{0}\": a table is a number from 1 to 4294967295 or a name from rt_tables"
    )]
    InvalidTable(String),
    /// A table name found in no rt_tables file.
    #[error(
        "unknown routing table \"{name}\": not a number, and not a name in {}{}",
        list_files(files),
        list_problems(problems)
    )]
    UnknownTable {
        /// The name given.
        name: String,
        /// The rt_tables files read.
        files: Vec<PathBuf>,
        /// What was wrong in them (malformed lines, unreadable files).
        problems: Vec<String>,
    },
    /// Reading or writing a sysctl failed.
    #[error("{}: {source}", path.display())]
    Sysctl {
        /// The file under `/proc/sys`.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No interface of that name (no `/proc/sys/net/ipv4/conf/IF`).
    #[error("no interface named \"{0}\"")]
    NoSuchInterface(String),
    /// IPv6 is off for the interface.
    #[error("IPv6 is off on \"{ifname}\": {why}")]
    NoIpv6 {
        /// The interface.
        ifname: String,
        /// Why.
        why: Ipv6Off,
    },
    /// The kernel cannot delete exactly this rule yet: an earlier rule
    /// differs from it only in what a deletion request cannot tell apart,
    /// so the kernel would delete that one instead.
    #[error(
        "cannot delete exactly the rule \"{rule}\": the kernel would delete \"{earlier}\" instead, which comes first; delete that one first"
    )]
    AmbiguousRule {
        /// The rule asked.
        rule: String,
        /// The rule the kernel would delete.
        earlier: String,
    },
}

impl RoutedError {
    /// True for errors in the caller's input (nothing was touched).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidName { .. }
                | Self::InvalidIndex
                | Self::InvalidTable(_)
                | Self::UnknownTable { .. }
        )
    }
}

fn list_files(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "any rt_tables file (none found)".into();
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

fn list_problems(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    }
}

/// What is wrong with an interface name, if anything: the kernel's rules
/// (1 to 15 bytes; not `.` or `..`; no `/`, `:`, NUL, `%` or byte the
/// kernel's `isspace()` counts as a space, 0xA0 included) and not `all`
/// or `default`. The one check of names in this crate.
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    let kernel_space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0);
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > IFNAME_MAX {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names")
    } else if name == "all" || name == "default" {
        Some("\"all\" and \"default\" name the settings of every interface, never one")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.contains('%') {
        Some("it contains '%'")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.bytes().any(kernel_space) {
        Some("it contains a byte the kernel counts as a space")
    } else {
        None
    }
}

/// Checks an interface name before it goes into a `/proc/sys` path or a
/// netlink request: the kernel's rules (1 to 15 bytes; not `.` or `..`; no
/// `/`, `:`, NUL, `%` or byte the kernel's `isspace()` counts as a space,
/// 0xA0 included) and not `all` or `default`, which the kernel refuses for
/// a device and which name the settings of every interface in
/// `/proc/sys/net/*/conf`.
pub fn check_ifname(name: &str) -> Result<(), RoutedError> {
    let problem = ifname_problem(name);
    match problem {
        Some(problem) => Err(RoutedError::InvalidName {
            name: name.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Checks a table number: 0 (`RT_TABLE_UNSPEC`) is no table.
pub fn check_table(table: u32) -> Result<u32, RoutedError> {
    if table == 0 {
        Err(RoutedError::InvalidTable("0".into()))
    } else {
        Ok(table)
    }
}

fn check_index(index: u32) -> Result<u32, RoutedError> {
    if index == 0 {
        Err(RoutedError::InvalidIndex)
    } else {
        Ok(index)
    }
}

// ---------------------------------------------------------------------
// Routing table names.

/// The two directories iproute2 reads its configuration from
/// (`CONF_ETC_DIR`, `CONF_USR_DIR`). Table names come from, in order:
///
/// 1. the built-in `default` (253), `main` (254) and `local` (255);
/// 2. `ETC/rt_tables`, or `USR/rt_tables` when the former does not exist;
/// 3. `USR/rt_tables.d/*.conf`, except the files that `ETC/rt_tables.d`
///    also has;
/// 4. `ETC/rt_tables.d/*.conf`.
///
/// This is what iproute2 6.5 and later read (older releases read only
/// `/etc`, which is the same on a host without files under `/usr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iproute2Dirs {
    /// The administrator's directory, `/etc/iproute2`.
    pub etc: PathBuf,
    /// The distribution's directory, `/usr/share/iproute2`.
    pub usr: PathBuf,
}

impl Iproute2Dirs {
    /// `/etc/iproute2` and `/usr/share/iproute2`.
    pub fn system() -> Self {
        Self {
            etc: "/etc/iproute2".into(),
            usr: "/usr/share/iproute2".into(),
        }
    }
}

impl Default for Iproute2Dirs {
    fn default() -> Self {
        Self::system()
    }
}

/// Resolves a routing table as `ip rule add ... table T` does: a name from
/// the host's rt_tables files (see [`Iproute2Dirs`]), else a number (1 to
/// `u32::MAX`, decimal, `0x` hex or `0` octal as `strtoul` reads them).
/// Table 0 is refused, by number or by name (`unspec`).
///
/// Files are read as iproute2 reads them: lines of `ID NAME` (ID decimal
/// or `0x` hex), blank lines and `#` comments skipped, and a malformed
/// line ends the reading of its file (iproute2 reports "Database ... is
/// corrupted" and ignores the rest of that file too). When one name is
/// given several ids, iproute2's hash order picks one: the smallest id
/// modulo 256, then the last read. Each file is read up to 1 MiB; ids
/// above 2^31-1 are skipped (iproute2 reads them into an `int`).
pub fn resolve_table(s: &str) -> Result<u32, RoutedError> {
    resolve_table_in(s, &Iproute2Dirs::system())
}

/// [`resolve_table`] with the rt_tables files under other directories
/// (for tests, or a host whose iproute2 was built with other paths).
pub fn resolve_table_in(s: &str, dirs: &Iproute2Dirs) -> Result<u32, RoutedError> {
    if s.is_empty() {
        return Err(RoutedError::InvalidTable(String::new()));
    }
    let names = TableNames::load(dirs);
    if let Some(id) = names.lookup(s.as_bytes()) {
        return check_table(id).map_err(|_| RoutedError::InvalidTable(s.to_string()));
    }
    match parse_table_number(s) {
        Some(Some(id)) if id != 0 => Ok(id),
        Some(_) => Err(RoutedError::InvalidTable(s.to_string())),
        None => Err(RoutedError::UnknownTable {
            name: s.to_string(),
            files: names.files,
            problems: names.problems,
        }),
    }
}

/// A table number as `strtoul(s, &end, 0)` reads it, without the leading
/// spaces and sign it also takes: `None` when `s` does not start with a
/// digit (a name), `Some(None)` when it does but is not a number that fits
/// a table (trailing text, `8` or `9` in an octal number, above
/// `u32::MAX`).
fn parse_table_number(s: &str) -> Option<Option<u32>> {
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Some(None);
    }
    Some(u32::from_str_radix(digits, radix).ok())
}

/// Table names read from rt_tables files.
#[derive(Debug, Default)]
struct TableNames {
    /// (id, name), in the order read (built-ins first).
    entries: Vec<(u32, Vec<u8>)>,
    /// The files read.
    files: Vec<PathBuf>,
    /// What went wrong reading them.
    problems: Vec<String>,
}

impl TableNames {
    fn builtin() -> Self {
        Self {
            entries: vec![
                (DEFAULT_TABLE, b"default".to_vec()),
                (MAIN_TABLE, b"main".to_vec()),
                (LOCAL_TABLE, b"local".to_vec()),
            ],
            ..Self::default()
        }
    }

    fn load(dirs: &Iproute2Dirs) -> Self {
        let mut names = Self::builtin();
        if !names.read_file(&dirs.etc.join("rt_tables")) {
            names.read_file(&dirs.usr.join("rt_tables"));
        }
        let etc_d = dirs.etc.join("rt_tables.d");
        let usr_d = dirs.usr.join("rt_tables.d");
        for name in names.conf_files(&usr_d) {
            if fs::symlink_metadata(etc_d.join(&name)).is_err() {
                names.read_file(&usr_d.join(&name));
            }
        }
        for name in names.conf_files(&etc_d) {
            names.read_file(&etc_d.join(&name));
        }
        names
    }

    /// Reads one file; false when it does not exist.
    fn read_file(&mut self, path: &Path) -> bool {
        let mut content = Vec::new();
        let read = fs::File::open(path).and_then(|f| {
            f.take(MAX_TABLES_FILE + 1).read_to_end(&mut content)?;
            Ok(())
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) => {
                self.problems.push(format!("{}: {e}", path.display()));
                return true;
            }
            Ok(()) => {}
        }
        if content.len() as u64 > MAX_TABLES_FILE {
            content.truncate(MAX_TABLES_FILE as usize);
            self.problems
                .push(format!("{}: only its first 1 MiB was read", path.display()));
        }
        self.files.push(path.to_path_buf());
        let parsed = parse_rt_tables(&content);
        self.entries.extend(parsed.entries);
        if let Some((line, text)) = parsed.malformed {
            self.problems.push(format!(
                "{} line {line} is malformed ({text:?}): the rest of the file is ignored, as iproute2 does",
                path.display()
            ));
        }
        true
    }

    /// The `*.conf` files of a `rt_tables.d` directory that iproute2 reads
    /// (not hidden, more than the suffix), sorted (iproute2 takes them in
    /// directory order, which is unspecified).
    fn conf_files(&mut self, dir: &Path) -> Vec<std::ffi::OsString> {
        use std::os::unix::ffi::OsStrExt;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                self.problems.push(format!("{}: {e}", dir.display()));
                return Vec::new();
            }
        };
        let mut names: Vec<std::ffi::OsString> = entries
            .take(MAX_DIR_ENTRIES)
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| {
                let b = n.as_bytes();
                !b.starts_with(b".") && b.len() > 5 && b.ends_with(b".conf")
            })
            .take(MAX_CONF_FILES)
            .collect();
        names.sort();
        names
    }

    /// The id of `name` as iproute2's hash finds it: buckets by id modulo
    /// 256 in order, the last entry added first within a bucket.
    fn lookup(&self, name: &[u8]) -> Option<u32> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| n == name)
            .min_by_key(|(i, (id, _))| (id & 255, Reverse(*i)))
            .map(|(_, (id, _))| *id)
    }
}

/// One rt_tables file, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
struct ParsedTables {
    /// (id, name) in file order.
    entries: Vec<(u32, Vec<u8>)>,
    /// The malformed line that ended the reading (1-based number, text).
    malformed: Option<(usize, String)>,
}

/// Parses an rt_tables file as iproute2's `fread_id_name` does: `fgets`
/// lines (at most 511 bytes each, cut at a NUL), leading spaces and tabs
/// skipped, blank and `#` lines skipped, then `sscanf` with `0x%x %s` or
/// `%d %s`. A line neither matches is malformed and ends the file.
fn parse_rt_tables(content: &[u8]) -> ParsedTables {
    let mut out = ParsedTables::default();
    let mut rest = content;
    let mut line = 1;
    while !rest.is_empty() {
        let take = match rest.iter().take(FGETS_MAX).position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => rest.len().min(FGETS_MAX),
        };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let this_line = line;
        if chunk.ends_with(b"\n") {
            line += 1;
        }
        let chunk = chunk.split(|&b| b == 0).next().unwrap_or_default();
        let start = chunk
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(chunk.len());
        let p = &chunk[start..];
        if p.is_empty() || p[0] == b'#' || p[0] == b'\n' {
            continue;
        }
        match scan_id_name(p) {
            Some((Some(id), name)) => out.entries.push((id, name)),
            Some((None, _)) => {}
            None => {
                let text = String::from_utf8_lossy(p).trim_end().to_string();
                out.malformed = Some((this_line, text));
                break;
            }
        }
    }
    out
}

/// `sscanf(p, "0x%x %s")`, else `sscanf(p, "%d %s")`: `None` when neither
/// reads both; the id is `None` when it does not fit a non-negative `int`
/// (iproute2 skips negative ids).
fn scan_id_name(p: &[u8]) -> Option<(Option<u32>, Vec<u8>)> {
    if let Some(after) = p.strip_prefix(b"0x")
        && let Some((value, rest)) = scan_number(after, 16)
        && let Some(name) = scan_word(rest)
    {
        return Some((id_from(value), name));
    }
    let (value, rest) = scan_number(p, 10)?;
    let name = scan_word(rest)?;
    Some((id_from(value), name))
}

fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A `scanf` integer conversion (`%d` or `%x`): spaces, a sign, for hex an
/// optional `0x`, then at least one digit. The value saturates far beyond
/// any id.
fn scan_number(s: &[u8], radix: u32) -> Option<(i128, &[u8])> {
    let mut s = &s[s.iter().position(|&b| !c_space(b)).unwrap_or(s.len())..];
    let mut negative = false;
    if let Some((&sign, rest)) = s.split_first()
        && (sign == b'+' || sign == b'-')
    {
        negative = sign == b'-';
        s = rest;
    }
    if radix == 16
        && (s.starts_with(b"0x") || s.starts_with(b"0X"))
        && s.get(2).is_some_and(u8::is_ascii_hexdigit)
    {
        s = &s[2..];
    }
    let digits = s
        .iter()
        .take_while(|&&b| (b as char).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    let mut value: i128 = 0;
    for &b in &s[..digits] {
        let d = (b as char).to_digit(radix).unwrap_or(0);
        value = (value * i128::from(radix) + i128::from(d)).min(1 << 80);
    }
    Some((if negative { -value } else { value }, &s[digits..]))
}

/// A `scanf` `%s`: spaces, then at least one non-space byte.
fn scan_word(s: &[u8]) -> Option<Vec<u8>> {
    let s = &s[s.iter().position(|&b| !c_space(b)).unwrap_or(s.len())..];
    let len = s.iter().take_while(|&&b| !c_space(b)).count();
    (len > 0).then(|| s[..len].to_vec())
}

fn id_from(value: i128) -> Option<u32> {
    (0..=i128::from(i32::MAX))
        .contains(&value)
        .then_some(value as u32)
}

// ---------------------------------------------------------------------
// Rules.

/// One netlink attribute of a rule, as the kernel sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RawAttribute {
    kind: u16,
    value: Vec<u8>,
}

impl RawAttribute {
    fn of(attr: &RuleAttribute) -> Self {
        let mut value = vec![0; attr.value_len()];
        attr.emit_value(&mut value);
        Self {
            kind: attr.kind(),
            value,
        }
    }

    fn is_nonzero(&self) -> bool {
        self.value.iter().any(|b| *b != 0)
    }
}

/// What a rule matches and does besides its input interface, table and
/// priority, as the kernel reported it: its action, its `not` flag, and
/// its other selectors (`from`, `to`, `fwmark`, `oif`, ports, ...). Kept so
/// that [`Rtnl::del_rule`] can ask for exactly that rule; the kernel's
/// "unset" values (`proto` 0, no `suppress_*`) are left out, so that a
/// rule made by [`Rtnl::add_iif_rule`] has [`RuleDetails::plain`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleDetails {
    action: u8,
    invert: bool,
    src_len: u8,
    dst_len: u8,
    tos: u8,
    attributes: Vec<RawAttribute>,
}

impl RuleDetails {
    /// A rule that only looks up its table (`FR_ACT_TO_TBL`), with no
    /// other selector: what `ip rule add iif IF lookup T` makes.
    pub fn plain() -> Self {
        Self {
            action: RuleAction::ToTable.into(),
            invert: false,
            src_len: 0,
            dst_len: 0,
            tos: 0,
            attributes: Vec::new(),
        }
    }

    /// True for [`RuleDetails::plain`].
    pub fn is_plain(&self) -> bool {
        *self == Self::plain()
    }

    /// The rule's action (`FR_ACT_*`: 1 looks up a table, 6 blackhole...).
    pub fn action(&self) -> u8 {
        self.action
    }
}

/// A policy routing rule that matches an input interface (`iif`), as the
/// kernel lists it. [`Rtnl::iif_rules`] finds them, [`Rtnl::del_rule`]
/// deletes exactly one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IifRule {
    /// Its family.
    pub family: Family,
    /// The input interface it matches.
    pub iif: String,
    /// The table it looks up (0 for a rule whose action is not a lookup).
    pub table: u32,
    /// Its priority (`pref`); `None` for priority 0.
    pub priority: Option<u32>,
    /// No interface of that name exists now (the kernel keeps such rules
    /// and shows them as `[detached]`). Information only: not part of
    /// what identifies the rule.
    pub detached: bool,
    /// Everything else the rule matches and does.
    pub details: RuleDetails,
}

impl IifRule {
    /// Reads a rule the kernel sent; `None` when it matches no input
    /// interface.
    fn from_message(family: Family, msg: &RuleMessage) -> Option<Self> {
        let mut iif = None;
        let mut table = u32::from(msg.header.table);
        let mut priority = None;
        let mut attributes = Vec::new();
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Iifname(name) => iif = Some(name.clone()),
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = Some(*p).filter(|p| *p != 0),
                RuleAttribute::Protocol(p) if u8::from(*p) == 0 => {}
                RuleAttribute::SuppressPrefixLen(u32::MAX)
                | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
                other => attributes.push(RawAttribute::of(other)),
            }
        }
        Some(Self {
            family,
            iif: iif?,
            table,
            priority,
            detached: msg.header.flags.contains(RuleFlags::IifDetached),
            details: RuleDetails {
                action: msg.header.action.into(),
                invert: msg.header.flags.contains(RuleFlags::Invert),
                src_len: msg.header.src_len,
                dst_len: msg.header.dst_len,
                tos: msg.header.tos,
                attributes,
            },
        })
    }

    /// The deletion request for exactly this rule: everything it has, and
    /// its priority even when 0 (without one the kernel takes any).
    fn to_message(&self) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = self.family.address_family();
        msg.header.action = RuleAction::from(self.details.action);
        msg.header.table = header_table(self.table);
        msg.header.src_len = self.details.src_len;
        msg.header.dst_len = self.details.dst_len;
        msg.header.tos = self.details.tos;
        if self.details.invert {
            msg.header.flags = RuleFlags::Invert;
        }
        msg.attributes
            .push(RuleAttribute::Iifname(self.iif.clone()));
        msg.attributes
            .push(RuleAttribute::Priority(self.priority.unwrap_or(0)));
        msg.attributes.push(RuleAttribute::Table(self.table));
        for a in &self.details.attributes {
            msg.attributes.push(RuleAttribute::Other(DefaultNla::new(
                a.kind,
                a.value.clone(),
            )));
        }
        msg
    }

    /// Whether `other` is the same rule (`detached` aside).
    fn same_rule(&self, other: &IifRule) -> bool {
        self.family == other.family
            && self.iif == other.iif
            && self.table == other.table
            && self.priority == other.priority
            && self.details == other.details
    }

    /// Whether the kernel could take this rule for the deletion request of
    /// `asked` (its `rule_find`: a field the request leaves unset matches
    /// anything, and some fields, such as `not`, are never compared). Errs
    /// on the side of "could": only fields the kernel certainly compares
    /// rule this rule out.
    fn may_be_taken_for(&self, asked: &IifRule) -> bool {
        let (mine, theirs) = (&self.details, &asked.details);
        if self.family != asked.family
            || self.iif != asked.iif
            || self.priority.unwrap_or(0) != asked.priority.unwrap_or(0)
            || (asked.table != 0 && self.table != asked.table)
            || (theirs.action != 0 && mine.action != theirs.action)
            || (theirs.src_len != 0 && mine.src_len != theirs.src_len)
            || (theirs.dst_len != 0 && mine.dst_len != theirs.dst_len)
        {
            return false;
        }
        const COMPARED: [u16; 8] = [
            FRA_DST,
            FRA_SRC,
            FRA_OIFNAME,
            FRA_FWMARK,
            FRA_FWMASK,
            FRA_IP_PROTO,
            FRA_SPORT_RANGE,
            FRA_DPORT_RANGE,
        ];
        theirs
            .attributes
            .iter()
            .filter(|a| COMPARED.contains(&a.kind) && a.is_nonzero())
            .all(|a| mine.attributes.contains(a))
    }
}

impl fmt::Display for IifRule {
    /// Like `ip rule`: `IPv4 32765: iif tap0 lookup 100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}iif {}",
            self.family,
            self.priority.unwrap_or(0),
            if self.details.invert { "not " } else { "" },
            self.iif
        )?;
        if self.details.action == u8::from(RuleAction::ToTable) {
            write!(f, " lookup {}", self.table)?;
        } else {
            write!(f, " action {}", self.details.action)?;
        }
        if self.details.src_len != 0
            || self.details.dst_len != 0
            || self.details.tos != 0
            || !self.details.attributes.is_empty()
        {
            f.write_str(" (with other selectors)")?;
        }
        Ok(())
    }
}

/// The table field of a rule or route header: the table, or
/// `RT_TABLE_COMPAT` above 255 (the attribute carries it).
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RT_TABLE_COMPAT)
}

fn os_error(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

// The requests go straight to the socket (`self.0`, the crate's
// `vmtap_sys::rtnl::Netlink`): this module is part of the crate that
// defines `Rtnl`.
impl Rtnl {
    /// Every rule (both families) whose input interface is `ifname`,
    /// whatever else it matches or does, in the kernel's order; rules that
    /// name an interface that no longer exists ("detached") included. An
    /// interface of another name, even a prefix of this one, is not
    /// matched. A host without IPv6 has no IPv6 rules.
    pub fn iif_rules(&mut self, ifname: &str) -> Result<Vec<IifRule>, RoutedError> {
        check_ifname(ifname)?;
        let mut rules = self.rules(Family::V4, ifname)?;
        rules.extend(self.rules(Family::V6, ifname)?);
        rules.retain(|r| r.iif == ifname);
        Ok(rules)
    }

    /// The rules of `family` that match an input interface, in the
    /// kernel's order. `ifname` names the interface in errors.
    fn rules(&mut self, family: Family, ifname: &str) -> Result<Vec<IifRule>, RoutedError> {
        let mut req = RuleMessage::default();
        req.header.family = family.address_family();
        let replies = match self
            .0
            .request_flags(RouteNetlinkMessage::GetRule(req), NLM_F_DUMP)
        {
            Ok(replies) => replies,
            // No IPv6 rules on a host without IPv6.
            Err(e) if family == Family::V6 && os_error(&e, &[libc::EAFNOSUPPORT]) => {
                return Ok(Vec::new());
            }
            Err(source) => {
                return Err(RoutedError::Netlink {
                    step: RoutedStep::ListRules(family),
                    ifname: ifname.to_string(),
                    source,
                });
            }
        };
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(m) => IifRule::from_message(family, m),
                _ => None,
            })
            .collect())
    }

    /// `ip rule add iif IFNAME lookup TABLE` for one family: the kernel
    /// chooses the priority as for `ip rule add` without `pref` (one less
    /// than the second rule's: 32765, then 32764... on a host with only
    /// the default rules). An identical rule is added even if one exists
    /// at another priority, as `ip rule add` does: delete the old ones
    /// first ([`Rtnl::iif_rules`], [`Rtnl::del_rule`]). The interface
    /// need not exist (the rule is then detached). An IPv6 rule on a host
    /// without IPv6 is [`RoutedError::NoIpv6`].
    pub fn add_iif_rule(
        &mut self,
        family: Family,
        ifname: &str,
        table: u32,
    ) -> Result<(), RoutedError> {
        check_ifname(ifname)?;
        check_table(table)?;
        let mut msg = RuleMessage::default();
        msg.header.family = family.address_family();
        msg.header.action = RuleAction::ToTable;
        msg.header.table = u8::try_from(table).unwrap_or(0);
        msg.attributes
            .push(RuleAttribute::Iifname(ifname.to_string()));
        msg.attributes.push(RuleAttribute::Table(table));
        self.0
            .request_flags(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
            .map_err(|source| {
                if family == Family::V6 && os_error(&source, &[libc::EAFNOSUPPORT]) {
                    return RoutedError::NoIpv6 {
                        ifname: ifname.to_string(),
                        why: Ipv6Off::Host,
                    };
                }
                RoutedError::Netlink {
                    step: RoutedStep::AddRule { family, table },
                    ifname: ifname.to_string(),
                    source,
                }
            })
    }

    /// Deletes exactly this rule, as [`Rtnl::iif_rules`] listed it:
    /// `Ok(false)` when it is gone. The request carries everything the
    /// rule has (priority, table, action, other selectors), so a rule
    /// another tool added for the same interface is not hit. The kernel
    /// deletes the first rule that matches a request, and a request cannot
    /// say "no `from`" or tell `not` apart: when an earlier rule would be
    /// taken instead, nothing is deleted and the error is
    /// [`RoutedError::AmbiguousRule`]. Deleting the rules of an interface
    /// in the order [`Rtnl::iif_rules`] gives never meets that.
    pub fn del_rule(&mut self, rule: &IifRule) -> Result<bool, RoutedError> {
        check_ifname(&rule.iif)?;
        let rules = self.rules(rule.family, &rule.iif)?;
        let Some(pos) = rules.iter().position(|r| r.same_rule(rule)) else {
            return Ok(false);
        };
        if let Some(earlier) = rules[..pos].iter().find(|r| r.may_be_taken_for(rule)) {
            return Err(RoutedError::AmbiguousRule {
                rule: rule.to_string(),
                earlier: earlier.to_string(),
            });
        }
        match self
            .0
            .request(RouteNetlinkMessage::DelRule(rule.to_message()))
        {
            Ok(_) => Ok(true),
            Err(e) if os_error(&e, &[libc::ENOENT]) => Ok(false),
            Err(source) => Err(RoutedError::Netlink {
                step: RoutedStep::DeleteRule {
                    family: rule.family,
                    priority: rule.priority,
                    table: rule.table,
                },
                ifname: rule.iif.clone(),
                source,
            }),
        }
    }

    // -----------------------------------------------------------------
    // Routes.

    /// `ip route replace IP/32 table TABLE proto static dev OIF` (or
    /// `/128` for IPv6): a unicast route, scope link for IPv4 as iproute2
    /// chooses for a route without gateway, the kernel's default metric
    /// (0 for IPv4, 1024 for IPv6). As `ip route replace` does, it takes
    /// the place of a route to the same address with the same metric in
    /// that table, whatever its device. `oif` is the interface index; the
    /// kernel refuses a route through a device that is down (`ENETDOWN`),
    /// so bring the link up first. Through an interface where IPv6 is off,
    /// an IPv6 route is [`RoutedError::NoIpv6`].
    pub fn replace_host_route(
        &mut self,
        ip: IpAddr,
        table: u32,
        oif: u32,
    ) -> Result<(), RoutedError> {
        check_table(table)?;
        check_index(oif)?;
        let msg = host_route_message(ip, table, oif, false);
        match self.0.request_flags(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        ) {
            Ok(_) => Ok(()),
            Err(source) => {
                let ifname = self.ifname_of(oif);
                if Family::of(ip) == Family::V6
                    && let Some(why) = ipv6_off(&ifname)
                {
                    return Err(RoutedError::NoIpv6 { ifname, why });
                }
                Err(RoutedError::Netlink {
                    step: RoutedStep::ReplaceRoute { ip, table },
                    ifname,
                    source,
                })
            }
        }
    }

    /// Whether the host route of [`Rtnl::replace_host_route`] is there: to
    /// `ip` (/32 or /128), in `table`, through interface index `oif`,
    /// `proto static`, unicast, any metric.
    pub fn host_route(&mut self, ip: IpAddr, table: u32, oif: u32) -> Result<bool, RoutedError> {
        check_table(table)?;
        check_index(oif)?;
        Ok(self.count_host_routes(ip, table, oif)? > 0)
    }

    /// Deletes the host route of [`Rtnl::host_route`] (all of them, when
    /// there is one per metric); `Ok(false)` when there was none. A route
    /// to the same address through another device, of another protocol or
    /// in another table is never deleted.
    pub fn del_host_route(
        &mut self,
        ip: IpAddr,
        table: u32,
        oif: u32,
    ) -> Result<bool, RoutedError> {
        check_table(table)?;
        check_index(oif)?;
        let mut deleted = false;
        for _ in 0..MAX_ROUTE_DELETES {
            let msg = host_route_message(ip, table, oif, true);
            match self.0.request(RouteNetlinkMessage::DelRoute(msg)) {
                Ok(_) => deleted = true,
                Err(e) if os_error(&e, &[libc::ESRCH, libc::ENOENT]) => break,
                Err(source) => {
                    return Err(RoutedError::Netlink {
                        step: RoutedStep::DeleteRoute { ip, table },
                        ifname: self.ifname_of(oif),
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// How many routes of `table` are the host route to `ip` through
    /// `oif`. The dump is filtered by the kernel (table, protocol, device)
    /// when it can ([`vmtap_sys::rtnl::Netlink::set_strict_check`]), so a
    /// host with large tables is not read whole; the answer is checked
    /// here in any case.
    fn count_host_routes(
        &mut self,
        ip: IpAddr,
        table: u32,
        oif: u32,
    ) -> Result<usize, RoutedError> {
        let family = Family::of(ip);
        let mut req = RouteMessage::default();
        req.header.address_family = family.address_family();
        let strict = self.0.set_strict_check(true).is_ok();
        if strict {
            req.header.table = header_table(table);
            req.header.protocol = RouteProtocol::Static;
            req.attributes.push(RouteAttribute::Table(table));
            req.attributes.push(RouteAttribute::Oif(oif));
        }
        let replies = self
            .0
            .request_flags(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP);
        if strict && let Err(e) = self.0.set_strict_check(false) {
            log::warn!("could not turn netlink strict checking off again: {e}");
        }
        let replies = match replies {
            Ok(replies) => replies,
            // With a filter: no such table (ENOENT) or no such device
            // (ENODEV), so no such route.
            Err(e) if strict && os_error(&e, &[libc::ENOENT, libc::ENODEV]) => return Ok(0),
            Err(e) if family == Family::V6 && os_error(&e, &[libc::EAFNOSUPPORT]) => return Ok(0),
            Err(source) => {
                return Err(RoutedError::Netlink {
                    step: RoutedStep::ListRoutes { family, table },
                    ifname: self.ifname_of(oif),
                    source,
                });
            }
        };
        Ok(replies
            .iter()
            .filter(|m| match m {
                RouteNetlinkMessage::NewRoute(m) => is_host_route(m, ip, table, oif),
                _ => false,
            })
            .count())
    }

    /// The name of interface `index`, for messages: `index N` when it
    /// cannot be found.
    fn ifname_of(&mut self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(link)) => link.name,
            _ => format!("index {index}"),
        }
    }
}

/// The netlink message of the host route to `ip` in `table` through
/// `oif`: for adding, or (`delete`) for deleting with the scope left open
/// (`RT_SCOPE_NOWHERE`, as iproute2 sends).
fn host_route_message(ip: IpAddr, table: u32, oif: u32, delete: bool) -> RouteMessage {
    let family = Family::of(ip);
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.address_family();
    msg.header.destination_prefix_length = family.host_prefix_len();
    msg.header.table = u8::try_from(table).unwrap_or(0);
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = match (delete, family) {
        (true, _) => RouteScope::NoWhere,
        (false, Family::V4) => RouteScope::Link,
        (false, Family::V6) => RouteScope::Universe,
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(ip)));
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg.attributes.push(RouteAttribute::Table(table));
    msg
}

/// Whether a route the kernel listed is the host route to `ip` in `table`
/// through `oif`, `proto static`.
fn is_host_route(m: &RouteMessage, ip: IpAddr, table: u32, oif: u32) -> bool {
    let family = Family::of(ip);
    let h = &m.header;
    if h.address_family != family.address_family()
        || h.destination_prefix_length != family.host_prefix_len()
        || h.source_prefix_length != 0
        || h.tos != 0
        || h.protocol != RouteProtocol::Static
        || h.kind != RouteType::Unicast
        || h.flags.contains(RouteFlags::Cloned)
    {
        return false;
    }
    let mut route_table = u32::from(h.table);
    let (mut dst, mut dev) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => route_table = *t,
            RouteAttribute::Destination(d) => dst = Some(d.clone()),
            RouteAttribute::Oif(o) => dev = Some(*o),
            _ => {}
        }
    }
    route_table == table && dst == Some(RouteAddress::from(ip)) && dev == Some(oif)
}

// ---------------------------------------------------------------------
// Sysctls.

/// The per-interface sysctls of routed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Sysctl {
    /// `net.ipv4.conf.IF.proxy_arp`: answer ARP for addresses routed
    /// elsewhere.
    ProxyArp,
    /// `net.ipv4.conf.IF.forwarding`.
    Forwarding4,
    /// `net.ipv6.conf.IF.proxy_ndp`: answer neighbour solicitations for
    /// the proxy entries of the interface.
    ProxyNdp,
    /// `net.ipv6.conf.IF.forwarding`.
    Forwarding6,
}

impl Sysctl {
    /// The four, in the order Ganeti sets them.
    pub const ALL: [Sysctl; 4] = [
        Sysctl::ProxyArp,
        Sysctl::Forwarding4,
        Sysctl::ProxyNdp,
        Sysctl::Forwarding6,
    ];

    /// The family it belongs to.
    pub fn family(self) -> Family {
        match self {
            Self::ProxyArp | Self::Forwarding4 => Family::V4,
            Self::ProxyNdp | Self::Forwarding6 => Family::V6,
        }
    }

    /// Its file name: `proxy_arp`, `forwarding` or `proxy_ndp`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::ProxyArp => "proxy_arp",
            Self::ProxyNdp => "proxy_ndp",
            Self::Forwarding4 | Self::Forwarding6 => "forwarding",
        }
    }

    /// `/proc/sys/net/ipv4/conf/IF/proxy_arp` and so on; the name is
    /// checked first ([`check_ifname`]).
    pub fn path(self, ifname: &str) -> Result<PathBuf, RoutedError> {
        check_ifname(ifname)?;
        Ok(conf_dir(self.family(), ifname).join(self.file_name()))
    }
}

/// `/proc/sys/net/ipv{4,6}/conf/IF`, for a checked name.
fn conf_dir(family: Family, ifname: &str) -> PathBuf {
    Path::new("/proc/sys/net")
        .join(family.proc_dir())
        .join("conf")
        .join(ifname)
}

/// Reads a sysctl file, at most [`MAX_SYSCTL`] bytes.
fn read_small(path: &Path) -> io::Result<String> {
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(MAX_SYSCTL)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A sysctl's value as a switch: a number, nonzero for on.
fn parse_switch(text: &str) -> Option<bool> {
    text.trim().parse::<i64>().ok().map(|n| n != 0)
}

/// Why IPv6 is off for `ifname`, if it is.
fn ipv6_off(ifname: &str) -> Option<Ipv6Off> {
    if check_ifname(ifname).is_err() {
        return None;
    }
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Some(Ipv6Off::Host);
    }
    let dir = conf_dir(Family::V6, ifname);
    if !dir.exists() {
        return conf_dir(Family::V4, ifname)
            .exists()
            .then_some(Ipv6Off::Interface);
    }
    match read_small(&dir.join("disable_ipv6")).map(|t| parse_switch(&t)) {
        Ok(Some(true)) => Some(Ipv6Off::Disabled),
        _ => None,
    }
}

/// The error for a sysctl file that does not exist: no such interface, or
/// no IPv6 for it.
fn missing_sysctl(ifname: &str, family: Family, path: PathBuf, source: io::Error) -> RoutedError {
    if family == Family::V6
        && let Some(why) = ipv6_off(ifname)
    {
        return RoutedError::NoIpv6 {
            ifname: ifname.to_string(),
            why,
        };
    }
    if Path::new("/proc/sys/net/ipv4/conf").exists() && !conf_dir(Family::V4, ifname).exists() {
        return RoutedError::NoSuchInterface(ifname.to_string());
    }
    RoutedError::Sysctl { path, source }
}

/// Reads a per-interface sysctl in the calling thread's network namespace
/// (`/proc/sys/net` shows the namespace of the thread that opens it):
/// nonzero is on. Reads at most 64 bytes. A missing interface is
/// [`RoutedError::NoSuchInterface`]; an IPv6 sysctl of an interface
/// without IPv6 configuration is [`RoutedError::NoIpv6`] (with
/// `disable_ipv6` set the values are still there, and read).
pub fn read_sysctl(ifname: &str, which: Sysctl) -> Result<bool, RoutedError> {
    let path = which.path(ifname)?;
    let text = match read_small(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(missing_sysctl(ifname, which.family(), path, e));
        }
        Err(source) => return Err(RoutedError::Sysctl { path, source }),
    };
    parse_switch(&text).ok_or_else(|| RoutedError::Sysctl {
        path,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a number, read {text:?}"),
        ),
    })
}

/// Sets a per-interface sysctl to 1 or 0 in the calling thread's network
/// namespace. Turning an IPv6 one on for an interface where IPv6 is off
/// (no configuration, or `disable_ipv6` set) is [`RoutedError::NoIpv6`]
/// and writes nothing: it would have no effect. Turning one off is always
/// done.
pub fn write_sysctl(ifname: &str, which: Sysctl, on: bool) -> Result<(), RoutedError> {
    let path = which.path(ifname)?;
    if on
        && which.family() == Family::V6
        && let Some(why) = ipv6_off(ifname)
    {
        return Err(RoutedError::NoIpv6 {
            ifname: ifname.to_string(),
            why,
        });
    }
    let mut file = match fs::OpenOptions::new().write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(missing_sysctl(ifname, which.family(), path, e));
        }
        Err(source) => return Err(RoutedError::Sysctl { path, source }),
    };
    file.write_all(if on { b"1\n" } else { b"0\n" })
        .map_err(|source| RoutedError::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(content: &str) -> Vec<(u32, String)> {
        parse_rt_tables(content.as_bytes())
            .entries
            .into_iter()
            .map(|(id, n)| (id, String::from_utf8(n).unwrap()))
            .collect()
    }

    #[test]
    fn rt_tables_lines_as_iproute2_reads_them() {
        let text = "\
#
# reserved values
#
255\tlocal
254\tmain
253\tdefault
0\tunspec
  \t 100   vms   # a comment after the name
0x10 hexa
0x7fffffff top
200inet tight
+7 plus
   # indented comment

";
        assert_eq!(
            entries(text),
            vec![
                (255, "local".into()),
                (254, "main".into()),
                (253, "default".into()),
                (0, "unspec".into()),
                (100, "vms".into()),
                (16, "hexa".into()),
                (0x7fff_ffff, "top".into()),
                (200, "inet".into()),
                (7, "plus".into()),
            ]
        );
        // "200inet tight": %d reads 200 and %s "inet"; the rest is ignored.
        assert_eq!(parse_rt_tables(text.as_bytes()).malformed, None);
    }

    #[test]
    fn a_malformed_line_ends_the_file_like_iproute2() {
        let parsed = parse_rt_tables(b"1 one\nbogus line\n2 two\n");
        assert_eq!(parsed.entries, vec![(1, b"one".to_vec())]);
        assert_eq!(parsed.malformed, Some((2, "bogus line".into())));
        // An id without a name is malformed too; so is a CR-only line.
        assert_eq!(
            parse_rt_tables(b"5\n6 six\n").malformed,
            Some((1, "5".into()))
        );
        assert_eq!(parse_rt_tables(b"1 one\r\n\r\n2 two\n").entries.len(), 1);
    }

    #[test]
    fn ids_that_do_not_fit_an_int_are_skipped_not_malformed() {
        let parsed = parse_rt_tables(
            b"-1 minus\n2147483648 big\n4294967295 max\n0xffffffff hexmax\n99999999999999999999999 huge\n3 three\n",
        );
        assert_eq!(parsed.entries, vec![(3, b"three".to_vec())]);
        assert_eq!(parsed.malformed, None);
    }

    #[test]
    fn odd_but_accepted_lines() {
        // sscanf's literal "0x" fails on "0X", so %d reads 0 and %s "X10".
        assert_eq!(entries("0X10 name\n"), vec![(0, "X10".into())]);
        // %x is greedy: "0x64foo" is 0x64f and "oo".
        assert_eq!(entries("0x64foo\n"), vec![(0x64f, "oo".into())]);
        // "0xzz": the hex scan fails, %d reads 0 and %s "xzz".
        assert_eq!(entries("0xzz name\n"), vec![(0, "xzz".into())]);
        // A NUL ends the C string; the rest of the line is not seen.
        assert_eq!(
            entries("7 seven\0junk\n8\0 eight\n"),
            vec![(7, "seven".into())]
        );
        // No newline at the end of the file.
        assert_eq!(entries("9 nine"), vec![(9, "nine".into())]);
    }

    #[test]
    fn long_lines_are_read_in_511_byte_pieces_like_fgets() {
        let mut text = format!("1 {}", "a".repeat(509));
        text.push_str("2 tail\n3 three\n");
        // The first piece is "1 aaa…" (511 bytes), the second "2 tail\n".
        assert_eq!(
            entries(&text),
            vec![
                (1, "a".repeat(509)),
                (2, "tail".into()),
                (3, "three".into())
            ]
        );
    }

    #[test]
    fn lookup_follows_iproute2_hash_order() {
        let mut names = TableNames::builtin();
        names
            .entries
            .extend(parse_rt_tables(b"300 dup\n44 dup\n100 again\n100 again2\n").entries);
        // 300 & 255 = 44: same bucket as 44, the later one (44) is found
        // first.
        assert_eq!(names.lookup(b"dup"), Some(44));
        names.entries.push((1300, b"dup".to_vec()));
        // 1300 & 255 = 20: an earlier bucket.
        assert_eq!(names.lookup(b"dup"), Some(1300));
        // A file may rename the built-ins: bucket 7 comes before 254.
        names.entries.push((7, b"main".to_vec()));
        assert_eq!(names.lookup(b"main"), Some(7));
        assert_eq!(names.lookup(b"local"), Some(255));
        assert_eq!(names.lookup(b"nope"), None);
    }

    #[test]
    fn table_numbers_as_strtoul_base_0() {
        assert_eq!(parse_table_number("100"), Some(Some(100)));
        assert_eq!(parse_table_number("0x64"), Some(Some(100)));
        assert_eq!(parse_table_number("0X64"), Some(Some(100)));
        assert_eq!(parse_table_number("0144"), Some(Some(100)));
        assert_eq!(parse_table_number("0"), Some(Some(0)));
        assert_eq!(parse_table_number("4294967295"), Some(Some(u32::MAX)));
        assert_eq!(parse_table_number("4294967296"), Some(None));
        assert_eq!(parse_table_number("08"), Some(None));
        assert_eq!(parse_table_number("0x"), Some(None));
        assert_eq!(parse_table_number("12abc"), Some(None));
        assert_eq!(parse_table_number("vms"), None);
        assert_eq!(parse_table_number("-1"), None);
        assert_eq!(parse_table_number(" 1"), None);
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["tap0", "a", "vm-1.eth0_x", "123456789012345", "tàp"] {
            // "tàp": U+00E0 is C3 A0 in UTF-8; A0 is a kernel space.
            let r = check_ifname(ok);
            assert_eq!(r.is_ok(), ok != "tàp", "{ok}: {r:?}");
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "all",
            "default",
            "a/b",
            "a:1",
            "a%d",
            "a\0b",
            "a b",
            "a\tb",
            "a\nb",
        ] {
            let err = check_ifname(bad).unwrap_err();
            assert!(err.is_invalid_input(), "{bad:?}");
            assert!(
                err.to_string().starts_with("invalid interface name"),
                "{bad:?}: {err}"
            );
        }
        assert!(Sysctl::ProxyArp.path("../all").is_err());
        assert_eq!(
            Sysctl::ProxyNdp.path("tap0").unwrap(),
            Path::new("/proc/sys/net/ipv6/conf/tap0/proxy_ndp")
        );
        assert_eq!(
            Sysctl::Forwarding4.path("tap0").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/tap0/forwarding")
        );
    }

    #[test]
    fn sysctl_switches() {
        assert_eq!(parse_switch("0\n"), Some(false));
        assert_eq!(parse_switch("1\n"), Some(true));
        assert_eq!(parse_switch("2"), Some(true));
        assert_eq!(parse_switch("-1"), Some(true));
        assert_eq!(parse_switch(""), None);
        assert_eq!(parse_switch("yes"), None);
    }

    /// A rule message as the kernel lists one.
    fn kernel_rule(
        family: Family,
        iif: &str,
        pref: u32,
        table: u32,
        more: Vec<RuleAttribute>,
    ) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = family.address_family();
        m.header.action = RuleAction::ToTable;
        m.header.table = header_table(table);
        m.attributes.push(RuleAttribute::Table(table));
        m.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Unspec));
        m.attributes.push(RuleAttribute::Iifname(iif.into()));
        if pref != 0 {
            m.attributes.push(RuleAttribute::Priority(pref));
        }
        m.attributes.extend(more);
        m
    }

    #[test]
    fn rules_read_and_sent_back() {
        let plain = IifRule::from_message(
            Family::V4,
            &kernel_rule(Family::V4, "tap0", 32765, 1000, vec![]),
        )
        .unwrap();
        assert_eq!(plain.table, 1000);
        assert_eq!(plain.priority, Some(32765));
        assert!(plain.details.is_plain(), "{plain:?}");
        assert_eq!(plain.to_string(), "IPv4 32765: iif tap0 lookup 1000");
        let req = plain.to_message();
        assert_eq!(req.header.table, RT_TABLE_COMPAT);
        assert_eq!(
            req.attributes,
            vec![
                RuleAttribute::Iifname("tap0".into()),
                RuleAttribute::Priority(32765),
                RuleAttribute::Table(1000),
            ]
        );
        // Priority 0 is not listed by the kernel, but asked for.
        let zero =
            IifRule::from_message(Family::V6, &kernel_rule(Family::V6, "t", 0, 5, vec![])).unwrap();
        assert_eq!(zero.priority, None);
        assert!(
            zero.to_message()
                .attributes
                .contains(&RuleAttribute::Priority(0))
        );
        // No iif: not an IifRule.
        let mut m = kernel_rule(Family::V4, "x", 1, 2, vec![]);
        m.attributes
            .retain(|a| !matches!(a, RuleAttribute::Iifname(_)));
        assert_eq!(IifRule::from_message(Family::V4, &m), None);
        // Other selectors are kept, byte for byte, and sent back.
        let from = IifRule::from_message(
            Family::V4,
            &kernel_rule(
                Family::V4,
                "tap0",
                5,
                100,
                vec![
                    RuleAttribute::Source("10.0.0.0".parse().unwrap()),
                    RuleAttribute::FwMark(7),
                ],
            ),
        )
        .unwrap();
        assert!(!from.details.is_plain());
        assert!(from.to_string().ends_with("(with other selectors)"));
        let sent = from.to_message();
        let mut buf = [0u8; 8];
        sent.attributes[3].emit_value(&mut buf[..4]);
        assert_eq!(sent.attributes[3].kind(), FRA_SRC);
        assert_eq!(&buf[..4], &[10, 0, 0, 0]);
        // Through serde and back: the same rule.
        let json = serde_json::to_string(&from).unwrap();
        let back: IifRule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, from);
    }

    #[test]
    fn which_earlier_rules_a_deletion_could_hit() {
        let rule = |pref, table, more| {
            IifRule::from_message(
                Family::V4,
                &kernel_rule(Family::V4, "tap0", pref, table, more),
            )
            .unwrap()
        };
        let src = || vec![RuleAttribute::Source("10.0.0.0".parse().unwrap())];
        let plain = rule(5, 100, vec![]);
        let with_src = rule(5, 100, src());
        // A request without "from" matches a rule with one...
        assert!(with_src.may_be_taken_for(&plain));
        // ...but not the other way round.
        assert!(!plain.may_be_taken_for(&with_src));
        // Priority, table and iif always tell rules apart.
        assert!(!rule(6, 100, src()).may_be_taken_for(&plain));
        assert!(!rule(5, 101, src()).may_be_taken_for(&plain));
        let mut other_iif = with_src.clone();
        other_iif.iif = "tap1".into();
        assert!(!other_iif.may_be_taken_for(&plain));
        // "not" is never compared by the kernel.
        let mut inverted = plain.clone();
        inverted.details.invert = true;
        assert!(inverted.may_be_taken_for(&plain));
        assert!(!inverted.same_rule(&plain));
        // Detached or not, the same rule.
        let mut detached = plain.clone();
        detached.detached = true;
        assert!(detached.same_rule(&plain));
    }

    #[test]
    fn host_route_messages() {
        let m = host_route_message("10.1.2.3".parse().unwrap(), 100, 7, false);
        assert_eq!(m.header.destination_prefix_length, 32);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.protocol, RouteProtocol::Static);
        assert_eq!(m.header.table, 100);
        assert!(is_host_route(&m, "10.1.2.3".parse().unwrap(), 100, 7));
        assert!(!is_host_route(&m, "10.1.2.4".parse().unwrap(), 100, 7));
        assert!(!is_host_route(&m, "10.1.2.3".parse().unwrap(), 101, 7));
        assert!(!is_host_route(&m, "10.1.2.3".parse().unwrap(), 100, 8));
        // Without the kernel's filter, other protocols and prefixes are
        // told apart here.
        let mut boot = m.clone();
        boot.header.protocol = RouteProtocol::Boot;
        assert!(!is_host_route(&boot, "10.1.2.3".parse().unwrap(), 100, 7));
        let mut wide = m.clone();
        wide.header.destination_prefix_length = 24;
        assert!(!is_host_route(&wide, "10.1.2.3".parse().unwrap(), 100, 7));
        let m = host_route_message("2001:db8::1".parse().unwrap(), 70000, 7, true);
        assert_eq!(m.header.destination_prefix_length, 128);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(m.header.table, 0);
        assert!(is_host_route(&m, "2001:db8::1".parse().unwrap(), 70000, 7));
    }

    #[test]
    fn bad_input_is_refused_before_any_request() {
        assert!(check_table(0).unwrap_err().is_invalid_input());
        assert_eq!(check_table(1).unwrap(), 1);
        assert!(check_index(0).unwrap_err().is_invalid_input());
        assert!(
            resolve_table_in("", &Iproute2Dirs::system())
                .unwrap_err()
                .is_invalid_input()
        );
    }
}
