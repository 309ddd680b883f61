"""vmtap.netdev against Ganeti's contract for ``hv_kvm.netdev``.

Every test runs in a fresh network namespace of its own (conftest) and
checks what the kernel says: ``TUNGETIFF`` done here with :func:`fcntl.ioctl`
on the fds, the queues in sysfs, ``ip -d link``. Errors are checked for their
class, Ganeti's wording, the chained vmtap exception, and for leaving no fd
and no interface behind.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import vmtap
from vmtap import netdev

from conftest import exists, fd_count, interfaces, ip, link, sysfs_tx_queues, tun_info, wait_until

try:  # What OpenTap raises: Ganeti's class when Ganeti can be imported.
    from ganeti import errors as _ganeti_errors  # type: ignore[import-not-found]

    EXPECTED_ERROR: type = _ganeti_errors.HypervisorError
except ImportError:
    EXPECTED_ERROR = vmtap.HypervisorError

# Ganeti's flag values (include/uapi/linux/if_tun.h): the same everywhere.
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFF_TUN = 0x0001
IFF_PERSIST = 0x0800

# Ganeti's error wording.
TUN_PREFIX = "Failed to open /dev/net/tun"
ALLOC_PREFIX = "Failed to allocate a new TAP device: "
VHOST_PREFIX = "Failed to open /dev/vhost-net"

# A child must finish within this (a deadline, not a timing assertion).
CHILD_DEADLINE = 60.0


# --- ioctl numbers, from the kernel's _IOC encoding for this machine ---


def _ioc_layout() -> Tuple[int, int, int]:
    """(size bits, _IOC_READ, _IOC_WRITE) of the running architecture
    (include/uapi/asm-generic/ioctl.h and the architectures that override
    it)."""
    machine = platform.machine()
    if machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
        return 13, 2, 4
    if machine.startswith("parisc"):
        return 14, 1, 2
    return 14, 2, 1


def _ioc(direction: int, type_char: str, nr: int, size: int) -> int:
    size_bits, _, _ = _ioc_layout()
    return (direction << (16 + size_bits)) | (size << 16) | (ord(type_char) << 8) | nr


def _iow(type_char: str, nr: int, size: int) -> int:
    return _ioc(_ioc_layout()[2], type_char, nr, size)


def _ior(type_char: str, nr: int, size: int) -> int:
    return _ioc(_ioc_layout()[1], type_char, nr, size)


INT_SIZE = struct.calcsize("i")
TUNSETIFF = _iow("T", 202, INT_SIZE)
TUNGETIFF = _ior("T", 210, INT_SIZE)
TUNGETFEATURES = _ior("T", 207, INT_SIZE)


# --- what the kernel says ---


def tun_getiff(fd: int) -> Tuple[bytes, int]:
    """TUNGETIFF on ``fd``: (interface name, flags)."""
    buf = fcntl.ioctl(fd, TUNGETIFF, struct.pack("16sH", b"", 0))
    name, flags = struct.unpack("16sH", buf)
    return name.rstrip(b"\0"), flags


@contextlib.contextmanager
def owned(result: Tuple[bytes, List[int], List[int]]) -> Iterator[Tuple[bytes, List[int], List[int]]]:
    """Closes the fds of an OpenTap result at the end of the block."""
    try:
        yield result
    finally:
        for fd in result[1] + result[2]:
            os.close(fd)


def wait_gone(ifname: str) -> None:
    wait_until(f"{ifname} to go away", lambda: not exists(ifname))


def run_child(
    code: str,
    *args: str,
    wrapper: Sequence[str] = (),
    pythonpath: Optional[Path] = None,
    cwd: Optional[Path] = None,
) -> Dict:
    """Runs ``code`` in a child python (in this test's network namespace)
    and returns the JSON object it prints last; a child that hangs is
    killed at the deadline and fails the test."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    try:
        proc = subprocess.run(
            [*wrapper, sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd) if cwd is not None else "/",
            timeout=CHILD_DEADLINE,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the child hung (killed after {CHILD_DEADLINE} s): {err.stdout!r} {err.stderr!r}")
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_error(
    excinfo: pytest.ExceptionInfo,
    prefix: str,
    cause: type,
    cause_errno: Optional[int] = None,
) -> None:
    """OpenTap's error: Ganeti's class and wording, vmtap's detail after
    it, the vmtap exception chained (with its errno when an OS error is
    behind it)."""
    err = excinfo.value
    assert type(err) is EXPECTED_ERROR
    message = str(err)
    assert message.startswith(prefix), message
    assert isinstance(err.__cause__, cause), repr(err.__cause__)
    assert str(err.__cause__) in message
    assert len(message) > len(prefix) + 2, "no detail after Ganeti's words"
    if cause_errno is not None:
        assert err.__cause__.errno == cause_errno


# --- constants ---


def test_constants_are_this_architectures_ioctl_numbers_and_flags() -> None:
    """The ioctl numbers are what the kernel's _IOC encoding gives on this
    machine (x86_64: Ganeti's literal values), the flags are if_tun.h's."""
    assert netdev.TUNSETIFF == TUNSETIFF
    assert netdev.TUNGETIFF == TUNGETIFF
    assert netdev.TUNGETFEATURES == TUNGETFEATURES
    assert netdev.IFF_TAP == IFF_TAP
    assert netdev.IFF_NO_PI == IFF_NO_PI
    assert netdev.IFF_ONE_QUEUE == IFF_ONE_QUEUE
    assert netdev.IFF_VNET_HDR == IFF_VNET_HDR
    assert netdev.IFF_MULTI_QUEUE == IFF_MULTI_QUEUE
    if platform.machine() == "x86_64":
        assert (netdev.TUNSETIFF, netdev.TUNGETIFF, netdev.TUNGETFEATURES) == (
            0x400454CA,
            0x800454D2,
            0x800454CF,
        )


def test_star_import_gives_the_constants_and_opentap() -> None:
    """``from vmtap.netdev import *`` (the shim's first line) exports the
    constants and OpenTap, each the module's own object."""
    namespace: Dict[str, object] = {}
    exec("from vmtap.netdev import *", namespace)
    expected = {
        "TUNSETIFF",
        "TUNGETIFF",
        "TUNGETFEATURES",
        "IFF_TAP",
        "IFF_NO_PI",
        "IFF_ONE_QUEUE",
        "IFF_VNET_HDR",
        "IFF_MULTI_QUEUE",
        "OpenTap",
    }
    assert expected <= set(namespace)
    for name in expected:
        assert namespace[name] is getattr(netdev, name)


# --- OpenTap: successful calls ---


def test_ganeti_multi_queue_call_opens_one_device_with_four_queues() -> None:
    """Ganeti's call for 4 queues gives one device: 4 fds on the same
    interface (TUNGETIFF), with multi-queue and vnet_hdr flags, 4 tx queues
    in sysfs, not inheritable, and the name as the kernel's bytes."""
    fds_before, interfaces_before = fd_count(), interfaces()
    result = netdev.OpenTap("", {"vhost": False, "vnet_hdr": True, "mq": (True, 4)})
    with owned(result) as (ifname, tapfds, vhostfds):
        assert isinstance(ifname, bytes)
        assert len(tapfds) == 4
        assert len(set(tapfds)) == 4
        assert vhostfds == []
        expected_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
        for fd in tapfds:
            assert tun_getiff(fd) == (ifname, expected_flags)
            assert not os.get_inheritable(fd)
        assert interfaces() == sorted(interfaces_before + [ifname.decode()])
        assert sysfs_tx_queues(ifname.decode()) == 4
        info = tun_info(ifname.decode())
        assert (info["type"], info["multi_queue"], info["numqueues"]) == ("tap", True, 4)
    wait_gone(ifname.decode())
    assert fd_count() == fds_before
    assert interfaces() == interfaces_before


@pytest.mark.parametrize(
    "args",
    [(), ("",), ("", None), ("", {})],
    ids=["no-args", "empty-name", "features-None", "features-empty"],
)
def test_default_call_opens_one_single_queue_tap(args: tuple) -> None:
    """Without features: one fd, no vhost fd, a single-queue tap with
    IFF_NO_PI and (the kernel supports it) IFF_VNET_HDR, named by the
    kernel."""
    fds_before = fd_count()
    with owned(netdev.OpenTap(*args)) as (ifname, tapfds, vhostfds):
        assert len(tapfds) == 1 and vhostfds == []
        name, flags = tun_getiff(tapfds[0])
        assert name == ifname
        assert ifname.startswith(b"tap")
        assert flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        assert not flags & (IFF_MULTI_QUEUE | IFF_TUN | IFF_PERSIST)
        assert sysfs_tx_queues(ifname.decode()) == 1
        assert not os.get_inheritable(tapfds[0])
    wait_gone(ifname.decode())
    assert fd_count() == fds_before


@pytest.mark.parametrize("name", ["gnt-tap0", b"gnt-tap0"], ids=["str", "bytes"])
def test_named_tap_gets_exactly_that_name(name) -> None:
    """A name (str, or bytes as Ganeti packs it) is the interface's name."""
    with owned(netdev.OpenTap(name, {"mq": (True, 2)})) as (ifname, tapfds, _):
        assert ifname == b"gnt-tap0"
        assert [tun_getiff(fd)[0] for fd in tapfds] == [b"gnt-tap0"] * 2
        assert exists("gnt-tap0")
    wait_gone("gnt-tap0")


def test_fifteen_byte_name_is_accepted() -> None:
    """15 bytes, the kernel's limit, is a valid name and kept whole."""
    name = "x" * 15
    with owned(netdev.OpenTap(name)) as (ifname, tapfds, _):
        assert ifname == name.encode()
        assert tun_getiff(tapfds[0])[0] == name.encode()
    wait_gone(name)


def test_vnet_hdr_false_leaves_the_flag_off() -> None:
    """``vnet_hdr: False`` opens the queues without IFF_VNET_HDR."""
    result = netdev.OpenTap("", {"vnet_hdr": False, "mq": (True, 2)})
    with owned(result) as (ifname, tapfds, _):
        for fd in tapfds:
            name, flags = tun_getiff(fd)
            assert name == ifname
            assert not flags & IFF_VNET_HDR
            assert flags & IFF_MULTI_QUEUE
        assert tun_info(ifname.decode())["vnet_hdr"] is False


def test_mq_count_is_read_even_when_not_enabled() -> None:
    """``mq: (False, 2)`` gives 2 queues, as Ganeti reads only the count."""
    with owned(netdev.OpenTap("", {"mq": (False, 2)})) as (ifname, tapfds, _):
        assert len(tapfds) == 2
        assert {tun_getiff(fd) for fd in tapfds} == {
            (ifname, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE)
        }
        assert sysfs_tx_queues(ifname.decode()) == 2


def test_unknown_feature_keys_are_ignored() -> None:
    """Keys OpenTap does not know (Ganeti's callers pass more) change
    nothing."""
    features = {"driver": "virtio-net-pci", "vhost": False, "mq": (True, 3), "x": object()}
    with owned(netdev.OpenTap("extra0", features)) as (ifname, tapfds, vhostfds):
        assert ifname == b"extra0"
        assert len(tapfds) == 3 and vhostfds == []
        assert sysfs_tx_queues("extra0") == 3


def test_fds_are_not_inherited_without_pass_fds() -> None:
    """A child started without pass_fds (and close_fds=False) does not get
    the fds: they are close-on-exec."""
    with owned(netdev.OpenTap("", {"mq": (True, 2)})) as (_, tapfds, _v):
        code = """
            import errno, json, os, sys
            closed = []
            for fd in map(int, sys.argv[1:]):
                try:
                    os.fstat(fd)
                except OSError as err:
                    closed.append(err.errno == errno.EBADF)
                else:
                    closed.append(False)
            print(json.dumps({"closed": closed}))
        """
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, tapfds)],
            close_fds=False,
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=CHILD_DEADLINE,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"closed": [True, True]}


CHILD_HOLDS_FDS = """
    import fcntl, json, struct, sys
    request = int(sys.argv[1])
    names = []
    for fd in map(int, sys.argv[2:]):
        buf = fcntl.ioctl(fd, request, struct.pack("16sH", b"", 0))
        names.append(struct.unpack("16sH", buf)[0].rstrip(b"\\0").decode())
    print(json.dumps({"names": names}), flush=True)
    sys.stdin.readline()
"""


def test_fds_passed_to_a_child_keep_the_tap() -> None:
    """Fds handed over with pass_fds work in the child (TUNGETIFF gives the
    name); the tap lives while the child holds them after the parent has
    closed its copies, and goes when the child exits."""
    fds_before = fd_count()
    ifname, tapfds, vhostfds = netdev.OpenTap("", {"mq": (True, 2)})
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD_HOLDS_FDS), str(TUNGETIFF), *map(str, tapfds)],
            pass_fds=tapfds,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
    finally:
        for fd in tapfds + vhostfds:
            os.close(fd)
    assert child.stdin is not None and child.stdout is not None
    try:
        reported = json.loads(child.stdout.readline())
        assert reported == {"names": [ifname.decode()] * 2}
        # Only the child holds the queues now.
        assert exists(ifname.decode())
        assert tun_info(ifname.decode())["numqueues"] == 2
        child.stdin.write("done\n")
        child.stdin.close()
        assert child.wait(timeout=CHILD_DEADLINE) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if not child.stdin.closed:
            child.stdin.close()
        child.stdout.close()
    wait_gone(ifname.decode())
    assert fd_count() == fds_before


def test_non_ascii_name_raises_unicode_encode_error() -> None:
    """A str name that is not ASCII fails as Ganeti's packing does, with
    nothing created."""
    fds_before, interfaces_before = fd_count(), interfaces()
    with pytest.raises(UnicodeEncodeError):
        netdev.OpenTap("tap\u00e9")
    assert fd_count() == fds_before
    assert interfaces() == interfaces_before


# --- _GetTunFeatures ---


@pytest.mark.parametrize("answer", [0, IFF_VNET_HDR], ids=["zero", "vnet_hdr"])
def test_get_tun_features_asks_ioctl_exactly_like_ganeti(answer: int) -> None:
    """_GetTunFeatures calls ``_ioctl(fd, TUNGETFEATURES, 4 zero bytes)``
    and returns the unsigned int it answers, unchanged."""
    calls = []

    def fake_ioctl(*args):
        calls.append(args)
        return struct.pack("I", answer)

    assert netdev._GetTunFeatures(17, _ioctl=fake_ioctl) == answer
    assert calls == [(17, TUNGETFEATURES, b"\0\0\0\0")]


def test_get_tun_features_returns_all_bits_of_the_answer() -> None:
    """A 32-bit answer with the top bit set comes back as an unsigned int."""
    answer = 0x80000000 | IFF_TAP | IFF_MULTI_QUEUE
    assert netdev._GetTunFeatures(3, _ioctl=lambda *a: struct.pack("I", answer)) == answer


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EINVAL, "Invalid argument"), IOError(errno.ENOTTY, "Inappropriate ioctl")],
    ids=["OSError", "IOError"],
)
def test_get_tun_features_failure_is_none_and_a_warning(error, caplog) -> None:
    """An ioctl error gives None and a warning naming it."""

    def failing_ioctl(*args):
        raise error

    with caplog.at_level(logging.WARNING):
        assert netdev._GetTunFeatures(5, _ioctl=failing_ioctl) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert message.startswith("ioctl(TUNGETFEATURES) failed: ")
    assert str(error) in message


def test_get_tun_features_on_a_regular_file_is_none(tmp_path, caplog) -> None:
    """The real ioctl on a regular file's fd fails (ENOTTY): None and a
    warning; the fd stays open."""
    path = tmp_path / "plain"
    path.write_bytes(b"not a tun")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with caplog.at_level(logging.WARNING):
            assert netdev._GetTunFeatures(fd) is None
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert messages[0].startswith("ioctl(TUNGETFEATURES) failed: ")
    assert os.strerror(errno.ENOTTY) in messages[0]


def test_get_tun_features_on_a_closed_fd_is_none(caplog) -> None:
    """A closed fd (EBADF) gives None and a warning."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    os.close(read_end)
    with caplog.at_level(logging.WARNING):
        assert netdev._GetTunFeatures(read_end) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert messages[0].startswith("ioctl(TUNGETFEATURES) failed: ")
    assert os.strerror(errno.EBADF) in messages[0]


def test_get_tun_features_on_a_real_tun_fd_is_the_kernels_answer() -> None:
    """On an fd of /dev/net/tun it gives the kernel's feature flags, the
    same as vmtap.features() and as our own TUNGETFEATURES."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = netdev._GetTunFeatures(fd)
        (ours,) = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0)))
    finally:
        os.close(fd)
    assert flags == ours
    assert flags == vmtap.features()["flags"]
    assert flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE) == (
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    )


# --- the probes ---

PROBES = [
    pytest.param(netdev._ProbeTapVnetHdr, IFF_VNET_HDR, "IFF_VNET_HDR", id="vnet_hdr"),
    pytest.param(netdev._ProbeTapMqVirtioNet, IFF_MULTI_QUEUE, "IFF_MULTI_QUEUE", id="mq"),
]


def _fake_features(answer: Optional[int]):
    calls: List[int] = []

    def features_fn(fd: int) -> Optional[int]:
        calls.append(fd)
        return answer

    return features_fn, calls


def _warnings(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("probe, flag, flag_name", PROBES)
def test_probe_without_features_is_false_and_silent(probe, flag, flag_name, caplog) -> None:
    """Features unknown (None: the ioctl failed, already logged) → False,
    no second warning; the features function gets the same fd."""
    features_fn, calls = _fake_features(None)
    with caplog.at_level(logging.WARNING):
        assert probe(11, _features_fn=features_fn) is False
    assert calls == [11]
    assert _warnings(caplog) == []


@pytest.mark.parametrize("probe, flag, flag_name", PROBES)
def test_probe_without_the_flag_is_false_with_a_warning(probe, flag, flag_name, caplog) -> None:
    """Features without the flag (0, or every other bit) → False and
    "Kernel does not support <flag>, not enabling"."""
    for answer in (0, 0xFFFFFFFF & ~flag):
        caplog.clear()
        features_fn, calls = _fake_features(answer)
        with caplog.at_level(logging.WARNING):
            assert probe(12, _features_fn=features_fn) is False
        assert calls == [12]
        assert _warnings(caplog) == [f"Kernel does not support {flag_name}, not enabling"]


@pytest.mark.parametrize("probe, flag, flag_name", PROBES)
def test_probe_with_the_flag_is_true(probe, flag, flag_name, caplog) -> None:
    """Features with the flag (alone or among others) → True, no warning."""
    for answer in (flag, flag | IFF_TAP | IFF_NO_PI):
        caplog.clear()
        features_fn, calls = _fake_features(answer)
        with caplog.at_level(logging.WARNING):
            assert probe(13, _features_fn=features_fn) is True
        assert calls == [13]
        assert _warnings(caplog) == []


@pytest.mark.parametrize("probe, flag, flag_name", PROBES)
def test_probe_on_a_real_tun_fd_is_true(probe, flag, flag_name) -> None:
    """With the default features function on /dev/net/tun (this kernel has
    both features) the probe says True."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert probe(fd) is True
    finally:
        os.close(fd)


# --- OpenTap: errors ---


@pytest.mark.parametrize(
    "name, features",
    [
        ("a" * 16, None),
        ("a/b", None),
        ("", {"mq": (True, 0)}),
        ("", {"mq": (True, 257)}),
        ("a" * 16, {"mq": (True, 4)}),
    ],
    ids=["16-byte-name", "slash-name", "mq-0", "mq-257", "16-byte-name-mq-4"],
)
def test_refused_arguments_leave_nothing(name, features) -> None:
    """A name over 15 bytes (refused, not cut), a "/" in the name, 0 or
    more than 256 queues: Ganeti's allocation error with vmtap's reason
    (a vmtap.InvalidArgument as cause), no fd and no interface left."""
    fds_before, interfaces_before = fd_count(), interfaces()
    with pytest.raises(EXPECTED_ERROR) as excinfo:
        netdev.OpenTap(name, features)
    assert_error(excinfo, ALLOC_PREFIX, vmtap.InvalidArgument)
    assert fd_count() == fds_before
    assert interfaces() == interfaces_before
    assert not exists("a" * 15)


def test_existing_tap_name_is_refused_and_left_untouched() -> None:
    """Opening the name of a tap that exists is refused (EBUSY, not
    shared): the first tap keeps its queue and flags, nothing leaks."""
    first, first_fds, _ = netdev.OpenTap("busy0", {"mq": (True, 2)})
    try:
        first_state = [tun_getiff(fd) for fd in first_fds]
        fds_before, interfaces_before = fd_count(), interfaces()
        for features in (None, {"mq": (True, 2)}, {"mq": (True, 3), "vnet_hdr": False}):
            with pytest.raises(EXPECTED_ERROR) as excinfo:
                netdev.OpenTap("busy0", features)
            assert_error(excinfo, ALLOC_PREFIX, vmtap.SysError, errno.EBUSY)
            assert fd_count() == fds_before
            assert interfaces() == interfaces_before
        assert [tun_getiff(fd) for fd in first_fds] == first_state
        assert tun_info("busy0")["numqueues"] == 2
        assert sysfs_tx_queues("busy0") == 2
    finally:
        for fd in first_fds:
            os.close(fd)
    assert first == b"busy0"
    wait_gone("busy0")


def test_existing_non_tap_name_is_refused_and_left_untouched() -> None:
    """The name of another kind of interface (a bridge) is refused too,
    and the bridge stays as it was."""
    ip("link", "add", "br-x", "type", "bridge")
    bridge_before = link("br-x")
    fds_before, interfaces_before = fd_count(), interfaces()
    with pytest.raises(EXPECTED_ERROR) as excinfo:
        netdev.OpenTap("br-x")
    assert_error(excinfo, ALLOC_PREFIX, vmtap.SysError, errno.EBUSY)
    assert fd_count() == fds_before
    assert interfaces() == interfaces_before
    assert link("br-x") == bridge_before


@pytest.mark.parametrize("queues", [1, 4])
def test_vhost_without_vhost_net_fails_and_leaves_nothing(queues: int) -> None:
    """``vhost: True`` on a host without /dev/vhost-net: Ganeti's "Failed to
    open /dev/vhost-net", no fd and no tap left."""
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    fds_before, interfaces_before = fd_count(), interfaces()
    with pytest.raises(EXPECTED_ERROR) as excinfo:
        netdev.OpenTap("vh0", {"vhost": True, "mq": (True, queues)})
    assert_error(excinfo, VHOST_PREFIX, vmtap.SysError, errno.ENOENT)
    assert excinfo.value.__cause__.device == "/dev/vhost-net"
    assert fd_count() == fds_before
    assert interfaces() == interfaces_before


CHILD_OPEN_TAP_REPORT = """
    import json, os, sys
    from vmtap import netdev

    def fds():
        return sorted(os.listdir("/proc/self/fd"))

    out = {"tun_exists": os.path.exists("/dev/net/tun")}
    before = fds()
    try:
        result = netdev.OpenTap("", {"mq": (True, int(sys.argv[1]))})
        out["result"] = repr(result)
    except Exception as err:
        cause = err.__cause__
        out.update(
            cls=type(err).__module__ + "." + type(err).__qualname__,
            message=str(err),
            cause=type(cause).__module__ + "." + type(cause).__qualname__,
            cause_errno=getattr(cause, "errno", None),
            cause_device=getattr(cause, "device", None),
        )
    out["fds_unchanged"] = fds() == before
    print(json.dumps(out))
"""


def test_missing_dev_net_tun_is_ganetis_open_error(tmp_path) -> None:
    """Without /dev/net/tun (a tmpfs over /dev/net, in a child's own mount
    namespace): "Failed to open /dev/net/tun" with ENOENT behind it, no fd
    left, no interface."""
    interfaces_before = interfaces()
    out = run_child(
        CHILD_OPEN_TAP_REPORT,
        "2",
        wrapper=["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$@"', "sh"],
        cwd=tmp_path,
    )
    assert out["tun_exists"] is False
    assert out["cls"] == "vmtap.HypervisorError"
    assert out["message"].startswith(TUN_PREFIX + ": "), out["message"]
    assert out["cause"] == "vmtap.SysError"
    assert out["cause_errno"] == errno.ENOENT
    assert out["cause_device"] == "/dev/net/tun"
    assert out["fds_unchanged"] is True
    assert interfaces() == interfaces_before


CHILD_FEW_FDS = """
    import json, os, resource, sys
    from vmtap import netdev

    def is_open(fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    def fds():
        # The listing's own fd is closed again once it is listed.
        return sorted(n for n in map(int, os.listdir("/proc/self/fd")) if is_open(n))

    # Room for exactly `allowed` new fds: the limit is the number just
    # above the allowed-th free fd number.
    allowed = int(sys.argv[1])
    used = set(fds())
    free = [n for n in range(65536) if n not in used]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (free[allowed - 1] + 1, hard))
    out = {}
    try:
        netdev.OpenTap("few0", {"mq": (True, int(sys.argv[2]))})
        out["opened"] = True
    except Exception as err:
        out.update(
            cls=type(err).__module__ + "." + type(err).__qualname__,
            message=str(err),
            cause_errno=getattr(err.__cause__, "errno", None),
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    out["fds_unchanged"] = fds() == before
    print(json.dumps(out))
"""


@pytest.mark.parametrize("allowed", [1, 3])
def test_failure_after_some_queues_closes_them(allowed: int, tmp_path) -> None:
    """When /dev/net/tun cannot be opened for a later queue (EMFILE: room
    for fewer fds than the 4 queues), the queues already opened are closed
    and no interface is left (Ganeti leaks them)."""
    interfaces_before = interfaces()
    out = run_child(CHILD_FEW_FDS, str(allowed), "4", cwd=tmp_path)
    assert "opened" not in out, out
    assert out["cls"] == "vmtap.HypervisorError"
    assert out["message"].startswith(TUN_PREFIX + ": "), out["message"]
    assert out["cause_errno"] == errno.EMFILE
    assert out["fds_unchanged"] is True
    assert interfaces() == interfaces_before
    assert not exists("few0")


# --- with Ganeti installed (a fake ganeti package) ---


def make_fake_ganeti(root: Path, shim: bool = False) -> None:
    """A minimal ``ganeti`` package under ``root``: ganeti.errors with
    Ganeti's two classes, and with ``shim`` the README's one-file
    ganeti.hypervisor.hv_kvm.netdev."""
    package = root / "ganeti"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text(
        textwrap.dedent(
            """\
            class GenericError(Exception):
                pass


            class HypervisorError(GenericError):
                pass
            """
        )
    )
    if shim:
        hv_kvm = package / "hypervisor" / "hv_kvm"
        hv_kvm.mkdir(parents=True)
        (package / "hypervisor" / "__init__.py").write_text("")
        (hv_kvm / "__init__.py").write_text("")
        (hv_kvm / "netdev.py").write_text(
            "# Ganeti's tap helpers, provided by vmtap (pip install vmtap).\n"
            "from vmtap.netdev import *  # noqa: F401,F403  (the constants and OpenTap)\n"
            "from vmtap.netdev import (  # noqa: F401  (import * skips underscore names)\n"
            "    _GetTunFeatures,\n"
            "    _ProbeTapMqVirtioNet,\n"
            "    _ProbeTapVnetHdr,\n"
            ")\n"
        )


CHILD_GANETI_ERRORS = """
    import json, os
    from ganeti import errors
    from vmtap import netdev

    def describe(err):
        return {
            "cls": type(err).__module__ + "." + type(err).__qualname__,
            "is_hypervisor_error": isinstance(err, errors.HypervisorError),
            "is_generic_error": isinstance(err, errors.GenericError),
            "message": str(err),
            "cause": type(err.__cause__).__module__ + "." + type(err.__cause__).__qualname__,
            "cause_errno": getattr(err.__cause__, "errno", None),
        }

    before = sorted(os.listdir("/proc/self/fd"))
    out = {}
    try:
        netdev.OpenTap("a" * 16)
    except Exception as err:
        out["invalid"] = describe(err)
    first = netdev.OpenTap("gnt0")
    try:
        netdev.OpenTap("gnt0")
    except Exception as err:
        out["busy"] = describe(err)
    for fd in first[1]:
        os.close(fd)
    out["fds_unchanged"] = sorted(os.listdir("/proc/self/fd")) == before
    print(json.dumps(out))
"""


def test_errors_are_ganetis_hypervisor_error_when_ganeti_is_installed(tmp_path) -> None:
    """With a ``ganeti`` package importable, OpenTap raises
    ganeti.errors.HypervisorError (a GenericError), with Ganeti's wording
    and the vmtap exception chained."""
    make_fake_ganeti(tmp_path)
    out = run_child(CHILD_GANETI_ERRORS, pythonpath=tmp_path, cwd=tmp_path)
    invalid, busy = out["invalid"], out["busy"]
    for described in (invalid, busy):
        assert described["cls"] == "ganeti.errors.HypervisorError"
        assert described["is_hypervisor_error"] and described["is_generic_error"]
        assert described["message"].startswith(ALLOC_PREFIX), described["message"]
    assert invalid["cause"] == "vmtap.InvalidArgument"
    assert busy["cause"] == "vmtap.SysError"
    assert busy["cause_errno"] == errno.EBUSY
    assert out["fds_unchanged"] is True


CHILD_SHIM = """
    import fcntl, json, os, struct
    from ganeti import errors
    from ganeti.hypervisor.hv_kvm import netdev
    import vmtap.netdev

    names = [
        "TUNSETIFF", "TUNGETIFF", "TUNGETFEATURES", "IFF_TAP", "IFF_NO_PI",
        "IFF_ONE_QUEUE", "IFF_VNET_HDR", "IFF_MULTI_QUEUE", "OpenTap",
        "_GetTunFeatures", "_ProbeTapMqVirtioNet", "_ProbeTapVnetHdr",
    ]
    out = {
        "missing": [n for n in names if not hasattr(netdev, n)],
        "different": [
            n for n in names
            if hasattr(netdev, n) and getattr(netdev, n) is not getattr(vmtap.netdev, n)
        ],
    }
    before = sorted(os.listdir("/proc/self/fd"))
    ifname, tapfds, vhostfds = netdev.OpenTap(
        "", {"vhost": False, "vnet_hdr": True, "mq": (True, 2)}
    )
    try:
        out["ifname"] = ifname.decode()
        out["vhostfds"] = vhostfds
        out["getiff"] = []
        for fd in tapfds:
            buf = fcntl.ioctl(fd, netdev.TUNGETIFF, struct.pack("16sH", b"", 0))
            name, flags = struct.unpack("16sH", buf)
            out["getiff"].append([name.rstrip(b"\\0").decode(), flags])
        out["features"] = netdev._GetTunFeatures(tapfds[0])
        out["probes"] = [netdev._ProbeTapVnetHdr(tapfds[0]), netdev._ProbeTapMqVirtioNet(tapfds[0])]
    finally:
        for fd in tapfds + vhostfds:
            os.close(fd)
    try:
        netdev.OpenTap("", {"mq": (True, 0)})
    except errors.HypervisorError as err:
        out["error"] = str(err)
    out["fds_unchanged"] = sorted(os.listdir("/proc/self/fd")) == before
    print(json.dumps(out))
"""


def test_readme_shim_gives_ganeti_every_name(tmp_path) -> None:
    """The README's one-file ganeti/hypervisor/hv_kvm/netdev.py gives
    ``from ganeti.hypervisor.hv_kvm import netdev`` all of Ganeti's names
    (vmtap's objects); OpenTap through it opens one 2-queue tap, and fails
    with ganeti.errors.HypervisorError."""
    make_fake_ganeti(tmp_path, shim=True)
    interfaces_before = interfaces()
    out = run_child(CHILD_SHIM, pythonpath=tmp_path, cwd=tmp_path)
    assert out["missing"] == []
    assert out["different"] == []
    assert out["ifname"].startswith("tap")
    assert out["vhostfds"] == []
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    assert out["getiff"] == [[out["ifname"], flags]] * 2
    assert out["features"] == vmtap.features()["flags"]
    assert out["probes"] == [True, True]
    assert out["error"].startswith(ALLOC_PREFIX), out["error"]
    assert out["fds_unchanged"] is True
    wait_until("the child's tap to go", lambda: interfaces() == interfaces_before)


def test_without_ganeti_errors_are_vmtaps_hypervisor_error() -> None:
    """Without Ganeti (the case of this test run unless Ganeti is
    installed), the class is vmtap.HypervisorError, a vmtap.Error."""
    try:
        import ganeti  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ganeti is importable here")
    with pytest.raises(vmtap.HypervisorError) as excinfo:
        netdev.OpenTap("a/b")
    assert isinstance(excinfo.value, vmtap.Error)
    assert type(excinfo.value).__module__ == "vmtap"
