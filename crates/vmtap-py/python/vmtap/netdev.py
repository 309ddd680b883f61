"""A drop-in for Ganeti's ``ganeti.hypervisor.hv_kvm.netdev``.

The same names, arguments, results and exceptions, so that Ganeti (and any
code written against that module) runs unchanged; the work is vmtap's:

- the constants are the running architecture's (Ganeti hard-codes x86's);
- ``OpenTap`` opens *one* device with N queues, names and all: the
  name is checked by the kernel's rules (Ganeti cuts it at 16 bytes),
  multi-queue without kernel support is an error (Ganeti falls back to one
  queue, and the second queue then fails with EBUSY), and an existing
  interface of that name is refused rather than shared (``IFF_TUN_EXCL``);
- on any error every fd it opened is closed (Ganeti leaks them, and with
  them the device);
- its errors keep Ganeti's wording ("Failed to open /dev/net/tun",
  "Failed to allocate a new TAP device: ...", "Failed to open
  /dev/vhost-net") and add vmtap's explanation; a queue count of 0 or
  over 256 is such an error too (Ganeti 3 fails with UnboundLocalError on
  0).

Warnings go through the root logger (``logging.warning``), as Ganeti's do.

Errors are ``ganeti.errors.HypervisorError`` when the ``ganeti`` package
can be imported, else :class:`vmtap.HypervisorError`.
"""

import fcntl
import logging
import struct
from typing import Any, Callable, List, Mapping, Optional, Tuple, Type

from . import _vmtap
from ._errors import Error
from ._errors import HypervisorError as _VmtapHypervisorError

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_ONE_QUEUE",
    "IFF_TAP",
    "IFF_VNET_HDR",
    "OpenTap",
    "TUNGETFEATURES",
    "TUNGETIFF",
    "TUNSETIFF",
]

# The ioctl request numbers and flags, as this architecture encodes them.
TUNSETIFF: int = _vmtap.TUNSETIFF
TUNGETIFF: int = _vmtap.TUNGETIFF
TUNGETFEATURES: int = _vmtap.TUNGETFEATURES
IFF_TAP: int = _vmtap.IFF_TAP
IFF_NO_PI: int = _vmtap.IFF_NO_PI
IFF_ONE_QUEUE: int = _vmtap.IFF_ONE_QUEUE
IFF_VNET_HDR: int = _vmtap.IFF_VNET_HDR
IFF_MULTI_QUEUE: int = _vmtap.IFF_MULTI_QUEUE

_TUN = "/dev/net/tun"
_VHOST = "/dev/vhost-net"


def _GetTunFeatures(fd: int, _ioctl: Callable[..., bytes] = fcntl.ioctl) -> Optional[int]:
    """Retrieves supported TUN features from file descriptor.

    ``TUNGETFEATURES`` with a zeroed 32-bit argument; ``None`` (and a
    warning) when the ioctl fails.
    """
    req = struct.pack("I", 0)
    try:
        buf = _ioctl(fd, TUNGETFEATURES, req)
    except EnvironmentError as err:
        logging.warning("ioctl(TUNGETFEATURES) failed: %s", err)
        return None
    (flags,) = struct.unpack("I", buf)
    return int(flags)


def _probe(fd: int, features_fn: Callable[[int], Optional[int]], flag: int, name: str) -> bool:
    flags = features_fn(fd)
    if flags is None:
        return False
    result = bool(flags & flag)
    if not result:
        logging.warning("Kernel does not support %s, not enabling", name)
    return result


def _ProbeTapVnetHdr(
    fd: int, _features_fn: Callable[[int], Optional[int]] = _GetTunFeatures
) -> bool:
    """Check whether to enable the IFF_VNET_HDR flag."""
    return _probe(fd, _features_fn, IFF_VNET_HDR, "IFF_VNET_HDR")


def _ProbeTapMqVirtioNet(
    fd: int, _features_fn: Callable[[int], Optional[int]] = _GetTunFeatures
) -> bool:
    """Check whether to enable the IFF_MULTI_QUEUE flag."""
    return _probe(fd, _features_fn, IFF_MULTI_QUEUE, "IFF_MULTI_QUEUE")


def _hypervisor_error() -> Type[Exception]:
    """Ganeti's HypervisorError when Ganeti is there, else vmtap's. Looked
    up when an error is raised (Ganeti may be imported after this module);
    a broken or foreign ``ganeti`` package must not hide the real error."""
    try:
        from ganeti import errors  # type: ignore[import-not-found]
    except Exception:
        return _VmtapHypervisorError
    cls = getattr(errors, "HypervisorError", None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return _VmtapHypervisorError


def OpenTap(
    name: str = "", features: Optional[Mapping[str, Any]] = None
) -> Tuple[bytes, List[int], List[int]]:
    """Open a new tap device and return its file descriptor.

    ``features``: ``vhost`` (default False), ``vnet_hdr`` (default True:
    when the kernel supports it) and ``mq`` = ``(enabled, queues)`` (the
    queue count is read even when ``enabled`` is false, as Ganeti does;
    other keys are ignored). Returns ``(ifname, [tapfds], [vhostfds])``
    with the name as bytes; the fds are not inheritable (pass them with
    ``subprocess``'s ``pass_fds``) and belong to the caller.
    """
    if not features:
        features = {}
    _, queues = features.get("mq", (False, 1))
    if isinstance(name, bytes):
        name = name.decode("ascii")
    else:
        # Ganeti packs the name as ASCII: anything else is its error too.
        name.encode("ascii")
    vnet_hdr = "auto" if features.get("vnet_hdr", True) else "off"
    try:
        tap = _vmtap.open_tap(
            name or None,
            queues=queues,
            vnet_hdr=vnet_hdr,
            vhost=bool(features.get("vhost", False)),
        )
    except Error as err:
        if err.device == _TUN:
            prefix = "Failed to open /dev/net/tun"
        elif err.device == _VHOST:
            prefix = "Failed to open /dev/vhost-net"
        else:
            prefix = "Failed to allocate a new TAP device"
        raise _hypervisor_error()("%s: %s" % (prefix, err)) from err
    ifname, tapfds, vhostfds = tap.detach()
    return ifname.encode("ascii"), tapfds, vhostfds
