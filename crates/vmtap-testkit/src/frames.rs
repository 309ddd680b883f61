//! Frames between taps: our own broadcast frames (tagged or not), sent on
//! one tap and looked for on others, to check where a switch or bridge
//! delivers them.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use vmtap::Tap;

/// Our frames: broadcast, this ethertype (local experimental), this
/// marker, then the frame's id.
const ETHERTYPE: u16 = 0x88b5;
const MARKER: &[u8] = b"vmtap-frame-test:";

/// A frame from MAC 02:00:00:00:00:`src`, in `vlan` (802.1Q) or untagged.
pub fn frame(src: u8, vlan: Option<u16>, id: &str) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, src]);
    if let Some(v) = vlan {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(v.to_be_bytes());
    }
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(MARKER);
    f.extend(id.as_bytes());
    f.resize(f.len().max(64), 0);
    f
}

/// One of our frames, as received: its VLAN tag (if tagged) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The VLAN tag, when tagged.
    pub vlan: Option<u16>,
    /// The frame's id.
    pub id: String,
}

/// Parses a frame; `None` for anything not ours (IPv6 noise...).
pub fn parse(f: &[u8]) -> Option<Seen> {
    let ethertype = |at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (vlan, rest) = match ethertype(12)? {
        0x8100 => (Some(ethertype(14)? & 0xfff), 16),
        _ => (None, 12),
    };
    if ethertype(rest)? != ETHERTYPE {
        return None;
    }
    let payload = f.get(rest + 2..)?.strip_prefix(MARKER)?;
    let id = payload.split(|b| *b == 0).next()?;
    Some(Seen {
        vlan,
        id: String::from_utf8_lossy(id).into_owned(),
    })
}

/// A tap on a switch or bridge, with its fd.
pub struct Port {
    /// The tap's name (for messages).
    pub name: &'static str,
    mac: u8,
    /// The tap.
    pub tap: Tap,
}

impl Port {
    /// A port sending from MAC 02:00:00:00:00:`mac`.
    pub fn new(name: &'static str, mac: u8, tap: Tap) -> Self {
        Self { name, mac, tap }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.tap.queues()[0].as_fd()
    }

    /// Writes one of our frames, in `vlan` or untagged.
    pub fn send(&self, vlan: Option<u16>, id: &str) {
        let f = frame(self.mac, vlan, id);
        assert_eq!(rustix::io::write(self.fd(), &f).unwrap(), f.len());
    }

    /// Reads frames until ours with `id` comes (within 20 s), checks its
    /// tag, and returns the ids of our frames that came before it.
    pub fn expect(&self, id: &str, vlan: Option<u16>) -> Vec<String> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no frame {id} within 20 s (ours before: {before:?})",
                self.name
            );
            let ts = Timespec::try_from(left).unwrap();
            let mut fds = [PollFd::from_borrowed_fd(self.fd(), PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => panic!("poll: {e}"),
            }
            let n = rustix::io::read(self.fd(), &mut buf).unwrap();
            let Some(seen) = parse(&buf[..n]) else {
                continue;
            };
            if seen.id == id {
                assert_eq!(seen.vlan, vlan, "{}: frame {id}", self.name);
                return before;
            }
            before.push(seen.id);
        }
    }

    /// [`Port::expect`], and nothing of ours before it.
    pub fn expect_first(&self, id: &str, vlan: Option<u16>) {
        let before = self.expect(id, vlan);
        assert!(
            before.is_empty(),
            "{} saw {before:?} before {id}",
            self.name
        );
    }
}

/// The ports of a switch or bridge for [`vlan_frame_checks`], with their
/// VLAN specs (vmtap's syntax): two access ports of VLAN 100 (`.100` and
/// `100`), an access port of VLAN 200 (`.200`), a trunk of 100 and 200
/// (`:100:200`) and a hybrid port, native 100 and tagged 200
/// (`.100:200`).
pub struct VlanPorts {
    /// `.100`.
    pub a1: Port,
    /// `100`.
    pub a2: Port,
    /// `.200`.
    pub b1: Port,
    /// `:100:200`.
    pub tr: Port,
    /// `.100:200`.
    pub hy: Port,
}

/// Frames within a VLAN are delivered, untagged on access ports and on the
/// hybrid port's native VLAN, tagged elsewhere; frames never cross VLANs;
/// a VLAN a trunk does not carry is dropped. The same sequence for Open
/// vSwitch and for a VLAN-filtering Linux bridge.
pub fn vlan_frame_checks(p: &VlanPorts) {
    let VlanPorts { a1, a2, b1, tr, hy } = p;
    // VLAN 100, untagged from an access port: the other access port
    // gets it untagged, the trunk tagged, the hybrid port untagged.
    a1.send(None, "f1");
    a2.expect_first("f1", None);
    tr.expect_first("f1", Some(100));
    hy.expect_first("f1", None);
    // VLAN 200 from the trunk: the VLAN-200 access port gets it (and
    // did not get f1 before it), the hybrid port gets it tagged.
    tr.send(Some(200), "f2");
    b1.expect_first("f2", None);
    hy.expect_first("f2", Some(200));
    // VLAN 200 from the access port: the trunk and the hybrid port get
    // it tagged.
    b1.send(None, "f3");
    tr.expect_first("f3", Some(200));
    hy.expect_first("f3", Some(200));
    // Untagged from the hybrid port is its native VLAN, 100: the
    // VLAN-100 ports never saw f2 and f3.
    hy.send(None, "f4");
    a1.expect_first("f4", None);
    a2.expect_first("f4", None);
    tr.expect_first("f4", Some(100));
    // Tagged 200 from the hybrid port: VLAN 200 only (b1 never saw f4).
    hy.send(Some(200), "f5");
    b1.expect_first("f5", None);
    tr.expect_first("f5", Some(200));
    // Tagged 100 from the trunk: VLAN 100 only.
    tr.send(Some(100), "f6");
    a1.expect_first("f6", None);
    a2.expect_first("f6", None);
    hy.expect_first("f6", None);
    // A VLAN the trunk does not carry is dropped: f7 never reaches the
    // hybrid port, f8 does, first.
    tr.send(Some(300), "f7");
    tr.send(Some(200), "f8");
    hy.expect_first("f8", Some(200));
    // And b1 never saw f6 or f7.
    b1.expect_first("f8", None);
}
