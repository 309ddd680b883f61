"""End to end: real QEMU guests on taps opened from Python.

Each test boots the test guest (scripts/build-guest: a kernel and an
initrd whose init configures every virtio NIC with the address given by
``vmtap.ip=`` and reports on the serial console) under TCG, in the test's
own network namespace, and pings it over the tap:

- through :func:`vmtap.netdev.OpenTap`, exactly as Ganeti opens a
  multi-queue tap and hands its fds to QEMU;
- through :func:`vmtap.open_tap` in a ``with`` block;
- hot-plugged over QMP with :func:`vmtap.hotplug_add` (two queues, then a
  NIC bridged by vmtap) and removed with :func:`vmtap.hotplug_del`.

Skipped without QEMU or the guest, unless VMTAP_REQUIRE=1. Three boots in
all (each takes 8 to 15 s under TCG).

Whether an interface exists is asked of netlink (``ip link show``), not of
/sys/class/net: a sysfs shows the network namespace of whoever mounted it,
not the test's.
"""

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

import vmtap
import vmtap.netdev

from conftest import guest, ip, wait_until

# How long the guest may take to boot, or to report a NIC, under TCG.
BOOT_DEADLINE = 120.0
# How long pings are retried while ARP and the guest's NIC settle.
PING_DEADLINE = 60.0
# How long the kernel may take to unregister a tap once its fds are closed.
GONE_DEADLINE = 30.0


class Guest:
    """A QEMU running the test guest, its serial console read line by line
    on a thread. :meth:`wait_for` reads the console in order: each call
    looks only at lines after the one the previous call returned."""

    def __init__(self, args: Sequence[str], pass_fds: Sequence[int] = ()) -> None:
        self.args = list(args)
        self.log: List[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
        )
        self._reader = threading.Thread(target=self._read, name="qemu-console", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._lines.put(None)

    def console(self) -> str:
        """The console so far, for assertion messages."""
        # Lines read by the thread but not yet waited for count too.
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.log.append(line)
        return "\n".join(self.log) or "(nothing)"

    def wait_for(self, needle: str, secs: float = BOOT_DEADLINE) -> str:
        """The next console line containing ``needle``; fails (showing the
        console) when none comes within ``secs`` or QEMU exits first."""
        deadline = time.monotonic() + secs
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"no console line with {needle!r} after {secs:.0f} s; "
                    f"the console said:\n{self.console()}"
                )
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"QEMU exited ({self.proc.wait()}) before a console line with "
                    f"{needle!r}; the console said:\n{self.console()}"
                )
            self.log.append(line)
            if needle in line:
                return line

    def stop(self) -> None:
        """Kills QEMU and reaps it (its fds, and so its taps' queues, go)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self._reader.join(timeout=5)
            self.proc.stdout.close()


def guest_args(ip_cidr: str) -> List[str]:
    """QEMU's arguments that boot the test guest with ``vmtap.ip=IP`` for
    its NICs (as the Rust tests' ``guest_qemu_args``); no NIC."""
    kernel, initrd = guest()
    return [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", "2",
        "-m", "256",
        "-nographic",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 quiet vmtap.ip={ip_cidr}",
    ]  # fmt: skip


@pytest.fixture
def boot() -> Iterator[Callable[..., Guest]]:
    """Starts guests (``boot(args, pass_fds=...)``); each is killed at the
    end of the test, whatever happened."""
    started: List[Guest] = []

    def start(args: Sequence[str], pass_fds: Sequence[int] = ()) -> Guest:
        vm = Guest(args, pass_fds)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.stop()


def link_exists(ifname: str) -> bool:
    """Whether ``ifname`` exists in this thread's network namespace."""
    return (
        subprocess.run(
            ["ip", "link", "show", "dev", ifname],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        == 0
    )


def attached_queues(ifname: str) -> int:
    """Number of queues attached to tap ``ifname``: ``numqueues`` of a
    multi-queue tap in ``ip -d link``, else 1 for a tap someone holds."""
    words = ip("-d", "link", "show", "dev", ifname).split()
    if "numqueues" in words:
        return int(words[words.index("numqueues") + 1])
    return 1


def queue_pairs(nic_line: str) -> List[str]:
    """The queues of a ``VMTAP-NIC ethN up queues: ...`` line."""
    return nic_line.split("queues:", 1)[1].split()


def ping_until(address: str, vm: Guest, secs: float = PING_DEADLINE) -> None:
    """Pings ``address`` until it answers (ARP and the guest's NIC take a
    moment to settle), failing with the console after ``secs``."""
    deadline = time.monotonic() + secs
    tries = 0
    while True:
        tries += 1
        done = subprocess.run(
            ["ping", "-c1", "-W2", address], capture_output=True, text=True
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline or vm.proc.poll() is not None:
            pytest.fail(
                f"{address} did not answer ping ({tries} tries in {secs:.0f} s): "
                f"{done.stdout}{done.stderr}\nhost:\n{ip('addr')}\n"
                f"the console said:\n{vm.console()}"
            )
        time.sleep(0.5)


def wait_link_gone(ifname: str) -> None:
    wait_until(f"{ifname} is gone", lambda: not link_exists(ifname), GONE_DEADLINE)


def test_ganeti_opentap_two_queues_guest_answers_ping(boot: Callable[..., Guest]) -> None:
    """Ganeti's way: OpenTap with two queues, the fds passed to QEMU as
    ``fds=A:B`` and closed by the caller once QEMU has them."""
    args = guest_args("10.78.1.2/24")
    ifname_b, tapfds, vhostfds = vmtap.netdev.OpenTap(
        "", {"vhost": False, "vnet_hdr": True, "mq": (True, 2)}
    )
    assert isinstance(ifname_b, bytes), ifname_b
    assert (len(tapfds), vhostfds) == (2, []), (tapfds, vhostfds)
    ifname = ifname_b.decode("ascii")
    try:
        fds = ":".join(map(str, tapfds))
        vm = boot(
            args
            + ["-netdev", f"tap,id=n0,fds={fds}"]
            + ["-device", "virtio-net-pci,netdev=n0,mq=on,vectors=6"],
            pass_fds=tapfds,
        )
    finally:
        # As Ganeti: QEMU has its copies now (or failed to start).
        for fd in tapfds:
            os.close(fd)

    nic = vm.wait_for("VMTAP-NIC eth0 up")
    assert queue_pairs(nic) == ["rx-0", "rx-1", "tx-0", "tx-1"], (
        f"the guest has 2 queue pairs: {nic}\n{vm.console()}"
    )
    assert attached_queues(ifname) == 2, ip("-d", "link", "show", "dev", ifname)

    ip("addr", "add", "10.78.1.1/24", "dev", ifname)
    ip("link", "set", ifname, "up")
    ping_until("10.78.1.2", vm)

    vm.stop()
    wait_link_gone(ifname)


def test_open_tap_one_queue_guest_answers_ping(boot: Callable[..., Guest]) -> None:
    """The Pythonic API: ``with vmtap.open_tap() as tap``, the fd passed as
    ``fd=N``; leaving the block closes our copy, QEMU keeps the tap."""
    args = guest_args("10.78.2.2/24")
    with vmtap.open_tap(queues=1) as tap:
        ifname = tap.ifname
        assert len(tap.fds) == 1 and not tap.multi_queue, (tap.fds, tap.flags)
        vm = boot(
            args
            + ["-netdev", f"tap,id=n0,fd={tap.fds[0]}"]
            + ["-device", "virtio-net-pci,netdev=n0"],
            pass_fds=tap.fds,
        )
    assert tap.closed

    nic = vm.wait_for("VMTAP-NIC eth0 up")
    assert queue_pairs(nic) == ["rx-0", "tx-0"], f"{nic}\n{vm.console()}"
    assert link_exists(ifname), f"QEMU holds {ifname}\n{vm.console()}"

    ip("addr", "add", "10.78.2.1/24", "dev", ifname)
    ip("link", "set", ifname, "up")
    ping_until("10.78.2.2", vm)

    vm.stop()
    wait_link_gone(ifname)


def records(state_dir: Path) -> List[str]:
    """The NIC records (not their lock files) in ``state_dir``."""
    nics = state_dir / "nics"
    if not nics.is_dir():
        return []
    return sorted(p.name for p in nics.iterdir() if p.name.endswith(".json"))


def test_hotplug_two_queues_then_bridged(
    boot: Callable[..., Guest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into a guest started without a NIC: hotplug_add a two-queue NIC,
    ping it, hotplug_del it; then hotplug_add a NIC that vmtap puts on a
    bridge (recorded in the state directory), ping through the bridge,
    and hotplug_del, which undoes the set-up."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    monkeypatch.setenv("VMTAP_STATE_DIR", str(state_dir))
    qmp = str(tmp_path / "qmp.sock")
    vm = boot(
        guest_args("10.78.3.2/24")
        + ["-nic", "none", "-qmp", f"unix:{qmp},server=on,wait=off"]
    )
    vm.wait_for("VMTAP-BOOTED")

    # Two queues, no NIC mode: the host side is ours to set up.
    ifname = vmtap.hotplug_add(qmp, "nic1", queues=2)
    try:
        nic = vm.wait_for("VMTAP-NIC eth0 up")
        assert queue_pairs(nic) == ["rx-0", "rx-1", "tx-0", "tx-1"], (
            f"the guest has 2 queue pairs: {nic}\n{vm.console()}"
        )
        assert attached_queues(ifname) == 2, ip("-d", "link", "show", "dev", ifname)
        assert records(state_dir) == [], "no mode, nothing recorded"
        ip("addr", "add", "10.78.3.1/24", "dev", ifname)
        ip("link", "set", ifname, "up")
        ping_until("10.78.3.2", vm)
    finally:
        vmtap.hotplug_del(qmp, "nic1")
    gone = vm.wait_for("VMTAP-NIC-GONE")
    assert gone.split()[-1] == "eth0", f"{gone}\n{vm.console()}"
    wait_link_gone(ifname)

    # Bridged: vmtap enslaves the tap to br0 and brings it up. The host
    # address differs from the tap's above, so that no ARP entry of the
    # guest's points at the old tap.
    ip("link", "add", "br0", "type", "bridge")
    ip("addr", "add", "10.78.3.254/24", "dev", "br0")
    ip("link", "set", "br0", "up")
    bridged = vmtap.hotplug_add(qmp, "nic2", mode="bridged", link="br0")
    try:
        details = ip("-d", "link", "show", "dev", bridged)
        assert "master br0" in details and ",UP" in details, details
        assert len(records(state_dir)) == 1, records(state_dir)
        nic = vm.wait_for("VMTAP-NIC eth")
        assert queue_pairs(nic) == ["rx-0", "tx-0"], f"{nic}\n{vm.console()}"
        ping_until("10.78.3.2", vm)
    finally:
        vmtap.hotplug_del(qmp, "nic2")
    vm.wait_for("VMTAP-NIC-GONE")
    wait_link_gone(bridged)
    assert records(state_dir) == [], "hotplug_del removed the record"
    assert ip("link", "show", "master", "br0").strip() == "", "br0 has no port left"
    assert "10.78.3.254/24" in ip("addr", "show", "dev", "br0"), "br0 left as it was"
