//! Building QEMU's `-netdev` and `-device` values for opened taps.

/// The `-netdev` value for a tap passed as inherited fds:
/// `tap,id=ID,fd=N` for one queue, `tap,id=ID,fds=A:B:...` for several,
/// plus `,vhost=on,vhostfd=N` / `,vhost=on,vhostfds=A:B:...` with vhost.
///
/// ```
/// assert_eq!(vmtap_qemu::args::netdev_arg("net0", &[3], &[]), "tap,id=net0,fd=3");
/// assert_eq!(
///     vmtap_qemu::args::netdev_arg("n", &[3, 4], &[5, 6]),
///     "tap,id=n,fds=3:4,vhost=on,vhostfds=5:6"
/// );
/// ```
pub fn netdev_arg(id: &str, tap_fds: &[i32], vhost_fds: &[i32]) -> String {
    let mut s = format!("tap,id={id}");
    if tap_fds.len() == 1 {
        s.push_str(&format!(",fd={}", tap_fds[0]));
    } else {
        s.push_str(&format!(",fds={}", join_fds(tap_fds)));
    }
    if !vhost_fds.is_empty() {
        if vhost_fds.len() == 1 {
            s.push_str(&format!(",vhost=on,vhostfd={}", vhost_fds[0]));
        } else {
            s.push_str(&format!(",vhost=on,vhostfds={}", join_fds(vhost_fds)));
        }
    }
    s
}

/// The virtio-net `-device` options that go with [`netdev_arg`]:
/// `netdev=ID`, plus `,mq=on,vectors=2N+2` for N > 1 queues.
///
/// ```
/// assert_eq!(vmtap_qemu::args::device_opts("net0", 1), "netdev=net0");
/// assert_eq!(vmtap_qemu::args::device_opts("net0", 4), "netdev=net0,mq=on,vectors=10");
/// ```
pub fn device_opts(id: &str, queues: usize) -> String {
    if queues > 1 {
        format!("netdev={id},mq=on,vectors={}", vectors(queues))
    } else {
        format!("netdev={id}")
    }
}

/// MSI-X vectors virtio-net wants for `queues` queue pairs: 2N+2.
pub fn vectors(queues: usize) -> usize {
    2 * queues + 2
}

/// Fd numbers joined with `:`, as QEMU's `fds=` and `vhostfds=` take them.
pub fn join_fds(fds: &[i32]) -> String {
    fds.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// An id QEMU would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: use letters, digits, '-', '.', '_', starting with a letter")]
pub struct InvalidId(pub String);

/// Checks a QEMU id (netdev and device): a letter first, then letters,
/// digits, `-`, `.`, `_` (QEMU's `id_wellformed`).
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId(id.to_string()))
    }
}

/// The placeholders `vmtap open` replaces in the program's arguments.
pub const PLACEHOLDERS: [&str; 5] = ["ifname", "fds", "vhostfds", "netdev", "device"];

/// Replaces `{NAME}` by its value for every `(NAME, value)` in `values`, in
/// one pass: a value is never scanned again, so a value that itself looks
/// like a placeholder stays as it is. `{{NAME}}` gives a literal `{NAME}`.
/// Anything else (other braces, JSON) is kept as it is.
///
/// ```
/// use vmtap_qemu::args::expand_placeholders;
/// let v = [("ifname", "{fds}"), ("fds", "3:4")];
/// assert_eq!(expand_placeholders("{ifname} {fds}", &v), "{fds} 3:4");
/// assert_eq!(expand_placeholders("{{fds}} {\"a\":{}}", &v), "{fds} {\"a\":{}}");
/// ```
pub fn expand_placeholders(arg: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    'scan: while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        for (name, value) in values {
            let escaped = format!("{{{{{name}}}}}");
            if let Some(after) = rest.strip_prefix(escaped.as_str()) {
                out.push('{');
                out.push_str(name);
                out.push('}');
                rest = after;
                continue 'scan;
            }
            let plain = format!("{{{name}}}");
            if let Some(after) = rest.strip_prefix(plain.as_str()) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push('{');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_in_one_pass() {
        let v = [
            ("ifname", "{netdev}"),
            ("fds", "3:4"),
            ("vhostfds", ""),
            ("netdev", "tap,id=n,fds=3:4"),
            ("device", "netdev=n"),
        ];
        let cases = [
            ("{ifname}", "{netdev}"),
            ("{netdev}", "tap,id=n,fds=3:4"),
            ("a{fds}b{fds}", "a3:4b3:4"),
            ("{{fds}}", "{fds}"),
            ("{{{fds}}}", "{{fds}}"),
            ("{{{{fds}}}}", "{{{fds}}}"),
            ("{vhostfds}|", "|"),
            ("{unknown}", "{unknown}"),
            (
                "{\"driver\":\"virtio-net-pci\",\"x\":{\"y\":1}}",
                "{\"driver\":\"virtio-net-pci\",\"x\":{\"y\":1}}",
            ),
            ("{", "{"),
            ("}", "}"),
            ("{fds", "{fds"),
            ("é{fds}é", "é3:4é"),
            ("", ""),
        ];
        for (arg, want) in cases {
            assert_eq!(expand_placeholders(arg, &v), want, "{arg}");
        }
    }

    #[test]
    fn one_and_many_queues_with_and_without_vhost() {
        assert_eq!(
            netdev_arg("a", &[7], &[9]),
            "tap,id=a,fd=7,vhost=on,vhostfd=9"
        );
        assert_eq!(netdev_arg("a", &[3, 4, 5], &[]), "tap,id=a,fds=3:4:5");
        assert_eq!(device_opts("a", 2), "netdev=a,mq=on,vectors=6");
        assert_eq!(vectors(256), 514);
        assert_eq!(join_fds(&[]), "");
    }
}
