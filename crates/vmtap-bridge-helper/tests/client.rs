//! The client side, `vmtap_qemu::helper::open_with_helper` (what `vmtap
//! open --helper` and `hotplug add --helper` use), against this helper,
//! Debian's, and helpers that fail or break the protocol in every way:
//! each is a clear error, and every fd received is closed (a tap goes
//! with its fds). Each test in its own network namespace.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmtap::{Tun, TunFlags, VnetHdr};
use vmtap_qemu::helper::{HelperError, HelperOptions, STDERR_KEPT, open_with_helper};
use vmtap_testkit::helper::*;
use vmtap_testkit::*;

const HELPER: &str = env!("CARGO_BIN_EXE_vmtap-bridge-helper");

fn root() -> bool {
    if is_root() {
        return true;
    }
    skip("needs real root (private mounts)");
    false
}

fn host() {
    ip(&["link", "add", "br0", "type", "bridge"]);
    ip(&["link", "set", "br0", "mtu", "1400"]);
}

fn open(
    program: &Path,
    f: impl FnOnce(HelperOptions) -> HelperOptions,
) -> Result<vmtap::Tap, HelperError> {
    open_with_helper(&Tun::system(), &f(HelperOptions::new(program, "br0")))
}

fn only_br0() {
    wait_until("only br0 and lo are left", 30, || {
        interfaces() == ["br0", "lo"]
    });
}

#[test]
fn a_tap_from_the_helper_becomes_a_tap_of_this_process() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        let helper = etc.wrapper(&[HELPER]);
        let tap = open(&helper, |o| o.queues(4).vnet_hdr(VnetHdr::On)).unwrap();
        assert_eq!((tap.name(), tap.queues().len()), ("tap0", 4));
        assert!(
            tap.flags()
                .contains(TunFlags::MULTI_QUEUE | TunFlags::VNET_HDR)
        );
        tap.verify().unwrap();
        let d = ip_details("tap0");
        assert!(d.contains("master br0") && d.contains("mtu 1400"), "{d}");
        assert!(d.contains("link/ether fe:"), "{d}");
        assert_eq!(sysfs_tx_queues("tap0"), 4);
        drop(tap);
        wait_gone("tap0");

        let tap = open(&helper, |o| {
            o.vnet_hdr(VnetHdr::Off).name(Some("vm%d".to_string()))
        })
        .unwrap();
        assert_eq!(tap.name(), "vm0");
        assert!(!tap.flags().contains(TunFlags::VNET_HDR));
        drop(tap);
        wait_gone("vm0");

        // QEMU's own helper, for one queue.
        if Path::new(QEMU_HELPER).exists() {
            let tap = open(&etc.wrapper(&[QEMU_HELPER]), |o| o).unwrap();
            assert_eq!(tap.queues().len(), 1);
            assert!(ip_details(tap.name()).contains("master br0"));
            // It knows no --queues: its refusal is the error.
            let err = open(&etc.wrapper(&[QEMU_HELPER]), |o| o.queues(2)).unwrap_err();
            assert!(matches!(err, HelperError::Failed { .. }), "{err}");
            assert!(err.to_string().contains("Usage: "), "{err}");
        } else {
            skip(&format!("{QEMU_HELPER} is not installed"));
        }
    });
}

#[test]
fn the_helpers_refusal_is_the_error_with_its_words() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br1\n");
        let err = open(&etc.wrapper(&[HELPER]), |o| o).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HelperError::Failed { .. }), "{msg}");
        assert!(msg.starts_with("the bridge helper "), "{msg}");
        assert!(
            msg.ends_with(
                "failed (exit 1): vmtap-bridge-helper: access to bridge \"br0\" denied by the ACL file /etc/qemu/bridge.conf"
            ),
            "{msg}"
        );
        assert!(!err.is_invalid_input());
        only_br0();
        // A helper that is not there.
        let err = open(Path::new("/nonexistent/helper"), |o| o).unwrap_err();
        assert!(matches!(err, HelperError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("cannot run the bridge helper /nonexistent/helper")
        );
        // Options refused before anything runs.
        let err = open(Path::new("/nonexistent/helper"), |o| o.queues(300)).unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    });
}

/// A script around the real helper (in the private /etc/qemu).
fn around(etc: &EtcQemu, dir: &Path, name: &str, body: &str) -> PathBuf {
    script(
        dir,
        name,
        &body.replace("HELPER", &etc.wrapper(&[HELPER]).display().to_string()),
    )
}

#[test]
fn a_tap_sent_by_a_helper_that_then_fails_goes_away() {
    if !root() {
        return;
    }
    in_netns(|| {
        host();
        let etc = EtcQemu::with_acl("allow br0\n");
        let dir = TempDir::new("client");
        // Sends, then fails.
        let h = around(&etc, dir.path(), "fails", "HELPER \"$@\"; exit 3");
        let err = open(&h, |o| o).unwrap_err();
        assert!(err.to_string().contains("failed (exit 3)"), "{err}");
        only_br0();
        // Sends, then hangs (with a child of its own): killed at the
        // deadline, its process group with it.
        let pid_file = dir.path().join("sleeper");
        let h = around(
            &etc,
            dir.path(),
            "hangs",
            &format!(
                "HELPER \"$@\"; sleep 1000 & echo $! > {}; wait",
                pid_file.display()
            ),
        );
        let err = open(&h, |o| o.timeout(Duration::from_secs(2))).unwrap_err();
        assert!(matches!(err, HelperError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("did not finish within 2s: killed"),
            "{err}"
        );
        only_br0();
        let sleeper = std::fs::read_to_string(&pid_file).unwrap();
        wait_until("the helper's child was killed too", 30, || {
            !Path::new(&format!("/proc/{}", sleeper.trim())).exists()
        });
        // 2 queues asked, 1 sent.
        let h = around(
            &etc,
            dir.path(),
            "one-queue",
            "for a; do shift; case $a in --queues=*) ;; *) set -- \"$@\" \"$a\";; esac; done; exec HELPER \"$@\"",
        );
        let err = open(&h, |o| o.queues(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the bridge helper {}'s reply is not a tap's: 1 fd(s), not 2",
                h.display()
            )
        );
        only_br0();
        // A vnet header asked, none given.
        let h = around(
            &etc,
            dir.path(),
            "no-vnet",
            "for a; do shift; [ \"$a\" = --use-vnet ] || set -- \"$@\" \"$a\"; done; exec HELPER \"$@\"",
        );
        let err = open(&h, |o| o.vnet_hdr(VnetHdr::On)).unwrap_err();
        assert!(matches!(err, HelperError::Tap { .. }), "{err}");
        assert!(
            err.to_string().contains("vnet_hdr is off but on was asked"),
            "{err}"
        );
        only_br0();
        // The same helper without the check: fine.
        open(&h, |o| o).unwrap();
    });
}

/// A FIFO the test reads, and that a fake helper opens for writing, writes
/// a byte to and sends: the byte then the end tell that every copy of the
/// fd sent was closed.
struct Fifo {
    path: PathBuf,
    reader: std::fs::File,
}

impl Fifo {
    fn new(dir: &Path) -> Self {
        let path = dir.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nonblock())
            .open(&path)
            .unwrap();
        Self { path, reader }
    }

    /// The writer's byte came, and no writer is left.
    fn assert_all_closed(&mut self) {
        let mut b = [0u8; 8];
        assert_eq!(
            self.reader.read(&mut b).unwrap(),
            1,
            "the fake helper wrote"
        );
        wait_until("every copy of the FIFO's writing end is closed", 30, || {
            matches!(self.reader.read(&mut b), Ok(0))
        });
    }
}

fn nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// A fake helper in Python: sends `payload` with `count` copies of the
/// FIFO's writing end on fd 0, then exits `code`.
fn fake(dir: &Path, name: &str, fifo: &Path, payload: &str, count: usize, code: i32) -> PathBuf {
    let py = format!(
        "import array, os, socket, sys\n\
         w = os.open({fifo:?}, os.O_WRONLY)\n\
         os.write(w, b'x')\n\
         s = socket.socket(fileno=0)\n\
         s.sendmsg([{payload}], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [w] * {count}))])\n\
         sys.exit({code})\n",
        fifo = fifo.display().to_string()
    );
    let p = dir.join(format!("{name}.py"));
    std::fs::write(&p, py).unwrap();
    script(dir, name, &format!("exec python3 {} \"$@\"", p.display()))
}

#[test]
fn helpers_that_break_the_protocol_are_clear_errors_and_leave_no_fd() {
    if run("sh", &["-c", "command -v python3"]).is_err() {
        skip("python3 is needed for the fake helpers");
        return;
    }
    in_netns(|| {
        let dir = TempDir::new("fakes");
        for (name, payload, count, code, asked, want) in [
            (
                "wrong-byte",
                "b'\\x01'",
                1,
                0,
                1,
                "1 byte(s) [01], not the one byte 00",
            ),
            (
                "two-bytes",
                "b'\\x00\\x00'",
                1,
                0,
                1,
                "2 byte(s) [00, 00], not the one byte 00",
            ),
            ("too-many", "b'\\x00'", 3, 0, 1, "3 fd(s), not 1"),
            ("too-few", "b'\\x00'", 1, 0, 2, "1 fd(s), not 2"),
            (
                "not-a-tap",
                "b'\\x00'",
                1,
                0,
                1,
                "sent fds that are not a usable tap",
            ),
            ("sent-then-failed", "b'\\x00'", 1, 1, 1, "failed (exit 1)"),
        ] {
            let mut fifo = Fifo::new(dir.path());
            let h = fake(dir.path(), name, &fifo.path, payload, count, code);
            let err = open(&h, |o| o.queues(asked)).unwrap_err();
            assert!(err.to_string().contains(want), "{name}: {err}");
            fifo.assert_all_closed();
            std::fs::remove_file(&fifo.path).unwrap();
        }

        // Exits 0 without sending (QEMU 7.2 would then use fd 0).
        let h = script(dir.path(), "silent", "echo nothing to say >&2; exit 0");
        let err = open(&h, |o| o).unwrap_err();
        assert!(matches!(err, HelperError::NothingSent { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("exited without sending a tap: nothing to say"),
            "{err}"
        );
        // Hangs without a word.
        let h = script(dir.path(), "hangs", "exec sleep 1000");
        let err = open(&h, |o| o.timeout(Duration::from_millis(300))).unwrap_err();
        assert!(matches!(err, HelperError::Timeout { .. }), "{err}");
        // Floods its stderr, forever, then once and fails: what is kept
        // is bounded, the rest counted.
        let h = script(dir.path(), "floods", "exec yes 'flood flood flood' >&2");
        let err = open(&h, |o| o.timeout(Duration::from_secs(1))).unwrap_err();
        assert!(matches!(err, HelperError::Timeout { .. }), "{err}");
        let msg = err.to_string();
        // The kept bytes, their lines joined with " / ".
        assert!(msg.len() < 2 * STDERR_KEPT, "{} bytes", msg.len());
        assert!(msg.contains("more bytes)"), "{}", &msg[msg.len() - 100..]);
        let h = script(
            dir.path(),
            "floods-once",
            "head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 1",
        );
        let err = open(&h, |o| o).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HelperError::Failed { .. }), "{msg}");
        assert!(
            msg.ends_with(&format!("({} more bytes)", 1_000_000 - STDERR_KEPT)),
            "{}",
            &msg[msg.len() - 100..]
        );
        // Writes to stdout: never read, never in the way.
        let h = script(dir.path(), "chatty", "yes | head -c 1000000; exit 0");
        let err = open(&h, |o| o).unwrap_err();
        assert!(matches!(err, HelperError::NothingSent { .. }), "{err}");
    });
}
