//! Routed mode's primitives on the real kernel: each test in its own
//! network namespace, checked against what `ip` and `/proc/sys` show.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vmtap_net::Rtnl;
use vmtap_net::routed::{
    Family, IifRule, Iproute2Dirs, Ipv6Off, MAIN_TABLE, RoutedError, RoutedStep, Sysctl,
    read_sysctl, resolve_table, resolve_table_in, write_sysctl,
};
use vmtap_testkit::{in_netns, ip, run, skip, wait_until};

/// A persistent tap, up (a route through a device that is down is
/// refused); returns its index.
fn tap(name: &str) -> u32 {
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    ip(&["link", "set", name, "up"]);
    index(name)
}

fn index(name: &str) -> u32 {
    Rtnl::open().unwrap().require(name).unwrap().index
}

fn family_flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// `ip -N -j rule show` for one family (tables as numbers).
fn ip_rules(family: Family) -> Vec<Value> {
    let out = ip(&[family_flag(family), "-N", "-j", "rule", "show"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The rules `ip` shows for input interface `iif`, as (priority, table).
fn ip_iif_rules(family: Family, iif: &str) -> Vec<(u64, String)> {
    ip_rules(family)
        .iter()
        .filter(|r| r["iif"] == iif)
        .map(|r| {
            (
                r["priority"].as_u64().unwrap(),
                r["table"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ip -j route show table T` for one family; empty when the table does
/// not exist.
fn ip_routes(family: Family, table: u32) -> Vec<Value> {
    match run(
        "ip",
        &[
            family_flag(family),
            "-j",
            "route",
            "show",
            "table",
            &table.to_string(),
        ],
    ) {
        Ok(out) if out.trim().is_empty() => Vec::new(),
        Ok(out) => serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
        Err(e) if e.contains("does not exist") => Vec::new(),
        Err(e) => panic!("ip route show table {table}: {e}"),
    }
}

/// The routes to `dst` in `table`, as `ip` shows them.
fn ip_routes_to(dst: IpAddr, table: u32) -> Vec<Value> {
    ip_routes(Family::of(dst), table)
        .into_iter()
        .filter(|r| r["dst"] == dst.to_string().as_str())
        .collect()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn proc_read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------
// Rules.

#[test]
fn iif_rules_for_both_families_are_listed_and_no_others() {
    in_netns(|| {
        tap("rt0");
        tap("rt0x");
        tap("rt1");
        let mut nl = Rtnl::open().unwrap();
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        nl.add_iif_rule(Family::V6, "rt0", 100).unwrap();
        // Rules of other devices, one of them a longer name, one a prefix
        // (which names no device: detached).
        ip(&["rule", "add", "iif", "rt0x", "table", "100"]);
        ip(&["-6", "rule", "add", "iif", "rt1", "table", "101"]);
        ip(&["rule", "add", "iif", "rt", "table", "102"]);
        ip(&["rule", "add", "oif", "rt0", "table", "103"]);

        for family in [Family::V4, Family::V6] {
            let shown = ip_iif_rules(family, "rt0");
            assert_eq!(shown.len(), 1, "{family}: {shown:?}");
            assert_eq!(shown[0].1, "100");
        }
        let rules = nl.iif_rules("rt0").unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        for (rule, family) in rules.iter().zip([Family::V4, Family::V6]) {
            assert_eq!(rule.family, family);
            assert_eq!(rule.iif, "rt0");
            assert_eq!(rule.table, 100);
            assert_eq!(rule.priority, Some(ip_iif_rules(family, "rt0")[0].0 as u32));
            assert!(rule.details.is_plain(), "{rule:?}");
            assert!(!rule.detached);
        }
        // Without a pref, as `ip rule add`: just before the main table's.
        assert_eq!(rules[0].priority, Some(32765));

        let other = nl.iif_rules("rt0x").unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].iif, "rt0x");
        let v6 = nl.iif_rules("rt1").unwrap();
        assert_eq!(v6.len(), 1);
        assert_eq!((v6[0].family, v6[0].table), (Family::V6, 101));
        let prefix = nl.iif_rules("rt").unwrap();
        assert_eq!(prefix.len(), 1);
        assert!(prefix[0].detached);
        assert_eq!(prefix[0].table, 102);
        assert!(nl.iif_rules("rt9").unwrap().is_empty());
    });
}

#[test]
fn tables_above_255_and_the_main_table() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        nl.add_iif_rule(Family::V4, "rt0", 100_000).unwrap();
        nl.add_iif_rule(Family::V6, "rt0", u32::MAX).unwrap();
        nl.add_iif_rule(Family::V4, "rt0", MAIN_TABLE).unwrap();
        assert_eq!(
            ip_iif_rules(Family::V4, "rt0")
                .into_iter()
                .map(|r| r.1)
                .collect::<Vec<_>>(),
            vec!["254", "100000"],
            "the newest rule comes first"
        );
        assert_eq!(ip_iif_rules(Family::V6, "rt0")[0].1, u32::MAX.to_string());
        let tables: Vec<u32> = nl
            .iif_rules("rt0")
            .unwrap()
            .iter()
            .map(|r| r.table)
            .collect();
        assert_eq!(tables, vec![MAIN_TABLE, 100_000, u32::MAX]);
    });
}

#[test]
fn del_rule_deletes_exactly_one_rule() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        // Two identical rules (priorities 32765 and 32764), one that
        // another tool added with its own priority, and the same in IPv6.
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        ip(&["rule", "add", "iif", "rt0", "table", "100", "pref", "500"]);
        nl.add_iif_rule(Family::V6, "rt0", 100).unwrap();
        let prefs = |family| -> Vec<u64> {
            ip_iif_rules(family, "rt0")
                .into_iter()
                .map(|r| r.0)
                .collect()
        };
        assert_eq!(prefs(Family::V4), vec![500, 32764, 32765]);

        let rules = nl.iif_rules("rt0").unwrap();
        assert_eq!(rules.len(), 4);
        let other_tool = rules.iter().find(|r| r.priority == Some(500)).unwrap();
        assert!(other_tool.details.is_plain());
        let newest = rules.iter().find(|r| r.priority == Some(32764)).unwrap();

        assert!(nl.del_rule(newest).unwrap());
        assert_eq!(prefs(Family::V4), vec![500, 32765]);
        assert_eq!(prefs(Family::V6).len(), 1);
        assert!(!nl.del_rule(newest).unwrap(), "gone already");
        assert_eq!(prefs(Family::V4), vec![500, 32765]);

        assert!(nl.del_rule(other_tool).unwrap());
        assert_eq!(prefs(Family::V4), vec![32765]);
        assert!(!nl.del_rule(other_tool).unwrap());

        // Deleting them all, in the order listed.
        for rule in nl.iif_rules("rt0").unwrap() {
            assert!(nl.del_rule(&rule).unwrap(), "{rule}");
        }
        assert!(nl.iif_rules("rt0").unwrap().is_empty());
        assert!(prefs(Family::V4).is_empty() && prefs(Family::V6).is_empty());
    });
}

#[test]
fn a_rule_with_priority_0_is_deleted_alone() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        ip(&["rule", "add", "iif", "rt0", "table", "100", "pref", "0"]);
        let rules = nl.iif_rules("rt0").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].priority, None,
            "the kernel lists priority 0 without one"
        );
        assert!(nl.del_rule(&rules[0]).unwrap());
        assert_eq!(ip_iif_rules(Family::V4, "rt0"), vec![(32765, "100".into())]);
        assert!(!nl.del_rule(&rules[0]).unwrap());
    });
}

#[test]
fn a_rule_with_more_selectors_is_told_apart() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        // A plain rule, then one with "from" at the same priority: the
        // kernel lists the plain one first.
        ip(&["rule", "add", "iif", "rt0", "table", "100", "pref", "50"]);
        ip(&[
            "rule",
            "add",
            "iif",
            "rt0",
            "from",
            "10.0.0.0/8",
            "table",
            "100",
            "pref",
            "50",
        ]);
        let rules = nl.iif_rules("rt0").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].details.is_plain());
        assert!(!rules[1].details.is_plain());
        // Asking for the "from" rule does not hit the plain one, which a
        // request with only iif, table and priority would.
        assert!(nl.del_rule(&rules[1]).unwrap());
        let left = ip_rules(Family::V4);
        let left: Vec<&Value> = left.iter().filter(|r| r["iif"] == "rt0").collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["src"], "all", "{left:?}");
        assert!(nl.del_rule(&rules[0]).unwrap());
        assert!(nl.iif_rules("rt0").unwrap().is_empty());

        // The other order: a rule with a fwmark, then a plain one at the
        // same priority (the kernel refuses a plain rule after one with
        // "from": it takes it for a duplicate). A request for the plain
        // rule cannot say "no fwmark": the kernel would delete the first.
        ip(&[
            "rule", "add", "iif", "rt0", "fwmark", "7", "table", "100", "pref", "50",
        ]);
        ip(&["rule", "add", "iif", "rt0", "table", "100", "pref", "50"]);
        let rules = nl.iif_rules("rt0").unwrap();
        assert!(rules[1].details.is_plain());
        let err = nl.del_rule(&rules[1]).unwrap_err();
        assert!(matches!(err, RoutedError::AmbiguousRule { .. }), "{err}");
        assert!(err.to_string().contains("delete that one first"), "{err}");
        assert_eq!(nl.iif_rules("rt0").unwrap(), rules, "nothing was deleted");
        // In the listed order, both go.
        for rule in &rules {
            assert!(nl.del_rule(rule).unwrap(), "{rule}");
        }
        assert!(ip_iif_rules(Family::V4, "rt0").is_empty());
    });
}

#[test]
fn rules_of_a_deleted_interface_stay_and_are_found() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        nl.add_iif_rule(Family::V6, "rt0", 100).unwrap();
        ip(&["link", "del", "rt0"]);
        let shown = ip_rules(Family::V4);
        let detached: Vec<&Value> = shown.iter().filter(|r| r["iif"] == "rt0").collect();
        assert_eq!(detached.len(), 1);
        assert!(detached[0].get("iif_detached").is_some(), "{detached:?}");

        let rules = nl.iif_rules("rt0").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.detached && r.table == 100));
        // A rule can be added for a name that does not exist, too.
        nl.add_iif_rule(Family::V4, "rt0", 200).unwrap();
        assert_eq!(nl.iif_rules("rt0").unwrap().len(), 3);

        // The tap comes back: the rules attach to it again, and are the
        // same rules.
        tap("rt0");
        let again = nl.iif_rules("rt0").unwrap();
        assert!(again.iter().all(|r| !r.detached));
        for rule in &rules {
            assert!(nl.del_rule(rule).unwrap(), "{rule}");
        }
        assert_eq!(ip_iif_rules(Family::V4, "rt0"), vec![(32764, "200".into())]);
        assert!(ip_iif_rules(Family::V6, "rt0").is_empty());
    });
}

#[test]
fn a_listed_rule_survives_serde_and_is_still_deleted_exactly() {
    in_netns(|| {
        tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        ip(&[
            "rule", "add", "iif", "rt0", "fwmark", "0x7/0xff", "ipproto", "udp", "dport", "53",
            "table", "100", "pref", "70",
        ]);
        ip(&["rule", "add", "iif", "rt0", "table", "100", "pref", "70"]);
        let rules = nl.iif_rules("rt0").unwrap();
        let json = serde_json::to_string(&rules[0]).unwrap();
        let back: IifRule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rules[0]);
        assert!(nl.del_rule(&back).unwrap());
        let left = nl.iif_rules("rt0").unwrap();
        assert_eq!(left, vec![rules[1].clone()]);
    });
}

// ---------------------------------------------------------------------
// Routes.

#[test]
fn host_routes_in_main_and_numbered_tables_for_both_families() {
    in_netns(|| {
        let rt0 = tap("rt0");
        let rt1 = tap("rt1");
        let mut nl = Rtnl::open().unwrap();
        let cases = [
            (addr("192.0.2.10"), MAIN_TABLE),
            (addr("192.0.2.10"), 100),
            (addr("192.0.2.11"), 70_000),
            (addr("2001:db8::10"), MAIN_TABLE),
            (addr("2001:db8::10"), 100),
            (addr("2001:db8::11"), 70_000),
        ];
        for (ip_addr, table) in cases {
            assert!(!nl.host_route(ip_addr, table, rt0).unwrap());
            nl.replace_host_route(ip_addr, table, rt0).unwrap();
            // Twice is still one route.
            nl.replace_host_route(ip_addr, table, rt0).unwrap();
            let shown = ip_routes_to(ip_addr, table);
            assert_eq!(shown.len(), 1, "{ip_addr} table {table}: {shown:?}");
            let r = &shown[0];
            assert_eq!(r["dev"], "rt0");
            assert_eq!(r["protocol"], "static");
            match Family::of(ip_addr) {
                Family::V4 => assert_eq!(r["scope"], "link", "{r}"),
                Family::V6 => assert_eq!(r["metric"], 1024, "{r}"),
            }
            assert!(nl.host_route(ip_addr, table, rt0).unwrap());
            assert!(
                !nl.host_route(ip_addr, table, rt1).unwrap(),
                "another device"
            );
            assert!(!nl.host_route(ip_addr, 101, rt0).unwrap(), "another table");
        }
        assert!(!nl.host_route(addr("192.0.2.12"), 100, rt0).unwrap());
        assert!(!nl.host_route(addr("2001:db8::12"), 100, rt0).unwrap());
        // Only the host route: a /32 inside a wider route is not it.
        ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "dev",
            "rt0",
            "table",
            "100",
            "proto",
            "static",
        ]);
        assert!(!nl.host_route(addr("198.51.100.0"), 100, rt0).unwrap());

        for (ip_addr, table) in cases {
            assert!(nl.del_host_route(ip_addr, table, rt0).unwrap());
            assert!(ip_routes_to(ip_addr, table).is_empty(), "{ip_addr} {table}");
            assert!(!nl.host_route(ip_addr, table, rt0).unwrap());
            assert!(!nl.del_host_route(ip_addr, table, rt0).unwrap());
        }
    });
}

#[test]
fn deleting_a_host_route_spares_other_devices_protocols_and_tables() {
    in_netns(|| {
        let rt0 = tap("rt0");
        let rt1 = tap("rt1");
        let mut nl = Rtnl::open().unwrap();
        for (dst, metric) in [("192.0.2.20", "10"), ("2001:db8::20", "10")] {
            let ip_addr = addr(dst);
            let f = family_flag(Family::of(ip_addr));
            // The same address through another device (another metric, or
            // the replace would take its place), through the same device
            // with another protocol in another table, and in another table.
            ip(&[
                f, "route", "add", dst, "dev", "rt1", "table", "100", "proto", "static", "metric",
                metric,
            ]);
            ip(&[f, "route", "add", dst, "dev", "rt0", "table", "101"]);
            nl.replace_host_route(ip_addr, 102, rt0).unwrap();
            nl.replace_host_route(ip_addr, 100, rt0).unwrap();
            assert_eq!(ip_routes_to(ip_addr, 100).len(), 2);
            assert!(!nl.host_route(ip_addr, 101, rt0).unwrap(), "proto boot");

            assert!(nl.del_host_route(ip_addr, 100, rt0).unwrap());
            let left = ip_routes_to(ip_addr, 100);
            assert_eq!(left.len(), 1, "{left:?}");
            assert_eq!(left[0]["dev"], "rt1");
            assert!(nl.host_route(ip_addr, 100, rt1).unwrap());
            assert!(!nl.del_host_route(ip_addr, 100, rt0).unwrap());
            assert!(!nl.del_host_route(ip_addr, 101, rt0).unwrap(), "proto boot");
            assert_eq!(ip_routes_to(ip_addr, 101).len(), 1);
            assert_eq!(ip_routes_to(ip_addr, 102).len(), 1);
        }
    });
}

#[test]
fn replace_takes_the_place_of_a_route_through_another_device_as_ip_does() {
    in_netns(|| {
        let rt0 = tap("rt0");
        let rt1 = tap("rt1");
        let mut nl = Rtnl::open().unwrap();
        ip(&[
            "route",
            "add",
            "192.0.2.30",
            "dev",
            "rt1",
            "table",
            "100",
            "proto",
            "static",
        ]);
        nl.replace_host_route(addr("192.0.2.30"), 100, rt0).unwrap();
        let shown = ip_routes_to(addr("192.0.2.30"), 100);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0]["dev"], "rt0");
        assert!(!nl.host_route(addr("192.0.2.30"), 100, rt1).unwrap());
    });
}

#[test]
fn host_route_of_a_missing_table_or_device_is_absent() {
    in_netns(|| {
        let rt0 = tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        assert!(!nl.host_route(addr("192.0.2.40"), 4000, rt0).unwrap());
        assert!(!nl.host_route(addr("2001:db8::40"), 4000, rt0).unwrap());
        assert!(!nl.del_host_route(addr("192.0.2.40"), 4000, rt0).unwrap());
        assert!(!nl.del_host_route(addr("2001:db8::40"), 4000, rt0).unwrap());
        nl.replace_host_route(addr("192.0.2.40"), 4000, rt0)
            .unwrap();
        ip(&["link", "del", "rt0"]);
        assert!(!nl.host_route(addr("192.0.2.40"), 4000, rt0).unwrap());
        assert!(!nl.del_host_route(addr("192.0.2.40"), 4000, rt0).unwrap());
        // The socket is still usable for other requests afterwards.
        assert!(nl.iif_rules("rt0").unwrap().is_empty());
        assert!(nl.link("lo").unwrap().is_some());
    });
}

/// What the route dumps rely on: with strict checking on, the kernel
/// filters a dump by table and refuses a malformed dump request, and the
/// error of a dump (sent in NLMSG_DONE) comes back as an error; off again,
/// the same requests are answered as before.
#[test]
fn netlink_dump_errors_and_strict_checking() {
    use vmtap_sys::rtnl::netlink_packet_route::AddressFamily;
    use vmtap_sys::rtnl::netlink_packet_route::RouteNetlinkMessage as M;
    use vmtap_sys::rtnl::netlink_packet_route::route::{RouteAttribute, RouteMessage};
    use vmtap_sys::rtnl::netlink_packet_route::rule::RuleMessage;
    use vmtap_sys::rtnl::{NLM_F_DUMP, Netlink};
    in_netns(|| {
        let rt0 = tap("rt0");
        let mut nl = Rtnl::open().unwrap();
        nl.replace_host_route(addr("192.0.2.80"), 100, rt0).unwrap();
        nl.replace_host_route(addr("192.0.2.81"), MAIN_TABLE, rt0)
            .unwrap();
        let mut raw = Netlink::open().unwrap();
        let in_table = |table: u32| {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet;
            m.attributes.push(RouteAttribute::Table(table));
            M::GetRoute(m)
        };
        let odd_rule_dump = || {
            let mut m = RuleMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.dst_len = 8;
            M::GetRule(m)
        };
        let everything = raw.request_flags(in_table(100), NLM_F_DUMP).unwrap();
        assert!(everything.len() > 1, "unfiltered: every table");
        raw.request_flags(in_table(4000), NLM_F_DUMP).unwrap();
        raw.request_flags(odd_rule_dump(), NLM_F_DUMP).unwrap();

        raw.set_strict_check(true).unwrap();
        let filtered = raw.request_flags(in_table(100), NLM_F_DUMP).unwrap();
        assert_eq!(filtered.len(), 1, "{filtered:?}");
        let err = raw.request_flags(in_table(4000), NLM_F_DUMP).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOENT),
            "no such table: {err}"
        );
        let err = raw.request_flags(odd_rule_dump(), NLM_F_DUMP).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");

        raw.set_strict_check(false).unwrap();
        assert_eq!(
            raw.request_flags(in_table(100), NLM_F_DUMP).unwrap().len(),
            everything.len()
        );
        raw.request_flags(odd_rule_dump(), NLM_F_DUMP).unwrap();
        // Rtnl's host_route turns it off again after its dump.
        assert!(nl.host_route(addr("192.0.2.80"), 100, rt0).unwrap());
        assert!(!nl.host_route(addr("192.0.2.80"), 4000, rt0).unwrap());
        nl.add_iif_rule(Family::V4, "rt0", 100).unwrap();
        assert_eq!(nl.iif_rules("rt0").unwrap().len(), 1);
    });
}

// ---------------------------------------------------------------------
// Routing table names.

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmtap-routed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const RT_TABLES: &str = "\
#
# reserved values
#
255\tlocal
254\tmain
253\tdefault
0\tunspec
#
# local
#
100 vms   # the VMs' table
0x20\thexa
  300 spaced
1200 big
";

fn own_tables() -> (TempDir, Iproute2Dirs) {
    let dir = TempDir::new("tables");
    dir.write("etc/rt_tables", RT_TABLES);
    dir.write(
        "etc/rt_tables.d/a.conf",
        "400 fromdir\nnot a line\n401 afterbad\n",
    );
    dir.write("etc/rt_tables.d/b.txt", "402 notconf\n");
    dir.write("etc/rt_tables.d/.hidden.conf", "403 hidden\n");
    dir.write("usr/rt_tables", "500 usronly\n");
    dir.write("usr/rt_tables.d/a.conf", "501 shadowed\n");
    dir.write("usr/rt_tables.d/c.conf", "502 usrdir\n");
    let dirs = Iproute2Dirs {
        etc: dir.0.join("etc"),
        usr: dir.0.join("usr"),
    };
    (dir, dirs)
}

#[test]
fn tables_by_number_and_by_name_from_own_files() {
    let (dir, dirs) = own_tables();
    let r = |s: &str| resolve_table_in(s, &dirs);
    for (s, id) in [
        ("1", 1),
        ("100", 100),
        ("0x64", 100),
        ("0144", 100),
        ("4294967295", u32::MAX),
        ("main", 254),
        ("local", 255),
        ("default", 253),
        ("vms", 100),
        ("hexa", 32),
        ("spaced", 300),
        ("big", 1200),
        ("fromdir", 400),
        ("usrdir", 502),
    ] {
        assert_eq!(r(s).unwrap(), id, "{s}");
    }
    for invalid in ["0", "00", "0x0", "unspec", "4294967296", "08", "12abc", ""] {
        let err = r(invalid).unwrap_err();
        assert!(
            matches!(err, RoutedError::InvalidTable(_)),
            "{invalid}: {err}"
        );
        assert!(err.is_invalid_input());
    }
    // Not read: after a malformed line, not *.conf, hidden, /usr's
    // rt_tables when /etc has one, a /usr .d file that /etc overrides.
    for unknown in [
        "afterbad", "notconf", "hidden", "usronly", "shadowed", "VMS", "-1", " 1",
    ] {
        let err = r(unknown).unwrap_err();
        let RoutedError::UnknownTable {
            files, problems, ..
        } = &err
        else {
            panic!("{unknown}: {err}");
        };
        assert!(err.is_invalid_input());
        assert_eq!(
            files,
            &vec![
                dirs.etc.join("rt_tables"),
                dirs.usr.join("rt_tables.d/c.conf"),
                dirs.etc.join("rt_tables.d/a.conf"),
            ]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "unknown routing table \"{unknown}\": not a number"
            )),
            "{text}"
        );
        assert!(
            text.contains(&dirs.etc.join("rt_tables").display().to_string()),
            "{text}"
        );
        assert!(text.contains("a.conf line 2 is malformed"), "{text}");
    }
    // Without /etc/iproute2/rt_tables, /usr's is read.
    std::fs::remove_file(dirs.etc.join("rt_tables")).unwrap();
    assert_eq!(r("usronly").unwrap(), 500);
    assert!(r("vms").is_err());
    drop(dir);
    // No files at all: the built-in names and numbers still work.
    assert_eq!(r("main").unwrap(), 254);
    assert_eq!(r("7").unwrap(), 7);
    let err = r("vms").unwrap_err();
    assert!(err.to_string().contains("none found"), "{err}");
}

#[test]
fn the_system_tables_resolve() {
    assert_eq!(resolve_table("main").unwrap(), MAIN_TABLE);
    assert_eq!(resolve_table("254").unwrap(), MAIN_TABLE);
    assert_eq!(resolve_table("100").unwrap(), 100);
    let err = resolve_table("no-such-table-name").unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown routing table \"no-such-table-name\""),
        "{err}"
    );
}

/// What `ip` makes of each name with the test's rt_tables file in place
/// of /etc/iproute2 (in private mount and network namespaces): the same
/// as resolve_table_in.
#[test]
fn tables_resolve_as_ip_resolves_them() {
    if !Path::new("/etc/iproute2").is_dir() {
        skip("no /etc/iproute2 to mount the test's rt_tables over");
        return;
    }
    let dir = TempDir::new("ip");
    let content = format!(
        "{RT_TABLES}0x7fffffff top\n2147483648 toobig\n300 dup\n44 dup\n200inet tight\n+7 plus\nbogus line\n600 after\n"
    );
    dir.write("rt_tables", &content);
    dir.write("rt_tables.d/x.conf", "77 dotd\n");
    let dirs = Iproute2Dirs {
        etc: dir.0.clone(),
        usr: dir.0.join("no-usr"),
    };
    let names = [
        "vms",
        "hexa",
        "spaced",
        "big",
        "top",
        "toobig",
        "dup",
        "inet",
        "tight",
        "plus",
        "after",
        "bogus",
        "dotd",
        "main",
        "local",
        "default",
        "100",
        "0x10",
        "010",
        "08",
        "4294967295",
        "4294967296",
        "12abc",
        "nope",
    ];
    let mut script = format!(
        "mount --bind '{}' /etc/iproute2 || exit 1\n",
        dir.0.display()
    );
    for (i, name) in names.iter().enumerate() {
        script.push_str(&format!(
            "ip rule add iif x table '{name}' pref {} 2>/dev/null\n",
            1000 + i
        ));
    }
    script.push_str("ip -N -j rule show\n");
    let out = run("unshare", &["-m", "-n", "sh", "-c", &script])
        .unwrap_or_else(|e| panic!("unshare -m -n: {e}"));
    let rules: Vec<Value> = serde_json::from_str(&out).unwrap();
    for (i, name) in names.iter().enumerate() {
        let by_ip = rules
            .iter()
            .find(|r| r["priority"] == 1000 + i as u64)
            .map(|r| r["table"].as_str().unwrap().parse::<u32>().unwrap());
        let ours = resolve_table_in(name, &dirs).ok();
        assert_eq!(ours, by_ip, "table {name:?}");
    }
}

// ---------------------------------------------------------------------
// Sysctls.

#[test]
fn the_four_sysctls_are_written_and_read_back() {
    in_netns(|| {
        tap("rt0");
        for which in Sysctl::ALL {
            let path = which.path("rt0").unwrap();
            let path = path.to_str().unwrap();
            // (What a new namespace starts with depends on the host's
            // net.core.devconf_inherit_init_net.)
            write_sysctl("rt0", which, false).unwrap();
            assert_eq!(proc_read(path), "0", "{which:?}");
            assert!(!read_sysctl("rt0", which).unwrap());
            write_sysctl("rt0", which, true).unwrap();
            assert_eq!(proc_read(path), "1", "{which:?}");
            assert!(read_sysctl("rt0", which).unwrap());
            write_sysctl("rt0", which, false).unwrap();
            assert_eq!(proc_read(path), "0", "{which:?}");
            assert!(!read_sysctl("rt0", which).unwrap());
        }
        assert_eq!(
            Sysctl::ALL.map(|s| s.path("rt0").unwrap()),
            [
                "/proc/sys/net/ipv4/conf/rt0/proxy_arp",
                "/proc/sys/net/ipv4/conf/rt0/forwarding",
                "/proc/sys/net/ipv6/conf/rt0/proxy_ndp",
                "/proc/sys/net/ipv6/conf/rt0/forwarding",
            ]
            .map(PathBuf::from)
        );
        // Values other than 0 and 1 count as on.
        std::fs::write("/proc/sys/net/ipv4/conf/rt0/proxy_arp", "2").unwrap();
        assert!(read_sysctl("rt0", Sysctl::ProxyArp).unwrap());
    });
}

#[test]
fn a_namespace_s_values_do_not_touch_the_host_s() {
    // This thread is in the host's namespace; the writes below happen in
    // a fresh one, on its own "lo".
    let host: Vec<String> = Sysctl::ALL
        .iter()
        .map(|s| proc_read(s.path("lo").unwrap().to_str().unwrap()))
        .collect();
    let host_again = host.clone();
    in_netns(move || {
        for (which, host_value) in Sysctl::ALL.iter().zip(&host_again) {
            let opposite = host_value == "0";
            write_sysctl("lo", *which, opposite).unwrap();
            assert_eq!(read_sysctl("lo", *which).unwrap(), opposite, "{which:?}");
        }
    });
    let after: Vec<String> = Sysctl::ALL
        .iter()
        .map(|s| proc_read(s.path("lo").unwrap().to_str().unwrap()))
        .collect();
    assert_eq!(after, host);
}

#[test]
fn an_interface_without_ipv6_gives_a_clear_error() {
    in_netns(|| {
        let rt0 = tap("rt0");
        let disable = "/proc/sys/net/ipv6/conf/rt0/disable_ipv6";
        std::fs::write(disable, "1").unwrap();
        // The values are there, but turning IPv6 proxying or forwarding on
        // would do nothing.
        let err = write_sysctl("rt0", Sysctl::ProxyNdp, true).unwrap_err();
        assert!(
            matches!(
                err,
                RoutedError::NoIpv6 {
                    why: Ipv6Off::Disabled,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "IPv6 is off on \"rt0\": disable_ipv6 is set on it"
        );
        assert_eq!(proc_read("/proc/sys/net/ipv6/conf/rt0/proxy_ndp"), "0");
        assert!(!read_sysctl("rt0", Sysctl::ProxyNdp).unwrap());
        write_sysctl("rt0", Sysctl::Forwarding6, false).unwrap();
        write_sysctl("rt0", Sysctl::ProxyArp, true).unwrap();
        // The kernel refuses an IPv6 route through it.
        let mut nl = Rtnl::open().unwrap();
        let err = nl
            .replace_host_route(addr("2001:db8::50"), 100, rt0)
            .unwrap_err();
        assert!(
            matches!(err, RoutedError::NoIpv6 { why: Ipv6Off::Disabled, ref ifname } if ifname == "rt0"),
            "{err}"
        );
        nl.replace_host_route(addr("192.0.2.50"), 100, rt0).unwrap();

        // Below 1280 bytes of MTU the kernel drops the interface's IPv6
        // configuration altogether.
        std::fs::write(disable, "0").unwrap();
        ip(&["link", "set", "rt0", "mtu", "1200"]);
        wait_until("rt0 has no IPv6 configuration", 10, || {
            !Path::new("/proc/sys/net/ipv6/conf/rt0").exists()
        });
        for which in [Sysctl::ProxyNdp, Sysctl::Forwarding6] {
            let err = read_sysctl("rt0", which).unwrap_err();
            assert!(
                matches!(
                    err,
                    RoutedError::NoIpv6 {
                        why: Ipv6Off::Interface,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("MTU is below 1280"), "{err}");
            let err = write_sysctl("rt0", which, true).unwrap_err();
            assert!(matches!(err, RoutedError::NoIpv6 { .. }), "{err}");
            let err = write_sysctl("rt0", which, false).unwrap_err();
            assert!(matches!(err, RoutedError::NoIpv6 { .. }), "{err}");
        }
        assert!(read_sysctl("rt0", Sysctl::ProxyArp).unwrap());
        let err = nl
            .replace_host_route(addr("2001:db8::50"), 100, rt0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RoutedError::NoIpv6 {
                    why: Ipv6Off::Interface,
                    ..
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn a_missing_interface_is_named() {
    in_netns(|| {
        for which in Sysctl::ALL {
            let err = read_sysctl("nope0", which).unwrap_err();
            assert!(matches!(err, RoutedError::NoSuchInterface(_)), "{err}");
            assert_eq!(err.to_string(), "no interface named \"nope0\"");
            let err = write_sysctl("nope0", which, true).unwrap_err();
            assert!(matches!(err, RoutedError::NoSuchInterface(_)), "{err}");
        }
    });
}

// ---------------------------------------------------------------------
// Errors.

#[test]
fn bad_input_is_refused_before_anything_is_touched() {
    in_netns(|| {
        tap("rt0");
        let all = "/proc/sys/net/ipv4/conf/all/forwarding";
        let before = proc_read(all);
        let rules_before = ip_rules(Family::V4);
        let mut nl = Rtnl::open().unwrap();
        let long = "x".repeat(16);
        for bad in [
            "", ".", "..", "all", "default", "../all", "a/b", "rt0:1", "a b", &long,
        ] {
            for which in Sysctl::ALL {
                let err = write_sysctl(bad, which, before == "0").unwrap_err();
                assert!(
                    matches!(err, RoutedError::InvalidName { .. }),
                    "{bad:?}: {err}"
                );
                assert!(err.is_invalid_input());
                assert!(read_sysctl(bad, which).unwrap_err().is_invalid_input());
            }
            for family in [Family::V4, Family::V6] {
                let err = nl.add_iif_rule(family, bad, 100).unwrap_err();
                assert!(
                    matches!(err, RoutedError::InvalidName { .. }),
                    "{bad:?}: {err}"
                );
            }
            assert!(nl.iif_rules(bad).unwrap_err().is_invalid_input());
        }
        assert_eq!(proc_read(all), before, "all/forwarding untouched");
        assert_eq!(ip_rules(Family::V4), rules_before);

        let rt0 = index("rt0");
        let err = nl.add_iif_rule(Family::V4, "rt0", 0).unwrap_err();
        assert!(matches!(err, RoutedError::InvalidTable(_)), "{err}");
        for result in [
            nl.replace_host_route(addr("192.0.2.60"), 0, rt0),
            nl.replace_host_route(addr("192.0.2.60"), 100, 0),
            nl.del_host_route(addr("192.0.2.60"), 100, 0).map(|_| ()),
            nl.host_route(addr("192.0.2.60"), 0, rt0).map(|_| ()),
        ] {
            assert!(result.unwrap_err().is_invalid_input());
        }
        assert_eq!(ip_rules(Family::V4), rules_before);
        assert!(ip_routes(Family::V4, 100).is_empty());
    });
}

#[test]
fn netlink_errors_name_the_step_and_the_interface() {
    in_netns(|| {
        let rt0 = tap("rt0");
        ip(&["link", "set", "rt0", "down"]);
        let mut nl = Rtnl::open().unwrap();
        // A route through a device that is down is refused.
        let err = nl
            .replace_host_route(addr("192.0.2.70"), 100, rt0)
            .unwrap_err();
        let RoutedError::Netlink {
            step,
            ifname,
            source,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(
            step,
            &RoutedStep::ReplaceRoute {
                ip: addr("192.0.2.70"),
                table: 100
            }
        );
        assert_eq!(ifname, "rt0");
        assert_eq!(source.raw_os_error(), Some(libc::ENETDOWN));
        assert!(!err.is_invalid_input());
        assert_eq!(
            err.to_string(),
            format!(
                "replacing the route to 192.0.2.70/32 in table 100 on \"rt0\": {}",
                std::io::Error::from_raw_os_error(libc::ENETDOWN)
            )
        );
        // A device that is gone is named by its index.
        ip(&["link", "del", "rt0"]);
        let err = nl
            .replace_host_route(addr("2001:db8::70"), 70_000, rt0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "replacing the route to 2001:db8::70/128 in table 70000 on \"index {rt0}\": {}",
                std::io::Error::from_raw_os_error(libc::ENODEV)
            )
        );
    });
}
