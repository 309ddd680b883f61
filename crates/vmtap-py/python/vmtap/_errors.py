"""vmtap's exceptions.

- :class:`Error`: every error vmtap raises.
- :class:`InvalidArgument`: the caller's input was refused before anything
  was touched; also a :class:`ValueError`.
- :class:`SysError`: the system refused (an ioctl, netlink, a device
  node); also an :class:`OSError`, with ``errno``.
- :class:`HypervisorError`: what :mod:`vmtap.netdev` raises when Ganeti is
  not installed (with Ganeti, ``ganeti.errors.HypervisorError``).

``device`` names the device node that could not be used (``/dev/net/tun``,
``/dev/vhost-net``), else ``None``. A hot-plug failure also has
``remaining``: what may be left in QEMU (empty when nothing is).
"""

from typing import Optional, Tuple


class Error(Exception):
    """An error from vmtap."""

    device: Optional[str] = None
    remaining: Tuple[str, ...] = ()


class InvalidArgument(Error, ValueError):
    """The input was refused; nothing was created or changed."""


class SysError(Error, OSError):
    """The system refused an operation; ``errno`` says why."""

    def __str__(self) -> str:
        # vmtap's message already names the cause in words.
        if self.strerror is not None:
            return str(self.strerror)
        return super().__str__()


class HypervisorError(Error):
    """Ganeti's ``HypervisorError``, for when Ganeti is not installed."""


for _cls in (Error, InvalidArgument, SysError, HypervisorError):
    _cls.__module__ = "vmtap"
del _cls
