//! Interface names against the kernel itself: on 10,000 generated names
//! (valid, invalid, edge lengths, UTF-8, the kernel's own idea of a space),
//! vmtap accepts a name exactly when the kernel creates a tap with exactly
//! that name; and a name vmtap rejects makes `vmtap create` exit 2 having
//! created nothing.
//!
//! The kernel is asked with a bare TUNSETIFF (no vmtap checks) in a fresh
//! network namespace; every tap it makes is persistent and goes with the
//! namespace at the end, so the run does not wait ~16 ms per tap.

use vmtap_testkit as common;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsFd;
use std::process::Command;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use vmtap::{TunFlags, validate_name};
use vmtap_sys as sys;

const CASES: u32 = 10_000;

/// Pieces names are made of: plain characters most of the time, and every
/// character the kernel (or vmtap) treats specially.
fn names() -> impl Strategy<Value = String> {
    let special: Vec<String> = [
        "-", "_", ".", "/", ":", "%", "%d", "d", " ", "\t", "\n", "\x0b", "\x0c", "\r", "\0",
        "\x1c", "\x01", "\x7f", "\u{a0}", "à", "Ġ", "é", "€", "\u{2000}", "\u{85}", "\u{3000}",
        "😀", "{", "}", "@", "=", ",", "'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let piece = prop_oneof![
        6 => "[a-z0-9]",
        2 => prop::sample::select(special),
    ];
    prop_oneof![
        10 => prop::collection::vec(piece, 0..18).prop_map(|v| v.concat()),
        1 => "[a-z]{13,17}",
        1 => prop::sample::select(vec![
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            ".a".into(),
            "lo".into(),
            "%d".into(),
            "a%d%d".into(),
            "%d%".into(),
            "abcdefghijklm%d".into(),
            "abcdefghijklmn%d".into(),
        ]),
    ]
}

/// What the kernel does with a name.
#[derive(Clone, Copy, Debug)]
struct Verdict {
    /// TUNSETIFF succeeded.
    created: bool,
    /// ... with exactly this name.
    exactly: bool,
}

/// A bare TUNSETIFF (exclusive, TAP, no vmtap checks); what it creates is
/// made persistent and recorded by the name the kernel gave it.
fn ask_kernel(name: &str, seen: &mut HashMap<String, Verdict>) -> Verdict {
    if let Some(v) = seen.get(name) {
        return *v;
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let flags = TunFlags::TAP | TunFlags::NO_PI | TunFlags::TUN_EXCL;
    let verdict = match sys::tun_set_iff(tun.as_fd(), name, flags) {
        Ok(got) => {
            sys::tun_set_persist(tun.as_fd(), true).unwrap();
            let exact = Verdict {
                created: true,
                exactly: true,
            };
            seen.insert(got.clone(), exact);
            Verdict {
                created: true,
                exactly: got == name,
            }
        }
        // EINVAL: refused. EBUSY: the name the kernel saw (cut at 15 bytes
        // or at a NUL) exists already: it differs from this one, which was
        // never asked before.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EBUSY)) => Verdict {
            created: false,
            exactly: false,
        },
        Err(e) => panic!("TUNSETIFF {name:?}: {e}"),
    };
    seen.insert(name.to_string(), verdict);
    verdict
}

#[test]
fn name_validation_agrees_with_the_kernel_on_10000_names() {
    let rejected = in_netns(|| {
        let seen = RefCell::new(HashMap::from([(
            "lo".to_string(),
            Verdict {
                created: true,
                exactly: true,
            },
        )]));
        let rejected = RefCell::new(BTreeSet::new());
        let config = Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let result = runner.run(&names(), |name| {
            let kernel = ask_kernel(&name, &mut seen.borrow_mut());
            let exact = validate_name(&name, false);
            if exact.is_ok() != kernel.exactly {
                return Err(TestCaseError::fail(format!(
                    "{name:?}: vmtap says {exact:?}, the kernel {kernel:?}"
                )));
            }
            // A template is valid when the kernel makes a name from exactly
            // it (not from its first 15 bytes, or what comes before a NUL).
            let whole = name.len() <= 15 && !name.contains('\0');
            if name.contains("%d")
                && validate_name(&name, true).is_ok() != (kernel.created && whole)
            {
                return Err(TestCaseError::fail(format!(
                    "template {name:?}: vmtap says {:?}, the kernel {kernel:?}",
                    validate_name(&name, true)
                )));
            }
            // `create` takes templates: the names it must refuse are those
            // that are not even a template.
            if let Err(e) = validate_name(&name, true) {
                assert!(e.is_invalid_input());
                rejected.borrow_mut().insert(name);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let seen = seen.borrow();
        let accepted = seen.values().filter(|v| v.exactly).count();
        eprintln!(
            "{} distinct names asked, {accepted} created exactly, {} rejected by vmtap",
            seen.len(),
            rejected.borrow().len()
        );
        assert!(accepted > 1000 && rejected.borrow().len() > 1000);
        rejected.into_inner()
    });

    // Rejected names through the command: exit 2, one line, nothing made
    // (`create` makes persistent taps, so anything made would stay).
    in_netns(move || {
        let vmtap = env!("CARGO_BIN_EXE_vmtap");
        let mut ran = 0;
        for name in rejected.iter().filter(|n| !n.contains('\0')) {
            let o = Command::new(vmtap)
                .args(["create", "--", name])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{name:?}: {err}");
            assert!(
                err.contains("interface name") && err.lines().count() == 1,
                "{name:?}: {err}"
            );
            ran += 1;
        }
        assert!(ran > 1000);
        assert_eq!(interfaces(), vec!["lo"]);
    });
}
