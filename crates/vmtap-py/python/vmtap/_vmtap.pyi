"""The Rust extension (private: use :mod:`vmtap`)."""

from typing import Dict, List, Optional, Tuple, Union, final

TUNSETIFF: int
TUNGETIFF: int
TUNGETFEATURES: int
IFF_TUN: int
IFF_TAP: int
IFF_NO_PI: int
IFF_ONE_QUEUE: int
IFF_VNET_HDR: int
IFF_MULTI_QUEUE: int
IFF_TUN_EXCL: int
IFF_PERSIST: int
MAX_QUEUES: int
IFNAME_MAX: int

_VnetHdr = Union[str, bool, None]

@final
class Tap:
    """An open tap: its name and fds (one per queue; vhost-net fds with
    vhost). Closed by ``close()``, a ``with`` block, or collection;
    ``detach()`` hands the fds over."""

    @property
    def ifname(self) -> str: ...
    @property
    def flags(self) -> int: ...
    @property
    def vnet_hdr(self) -> bool: ...
    @property
    def multi_queue(self) -> bool: ...
    @property
    def fds(self) -> List[int]: ...
    @property
    def vhost_fds(self) -> List[int]: ...
    @property
    def closed(self) -> bool: ...
    def verify(self) -> int: ...
    def close(self) -> None: ...
    def detach(self) -> Tuple[str, List[int], List[int]]: ...
    def __enter__(self) -> "Tap": ...
    def __exit__(self, *exc: object) -> None: ...

def open_tap(
    name: Optional[str] = None,
    *,
    queues: int = 1,
    vnet_hdr: _VnetHdr = None,
    vhost: bool = False,
    attach_existing: bool = False,
) -> Tap: ...
def features() -> Dict[str, object]: ...
def reset_log_cache() -> None: ...
def tun_features(fd: int) -> Optional[int]: ...
def inspect(name_or_fd: Union[str, int]) -> Dict[str, object]: ...
def create_persistent(
    name: Optional[str] = None,
    *,
    multi_queue: bool = False,
    vnet_hdr: bool = False,
    owner: Union[str, int, None] = None,
    group: Union[str, int, None] = None,
    owner_pid: Optional[int] = None,
    tag: Optional[str] = None,
) -> str: ...
def delete_persistent(name: str) -> None: ...
def delete_persistent_many(names: List[str]) -> Dict[str, Optional[Exception]]: ...
def list_taps() -> List[Dict[str, object]]: ...
def collect_garbage(*, dry_run: bool = False) -> Dict[str, Optional[Exception]]: ...
def configure_link(
    ifname: str,
    *,
    mode: Optional[str] = None,
    link: Optional[str] = None,
    vlan: Optional[str] = None,
    ips: List[str] = ...,
    mtu: Optional[int] = None,
    mac: Optional[str] = None,
    up: bool = False,
    nic: Optional[str] = None,
    state_dir: Optional[str] = None,
) -> None: ...
def ifdown(ifname: str, *, nic: Optional[str] = None, state_dir: Optional[str] = None) -> str: ...
def hotplug_add(
    qmp: str,
    id: str,
    *,
    name: Optional[str] = None,
    queues: int = 1,
    vnet_hdr: _VnetHdr = None,
    vhost: bool = False,
    attach_existing: bool = False,
    driver: str = "virtio-net-pci",
    mac: Optional[str] = None,
    mode: Optional[str] = None,
    link: Optional[str] = None,
    vlan: Optional[str] = None,
    ips: List[str] = ...,
    timeout: float = 10.0,
    state_dir: Optional[str] = None,
) -> str: ...
def hotplug_del(
    qmp: str, id: str, *, timeout: float = 10.0, state_dir: Optional[str] = None
) -> None: ...
