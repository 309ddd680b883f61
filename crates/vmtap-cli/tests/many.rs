//! Many taps: names vmtap picks (unique under racing processes), bulk
//! deletes, ownership tags, `vmtap list` and `vmtap gc`, at the scale of a
//! host with a thousand VMs, each test in its own network namespace with
//! real taps. Nothing but what a test asked for may disappear.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use vmtap::{Owner, Ownership, PersistentOptions, Tun};
use vmtap_testkit::*;

const VMTAP: &str = env!("CARGO_BIN_EXE_vmtap");

fn vmtap(args: &[&str]) -> Output {
    vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
        .args(args)
        .output()
        .unwrap()
}

fn json(o: &Output) -> Value {
    assert_success(o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The links of this namespace, by name.
fn links() -> BTreeSet<String> {
    interfaces().into_iter().collect()
}

/// A process that is gone (started, reaped): its pid and start time.
fn dead_owner() -> Owner {
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let owner = Owner::of_pid(child.id()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    owner
}

fn create_tagged(tun: &Tun, name: Option<&str>, own: Ownership) -> String {
    let opts = PersistentOptions::new().ownership(own);
    match name {
        Some(n) => tun.create_persistent(n, &opts).unwrap().name,
        None => tun.create_persistent_auto(&opts).unwrap().name,
    }
}

/// Interfaces that are not vmtap's to take, and must survive everything.
fn bystanders() -> BTreeSet<String> {
    veth("by-veth0", "by-veth1");
    ip(&["link", "add", "by-br", "type", "bridge"]);
    // A persistent tap vmtap did not tag, and one with someone's alias.
    ip(&["tuntap", "add", "mode", "tap", "by-tap"]);
    ip(&["tuntap", "add", "mode", "tap", "by-alias"]);
    ip(&["link", "set", "by-alias", "alias", "vmtap-ish uplink"]);
    links()
}

#[test]
fn a_thousand_taps_created_listed_collected_and_deleted_in_batches() {
    in_netns(|| {
        let before = bystanders();
        let tun = Tun::system();
        let me = Owner::this_process().unwrap();
        let dead = dead_owner();
        let mut dead_taps = BTreeSet::new();
        let mut live_taps = BTreeSet::new();
        for i in 0..1000 {
            let (owner, set) = if i % 2 == 0 {
                (dead, &mut dead_taps)
            } else {
                (me, &mut live_taps)
            };
            let own = Ownership::new()
                .owner(owner)
                .tag("fleet".to_string())
                .unwrap();
            // Half named by vmtap, half by the caller.
            let name = (i % 4 < 2).then(|| format!("f{i}"));
            set.insert(create_tagged(&tun, name.as_deref(), own));
        }
        assert_eq!(dead_taps.len() + live_taps.len(), 1000, "names unique");
        let listed = json(&vmtap(&["list", "--json"]));
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1000);
        let garbage: BTreeSet<String> = listed
            .iter()
            .filter(|t| t["garbage"] == true)
            .map(|t| t["ifname"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(garbage, dead_taps);
        assert!(
            listed
                .iter()
                .all(|t| t["tag"] == "fleet" && t["persistent"] == true)
        );

        let dry = json(&vmtap(&["gc", "--dry-run", "--json"]));
        assert_eq!(dry["taps"].as_array().unwrap().len(), 500);
        assert_eq!(
            links().len(),
            before.len() + 1000,
            "a dry run deletes nothing"
        );

        let gc = json(&vmtap(&["gc", "--json"]));
        let deleted: BTreeSet<String> = gc["taps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["deleted"] == true)
            .map(|t| t["ifname"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(deleted, dead_taps);
        let now = links();
        assert!(dead_taps.iter().all(|t| !now.contains(t)));
        assert!(live_taps.iter().all(|t| now.contains(t)));

        let o = vmtap(&["delete", "--tag", "fleet"]);
        assert_success(&o);
        assert_eq!(links(), before, "only the tagged taps went");
    });
}

#[test]
fn bulk_delete_reports_each_name_and_touches_nothing_else() {
    in_netns(|| {
        let before = bystanders();
        let tun = Tun::system();
        let mut names = Vec::new();
        for i in 0..300 {
            let n = format!("b{i}");
            tun.create_persistent(&n, &PersistentOptions::new())
                .unwrap();
            names.push(n);
        }
        // One in use: a VM holds its queue.
        let held = vmtap::OpenOptions::new()
            .name("b7")
            .attach_existing(true)
            .open()
            .unwrap();
        let mut args: Vec<&str> = vec!["delete", "--json"];
        args.extend(names.iter().map(String::as_str));
        args.extend(["by-veth0", "by-br", "nosuch", "b1"]);
        let o = vmtap(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let report: Vec<Value> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(report.len(), 303, "each distinct name once");
        let failed: BTreeSet<&str> = report
            .iter()
            .filter(|r| r["deleted"] == false)
            .map(|r| r["ifname"].as_str().unwrap())
            .collect();
        assert_eq!(
            failed,
            BTreeSet::from(["b7", "by-veth0", "by-br", "nosuch"])
        );
        let err_of = |n: &str| {
            report.iter().find(|r| r["ifname"] == n).unwrap()["error"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(err_of("b7").contains("in use"), "{}", err_of("b7"));
        assert!(err_of("by-br").contains("not a TAP"), "{}", err_of("by-br"));
        assert!(
            err_of("nosuch").contains("no interface"),
            "{}",
            err_of("nosuch")
        );
        let mut expected = before.clone();
        expected.insert("b7".into());
        assert_eq!(links(), expected);
        drop(held);
        // Invalid input: exit 2, nothing deleted.
        let o = vmtap(&["delete", "b7", "bad/name"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("bad/name"), "{}", stderr(&o));
        assert_eq!(links(), before);
        // Nothing asked: a usage error.
        assert_eq!(vmtap(&["delete"]).status.code(), Some(2));
    });
}

#[test]
fn gc_keeps_live_untagged_and_busy_taps_and_takes_dead_and_reused_owners() {
    in_netns(|| {
        let before = bystanders();
        let tun = Tun::system();
        let me = Owner::this_process().unwrap();
        let dead = dead_owner();
        // A live pid with another start time: the pid was reused.
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        create_tagged(&tun, Some("g-live"), Ownership::new().owner(me));
        create_tagged(&tun, Some("g-dead"), Ownership::new().owner(dead));
        create_tagged(&tun, Some("g-reused"), Ownership::new().owner(reused));
        create_tagged(&tun, Some("g-nobody"), Ownership::new());
        create_tagged(&tun, Some("g-busy"), Ownership::new().owner(dead));
        let busy = vmtap::OpenOptions::new()
            .name("g-busy")
            .attach_existing(true)
            .open()
            .unwrap();
        // Through the command, with a process that then goes.
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = sleeper.id().to_string();
        let o = vmtap(&["create", "--owner-pid", &pid, "--tag", "t1"]);
        assert_success(&o);
        let cli_tap = String::from_utf8(o.stdout).unwrap().trim().to_string();
        assert!(cli_tap.starts_with("tap"), "{cli_tap}");
        assert!(
            ip_details(&cli_tap).contains(&format!("alias vmtap pid={pid} start=")),
            "{}",
            ip_details(&cli_tap)
        );
        let list = json(&vmtap(&["list", "--json"]));
        let row = |n: &str| -> Value {
            list.as_array()
                .unwrap()
                .iter()
                .find(|t| t["ifname"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(row(&cli_tap)["owner_alive"], true);
        assert_eq!(row(&cli_tap)["tag"], "t1");
        assert_eq!(row("g-busy")["in_use"], true);
        assert_eq!(row("g-busy")["garbage"], false);
        assert_eq!(row("g-reused")["owner_alive"], false);
        assert_eq!(row("g-nobody")["owner_pid"], Value::Null);
        assert_eq!(row("by-tap"), Value::Null, "untagged taps are not listed");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();

        let o = vmtap(&["gc"]);
        assert_success(&o);
        let said = String::from_utf8(o.stdout).unwrap();
        for gone in ["g-dead", "g-reused", cli_tap.as_str()] {
            assert!(said.contains(&format!("deleted tap {gone}\n")), "{said}");
        }
        let mut expected = before.clone();
        expected.extend(["g-live", "g-nobody", "g-busy"].map(String::from));
        assert_eq!(links(), expected);
        // Once its user is gone, the busy one is garbage too.
        drop(busy);
        wait_unused("g-busy");
        assert_success(&vmtap(&["gc"]));
        expected.remove("g-busy");
        assert_eq!(links(), expected);
        // Bad input to create: nothing made.
        let o = vmtap(&["create", "--owner-pid", "0"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let o = vmtap(&["create", "--tag", "a b"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("invalid tag"), "{}", stderr(&o));
        let o = vmtap(&["create", "--owner-pid", &pid]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("no process"), "{}", stderr(&o));
        assert_eq!(links(), expected);
    });
}

#[test]
fn names_stay_unique_under_sixteen_racing_processes() {
    in_netns(|| {
        let before = links();
        const EACH: usize = 24;
        let script = format!(
            "i=0; while [ $i -lt {EACH} ]; do \"$0\" create --tag race || exit 1; i=$((i+1)); done"
        );
        let children: Vec<_> = (0..16)
            .map(|_| {
                vmtap_command("sh", env!("CARGO_TARGET_TMPDIR"))
                    .args(["-c", &script, VMTAP])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut printed = Vec::new();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert_success(&o);
            printed.extend(
                String::from_utf8(o.stdout)
                    .unwrap()
                    .lines()
                    .map(String::from),
            );
        }
        let unique: BTreeSet<&String> = printed.iter().collect();
        assert_eq!(printed.len(), 16 * EACH);
        assert_eq!(unique.len(), printed.len(), "a name was given twice");
        let now = links();
        assert_eq!(now.len(), before.len() + 16 * EACH);
        assert!(printed.iter().all(|n| now.contains(n)));
        assert_success(&vmtap(&["delete", "--tag", "race"]));
        assert_eq!(links(), before);
    });
}

/// The `iif` rules of both families, as `ip rule` prints them.
fn iif_rules() -> Vec<String> {
    let mut all = Vec::new();
    for family in ["-4", "-6"] {
        let out = run("ip", &[family, "rule", "show"]).unwrap_or_default();
        all.extend(
            out.lines()
                .filter(|l| l.contains(" iif "))
                .map(|l| format!("{family} {}", l.trim())),
        );
    }
    all
}

#[test]
fn gc_undoes_what_routed_mode_left_for_gone_taps_and_nothing_else() {
    in_netns(|| {
        ip(&["link", "set", "lo", "up"]);
        // A NIC whose tap went with its program: its rule stays behind.
        assert_success(&vmtap(&[
            "open",
            "--name",
            "gr1",
            "--mode",
            "routed",
            "--ip",
            "10.98.0.2",
            "--link",
            "101",
            "--",
            "true",
        ]));
        wait_gone("gr1");
        // A NIC whose tap lives on.
        assert_success(&vmtap(&["create", "gr2"]));
        let env = [
            ("INTERFACE", "gr2"),
            ("MODE", "routed"),
            ("LINK", "102"),
            ("IP", "10.98.0.3"),
        ];
        let ifup = |args: &[&str]| {
            vmtap_command_with(VMTAP, env!("CARGO_TARGET_TMPDIR"), &env)
                .args(args)
                .output()
                .unwrap()
        };
        assert_success(&ifup(&["ifup"]));
        // A rule vmtap never made, for an interface that does not exist.
        ip(&["rule", "add", "iif", "ghost", "lookup", "103"]);
        let before = iif_rules();
        assert!(before.iter().any(|r| r.contains("iif gr1 ")), "{before:?}");
        assert!(before.iter().any(|r| r.contains("iif gr2 ")), "{before:?}");

        let dry = json(&vmtap(&["gc", "--dry-run", "--json"]));
        let left = dry["leftovers"].as_array().unwrap();
        assert_eq!(left.len(), 1, "{dry}");
        assert_eq!(left[0]["ifname"], "gr1");
        assert!(
            left[0]["leftovers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l.as_str().unwrap().contains("lookup 101")),
            "{dry}"
        );
        assert_eq!(iif_rules(), before, "a dry run changes nothing");

        let o = vmtap(&["gc"]);
        assert_success(&o);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("(of gr1)"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let after = iif_rules();
        let expected: Vec<String> = before
            .iter()
            .filter(|r| !r.contains("iif gr1 "))
            .cloned()
            .collect();
        assert_eq!(after, expected);
        assert!(after.iter().any(|r| r.contains("iif ghost ")));
        // Nothing left to do the second time.
        let again = json(&vmtap(&["gc", "--json"]));
        assert_eq!(again["leftovers"].as_array().unwrap().len(), 0, "{again}");
        assert_success(&ifup(&["ifdown"]));
        assert_success(&vmtap(&["delete", "gr2"]));
        ip(&["rule", "del", "iif", "ghost", "lookup", "103"]);
        assert_eq!(iif_rules(), Vec::<String>::new());
    });
}

#[test]
fn open_records_its_own_pid_which_becomes_the_programs() {
    in_netns(|| {
        let o = vmtap(&[
            "open",
            "--tag",
            "vm9",
            "--",
            "sh",
            "-c",
            "echo $$; ip -d link show {ifname}",
        ]);
        assert_success(&o);
        let out = String::from_utf8(o.stdout).unwrap();
        let pid = out.lines().next().unwrap();
        assert!(
            out.contains(&format!("alias vmtap pid={pid} start=")) && out.contains(" tag=vm9"),
            "{out}"
        );
        // --tag is checked before anything is made.
        let o = vmtap(&["open", "--tag", "", "--", "true"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    });
}

#[test]
fn concurrent_deletes_and_gcs_take_turns_and_report_only_what_went() {
    in_netns(|| {
        let before = bystanders();
        let tun = Tun::system();
        let dead = dead_owner();
        let garbage: BTreeSet<String> = (0..200)
            .map(|_| create_tagged(&tun, None, Ownership::new().owner(dead)))
            .collect();
        let named: Vec<String> = (0..200).map(|i| format!("d{i}")).collect();
        for n in &named {
            tun.create_persistent(n, &PersistentOptions::new()).unwrap();
        }
        let spawn = |args: Vec<String>| {
            vmtap_command(VMTAP, env!("CARGO_TARGET_TMPDIR"))
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut delete_args = vec!["delete".to_string(), "--json".to_string()];
        delete_args.extend(named.iter().cloned());
        let gc_args = vec!["gc".to_string(), "--json".to_string()];
        let children = vec![
            ("gc", spawn(gc_args.clone())),
            ("delete", spawn(delete_args.clone())),
            ("gc", spawn(gc_args)),
            ("delete", spawn(delete_args.clone())),
            ("delete", spawn(delete_args)),
        ];
        let mut gc_deleted = Vec::new();
        let mut deleted = Vec::new();
        for (what, c) in children {
            let o = c.wait_with_output().unwrap();
            let text = String::from_utf8(o.stdout.clone()).unwrap();
            if what == "gc" {
                assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
                let v: Value = serde_json::from_str(&text).unwrap();
                for t in v["taps"].as_array().unwrap() {
                    assert_eq!(t["deleted"], true, "{t}");
                    gc_deleted.push(t["ifname"].as_str().unwrap().to_string());
                }
            } else {
                for line in text.lines() {
                    let r: Value = serde_json::from_str(line).unwrap();
                    if r["deleted"] == true {
                        deleted.push(r["ifname"].as_str().unwrap().to_string());
                    } else {
                        let e = r["error"].as_str().unwrap();
                        assert!(e.contains("no interface"), "{e}");
                    }
                }
            }
        }
        // Each tap reported deleted once, by one of them, and gone.
        gc_deleted.sort();
        assert_eq!(gc_deleted, garbage.iter().cloned().collect::<Vec<_>>());
        deleted.sort();
        let mut want = named.clone();
        want.sort();
        assert_eq!(deleted, want);
        assert_eq!(links(), before);
        // Nothing was left in a private link group.
        let groups = ip(&["-d", "link", "show"]);
        assert!(
            groups
                .lines()
                .filter(|l| l.contains(" group "))
                .all(|l| l.contains(" group default ")),
            "{groups}"
        );
    });
}

#[test]
fn gc_from_another_pid_namespace_cannot_tell_and_deletes_nothing() {
    in_netns(|| {
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = sleeper.id().to_string();
        let o = vmtap(&["create", "pns0", "--owner-pid", &pid]);
        assert_success(&o);
        // Same network namespace, another pid namespace (a sidecar).
        let o = vmtap_command("unshare", env!("CARGO_TARGET_TMPDIR"))
            .args(["-p", "-f", "--mount-proc", VMTAP, "gc", "--json"])
            .output()
            .unwrap();
        assert_success(&o);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["taps"].as_array().unwrap().len(), 0, "{v}");
        assert!(exists("pns0"));
        let list = json(&vmtap(&["list", "--json"]));
        assert_eq!(list[0]["owner_alive"], true);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_success(&vmtap(&["gc"]));
        assert!(!exists("pns0"));
    });
}
