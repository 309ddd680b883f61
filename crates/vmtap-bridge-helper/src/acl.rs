//! The ACL file, read as QEMU's `qemu-bridge-helper` reads
//! `/etc/qemu/bridge.conf`: `allow NAME|all`, `deny NAME|all`,
//! `include PATH`, `#` comments and blank lines; default deny, deny wins.
//!
//! Line by line, as QEMU's `parse_acl_file` does: leading whitespace is
//! skipped; a line starting with `#`, or empty, is skipped; the keyword
//! ends at the first space of the line (or, when it has none, at the first
//! tab); the argument is what follows, without leading and trailing
//! whitespace. A keyword without a separator, an unknown keyword, or a name
//! of 16 bytes or more makes the file invalid. An invalid main file is an
//! error; an included file invalid in one of these ways is reported and
//! the rest of it ignored (the rules before the error stay, as in QEMU); a
//! missing included file, or one the caller may not read, is ignored (as
//! in QEMU: so deny rules belong in files every user can read). Names
//! match exactly (so `allow br0 # x` is a rule for the name `br0 # x`, as
//! in QEMU).
//!
//! Where this is stricter than QEMU, the whole ACL is refused (which
//! denies everything, never allows more than QEMU would, even in an
//! included file): a line longer than QEMU's 4095-byte buffer, a NUL
//! byte, a relative `include` path (QEMU would read it relative to the
//! caller's working directory), includes nested deeper than
//! [`Limits::depth`] (QEMU recurses until it runs out of fds: a loop), a
//! file that is not a regular file, an included file that cannot be read
//! for another reason than its absence or its permissions, and more than
//! [`Limits::file`] bytes in a file or [`Limits::total`] in all.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{escape, quote};

/// The ACL file: fixed, as in QEMU (no option or variable moves it).
pub const ACL_FILE: &str = "/etc/qemu/bridge.conf";

/// QEMU reads lines with a 4096-byte buffer.
const MAX_LINE: usize = 4095;

/// Names of 16 bytes or more (`IFNAMSIZ`) make a file invalid.
const IFNAMSIZ: usize = 16;

/// How the files are read: the real file system, or a map in tests.
pub trait Files {
    /// The whole content of `path`, at most `limit` bytes (a larger file
    /// is an error).
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
}

/// The real file system, as the calling user: regular files only, opened
/// without blocking (a FIFO never hangs the helper) and never as a
/// controlling terminal.
pub struct SystemFiles;

impl Files for SystemFiles {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        use rustix::fs::{FileType, Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut data)?;
        if data.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("larger than {limit} bytes"),
            ));
        }
        Ok(data)
    }
}

/// Bounds on what is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest include nesting (the main file is depth 0).
    pub depth: usize,
    /// Largest file.
    pub file: u64,
    /// Most bytes read in all.
    pub total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            depth: 8,
            file: 1 << 20,
            total: 8 << 20,
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `allow all`.
    AllowAll,
    /// `allow NAME`.
    Allow(Vec<u8>),
    /// `deny all`.
    DenyAll,
    /// `deny NAME`.
    Deny(Vec<u8>),
}

/// The rules of the main file and its includes, and what was reported
/// about included files along the way.
#[derive(Debug, Default)]
pub struct Acl {
    /// Every rule, in the order read (order does not matter).
    pub rules: Vec<Rule>,
    /// Problems of included files that were ignored, one line each.
    pub warnings: Vec<String>,
}

/// Why the ACL cannot be used (access is denied).
#[derive(Debug)]
pub enum AclError {
    /// The main file cannot be read (a missing file is an error).
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The main file is invalid.
    Invalid(Invalid),
    /// Includes nested too deep: a loop.
    TooDeep {
        /// The include that went too deep.
        path: PathBuf,
        /// The limit.
        depth: usize,
    },
    /// More than [`Limits::total`] bytes read in all.
    TooLarge {
        /// The limit.
        total: u64,
    },
}

/// A line that makes a file invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The file.
    pub path: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            escape(&self.path.to_string_lossy()),
            self.line,
            self.problem
        )
    }
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(
                f,
                "cannot read the ACL file {}: {source}",
                escape(&path.to_string_lossy())
            ),
            Self::Invalid(i) => write!(f, "invalid ACL file: {i}"),
            Self::TooDeep { path, depth } => write!(
                f,
                "invalid ACL file: includes nested deeper than {depth} at {} (an include loop?)",
                escape(&path.to_string_lossy())
            ),
            Self::TooLarge { total } => {
                write!(
                    f,
                    "invalid ACL file: more than {total} bytes with its includes"
                )
            }
        }
    }
}

/// How reading one file ended badly.
enum FileError {
    /// The file is invalid (an include: reported, and the rest ignored).
    Invalid(Invalid),
    /// The whole ACL is unusable.
    Fatal(AclError),
}

struct Loader<'a> {
    files: &'a dyn Files,
    limits: Limits,
    total: u64,
    acl: Acl,
}

impl Acl {
    /// Reads the ACL from `path` and its includes.
    pub fn load(files: &dyn Files, path: &Path, limits: Limits) -> Result<Acl, AclError> {
        let mut loader = Loader {
            files,
            limits,
            total: 0,
            acl: Acl::default(),
        };
        let data = loader.read(path).map_err(|e| match e {
            Ok(source) => AclError::Read {
                path: path.to_path_buf(),
                source,
            },
            Err(fatal) => fatal,
        })?;
        match loader.parse(path, &data, 0) {
            Ok(()) => Ok(loader.acl),
            Err(FileError::Invalid(i)) => Err(AclError::Invalid(i)),
            Err(FileError::Fatal(e)) => Err(e),
        }
    }

    /// Whether `bridge` may be used: some rule allows it (`allow all` or
    /// its name) and none denies it (`deny all` or its name).
    pub fn allows(&self, bridge: &str) -> bool {
        let name = bridge.as_bytes();
        let allowed = self.rules.iter().any(|r| match r {
            Rule::AllowAll => true,
            Rule::Allow(n) => n == name,
            _ => false,
        });
        let denied = self.rules.iter().any(|r| match r {
            Rule::DenyAll => true,
            Rule::Deny(n) => n == name,
            _ => false,
        });
        allowed && !denied
    }
}

/// `g_ascii_isspace`, which QEMU uses.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_space(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_space(*last)
    {
        s = rest;
    }
    s
}

impl Loader<'_> {
    /// Reads a file; `Err(Ok(io))` when it cannot be read.
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, Result<io::Error, AclError>> {
        let data = self.files.read(path, self.limits.file).map_err(Ok)?;
        self.total += data.len() as u64;
        if self.total > self.limits.total {
            return Err(Err(AclError::TooLarge {
                total: self.limits.total,
            }));
        }
        Ok(data)
    }

    fn parse(&mut self, path: &Path, data: &[u8], depth: usize) -> Result<(), FileError> {
        for (i, raw) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let invalid = |problem: String| {
                FileError::Invalid(Invalid {
                    path: path.to_path_buf(),
                    line: i + 1,
                    problem,
                })
            };
            // Where vmtap is stricter than QEMU, the whole ACL is refused:
            // in an included file, ignoring the rest (QEMU's way with its
            // own errors) would drop deny rules QEMU would have read.
            let stricter = |i: FileError| match i {
                FileError::Invalid(i) => FileError::Fatal(AclError::Invalid(i)),
                other => other,
            };
            if raw.len() > MAX_LINE {
                return Err(stricter(invalid(format!(
                    "line longer than {MAX_LINE} bytes"
                ))));
            }
            if raw.contains(&0) {
                return Err(stricter(invalid("NUL byte in the line".into())));
            }
            let line = &raw[raw.iter().position(|&b| !is_space(b)).unwrap_or(raw.len())..];
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            // QEMU: the first space, else the first tab.
            let Some(sep) = line
                .iter()
                .position(|&b| b == b' ')
                .or_else(|| line.iter().position(|&b| b == b'\t'))
            else {
                return Err(invalid(format!(
                    "invalid line {}: expected a keyword and its argument, separated by a space or tab",
                    quote(&String::from_utf8_lossy(trim(line)))
                )));
            };
            let (cmd, arg) = (&line[..sep], trim(&line[sep + 1..]));
            let text = |b: &[u8]| quote(&String::from_utf8_lossy(b));
            if cmd != b"include" && arg.len() >= IFNAMSIZ {
                return Err(invalid(format!(
                    "name {} too long: {} bytes (at most {})",
                    text(arg),
                    arg.len(),
                    IFNAMSIZ - 1
                )));
            }
            let rule = match (cmd, arg) {
                (b"allow", b"all") => Rule::AllowAll,
                (b"allow", name) => Rule::Allow(name.to_vec()),
                (b"deny", b"all") => Rule::DenyAll,
                (b"deny", name) => Rule::Deny(name.to_vec()),
                (b"include", file) => {
                    if !file.starts_with(b"/") {
                        return Err(stricter(invalid(format!(
                            "include {}: the path must be absolute",
                            text(file)
                        ))));
                    }
                    self.include(Path::new(std::ffi::OsStr::from_bytes(file)), depth + 1)?;
                    continue;
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "unknown keyword {} (allow, deny, include)",
                        text(other)
                    )));
                }
            };
            self.acl.rules.push(rule);
        }
        Ok(())
    }

    fn include(&mut self, path: &Path, depth: usize) -> Result<(), FileError> {
        if depth > self.limits.depth {
            return Err(FileError::Fatal(AclError::TooDeep {
                path: path.to_path_buf(),
                depth: self.limits.depth,
            }));
        }
        let data = match self.read(path) {
            Ok(data) => data,
            Err(Err(fatal)) => return Err(FileError::Fatal(fatal)),
            // Per-user includes protected by permissions, and includes
            // that are not there, are ignored quietly, as QEMU does.
            Err(Ok(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(());
            }
            // Anything else (not a regular file, too large, an I/O error)
            // refuses the whole ACL: ignoring the file could drop a deny.
            Err(Ok(source)) => {
                return Err(FileError::Fatal(AclError::Read {
                    path: path.to_path_buf(),
                    source,
                }));
            }
        };
        match self.parse(path, &data, depth) {
            Err(FileError::Invalid(i)) => {
                self.acl
                    .warnings
                    .push(format!("{i}: ignoring the rest of this included file"));
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Files in a map; missing ones are ENOENT, `Err` ones fail so.
    #[derive(Default)]
    struct Map(HashMap<PathBuf, Result<Vec<u8>, io::ErrorKind>>);

    impl Map {
        fn with(mut self, path: &str, content: &str) -> Self {
            self.0.insert(path.into(), Ok(content.as_bytes().to_vec()));
            self
        }
        fn failing(mut self, path: &str, kind: io::ErrorKind) -> Self {
            self.0.insert(path.into(), Err(kind));
            self
        }
    }

    impl Files for Map {
        fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
            match self.0.get(path) {
                None => Err(io::ErrorKind::NotFound.into()),
                Some(Err(k)) => Err((*k).into()),
                Some(Ok(d)) if d.len() as u64 > limit => Err(io::ErrorKind::FileTooLarge.into()),
                Some(Ok(d)) => Ok(d.clone()),
            }
        }
    }

    const MAIN: &str = "/etc/qemu/bridge.conf";

    fn load(files: &Map) -> Result<Acl, AclError> {
        Acl::load(files, Path::new(MAIN), Limits::default())
    }

    fn acl(main: &str) -> Acl {
        load(&Map::default().with(MAIN, main)).unwrap()
    }

    fn invalid(main: &str) -> Invalid {
        match load(&Map::default().with(MAIN, main)) {
            Err(AclError::Invalid(i)) => i,
            other => panic!("{main:?}: {other:?}"),
        }
    }

    #[test]
    fn allow_and_deny_names_and_all() {
        let a = acl("allow br0\n");
        assert!(a.allows("br0"));
        assert!(!a.allows("br1"));
        assert!(!a.allows("br"));
        assert!(!a.allows("br00"));
        assert!(acl("allow all\n").allows("anything"));
        assert!(acl("allow allx\n").allows("allx"));
        assert!(!acl("allow allx\n").allows("br0"));
        assert!(
            !acl("deny br0\n").allows("br0"),
            "deny alone allows nothing"
        );
        assert!(!acl("deny all\n").allows("br0"));
        assert!(
            acl("allow br0\nallow br1").allows("br1"),
            "no final newline"
        );
        assert!(!acl("allow BR0\n").allows("br0"), "names match exactly");
    }

    #[test]
    fn deny_wins_whatever_the_order() {
        for text in [
            "allow br0\ndeny br0\n",
            "deny br0\nallow br0\n",
            "allow all\ndeny br0\n",
            "deny br0\nallow all\n",
            "allow br0\ndeny all\n",
            "deny all\nallow br0\n",
            "allow all\ndeny all\n",
        ] {
            assert!(!acl(text).allows("br0"), "{text:?}");
        }
        let a = acl("allow all\ndeny br0\n");
        assert!(a.allows("br1"), "a deny of one name leaves the others");
    }

    #[test]
    fn default_deny() {
        for text in ["", "\n\n", "# allow br0\n", "   \t\n", "#allow all"] {
            let a = acl(text);
            assert!(a.rules.is_empty(), "{text:?}");
            assert!(!a.allows("br0"), "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_separators() {
        let a = acl(concat!(
            "# the bridges users may use\n",
            "\n",
            "   # an indented comment\n",
            "\t\n",
            "allow\tbr0\n",
            "allow    br1   \n",
            "  allow br2\r\n",
            "\tallow br3\n",
            "allow \t br4\n",
        ));
        for br in ["br0", "br1", "br2", "br3", "br4"] {
            assert!(a.allows(br), "{br}");
        }
        assert_eq!(a.rules.len(), 5);
        // QEMU's quirks, kept: a `#` after a rule is part of the name, and
        // an empty argument is a rule for the empty name.
        let a = acl("allow br0 # the lab\n");
        assert_eq!(a.rules, [Rule::Allow(b"br0 # the lab".to_vec())]);
        assert!(!a.allows("br0"));
        assert_eq!(acl("allow \n").rules, [Rule::Allow(Vec::new())]);
        // With a space on the line, the keyword ends there, tab or not.
        let i = invalid("allow\tbr0 \n");
        assert!(i.problem.contains("unknown keyword \"allow\\tbr0\""), "{i}");
    }

    #[test]
    fn invalid_lines_make_the_main_file_an_error() {
        for (text, line, want) in [
            ("allow\n", 1, "expected a keyword and its argument"),
            (
                "allow br0\ndeny\n",
                2,
                "expected a keyword and its argument",
            ),
            ("include\n", 1, "expected a keyword and its argument"),
            ("permit br0\n", 1, "unknown keyword \"permit\""),
            ("Allow br0\n", 1, "unknown keyword \"Allow\""),
            ("allow 0123456789abcdef\n", 1, "too long: 16 bytes"),
            ("deny 0123456789abcdefghij\n", 1, "too long: 20 bytes"),
            ("allow br0\u{0}x\n", 1, "NUL byte"),
            ("include etc/alice.conf\n", 1, "must be absolute"),
            ("include ./alice.conf\n", 1, "must be absolute"),
        ] {
            let i = invalid(text);
            assert_eq!((i.line, i.path.to_str().unwrap()), (line, MAIN), "{text:?}");
            assert!(i.problem.contains(want), "{text:?}: {i}");
            let shown = AclError::Invalid(i).to_string();
            assert!(
                shown.starts_with("invalid ACL file: /etc/qemu/bridge.conf:"),
                "{shown}"
            );
        }
        // 15 bytes is a name; so is anything after `include`.
        assert!(acl("allow 0123456789abcde\n").allows("0123456789abcde"));
        let long = format!("allow {}\n", "x".repeat(MAX_LINE));
        assert!(invalid(&long).problem.contains("longer than 4095"));
        let fits = format!("{}allow br0\n", " ".repeat(MAX_LINE - 10));
        assert!(acl(&fits).allows("br0"));
    }

    #[test]
    fn the_main_file_must_be_there() {
        for (files, want) in [
            (Map::default(), "entity not found"),
            (
                Map::default().failing(MAIN, io::ErrorKind::PermissionDenied),
                "ermission denied",
            ),
            (
                Map::default().failing(MAIN, io::ErrorKind::InvalidInput),
                "invalid input",
            ),
        ] {
            let err = load(&files).unwrap_err();
            assert!(matches!(err, AclError::Read { .. }), "{err}");
            let shown = err.to_string();
            assert!(shown.starts_with("cannot read the ACL file /etc/qemu/bridge.conf: "));
            assert!(shown.contains(want), "{shown}");
        }
    }

    #[test]
    fn includes() {
        let files = Map::default()
            .with(
                MAIN,
                "include /etc/qemu/alice.conf\ninclude /etc/qemu/none.conf\nallow br0\n",
            )
            .with(
                "/etc/qemu/alice.conf",
                "allow br1\ninclude /etc/qemu/deeper.conf\n",
            )
            .with("/etc/qemu/deeper.conf", "deny br0\n");
        let a = load(&files).unwrap();
        assert!(a.allows("br1"));
        assert!(!a.allows("br0"), "a deny in an include wins");
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);

        // Missing and unreadable includes are ignored quietly; any other
        // read error refuses the whole ACL (it could hold a deny).
        let files = Map::default()
            .with(MAIN, "include /a\ninclude /b\nallow br0\n")
            .failing("/b", io::ErrorKind::PermissionDenied);
        let a = load(&files).unwrap();
        assert!(a.allows("br0"));
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        let files = Map::default()
            .with(MAIN, "include /c\nallow br0\n")
            .failing("/c", io::ErrorKind::InvalidInput);
        assert!(matches!(load(&files), Err(AclError::Read { .. })));
    }

    #[test]
    fn an_invalid_include_is_reported_and_the_rest_of_it_ignored() {
        let files = Map::default()
            .with(MAIN, "include /inc\nallow br0\n")
            .with("/inc", "allow br1\nbogus line\nallow br2\n");
        let a = load(&files).unwrap();
        assert!(a.allows("br0"));
        assert!(a.allows("br1"), "rules before the error stay, as in QEMU");
        assert!(!a.allows("br2"), "the rest is ignored");
        assert_eq!(
            a.warnings,
            [
                "/inc:2: unknown keyword \"bogus\" (allow, deny, include): ignoring the rest of this included file"
            ]
        );
        // Where vmtap is stricter than QEMU, in an include too, the whole
        // ACL is refused: the deny after it must not be lost.
        for bad in [
            "include rel.conf\n",
            "x\0y\n",
            &format!("{}\n", "#".repeat(5000)),
        ] {
            let files = Map::default()
                .with(MAIN, "allow all\ninclude /inc\n")
                .with("/inc", &format!("{bad}deny br-mgmt\n"));
            assert!(matches!(load(&files), Err(AclError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn include_loops_and_depth() {
        // A file that includes itself: an error, not a hang.
        let files = Map::default().with(MAIN, "allow br0\ninclude /etc/qemu/bridge.conf\n");
        match load(&files) {
            Err(e @ AclError::TooDeep { .. }) => {
                assert!(e.to_string().contains("deeper than 8"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // A loop through two files, from an include.
        let files = Map::default()
            .with(MAIN, "allow br0\ninclude /a\n")
            .with("/a", "include /b\n")
            .with("/b", "include /a\n");
        assert!(matches!(load(&files), Err(AclError::TooDeep { .. })));
        // Nesting up to the limit is fine.
        let mut files = Map::default().with(MAIN, "include /1\n");
        for d in 1..=8 {
            let next = if d < 8 {
                format!("include /{}\n", d + 1)
            } else {
                "allow br8\n".into()
            };
            files = files.with(&format!("/{d}"), &next);
        }
        assert!(load(&files).unwrap().allows("br8"));
    }

    #[test]
    fn sizes_are_bounded() {
        let limits = Limits {
            depth: 8,
            file: 64,
            total: 100,
        };
        let big = format!("# {}\nallow br0\n", "x".repeat(70));
        let files = Map::default().with(MAIN, &big);
        assert!(matches!(
            Acl::load(&files, Path::new(MAIN), limits),
            Err(AclError::Read { .. })
        ));
        // An oversized include refuses the whole ACL (it could hold a deny).
        let files = Map::default()
            .with(MAIN, "include /big\nallow br0\n")
            .with("/big", &big);
        assert!(matches!(
            Acl::load(&files, Path::new(MAIN), limits),
            Err(AclError::Read { .. })
        ));
        // Many small includes add up.
        let files = Map::default()
            .with(MAIN, "include /s\ninclude /s\ninclude /s\ninclude /s\n")
            .with("/s", &format!("# {}\n", "x".repeat(30)));
        assert!(matches!(
            Acl::load(&files, Path::new(MAIN), limits),
            Err(AclError::TooLarge { total: 100 })
        ));
    }

    #[test]
    fn real_files_regular_only_and_bounded() {
        let dir = std::env::temp_dir().join(format!("vmtap-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bridge.conf");
        std::fs::write(&f, "allow br0\n").unwrap();
        assert_eq!(SystemFiles.read(&f, 100).unwrap(), b"allow br0\n");
        let err = SystemFiles.read(&f, 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        let err = SystemFiles.read(&dir, 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A FIFO with no writer would block a plain open: refused at once.
        let fifo = dir.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = SystemFiles.read(&fifo, 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = SystemFiles.read(&dir.join("none"), 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
