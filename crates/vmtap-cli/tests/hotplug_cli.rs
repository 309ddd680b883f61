//! `vmtap hotplug` as a command, against the fake QEMU monitor (the
//! library's own behaviour is tested in `vmtap-qemu`).

use vmtap_testkit as common;

use common::fakeqmp::FakeQemu;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

/// Absurd timeouts are refused as invalid input (exit 2), before anything
/// is opened or connected.
#[test]
fn absurd_timeouts_are_refused() {
    let q = FakeQemu::normal();
    let qmp = q.path.to_str().unwrap();
    for args in [
        &["add", "--qmp", qmp, "--id", "x", "--timeout", "1e19"][..],
        &[
            "add",
            "--qmp",
            qmp,
            "--id",
            "x",
            "--rollback-timeout",
            "90000",
        ],
        &["del", "--qmp", qmp, "--id", "x", "--timeout", "inf"],
    ] {
        let o = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .arg("hotplug")
            .args(args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains("must be at most 86400 seconds (a day)"), "{e}");
    }
    assert_eq!(q.connections(), 0);
}

/// Whether this runs as root; otherwise the test is skipped (a failure
/// under VMTAP_REQUIRE=1).
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ok = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !ok {
        common::skip("needs root: a real tap in a private network namespace");
    }
    ok
}

/// `vmtap hotplug add` whose standard output is a closed pipe: the NIC is
/// plugged, so the error (exit 1) says so, with the host tap, then why
/// printing failed.
#[test]
fn a_broken_stdout_after_the_add_says_the_nic_is_plugged() {
    if !root() {
        return;
    }
    common::in_netns(|| {
        let q = FakeQemu::normal();
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = vmtap_testkit::vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
            .args(["hotplug", "add", "--qmp"])
            .arg(&q.path)
            .args(["--id", "nic1", "--name", "hpp0", "--json"])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains(
                "the NIC nic1 is plugged with host tap hpp0, but printing that to standard output failed: Broken pipe"
            ),
            "{e}"
        );
        // Plugged indeed: QEMU holds the tap.
        assert!(q.state().devices.contains_key("nic1"));
        assert!(common::exists("hpp0"));
        drop(q.finish());
        common::wait_gone("hpp0");
    });
}
