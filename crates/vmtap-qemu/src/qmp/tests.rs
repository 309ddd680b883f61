//! The framing and classification of what a QMP peer sends, on bytes
//! alone (no socket): unit cases and property tests.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn one(inbox: &mut Inbox, data: &str) -> Result<Option<Message>, QmpError> {
    assert_eq!(inbox.push(data.as_bytes()), data.len());
    inbox.next("testing", Some("7"))
}

#[test]
fn greetings_replies_events_and_garbage_are_told_apart() {
    let mut inbox = Inbox::new(Limits::default());
    inbox.keep_event("X");
    let m = one(&mut inbox, "{\"QMP\": {\"version\": {}}}\r\n").unwrap();
    assert!(matches!(m, Some(Message::Greeting)), "{m:?}");
    let m = one(&mut inbox, "{\"return\": {\"a\": 1}, \"id\": \"7\"}\r\n").unwrap();
    match m {
        Some(Message::Reply(Ok(ret))) => assert_eq!(ret.get(), "{\"a\": 1}"),
        other => panic!("{other:?}"),
    }
    let m = one(
        &mut inbox,
        "{\"id\": \"7\", \"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}\n",
    )
    .unwrap();
    match m {
        Some(Message::Reply(Err(r))) => assert_eq!(
            r,
            Refusal {
                class: "DeviceNotFound".into(),
                desc: "Device 'x' not found".into()
            }
        ),
        other => panic!("{other:?}"),
    }
    // Replies to other ids, or to none, answer nothing pending: dropped.
    for other in [
        "{\"return\": {}, \"id\": \"8\"}\n",
        "{\"return\": {}, \"id\": 7}\n",
        "{\"return\": {}}\n",
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n",
    ] {
        assert!(one(&mut inbox, other).unwrap().is_none(), "{other}");
    }
    assert_eq!(inbox.dropped_replies(), 4);
    // A kept event is kept (as received) and announced; others dropped.
    let m = one(
        &mut inbox,
        "{\"event\": \"X\", \"data\": {\"device\": \"d\"}}\n",
    )
    .unwrap();
    assert!(matches!(&m, Some(Message::Event(n)) if n == "X"), "{m:?}");
    assert!(
        one(&mut inbox, "{\"event\": \"Y\", \"data\": {}}\n")
            .unwrap()
            .is_none()
    );
    assert_eq!(inbox.events().len(), 1);
    assert_eq!(inbox.dropped_events(), 1);
    let ev = inbox.events().next().unwrap();
    assert_eq!(ev.name(), "X");
    assert_eq!(ev.data::<serde_json::Value>(), Some(json!({"device": "d"})));
    assert_eq!(ev.data::<String>(), None, "data is not a string");
    // Blank lines are skipped; a partial line waits for more bytes.
    assert!(one(&mut inbox, "\r\n\n{\"return\"").unwrap().is_none());
    let m = one(&mut inbox, ": 1, \"id\": \"7\"}\n").unwrap();
    assert!(matches!(m, Some(Message::Reply(Ok(_)))), "{m:?}");
    for garbage in [
        "SSH-2.0-OpenSSH\r\n",
        "[1, 2]\n",
        "[1]\n",
        "{\"hello\": 1}\n",
        "{\"event\": 1}\n",
        "{\"return\": 1, \"id\": \"7\"} x\n",
        "{\"error\": 3, \"id\": \"7\"}\n",
    ] {
        let err = one(&mut inbox, garbage).unwrap_err();
        assert!(matches!(err, QmpError::NotQmp(_)), "{garbage:?}: {err}");
    }
}

/// What is skipped is skipped without building it: nesting far beyond
/// serde's recursion limit is no error in a member nobody reads.
#[test]
fn unread_members_are_skipped_whatever_their_shape() {
    let mut inbox = Inbox::new(Limits::default());
    let deep = format!("{}0{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    let line = format!("{{\"event\": \"Y\", \"data\": {deep}}}\n");
    assert!(one(&mut inbox, &line).unwrap().is_none());
    assert_eq!(inbox.dropped_events(), 1);
    let line = format!("{{\"return\": {deep}, \"id\": \"8\"}}\n");
    assert!(one(&mut inbox, &line).unwrap().is_none());
    assert_eq!(inbox.dropped_replies(), 1);
}

#[test]
fn a_long_line_is_an_error_at_the_limit_not_growth() {
    let limits = Limits {
        max_line: 100,
        ..Limits::default()
    };
    let mut inbox = Inbox::new(limits);
    // Exactly the limit is fine.
    let line = format!(
        "{{\"return\": \"{}\", \"id\": \"7\"}}\n",
        "a".repeat(100 - 25)
    );
    assert_eq!(line.len(), 101);
    assert!(one(&mut inbox, &line).unwrap().is_some());
    // One more byte, without a newline in sight: refused, and no more
    // than limit + 1 bytes are taken in.
    let long = "x".repeat(10_000);
    let took = inbox.push(long.as_bytes());
    assert_eq!(took, 101);
    let err = inbox.next("reading", None).unwrap_err();
    assert!(
        matches!(err, QmpError::LineTooLong { limit: 100, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("longer than 100 bytes"), "{err}");
    assert!(inbox.framer().capacity() <= 101);
}

#[test]
fn events_beyond_the_caps_are_an_error() {
    let ev = "{\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": 1}}\n";
    let mut inbox = Inbox::new(Limits {
        max_events: 3,
        ..Limits::default()
    });
    inbox.keep_event("RTC_CHANGE");
    for _ in 0..3 {
        one(&mut inbox, ev).unwrap();
    }
    let err = one(&mut inbox, ev).unwrap_err();
    assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
    assert_eq!(inbox.events().len(), 3);
    // Taking them makes room again.
    assert_eq!(inbox.take_events().len(), 3);
    assert_eq!(inbox.event_bytes(), 0);
    one(&mut inbox, ev).unwrap();

    let mut inbox = Inbox::new(Limits {
        max_event_bytes: 150,
        ..Limits::default()
    });
    inbox.keep_event("RTC_CHANGE");
    one(&mut inbox, ev).unwrap();
    one(&mut inbox, ev).unwrap();
    let err = one(&mut inbox, ev).unwrap_err();
    assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
    assert!(inbox.event_bytes() <= 150);

    // Events nobody waits for are dropped, however many.
    let mut inbox = Inbox::new(Limits {
        max_events: 3,
        ..Limits::default()
    });
    for _ in 0..100 {
        assert!(one(&mut inbox, ev).unwrap().is_none());
    }
    assert_eq!((inbox.events().len(), inbox.dropped_events()), (0, 100));
}

#[test]
fn deadlines_never_overflow() {
    let d = Deadline::after(Duration::MAX);
    assert!(d.at() > Instant::now() + Duration::from_secs(1000 * 24 * 3600));
    assert_eq!(d.timeout(), Duration::MAX);
    let now = Instant::now();
    assert_eq!(
        later(now, Duration::from_secs(1)),
        now + Duration::from_secs(1)
    );
    assert!(later(now, Duration::from_secs(u64::MAX)) > now);
}

/// Pieces that make up a QMP-ish byte stream: valid messages of each kind,
/// line ends, long runs and noise.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n".to_vec()),
        (0u64..5).prop_map(|id| format!("{{\"return\": {{}}, \"id\": \"{id}\"}}\r\n").into_bytes()),
        Just(b"{\"event\": \"RTC_CHANGE\", \"data\": [0, 0, 0]}\n".to_vec()),
        Just(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n".to_vec()),
        Just(b"{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"n\"}}\r\n".to_vec()),
        (0usize..600).prop_map(|n| vec![b'a'; n]),
        Just(b"{\"return\": [[[[[[[[[[[[[[[[[[[[".to_vec()),
        Just(b"[".repeat(300)),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(piece(), 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever arrives, in whatever chunks: no panic, never more than
    /// one line (plus its newline) buffered, never more events kept than
    /// the caps; a too-long line is the only way to stop.
    #[test]
    fn the_inbox_never_panics_and_stays_bounded(
        data in stream(),
        cuts in proptest::collection::vec(1usize..300, 1..20),
        max_line in 1usize..300,
        max_events in 0usize..6,
        max_event_bytes in 0usize..300,
    ) {
        let limits = Limits { max_line, max_events, max_event_bytes };
        let mut inbox = Inbox::new(limits);
        inbox.keep_event("DEVICE_DELETED");
        let mut rest = &data[..];
        let mut cuts = cuts.iter().cycle();
        'feed: loop {
            loop {
                match inbox.next("testing", Some("3")) {
                    Ok(Some(_)) | Err(QmpError::NotQmp(_)) => {}
                    Ok(None) => break,
                    Err(QmpError::TooManyEvents { .. }) => {
                        prop_assert!(inbox.events().len() <= max_events);
                    }
                    Err(QmpError::LineTooLong { .. }) => break 'feed,
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
                prop_assert!(inbox.events().len() <= max_events);
                prop_assert!(inbox.event_bytes() <= max_event_bytes);
            }
            if rest.is_empty() {
                break;
            }
            let n = (*cuts.next().unwrap()).min(rest.len());
            let took = inbox.push(&rest[..n]);
            prop_assert!(took >= 1, "room for at least one byte after a drain");
            rest = &rest[took..];
            let framer = inbox.framer();
            prop_assert!(framer.buffered() <= max_line + 1);
            prop_assert!(framer.capacity() <= max_line + 1);
        }
    }

    /// The framer hands out exactly the lines of the stream, in order,
    /// and fails exactly at the first line longer than the limit.
    #[test]
    fn the_framer_splits_exactly_like_the_reference(
        data in stream(),
        cuts in proptest::collection::vec(1usize..300, 1..20),
        max_line in 1usize..300,
    ) {
        let mut segments: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let partial = segments.pop().unwrap();
        let too_long = segments.iter().position(|l| l.len() > max_line);
        let expected: Vec<&[u8]> = segments[..too_long.unwrap_or(segments.len())].to_vec();
        let expect_error = too_long.is_some() || partial.len() > max_line;

        let mut framer = Framer::new(max_line);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut failed = false;
        let mut rest = &data[..];
        let mut cuts = cuts.iter().cycle();
        'feed: loop {
            loop {
                match framer.next_line() {
                    Ok(Some(line)) => got.push(line.to_vec()),
                    Ok(None) => break,
                    Err(LineTooLong) => {
                        failed = true;
                        break 'feed;
                    }
                }
            }
            if rest.is_empty() {
                break;
            }
            let n = (*cuts.next().unwrap()).min(rest.len());
            let took = framer.push(&rest[..n]);
            prop_assert!(took >= 1);
            rest = &rest[took..];
            prop_assert!(framer.buffered() <= max_line + 1);
        }
        prop_assert_eq!(failed, expect_error);
        prop_assert_eq!(got, expected);
        if !failed {
            prop_assert_eq!(framer.buffered(), partial.len());
        }
    }
}

#[test]
fn an_interruptible_wait_stops_when_asked_and_only_then() {
    let (a, _b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let asked = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = asked.clone();
    let stop = std::rc::Rc::new(move || {
        counter.set(counter.get() + 1);
        counter.get() == 3
    });
    // Nothing ever arrives: only the third "stop?" ends a minute's wait.
    let until = Instant::now() + Duration::from_secs(60);
    let r = interruptible(stop, || wait_ready(a.as_fd(), PollFlags::IN, until));
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::Interrupted);
    assert_eq!(asked.get(), 3);
    // Outside, the check is gone: a short wait just times out.
    let soon = Instant::now() + Duration::from_millis(50);
    assert!(!wait_ready(a.as_fd(), PollFlags::IN, soon).unwrap());
    assert_eq!(asked.get(), 3);
}
