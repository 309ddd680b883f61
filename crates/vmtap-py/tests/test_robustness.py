"""What a hostile review of the package found, each kept from coming back:
a Ctrl-C during a hot-plug, a logging handler that raises, an unclosed
Tap, ints out of range, a broken ``ganeti`` package."""

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import List

import pytest

import vmtap

from conftest import exists, fd_count, interfaces


class SilentMonitor:
    """A unix socket that accepts one connection and never says a word: a
    QEMU monitor that hangs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.accepted = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.accepted.set()
        self.done.wait(120)
        conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(60)


def test_ctrl_c_stops_a_hotplug_waiting_on_a_silent_qemu(tmp_path: Path) -> None:
    """A SIGINT while hotplug_add waits for QEMU's greeting raises
    KeyboardInterrupt from the call (not a timeout error a minute later),
    with vmtap's error as its cause, and leaves nothing behind."""
    fds, links = fd_count(), interfaces()
    silent = SilentMonitor(tmp_path / "qmp.sock")

    def interrupt() -> None:
        if silent.accepted.wait(60):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    kicker = threading.Thread(target=interrupt, daemon=True)
    kicker.start()
    with pytest.raises(KeyboardInterrupt) as info:
        vmtap.hotplug_add(silent.path, "nic1", timeout=60)
    kicker.join()
    cause = info.value.__cause__
    assert isinstance(cause, vmtap.Error), repr(cause)
    assert "interrupted" in str(cause), str(cause)
    silent.close()
    assert interfaces() == links
    assert fd_count() == fds


def test_a_logging_handler_that_raises_does_not_fail_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rust's records reach Python's logging; a filter that raises there is
    reported as unraisable, and the call's result stands (it used to come
    back as SystemError after the work was done)."""
    seen: List[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))

    class Boom(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("a broken log filter")

    root = logging.getLogger()
    old_level = root.level
    # A handler's filters run for records propagated from vmtap's loggers.
    boom = logging.Handler()
    boom.addFilter(Boom())
    root.addHandler(boom)
    root.setLevel(logging.DEBUG)
    vmtap.reset_log_cache()
    try:
        # Logs at debug level why vhost-net is not usable (or that it is).
        report = vmtap.features()
        with vmtap.open_tap(queues=2) as tap:
            assert len(tap.fds) == 2
    finally:
        root.removeHandler(boom)
        root.setLevel(old_level)
        vmtap.reset_log_cache()
    assert report["tap"] is True
    assert seen and all(isinstance(e, RuntimeError) for e in seen), seen


def test_an_unclosed_tap_warns_and_goes_when_collected() -> None:
    """A Tap dropped while open warns (ResourceWarning, as an unclosed file
    does) and its fds are closed: the tap goes."""
    fds = fd_count()
    tap = vmtap.open_tap("unclosed0")
    assert exists("unclosed0")
    with pytest.warns(ResourceWarning, match="unclosed vmtap.Tap"):
        del tap
        gc.collect()
    assert not exists("unclosed0")
    assert fd_count() == fds


@pytest.mark.parametrize(
    "call",
    [
        lambda: vmtap.open_tap(queues=2**70),
        lambda: vmtap.open_tap(queues=-1),
        lambda: vmtap.open_tap(queues=0),
        lambda: vmtap.create_persistent("big0", owner=2**40),
        lambda: vmtap.create_persistent("big0", owner="4294967295"),
        lambda: vmtap.create_persistent("big0", group=4294967295),
        lambda: vmtap.configure_link("lo", mtu=-1),
        lambda: vmtap.configure_link("lo", mtu=2**40),
        lambda: vmtap.inspect(2**70),
        lambda: vmtap.ifdown("lo", state_dir="relative/dir"),
        lambda: vmtap.ifdown("lo", state_dir=""),
        lambda: vmtap.hotplug_add("/nonexistent", "nic1", timeout=float("nan")),
        lambda: vmtap.hotplug_add("/nonexistent", "nic1", queues=2**63),
    ],
)
def test_out_of_range_values_are_invalid_arguments(call) -> None:  # type: ignore[no-untyped-def]
    """Values outside what the kernel or QEMU take are InvalidArgument (a
    ValueError), never a bare OverflowError, and nothing is created."""
    links = interfaces()
    with pytest.raises(vmtap.InvalidArgument):
        call()
    assert interfaces() == links


@pytest.mark.parametrize(
    "call",
    [
        lambda: vmtap.open_tap(queues=True),
        lambda: vmtap.open_tap(queues="2"),
        lambda: vmtap.inspect(True),
        lambda: vmtap.inspect(3.5),
        lambda: vmtap.configure_link("lo", mtu="1500"),
    ],
)
def test_wrong_types_are_type_errors(call) -> None:  # type: ignore[no-untyped-def]
    """A bool is not a count or an fd, a str is not a number."""
    with pytest.raises(TypeError):
        call()


def test_one_address_as_a_str_is_one_address(tmp_path: Path) -> None:
    """ips="10.9.0.2" is the address, not the characters of it."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with vmtap.open_tap("rt0") as tap:
        vmtap.configure_link(tap.ifname, mode="routed", ips="10.9.0.2", state_dir=str(state))
        routes = subprocess.run(
            ["ip", "route", "show", "10.9.0.2"], capture_output=True, text=True, check=True
        ).stdout
        assert "dev rt0" in routes, routes
        assert vmtap.ifdown(tap.ifname, state_dir=str(state)) == "undone"


def test_netdev_with_a_broken_ganeti_still_reports_the_real_error(tmp_path: Path) -> None:
    """A ``ganeti`` package that fails to import, or whose errors module
    lacks HypervisorError, must not hide OpenTap's error: vmtap's
    HypervisorError is raised with Ganeti's words."""
    broken = tmp_path / "broken" / "ganeti"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('ganeti is broken')\n")
    foreign = tmp_path / "foreign" / "ganeti"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("")
    (foreign / "errors.py").write_text("class GenericError(Exception):\n    pass\n")
    child = textwrap.dedent(
        """
        import vmtap, vmtap.netdev
        try:
            vmtap.netdev.OpenTap("a" * 16)
        except Exception as e:
            print(type(e).__module__, type(e).__name__, str(e).split(":")[0])
        """
    )
    for root in (broken.parent, foreign.parent):
        out = subprocess.run(
            [sys.executable, "-c", child],
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == "vmtap HypervisorError Failed to allocate a new TAP device", out
