"""vmtap: TAP network backends for KVM/QEMU virtual machines.

Open a tap for QEMU (one fd per queue, plus vhost-net fds), inspect it,
make persistent taps, set up its host side (bridged, routed, Open
vSwitch), and hot-plug NICs into a running QEMU. The work is done by
vmtap's Rust libraries, with the GIL released around system calls, so the
module can be used from threads.

>>> import subprocess, vmtap
>>> with vmtap.open_tap(queues=2) as tap:                  # doctest: +SKIP
...     fds = ":".join(map(str, tap.fds))
...     subprocess.run(["qemu-system-x86_64", "-netdev",
...                     f"tap,id=n0,fds={fds}", ...], pass_fds=tap.fds)

:mod:`vmtap.netdev` is a drop-in for Ganeti's ``hv_kvm.netdev``.
"""

from typing import Dict, Iterable, List, Optional, Union

from . import _vmtap, netdev
from ._errors import Error, HypervisorError, InvalidArgument, SysError
from ._vmtap import MAX_QUEUES, Tap

__all__ = [
    "Error",
    "HypervisorError",
    "InvalidArgument",
    "MAX_QUEUES",
    "SysError",
    "Tap",
    "configure_link",
    "collect_garbage",
    "create_persistent",
    "delete_persistent",
    "delete_persistent_many",
    "features",
    "hotplug_add",
    "hotplug_del",
    "ifdown",
    "inspect",
    "list_taps",
    "netdev",
    "open_tap",
    "reset_log_cache",
]

VnetHdr = Union[str, bool, None]


def open_tap(
    name: Optional[str] = None,
    *,
    queues: int = 1,
    vnet_hdr: VnetHdr = "auto",
    vhost: bool = False,
    attach_existing: bool = False,
) -> Tap:
    """Opens a tap for QEMU: one fd per queue on one device.

    ``name`` is the interface name or a ``%d`` template; ``None`` lets
    vmtap pick a free ``tapN``. An existing interface of that name is refused
    (``IFF_TUN_EXCL``) unless ``attach_existing``: then it must be a
    persistent tap that nobody uses, whose settings must match, and it is
    not changed. ``queues`` is 1 to 256 (several need the kernel's
    multi-queue support: no silent fallback). ``vnet_hdr`` is ``"auto"``
    (when the kernel supports it), ``"on"``/``True`` or ``"off"``/``False``.
    ``vhost`` opens one ``/dev/vhost-net`` fd per queue too.

    The fds are close-on-exec (pass them with ``subprocess``'s
    ``pass_fds``). On any error every fd opened is closed and nothing is
    left behind.
    """
    if isinstance(queues, bool):
        raise TypeError("queues must be an int, not a bool")
    return _vmtap.open_tap(
        name,
        queues=queues,
        vnet_hdr=vnet_hdr,
        vhost=vhost,
        attach_existing=attach_existing,
    )


def _ips(ips: Union[str, Iterable[str]]) -> List[str]:
    # One address as a str is one address, not its characters.
    return [ips] if isinstance(ips, str) else list(ips)


def reset_log_cache() -> None:
    """Makes a change to the level of a logger take effect for the records
    of vmtap's Rust code (loggers ``vmtap.*``, ``vmtap_net.*``,
    ``vmtap_qemu.*``), whose levels are cached."""
    _vmtap.reset_log_cache()


def features() -> Dict[str, object]:
    """What the kernel supports: ``flags`` (``TUNGETFEATURES``, ``None`` on
    an old kernel), ``tun``, ``tap``, ``no_pi``, ``vnet_hdr``,
    ``multi_queue``, ``napi`` and ``vhost_net`` (the device is usable)."""
    return _vmtap.features()


def inspect(name_or_fd: Union[str, int]) -> Dict[str, object]:
    """What is known of a tap, by interface name (netlink) or by an fd of
    this process (``TUNGETIFF``, then netlink when the device is in this
    network namespace): ``ifname``, ``this_netns``, ``persistent``,
    ``owner``, ``group``, ``multi_queue``, ``vnet_hdr``, ``queues`` and
    ``disabled_queues`` (``None`` where it cannot be told)."""
    return _vmtap.inspect(name_or_fd)


def create_persistent(
    name: Optional[str] = None,
    *,
    multi_queue: bool = False,
    vnet_hdr: bool = False,
    owner: Union[str, int, None] = None,
    group: Union[str, int, None] = None,
    owner_pid: Optional[int] = None,
    tag: Optional[str] = None,
) -> str:
    """Creates a persistent tap (it outlives its fds) that ``owner`` (a user
    name or uid) and/or ``group`` may open without privileges; returns its
    name (vmtap's pick when ``name`` is None, the kernel's for a ``%d``
    template). ``owner_pid`` (the process the tap belongs to, recorded with
    its start time) and ``tag`` go in the tap's alias: see
    :func:`list_taps` and :func:`collect_garbage`."""
    return _vmtap.create_persistent(
        name,
        multi_queue=multi_queue,
        vnet_hdr=vnet_hdr,
        owner=owner,
        group=group,
        owner_pid=owner_pid,
        tag=tag,
    )


def delete_persistent(name: str) -> None:
    """Deletes a persistent tap; refused while someone uses it."""
    _vmtap.delete_persistent(name)


def delete_persistent_many(names: Iterable[str]) -> Dict[str, Optional[Error]]:
    """Deletes many persistent taps nobody uses, in one batch (the kernel's
    cost is about that of one delete). Returns, for each distinct name,
    None when it was deleted or the exception saying why not (no such
    interface, not a tap, not persistent, in use, invalid name); the others
    are deleted all the same. Nothing that was not named is touched."""
    return _vmtap.delete_persistent_many(list(names))


def list_taps() -> List[Dict[str, object]]:
    """The taps of this network namespace that vmtap tagged: ``ifname``,
    ``index``, ``persistent``, ``up``, ``queues``, ``in_use``,
    ``owner_pid``, ``owner_alive``, ``tag``, ``garbage``..."""
    return _vmtap.list_taps()


def collect_garbage(*, dry_run: bool = False) -> Dict[str, Optional[Error]]:
    """Deletes the persistent taps vmtap tagged whose owner is gone and
    that nobody uses (``dry_run``: only lists them); the result is as for
    :func:`delete_persistent_many`. Untagged taps are never touched."""
    return _vmtap.collect_garbage(dry_run=dry_run)


def configure_link(
    ifname: str,
    *,
    mode: Optional[str] = None,
    link: Optional[str] = None,
    vlan: Optional[str] = None,
    ips: Union[str, Iterable[str]] = (),
    mtu: Optional[int] = None,
    mac: Optional[str] = None,
    up: bool = False,
    nic: Optional[str] = None,
    state_dir: Optional[str] = None,
) -> None:
    """Sets up the host side of an interface, as Ganeti's NIC scripts do.

    ``mode`` is ``"bridged"`` (``link`` the bridge), ``"routed"`` (``ips``
    the NIC's addresses, ``link`` an optional routing table) or
    ``"openvswitch"`` (``link`` the switch); ``vlan`` is Ganeti's VLAN
    syntax (``"100"``, ``".100:200"``, ``":200:300"``). ``mtu``, ``mac``
    and ``up`` apply with or without a mode. In a mode every change is
    recorded (in ``state_dir``, default ``$VMTAP_STATE_DIR`` or
    ``/run/vmtap``) so that :func:`ifdown` undoes exactly it; ``nic``
    names the NIC beyond its tap (so a reused tap name is told apart).
    On failure, what was changed is put back.
    """
    _vmtap.configure_link(
        ifname,
        mode=mode,
        link=link,
        vlan=vlan,
        ips=_ips(ips),
        mtu=mtu,
        mac=mac,
        up=up,
        nic=nic,
        state_dir=state_dir,
    )


def ifdown(
    ifname: str, *, nic: Optional[str] = None, state_dir: Optional[str] = None
) -> str:
    """Undoes what :func:`configure_link` recorded for ``ifname`` (also after
    the tap is gone): ``"undone"``, ``"no-record"``, or ``"other-nic"``
    when the record is another NIC's (left alone)."""
    return _vmtap.ifdown(ifname, nic=nic, state_dir=state_dir)


def hotplug_add(
    qmp: str,
    id: str,
    *,
    name: Optional[str] = None,
    queues: int = 1,
    vnet_hdr: VnetHdr = "auto",
    vhost: bool = False,
    attach_existing: bool = False,
    driver: str = "virtio-net-pci",
    mac: Optional[str] = None,
    mode: Optional[str] = None,
    link: Optional[str] = None,
    vlan: Optional[str] = None,
    ips: Union[str, Iterable[str]] = (),
    timeout: float = 10.0,
    state_dir: Optional[str] = None,
) -> str:
    """Hot-plugs a NIC into the QEMU whose QMP socket is ``qmp``: opens the
    tap (as :func:`open_tap`), sets up its host side (as
    :func:`configure_link`, when ``mode`` is given), passes the fds and
    adds the netdev and device ``id``; returns the tap's name. Every QMP
    step has a deadline of ``timeout`` seconds; a failure undoes the steps
    done (``Error.remaining`` says what may be left in QEMU). A Ctrl-C
    (``KeyboardInterrupt``, or any signal handler that raises) stops a
    wait on QEMU within 0.1 s: the steps done are undone and the handler's
    exception is raised, with vmtap's error as its ``__cause__``. In a mode,
    the set-up is recorded in ``state_dir`` (as for :func:`configure_link`)
    for :func:`hotplug_del` to undo."""
    return _vmtap.hotplug_add(
        qmp,
        id,
        name=name,
        queues=queues,
        vnet_hdr=vnet_hdr,
        vhost=vhost,
        attach_existing=attach_existing,
        driver=driver,
        mac=mac,
        mode=mode,
        link=link,
        vlan=vlan,
        ips=_ips(ips),
        timeout=timeout,
        state_dir=state_dir,
    )


def hotplug_del(
    qmp: str, id: str, *, timeout: float = 10.0, state_dir: Optional[str] = None
) -> None:
    """Unplugs NIC ``id`` (device, then netdev) and undoes its host set-up;
    running it again finishes a removal that timed out or was interrupted
    (a Ctrl-C stops its waits, as for :func:`hotplug_add`)."""
    _vmtap.hotplug_del(qmp, id, timeout=timeout, state_dir=state_dir)
