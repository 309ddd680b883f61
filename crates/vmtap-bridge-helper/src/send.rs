//! The reply: QEMU's protocol, one `sendmsg` with the 1-byte payload
//! `0x00` and the tap's fds as one `SCM_RIGHTS` message.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg, sockopt,
};

/// Checks that `sock` is a unix socket (before anything is created).
pub fn check_socket(sock: BorrowedFd<'_>) -> io::Result<()> {
    match sockopt::socket_domain(sock) {
        // A stream socket, as QEMU's and libvirt's socketpair: a datagram
        // socket could be connected to a third party, who would get the
        // fds with this process's credentials.
        Ok(AddressFamily::UNIX) => match sockopt::socket_type(sock)? {
            rustix::net::SocketType::STREAM => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stream socket (QEMU passes one end of a socketpair)",
            )),
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a unix socket",
        )),
        Err(rustix::io::Errno::NOTSOCK) => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `0x00` with `fds` in one message. A peer that is gone is an
/// error (`EPIPE`, without a `SIGPIPE`).
pub fn send_fds(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("the fds do not fit in one message"));
    }
    let sent = sendmsg(
        sock.as_fd(),
        &[IoSlice::new(&[0u8])],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != 1 {
        return Err(io::Error::other(format!("sent {sent} bytes, not 1")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SocketFlags, SocketType, socketpair};

    #[test]
    fn only_unix_stream_sockets_are_taken() {
        let (a, _b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        check_socket(a.as_fd()).unwrap();
        let (d, _e) = socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let err = check_socket(d.as_fd()).unwrap_err();
        assert!(err.to_string().contains("not a stream socket"), "{err}");
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(check_socket(f.as_fd()).is_err());
    }
}
