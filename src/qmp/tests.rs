//! The framing and classification of what a QMP peer sends, on bytes
//! alone (no socket): unit cases and property tests.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn one(inbox: &mut Inbox, data: &str) -> Result<Option<Message>, QmpError> {
    assert_eq!(inbox.push(data.as_bytes()), data.len());
    inbox.next("testing")
}

#[test]
fn greetings_replies_events_and_garbage_are_told_apart() {
    let mut inbox = Inbox::new(Limits::default());
    let m = one(&mut inbox, "{\"QMP\": {\"version\": {}}}\r\n").unwrap();
    assert!(matches!(m, Some(Message::Greeting(_))), "{m:?}");
    let m = one(&mut inbox, "{\"return\": {\"a\": 1}, \"id\": 7}\r\n").unwrap();
    assert_eq!(
        m,
        Some(Message::Reply {
            id: Some(json!(7)),
            result: Ok(json!({"a": 1}))
        })
    );
    let m = one(
        &mut inbox,
        "{\"id\": 8, \"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}}\n",
    )
    .unwrap();
    assert_eq!(
        m,
        Some(Message::Reply {
            id: Some(json!(8)),
            result: Err(Refusal {
                class: "DeviceNotFound".into(),
                desc: "Device 'x' not found".into()
            })
        })
    );
    let m = one(&mut inbox, "{\"event\": \"X\", \"data\": {}}\n").unwrap();
    assert_eq!(m, Some(Message::Event("X".into())));
    assert_eq!(inbox.events().len(), 1);
    // Blank lines are skipped; a partial line waits for more bytes.
    assert_eq!(one(&mut inbox, "\r\n\n{\"return\"").unwrap(), None);
    let m = one(&mut inbox, ": 1}\n").unwrap();
    assert!(matches!(m, Some(Message::Reply { id: None, .. })), "{m:?}");
    for garbage in ["SSH-2.0-OpenSSH\r\n", "[1, 2]\n", "{\"hello\": 1}\n"] {
        let err = one(&mut inbox, garbage).unwrap_err();
        assert!(matches!(err, QmpError::NotQmp(_)), "{garbage:?}: {err}");
    }
}

#[test]
fn a_long_line_is_an_error_at_the_limit_not_growth() {
    let limits = Limits {
        max_line: 100,
        ..Limits::default()
    };
    let mut inbox = Inbox::new(limits);
    // Exactly the limit is fine.
    let line = format!("{{\"return\": \"{}\"}}\n", "a".repeat(100 - 14));
    assert_eq!(line.len(), 101);
    assert!(one(&mut inbox, &line).unwrap().is_some());
    // One more byte, without a newline in sight: refused, and no more
    // than limit + 1 bytes are taken in.
    let long = "x".repeat(10_000);
    let took = inbox.push(long.as_bytes());
    assert_eq!(took, 101);
    let err = inbox.next("reading").unwrap_err();
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
        max_event_bytes: 100,
        ..Limits::default()
    });
    one(&mut inbox, ev).unwrap();
    one(&mut inbox, ev).unwrap();
    let err = one(&mut inbox, ev).unwrap_err();
    assert!(matches!(err, QmpError::TooManyEvents { .. }), "{err}");
    assert!(inbox.event_bytes() <= 100);
}

/// Pieces that make up a QMP-ish byte stream: valid messages of each kind,
/// line ends, long runs and noise.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n".to_vec()),
        (0u64..5).prop_map(|id| format!("{{\"return\": {{}}, \"id\": {id}}}\r\n").into_bytes()),
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
        let mut rest = &data[..];
        let mut cuts = cuts.iter().cycle();
        'feed: loop {
            loop {
                match inbox.next("testing") {
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
