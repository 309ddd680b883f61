"""Fixtures of vmtap's Python tests.

Every test runs in a fresh network namespace of its own (entered by the
test's thread with unshare(2) and left with setns(2)), so tests never touch
the host's interfaces and may run in parallel. The tests run against the
installed package (scripts/test installs the wheel into a fresh virtual
environment first).
"""

import ctypes
import ctypes.util
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


@pytest.fixture(autouse=True)
def netns() -> Iterator[None]:
    """A fresh network namespace for this test's thread (and threads it
    starts), with the loopback up; the previous one back afterwards."""
    old = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            setns(old, CLONE_NEWNET)
    finally:
        os.close(old)


def require() -> bool:
    """Whether skips are failures (VMTAP_REQUIRE=1, set by scripts/test)."""
    return os.environ.get("VMTAP_REQUIRE") == "1"


def skip(why: str) -> None:
    if require():
        pytest.fail(f"cannot run here (VMTAP_REQUIRE=1): {why}")
    pytest.skip(why)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True
    ).stdout


def wait_until(what: str, cond: Callable[[], bool], secs: float = 10.0) -> None:
    """Waits for a condition, with a deadline."""
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {secs} s waiting for {what}")
        time.sleep(0.01)


def exists(ifname: str) -> bool:
    """Whether the interface exists in this test's network namespace (asked
    over netlink: this process's /sys shows the namespace that mounted it,
    not the test's)."""
    return (
        subprocess.run(
            ["ip", "link", "show", "dev", ifname], capture_output=True
        ).returncode
        == 0
    )


def interfaces() -> List[str]:
    """The interfaces of this test's network namespace, sorted."""
    links = json.loads(ip("-j", "link", "show"))
    return sorted(link["ifname"] for link in links)


def with_sysfs(script: str) -> str:
    """Runs a shell script that sees a sysfs of this test's network
    namespace (mounted in a private mount namespace of a child)."""
    return subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t sysfs sysfs /sys && " + script,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def sysfs_tx_queues(ifname: str) -> int:
    """The tap's tx queues in sysfs (one per attached queue)."""
    out = with_sysfs(f"ls /sys/class/net/{shlex.quote(ifname)}/queues")
    return len([q for q in out.split() if q.startswith("tx-")])


def link(name: str) -> Optional[Dict]:
    """``ip -j -d link show dev NAME``, or None when there is no such
    interface."""
    proc = subprocess.run(
        ["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None
    (entry,) = json.loads(proc.stdout)
    return entry


def tun_info(name: str) -> Dict:
    """The ``tun`` part of ``ip -d link`` for a tap."""
    entry = link(name)
    assert entry is not None, f"no interface {name}"
    assert entry["linkinfo"]["info_kind"] == "tun"
    return entry["linkinfo"]["info_data"]


def guest() -> "tuple[Path, Path]":
    """The test guest's kernel and initrd (scripts/build-guest), or skip."""
    d = Path(os.environ.get("VMTAP_GUEST_DIR", "/var/tmp/vmtap-guest"))
    kernel, initrd = d / "vmlinuz", d / "initrd.img"
    if shutil.which("qemu-system-x86_64") is None or not kernel.exists() or not initrd.exists():
        skip(f"QEMU test: needs qemu-system-x86_64 and the guest in {d} (scripts/build-guest)")
    return kernel, initrd
