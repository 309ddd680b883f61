"""vmtap's Pythonic API: open_tap and Tap, features, inspect, persistent
taps, link modes, the exceptions, and threads.

Every test runs in a fresh network namespace of its own (conftest) and
checks what the kernel says: ``TUNGETIFF`` done here with :func:`fcntl.ioctl`
on the fds, the queues in sysfs, ``ip -d link``, ``ip route``/``ip rule``.
"""

import errno
import fcntl
import gc
import grp
import json
import os
import re
import socket
import struct
import subprocess
import threading
import warnings
from typing import Dict, List

import pytest

import vmtap

from conftest import exists, fd_count, interfaces, ip, link, sysfs_tx_queues, tun_info, wait_until
# The ioctl numbers, checked there against the kernel's _IOC encoding.
from test_netdev import TUNGETFEATURES, TUNGETIFF, run_child

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800


# --- what the kernel says ---


def tun_getiff(fd: int) -> "tuple[str, int]":
    """TUNGETIFF on ``fd``: (interface name, flags)."""
    buf = fcntl.ioctl(fd, TUNGETIFF, struct.pack("16sH", b"", 0))
    name, flags = struct.unpack("16sH", buf)
    return name.rstrip(b"\0").decode(), flags


def wait_gone(ifname: str) -> None:
    wait_until(f"{ifname} to go away", lambda: not exists(ifname))


def fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as err:
        assert err.errno == errno.EBADF
        return False
    return True


@pytest.fixture
def unchanged():
    """Asserts at the end of the test that no fd and no interface is left
    (beyond those the test says it keeps)."""
    fds_before, interfaces_before = fd_count(), interfaces()
    yield
    assert fd_count() == fds_before
    wait_until("the test's interfaces to go", lambda: interfaces() == interfaces_before)


@pytest.fixture
def state_dir(tmp_path) -> str:
    """A private state directory for configure_link/ifdown."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return str(path)


# --- open_tap ---


def test_open_tap_default(unchanged) -> None:
    """open_tap() gives one fd on a kernel-named single-queue tap, no vhost
    fd; closing it removes the interface."""
    tap = vmtap.open_tap()
    try:
        assert re.fullmatch(r"tap\d+", tap.ifname)
        assert len(tap.fds) == 1 and tap.vhost_fds == []
        name, flags = tun_getiff(tap.fds[0])
        assert name == tap.ifname
        assert flags == tap.flags
        assert flags & (IFF_TAP | IFF_NO_PI) == IFF_TAP | IFF_NO_PI
        assert not flags & (IFF_MULTI_QUEUE | IFF_PERSIST)
        assert not tap.multi_queue
        assert not os.get_inheritable(tap.fds[0])
        assert sysfs_tx_queues(tap.ifname) == 1
    finally:
        tap.close()
    wait_gone(tap.ifname)


def test_open_tap_named(unchanged) -> None:
    """A name is the interface's exact name."""
    with vmtap.open_tap("vm-net0") as tap:
        assert tap.ifname == "vm-net0"
        assert tun_getiff(tap.fds[0])[0] == "vm-net0"
        assert exists("vm-net0")
    wait_gone("vm-net0")


def test_open_tap_template(unchanged) -> None:
    """A "%d" template lets the kernel number the name; two taps from the
    same template get two names, each the kernel's."""
    with vmtap.open_tap("vmt%d") as first, vmtap.open_tap("vmt%d") as second:
        for tap in (first, second):
            assert re.fullmatch(r"vmt\d+", tap.ifname)
            assert tun_getiff(tap.fds[0])[0] == tap.ifname
            assert exists(tap.ifname)
        assert first.ifname != second.ifname
    wait_gone(first.ifname)
    wait_gone(second.ifname)


@pytest.mark.parametrize("queues", [2, 4, 256])
def test_open_tap_queues_on_one_device(queues: int, unchanged) -> None:
    """queues=N opens N fds on one multi-queue device: N tx queues in
    sysfs, ``ip -d link`` numqueues N, every fd's TUNGETIFF the same."""
    with vmtap.open_tap("mq0", queues=queues) as tap:
        assert len(tap.fds) == queues == len(set(tap.fds))
        assert tap.multi_queue
        assert {tun_getiff(fd) for fd in tap.fds} == {("mq0", tap.flags)}
        assert tap.flags & IFF_MULTI_QUEUE
        assert sysfs_tx_queues("mq0") == queues
        assert tun_info("mq0")["numqueues"] == queues
        assert interfaces().count("mq0") == 1
    wait_gone("mq0")


@pytest.mark.parametrize(
    "vnet_hdr, expected",
    [("on", True), ("off", False), ("auto", None), (True, True), (False, False), (None, None)],
)
def test_open_tap_vnet_hdr(vnet_hdr, expected, unchanged) -> None:
    """vnet_hdr "on"/True and "off"/False set or clear IFF_VNET_HDR on every
    queue; "auto"/None set it when the kernel supports it."""
    if expected is None:
        expected = vmtap.features()["vnet_hdr"]
    with vmtap.open_tap(queues=2, vnet_hdr=vnet_hdr) as tap:
        assert tap.vnet_hdr is expected
        for fd in tap.fds:
            assert bool(tun_getiff(fd)[1] & IFF_VNET_HDR) is expected
        assert tun_info(tap.ifname)["vnet_hdr"] is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vnet_hdr": "maybe"},
        {"queues": 0},
        {"queues": 257},
        {"queues": -1},
        {"queues": 2**70},
        {"name": "a" * 16},
        {"name": "a/b"},
        {"name": "a b"},
        {"attach_existing": True},
        {"name": "", "attach_existing": True},
    ],
    ids=["vnet_hdr-maybe", "queues-0", "queues-257", "queues-neg", "queues-huge", "name-16-bytes", "name-slash", "name-space", "attach-no-name", "attach-empty-name"],
)
def test_open_tap_invalid_arguments(kwargs, unchanged) -> None:
    """Refused input is vmtap.InvalidArgument (also a ValueError) and
    nothing is created."""
    with pytest.raises(vmtap.InvalidArgument) as excinfo:
        vmtap.open_tap(**kwargs)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, vmtap.Error)
    assert str(excinfo.value)
    assert not exists("a" * 15)


def test_open_tap_negative_queue_count_is_named_in_the_error(unchanged) -> None:
    """The message of a refused queue count names the count given."""
    with pytest.raises(vmtap.InvalidArgument) as excinfo:
        vmtap.open_tap(queues=-1)
    assert "-1" in str(excinfo.value), str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"vnet_hdr": 3}, {"queues": True}, {"queues": "2"}, {"queues": 2.0}],
    ids=["vnet_hdr-int", "queues-bool", "queues-str", "queues-float"],
)
def test_open_tap_arguments_of_the_wrong_type(kwargs, unchanged) -> None:
    """vnet_hdr neither a string nor a bool, or queues not an int (a bool
    is not a count): TypeError, nothing created."""
    with pytest.raises(TypeError):
        vmtap.open_tap(**kwargs)


def test_open_tap_existing_name_is_ebusy(unchanged) -> None:
    """A second open of an existing tap's name is refused: vmtap.SysError,
    an OSError with errno EBUSY; the first tap still works as before."""
    with vmtap.open_tap("ex0", queues=2) as first:
        before = [tun_getiff(fd) for fd in first.fds]
        fds_before, interfaces_before = fd_count(), interfaces()
        for queues in (1, 2):
            with pytest.raises(vmtap.SysError) as excinfo:
                vmtap.open_tap("ex0", queues=queues)
            err = excinfo.value
            assert isinstance(err, OSError) and isinstance(err, vmtap.Error)
            assert err.errno == errno.EBUSY
            assert fd_count() == fds_before
            assert interfaces() == interfaces_before
        assert [tun_getiff(fd) for fd in first.fds] == before
        assert first.verify() == first.flags
        assert tun_info("ex0")["numqueues"] == 2


# --- attach_existing ---


def test_attach_existing_to_a_persistent_tap(unchanged) -> None:
    """attach_existing binds queues to a persistent tap made by
    create_persistent: the same device (ifindex, MAC), its settings
    unchanged; closing leaves it in place with no queue attached."""
    assert vmtap.create_persistent("pt0", multi_queue=True, vnet_hdr=True) == "pt0"
    try:
        before = link("pt0")
        with vmtap.open_tap("pt0", queues=2, attach_existing=True) as tap:
            assert tap.ifname == "pt0"
            assert {tun_getiff(fd)[0] for fd in tap.fds} == {"pt0"}
            assert tap.multi_queue and tap.vnet_hdr
            during = link("pt0")
            assert during["ifindex"] == before["ifindex"]
            assert during["address"] == before["address"]
            assert during["linkinfo"]["info_data"]["numqueues"] == 2
            assert vmtap.inspect("pt0")["queues"] == 2
        after = link("pt0")
        assert after is not None
        assert (after["ifindex"], after["address"], after["mtu"]) == (
            before["ifindex"],
            before["address"],
            before["mtu"],
        )
        assert after["linkinfo"]["info_data"] == before["linkinfo"]["info_data"]
        assert vmtap.inspect("pt0")["queues"] == 0
    finally:
        vmtap.delete_persistent("pt0")
    wait_gone("pt0")


def test_attached_persistent_tap_flags_are_the_kernels(unchanged) -> None:
    """Tap.flags ("the device's IFF_* flags") and verify() of a Tap
    attached to a persistent tap are what TUNGETIFF says, IFF_PERSIST
    included."""
    vmtap.create_persistent("pt3", vnet_hdr=True)
    try:
        with vmtap.open_tap("pt3", attach_existing=True) as tap:
            kernel_flags = tun_getiff(tap.fds[0])[1]
            assert kernel_flags & IFF_PERSIST
            assert tap.verify() == kernel_flags
            assert tap.flags == kernel_flags
    finally:
        vmtap.delete_persistent("pt3")


def test_attach_existing_refused_while_attached(unchanged) -> None:
    """A persistent tap already attached to by a Tap cannot be attached to
    again; the first attachment keeps working."""
    vmtap.create_persistent("pt1")
    try:
        with vmtap.open_tap("pt1", attach_existing=True) as first:
            fds_before = fd_count()
            with pytest.raises(vmtap.Error):
                vmtap.open_tap("pt1", attach_existing=True)
            assert fd_count() == fds_before
            assert tun_getiff(first.fds[0])[0] == "pt1"
            assert vmtap.inspect("pt1")["queues"] == 1
    finally:
        vmtap.delete_persistent("pt1")


@pytest.mark.parametrize(
    "kwargs",
    [{"queues": 2}, {"vnet_hdr": "on"}],
    ids=["two-queues-on-single-queue", "vnet_hdr-on-without"],
)
def test_attach_existing_refused_on_mismatch(kwargs, unchanged) -> None:
    """Settings that disagree with the persistent tap (2 queues on a
    single-queue tap, vnet_hdr on a tap without) are refused; the tap is
    unchanged and nothing is left attached."""
    vmtap.create_persistent("pt2")
    try:
        before = link("pt2")
        with pytest.raises(vmtap.Error):
            vmtap.open_tap("pt2", attach_existing=True, **kwargs)
        after = link("pt2")
        assert after["linkinfo"]["info_data"] == before["linkinfo"]["info_data"]
        assert after["ifindex"] == before["ifindex"]
    finally:
        vmtap.delete_persistent("pt2")


def test_attach_existing_to_a_missing_tap_fails(unchanged) -> None:
    """attach_existing to a name that does not exist creates nothing."""
    with pytest.raises(vmtap.Error):
        vmtap.open_tap("nosuch0", attach_existing=True)
    assert not exists("nosuch0")


# --- the Tap object ---


def test_tap_object(unchanged) -> None:
    """A Tap's properties, repr and verify() while open; a ``with`` block
    closes it (fds closed, the interface gone, fds/detach then
    ValueError); close() twice is harmless."""
    with vmtap.open_tap("obj0", queues=2, vnet_hdr="on") as tap:
        fds = tap.fds
        assert tap.ifname == "obj0"
        assert len(fds) == 2 and tap.vhost_fds == []
        assert tap.flags == tun_getiff(fds[0])[1] == tun_getiff(fds[1])[1]
        assert tap.vnet_hdr is True and tap.multi_queue is True
        assert tap.closed is False
        assert tap.verify() == tap.flags
        assert "obj0" in repr(tap) and "queues=2" in repr(tap)
    assert tap.closed is True
    assert "obj0" in repr(tap) and "closed" in repr(tap)
    assert not any(fd_is_open(fd) for fd in fds)
    for attribute in ("fds", "vhost_fds"):
        with pytest.raises(ValueError):
            getattr(tap, attribute)
    with pytest.raises(ValueError):
        tap.detach()
    tap.close()
    tap.close()
    assert tap.ifname == "obj0" and tap.vnet_hdr is True
    wait_gone("obj0")


CHILD_VERIFY_CLOSED = """
    import json, vmtap
    tap = vmtap.open_tap("vc0")
    tap.close()
    out = {}
    try:
        out["flags"] = tap.verify()
    except ValueError as err:
        out["error"] = type(err).__name__
        out["message"] = str(err)
    print(json.dumps(out))
"""


def test_verify_on_a_closed_tap_is_value_error(tmp_path, unchanged) -> None:
    """verify() on a closed Tap raises ValueError like its other methods
    (run in a child with a deadline, so that a hang fails the test rather
    than the run)."""
    out = run_child(CHILD_VERIFY_CLOSED, cwd=tmp_path)
    assert out.get("error") == "ValueError", out
    assert "vc0" in out["message"]


def test_tap_with_block_closes_on_an_exception(unchanged) -> None:
    """An exception in the ``with`` block still closes the tap."""
    with pytest.raises(RuntimeError):
        with vmtap.open_tap("exc0") as tap:
            raise RuntimeError("boom")
    assert tap.closed
    wait_gone("exc0")


def test_collected_tap_is_closed(unchanged) -> None:
    """A Tap dropped without close() closes its fds when collected, with a
    ResourceWarning naming it (as an unclosed file does)."""
    tap = vmtap.open_tap("gc0", queues=2)
    fds = tap.fds
    with pytest.warns(ResourceWarning, match="gc0"):
        del tap
        gc.collect()
    assert not any(fd_is_open(fd) for fd in fds)
    wait_gone("gc0")


def test_detach_hands_the_fds_over(unchanged) -> None:
    """detach() returns (ifname, fds, vhost_fds) for the caller to own: the
    Tap is closed, the fds still work and keep the interface until the
    caller closes them."""
    tap = vmtap.open_tap("det0", queues=3)
    ifname, fds, vhost_fds = tap.detach()
    try:
        assert (ifname, vhost_fds) == ("det0", [])
        assert tap.closed
        with pytest.raises(ValueError):
            tap.fds
        tap.close()  # harmless, and does not close the caller's fds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del tap
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
        assert [tun_getiff(fd)[0] for fd in fds] == ["det0"] * 3
        assert exists("det0")
        assert tun_info("det0")["numqueues"] == 3
    finally:
        for fd in fds:
            os.close(fd)
    wait_gone("det0")


# --- features and inspect ---


def test_features() -> None:
    """features() has every key; this host has tap, vnet_hdr, multi-queue
    and no vhost-net; the flags are TUNGETFEATURES's."""
    report = vmtap.features()
    assert set(report) >= {"flags", "tun", "tap", "no_pi", "vnet_hdr", "multi_queue", "napi", "vhost_net"}
    for key in ("tun", "tap", "no_pi", "vnet_hdr", "multi_queue", "napi", "vhost_net"):
        assert isinstance(report[key], bool)
    assert report["tap"] is True
    assert report["vhost_net"] is os.path.exists("/dev/vhost-net")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        (flags,) = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0)))
    finally:
        os.close(fd)
    assert report["flags"] == flags
    assert report["vnet_hdr"] is bool(flags & IFF_VNET_HDR)
    assert report["multi_queue"] is bool(flags & IFF_MULTI_QUEUE)


def test_inspect_by_name_and_by_fd(unchanged) -> None:
    """inspect(name) and inspect(fd) report the tap as it is."""
    with vmtap.open_tap("insp0", queues=3, vnet_hdr="off") as tap:
        by_name = vmtap.inspect("insp0")
        fds_before = fd_count()
        by_fd = vmtap.inspect(tap.fds[1])
        assert fd_count() == fds_before
        for report in (by_name, by_fd):
            assert report["ifname"] == "insp0"
            assert report["queues"] == 3
            assert report["multi_queue"] is True
            assert report["vnet_hdr"] is False
            assert report["persistent"] is False
        assert by_fd["this_netns"] is True
    with vmtap.open_tap("insp1", vnet_hdr="on") as tap:
        report = vmtap.inspect(tap.fds[0])
        assert (report["ifname"], report["queues"], report["multi_queue"], report["vnet_hdr"]) == (
            "insp1",
            1,
            False,
            True,
        )


def test_inspect_errors(unchanged) -> None:
    """inspect of a missing name, a closed fd number or a non-tap fd (a
    pipe) is vmtap.Error; of a float, TypeError."""
    with pytest.raises(vmtap.Error):
        vmtap.inspect("nosuch0")
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(vmtap.Error):
            vmtap.inspect(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(vmtap.Error):
        vmtap.inspect(read_end)  # closed now
    with pytest.raises(TypeError):
        vmtap.inspect(3.5)


# --- persistent taps ---


def _root_group():
    try:
        grp.getgrnam("root")
    except KeyError:
        return 0
    return "root"


def test_create_and_delete_persistent(unchanged) -> None:
    """create_persistent makes a tap that outlives its fds, with owner,
    group, multi-queue and vnet_hdr set; delete_persistent removes it, and
    deleting it again is vmtap.Error."""
    assert vmtap.create_persistent("pers0", multi_queue=True, vnet_hdr=True, owner=0, group=_root_group()) == "pers0"
    try:
        report = vmtap.inspect("pers0")
        assert report["persistent"] is True
        assert report["owner"] == 0 and report["group"] == 0
        assert report["multi_queue"] is True and report["vnet_hdr"] is True
        assert report["queues"] == 0
        info = tun_info("pers0")
        assert info["persist"] is True and info["multi_queue"] is True and info["vnet_hdr"] is True
    finally:
        vmtap.delete_persistent("pers0")
    wait_gone("pers0")
    with pytest.raises(vmtap.Error):
        vmtap.delete_persistent("pers0")


def test_create_persistent_template_returns_the_kernels_name(unchanged) -> None:
    """A "%d" template gives back the name the kernel chose."""
    name = vmtap.create_persistent("pt%d")
    try:
        assert re.fullmatch(r"pt\d+", name)
        assert tun_info(name)["persist"] is True
    finally:
        vmtap.delete_persistent(name)
    wait_gone(name)


def test_create_persistent_existing_name_is_refused(unchanged) -> None:
    """Creating a persistent tap under an existing name fails and leaves
    the existing tap alone."""
    with vmtap.open_tap("taken0") as tap:
        with pytest.raises(vmtap.Error):
            vmtap.create_persistent("taken0")
        assert tap.verify() == tap.flags
        assert tun_info("taken0")["persist"] is False


def test_delete_persistent_refused_while_attached(unchanged) -> None:
    """delete_persistent of a tap a Tap is attached to is vmtap.Error and
    the tap stays; once detached it can be deleted."""
    vmtap.create_persistent("pers1")
    try:
        with vmtap.open_tap("pers1", attach_existing=True) as tap:
            with pytest.raises(vmtap.Error):
                vmtap.delete_persistent("pers1")
            assert exists("pers1")
            assert tun_getiff(tap.fds[0])[0] == "pers1"
            assert vmtap.inspect("pers1")["queues"] == 1
    finally:
        vmtap.delete_persistent("pers1")
    wait_gone("pers1")


def test_delete_missing_persistent_is_error(unchanged) -> None:
    """Deleting a tap that does not exist is vmtap.Error."""
    with pytest.raises(vmtap.Error):
        vmtap.delete_persistent("nosuch0")


def test_delete_persistent_refuses_a_non_persistent_tap(unchanged) -> None:
    """delete_persistent does not delete a tap in use that is not
    persistent."""
    with vmtap.open_tap("np0") as tap:
        with pytest.raises(vmtap.Error):
            vmtap.delete_persistent("np0")
        assert exists("np0")
        assert tap.verify() == tap.flags


# --- configure_link and ifdown ---


def _bridge(name: str = "br0", mtu: int = 1400) -> None:
    ip("link", "add", name, "type", "bridge")
    ip("link", "set", name, "mtu", str(mtu), "up")


def test_configure_link_bridged_and_ifdown(state_dir, unchanged) -> None:
    """Bridged mode enslaves the tap to br0 with the bridge's MTU, a MAC
    starting fe: and up; ifdown undoes exactly that (then "no-record")."""
    _bridge()
    try:
        with vmtap.open_tap("brt0") as tap:
            before = link("brt0")
            vmtap.configure_link("brt0", mode="bridged", link="br0", state_dir=state_dir)
            during = link("brt0")
            assert during["master"] == "br0"
            assert during["mtu"] == 1400
            assert during["address"].startswith("fe:")
            assert "UP" in during["flags"]
            assert [e["ifname"] for e in json.loads(ip("-j", "link", "show", "master", "br0"))] == ["brt0"]

            assert vmtap.ifdown("brt0", state_dir=state_dir) == "undone"
            after = link("brt0")
            assert "master" not in after
            assert json.loads(ip("-j", "link", "show", "master", "br0") or "[]") == []
            assert after["mtu"] == before["mtu"]
            assert after["address"] == before["address"]
            assert "UP" not in after["flags"]
            assert vmtap.ifdown("brt0", state_dir=state_dir) == "no-record"
            assert tap.verify() == tap.flags
    finally:
        ip("link", "del", "br0")


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "nosuch"}, {"link": "br0"}, {"ips": ["10.9.0.2"]}, {"mode": "routed"}, {"mode": "bridged"}],
    ids=["unknown-mode", "link-without-mode", "ips-without-mode", "routed-without-ips", "bridged-without-link"],
)
def test_configure_link_invalid_arguments(kwargs, state_dir, unchanged) -> None:
    """An unknown mode, a link or ips without a mode, a mode without what
    it needs: vmtap.InvalidArgument, nothing changed, nothing recorded."""
    _bridge()
    try:
        with vmtap.open_tap("inv0"):
            before = link("inv0")
            with pytest.raises(vmtap.InvalidArgument):
                vmtap.configure_link("inv0", state_dir=state_dir, **kwargs)
            assert link("inv0") == before
            assert vmtap.ifdown("inv0", state_dir=state_dir) == "no-record"
    finally:
        ip("link", "del", "br0")


def test_relative_state_dir_is_refused(unchanged) -> None:
    """A relative state_dir (a record tells root what to undo) is
    vmtap.InvalidArgument for configure_link and ifdown, the tap
    unchanged."""
    with vmtap.open_tap("rel0"):
        before = link("rel0")
        with pytest.raises(vmtap.InvalidArgument):
            vmtap.configure_link("rel0", mode="routed", ips=["10.9.0.2"], state_dir="state")
        with pytest.raises(vmtap.InvalidArgument):
            vmtap.ifdown("rel0", state_dir="state")
        assert link("rel0") == before
        assert not os.path.exists("state")


def test_configure_link_missing_bridge_changes_nothing(state_dir, unchanged) -> None:
    """Bridged mode on a bridge that does not exist is vmtap.Error and the
    tap is as it was (name, MAC, MTU, down, no master)."""
    with vmtap.open_tap("nob0") as tap:
        before = link("nob0")
        with pytest.raises(vmtap.Error):
            vmtap.configure_link("nob0", mode="bridged", link="nobr0", state_dir=state_dir)
        assert link("nob0") == before
        assert vmtap.ifdown("nob0", state_dir=state_dir) == "no-record"
        assert tap.verify() == tap.flags


def _routes(*args: str) -> List[Dict]:
    return json.loads(ip("-j", "-4", "route", "show", *args) or "[]")


def _rules() -> List[Dict]:
    return json.loads(ip("-j", "-4", "rule", "show") or "[]")


def test_configure_link_routed_main_table(state_dir, unchanged) -> None:
    """Routed mode without a table: the tap up, a host route to the NIC's
    address via the tap in main, proxy_arp on; ifdown removes them."""
    with vmtap.open_tap("rt0"):
        rules_before = _rules()
        vmtap.configure_link("rt0", mode="routed", ips=["10.9.0.2"], state_dir=state_dir)
        assert "UP" in link("rt0")["flags"]
        routes = [r for r in _routes("table", "main") if r["dst"] == "10.9.0.2"]
        assert len(routes) == 1
        assert routes[0]["dev"] == "rt0"
        assert routes[0]["protocol"] == "static"
        assert json.loads(ip("-j", "route", "get", "10.9.0.2"))[0]["dev"] == "rt0"
        assert _rules() == rules_before
        with open("/proc/sys/net/ipv4/conf/rt0/proxy_arp") as f:
            assert f.read().strip() == "1"

        assert vmtap.ifdown("rt0", state_dir=state_dir) == "undone"
        assert [r for r in _routes("table", "all") if r.get("dst") == "10.9.0.2"] == []
        assert "UP" not in link("rt0")["flags"]
        with open("/proc/sys/net/ipv4/conf/rt0/proxy_arp") as f:
            assert f.read().strip() == "0"
        assert vmtap.ifdown("rt0", state_dir=state_dir) == "no-record"


def test_configure_link_routed_table(state_dir, unchanged) -> None:
    """Routed mode with a table: one rule "iif TAP lookup TABLE" and the
    host route in that table (not in main); ifdown removes both."""
    with vmtap.open_tap("rt1"):
        rules_before = _rules()
        vmtap.configure_link("rt1", mode="routed", link="100", ips=["10.9.0.2"], state_dir=state_dir)
        new_rules = [r for r in _rules() if r not in rules_before]
        assert len(new_rules) == 1
        assert new_rules[0]["iif"] == "rt1"
        assert str(new_rules[0]["table"]) == "100"
        table = [r for r in _routes("table", "100") if r["dst"] == "10.9.0.2"]
        assert len(table) == 1 and table[0]["dev"] == "rt1"
        assert [r for r in _routes("table", "main") if r["dst"] == "10.9.0.2"] == []

        assert vmtap.ifdown("rt1", state_dir=state_dir) == "undone"
        assert _rules() == rules_before
        assert [r for r in _routes("table", "all") if r.get("dst") == "10.9.0.2"] == []


# --- exceptions ---


def test_exception_hierarchy() -> None:
    """Error is an Exception; InvalidArgument is an Error and a ValueError;
    SysError an Error and an OSError with errno; HypervisorError an
    Error; all of module "vmtap"."""
    assert issubclass(vmtap.Error, Exception)
    assert issubclass(vmtap.InvalidArgument, vmtap.Error)
    assert issubclass(vmtap.InvalidArgument, ValueError)
    assert issubclass(vmtap.SysError, vmtap.Error)
    assert issubclass(vmtap.SysError, OSError)
    assert issubclass(vmtap.HypervisorError, vmtap.Error)
    for cls in (vmtap.Error, vmtap.InvalidArgument, vmtap.SysError, vmtap.HypervisorError):
        assert cls.__module__ == "vmtap"
    err = vmtap.SysError(errno.EBUSY, "busy")
    assert err.errno == errno.EBUSY and str(err) == "busy"


def test_sys_error_from_the_kernel_carries_errno_and_device(unchanged) -> None:
    """A real failure: vhost on this host (no /dev/vhost-net) is a SysError
    with ENOENT naming the device, nothing left."""
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    with pytest.raises(vmtap.SysError) as excinfo:
        vmtap.open_tap("vh0", queues=2, vhost=True)
    assert excinfo.value.errno == errno.ENOENT
    assert excinfo.value.device == "/dev/vhost-net"
    assert not exists("vh0")


# --- threads ---

THREADS = 8
TAPS_PER_THREAD = 20


def test_threads_open_and_close_taps_concurrently(unchanged) -> None:
    """8 threads each opening and closing 20 taps of distinct names at the
    same time all succeed, with the name asked for; nothing is left."""
    failures: List[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        try:
            start.wait()
            for round_ in range(TAPS_PER_THREAD):
                name = f"th{index}x{round_}"
                tap = vmtap.open_tap(name, queues=1 + round_ % 3)
                try:
                    assert tap.ifname == name
                    assert tun_getiff(tap.fds[0])[0] == name
                finally:
                    tap.close()
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def _still_connected(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` still holds its end (it sent nothing)."""
    try:
        return conn.recv(1, socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


def test_gil_is_released_during_a_blocking_call(tmp_path, unchanged) -> None:
    """hotplug_add against a QMP socket that never answers (a silent QEMU
    monitor) blocks until its timeout, vmtap.Error, with the GIL released:
    a counting thread advances during the call; and the server thread,
    which needs the GIL to run once accept() returns, sees the counter
    move while vmtap still holds the connection (the call is still
    waiting). Nothing is left."""
    path = str(tmp_path / "qmp.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    accepted: List[socket.socket] = []
    seen_during_call: List[bool] = []
    stop = threading.Event()
    counter = [0]

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    def serve() -> None:
        conn, _ = server.accept()  # never answers: no greeting, ever
        accepted.append(conn)
        at_accept = counter[0]
        while counter[0] < at_accept + 1000 and not stop.is_set():
            pass
        advanced = counter[0] >= at_accept + 1000
        seen_during_call.append(advanced and _still_connected(conn))

    counting = threading.Thread(target=count)
    serving = threading.Thread(target=serve)
    counting.start()
    serving.start()
    try:
        before = counter[0]
        with pytest.raises(vmtap.Error) as excinfo:
            vmtap.hotplug_add(path, "nic1", timeout=1.5)
        after = counter[0]
    finally:
        stop.set()
        counting.join()
        if not accepted:  # unblock accept() if the call never connected
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                poke.connect(path)
        serving.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert after > before
    assert seen_during_call == [True]
    assert not isinstance(excinfo.value, vmtap.InvalidArgument)
    assert list(excinfo.value.remaining) == []
    assert interfaces() == ["lo"]


def _dead_pid() -> int:
    """A pid whose process is gone (started, killed, reaped)."""
    p = subprocess.Popen(["sleep", "60"])
    pid = p.pid
    p.kill()
    p.wait()
    return pid


def test_many_taps_named_tagged_listed_collected_and_deleted() -> None:
    """create_persistent(None) picks free tapN names; owner_pid and tag go
    in the alias; list_taps shows only tagged taps; collect_garbage takes
    the dead owner's tap only; delete_persistent_many reports each name
    and touches nothing else."""
    ip("tuntap", "add", "mode", "tap", "untagged")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = vmtap.create_persistent(owner_pid=sleeper.pid, tag="vm1")
        doomed = vmtap.create_persistent("doomed", owner_pid=sleeper.pid)
        names = [vmtap.create_persistent(tag="bulk") for _ in range(50)]
        assert len(set(names)) == 50
        assert all(re.fullmatch(r"tap\d{1,6}", n) for n in names + [live])
        assert f"alias vmtap pid={sleeper.pid} start=" in ip("-d", "link", "show", live)
        rows = {t["ifname"]: t for t in vmtap.list_taps()}
        assert set(rows) == set(names) | {live, "doomed"}
        assert rows[live]["tag"] == "vm1" and rows[live]["owner_alive"] is True
        assert rows[names[0]]["owner_pid"] is None
        with pytest.raises(vmtap.InvalidArgument):
            vmtap.create_persistent(tag="a b")
        with pytest.raises(vmtap.InvalidArgument, match="no process"):
            vmtap.create_persistent(owner_pid=_dead_pid())
        with pytest.raises(vmtap.InvalidArgument):
            vmtap.create_persistent(owner_pid=0)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert vmtap.collect_garbage(dry_run=True) == {live: None, "doomed": None}
    assert exists(live)
    with vmtap.open_tap("doomed", attach_existing=True):
        # In use: not garbage now.
        assert vmtap.collect_garbage() == {live: None}
    assert not exists(live)
    out = vmtap.delete_persistent_many(names + ["doomed", "lo", "nosuch", "bad/x"])
    assert [k for k, v in out.items() if v is None] == names + ["doomed"]
    assert isinstance(out["lo"], vmtap.Error) and "not a TAP" in str(out["lo"])
    assert isinstance(out["nosuch"], vmtap.SysError) or isinstance(out["nosuch"], vmtap.Error)
    assert isinstance(out["bad/x"], vmtap.InvalidArgument)
    assert interfaces() == ["lo", "untagged"]
