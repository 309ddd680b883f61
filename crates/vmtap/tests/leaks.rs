//! Failure paths on real devices leave no fd and no interface behind.
//!
//! One test function in its own binary: it counts the whole process's fds,
//! which other tests running in parallel would disturb.

use vmtap_testkit as common;

use common::*;
use vmtap::{DevicePaths, Error, OpenOptions, PersistentOptions, Tun, VnetHdr};

#[test]
fn every_failure_leaves_the_fd_count_and_interfaces_unchanged() {
    in_netns(|| {
        veth("ve0", "ve1");
        Tun::system()
            .create_persistent("pmq0", &PersistentOptions::new().multi_queue(true))
            .unwrap();
        // Another user holds two queues without vnet headers.
        let holder = OpenOptions::new()
            .name("pmq0")
            .queues(2)
            .vnet_hdr(VnetHdr::Off)
            .attach_existing(true)
            .open()
            .unwrap();
        let before_ifs = interfaces();
        let before_fds = fd_count();

        let paths = |tun: &str, vhost_net: &str| {
            Tun::with(
                std::sync::Arc::new(vmtap::Kernel),
                DevicePaths {
                    tun: tun.into(),
                    vhost_net: vhost_net.into(),
                },
            )
        };
        let system = Tun::system();
        let no_vhost = paths(vmtap::TUN_PATH, "/nonexistent/vhost-net");
        let dir_vhost = paths(vmtap::TUN_PATH, "/");
        let no_tun = paths("/nonexistent/tun", vmtap::VHOST_NET_PATH);
        let cases: Vec<(&str, &Tun, OpenOptions, &str)> = vec![
            (
                "vhost-net missing",
                &no_vhost,
                OpenOptions::new().queues(4).vhost(true),
                "vhost-net is not available on this host",
            ),
            (
                "vhost stand-in that is a directory",
                &dir_vhost,
                OpenOptions::new().queues(2).vhost(true),
                "vhost-net is not available",
            ),
            (
                "name exists as a veth",
                &system,
                OpenOptions::new().name("ve0").queues(3),
                "already exists",
            ),
            (
                "attach to a veth",
                &system,
                OpenOptions::new()
                    .name("ve0")
                    .queues(3)
                    .attach_existing(true),
                "not a TAP device",
            ),
            (
                "attach with the wrong vnet_hdr",
                &system,
                OpenOptions::new()
                    .name("pmq0")
                    .queues(3)
                    .vnet_hdr(VnetHdr::On)
                    .attach_existing(true),
                "vnet_hdr is off but on was asked",
            ),
            (
                "tun device missing",
                &no_tun,
                OpenOptions::new(),
                "tun module",
            ),
            (
                "too many queues",
                &system,
                OpenOptions::new().queues(257),
                "must be 1 to 256",
            ),
            (
                "bad name",
                &system,
                OpenOptions::new().name("a:b"),
                "contains ':'",
            ),
        ];
        for (what, tun, opts, words) in cases {
            let err: Error = tun.open(&opts).unwrap_err();
            assert!(err.to_string().contains(words), "{what}: {err}");
            assert_eq!(fd_count(), before_fds, "{what}: fd leaked");
            assert_eq!(interfaces(), before_ifs, "{what}: interface left behind");
        }

        // A tap another user holds is never shared, whatever is asked.
        for queues in [1, 2, 254] {
            let err = OpenOptions::new()
                .name("pmq0")
                .queues(queues)
                .attach_existing(true)
                .open()
                .unwrap_err();
            assert!(
                matches!(err, Error::InUse { .. } | Error::Mismatch { .. }),
                "{err}"
            );
            assert_eq!(fd_count(), before_fds);
            assert_eq!(sysfs_tx_queues("pmq0"), 2, "nothing attached");
        }

        // Queue k fails half-way on a real device: an fd limit that lets
        // only some of the queues open (EMFILE), creating and attaching.
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let tight = Rlimit {
            current: Some(before_fds as u64 + 6),
            maximum: limit.maximum,
        };
        vmtap::Tun::system()
            .create_persistent("idle0", &PersistentOptions::new().multi_queue(true))
            .unwrap();
        let idle_ifs = interfaces();
        setrlimit(Resource::Nofile, tight).unwrap();
        let results: Vec<Result<vmtap::Tap, Error>> = vec![
            OpenOptions::new().name("fl%d").queues(16).open(),
            OpenOptions::new()
                .name("idle0")
                .queues(16)
                .attach_existing(true)
                .open(),
        ];
        setrlimit(Resource::Nofile, limit).unwrap();
        for r in results {
            let err = r.unwrap_err();
            assert_eq!(err.errno(), Some(libc::EMFILE), "{err}");
            assert!(err.to_string().contains("Too many open files"), "{err}");
            assert_eq!(fd_count(), before_fds, "{err}: fd leaked");
        }
        assert_eq!(interfaces(), idle_ifs);
        assert_eq!(vmtap::Tun::system().status("idle0").unwrap().users(), 0);
        vmtap::Tun::system().delete_persistent("idle0").unwrap();
        assert_eq!(interfaces(), before_ifs);
        drop(holder);
        vmtap::Tun::system().delete_persistent("pmq0").unwrap();
    });
}
