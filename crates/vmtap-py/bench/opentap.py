"""How long opening a tap for QEMU takes from Python: vmtap against Ganeti.

Measures, for 1 and 4 queues, the time of one call that opens a tap with
vnet_hdr (and multi-queue for 4) and returns its fds:

- ``ganeti``: Ganeti's pure-Python ``hv_kvm.netdev.OpenTap`` algorithm
  (re-implemented below, the baseline): per queue, open /dev/net/tun,
  probe TUNGETFEATURES on that fd, TUNSETIFF;
- ``netdev``: ``vmtap.netdev.OpenTap``, the drop-in for it;
- ``open_tap``: ``vmtap.open_tap``, the Pythonic API (returns a ``Tap``).

Only the call is timed (``time.perf_counter_ns`` around it). Closing the
fds, and waiting until the kernel has unregistered the device (its
/sys/class/net entry gone), happen outside the timed region: the kernel's
teardown is the same for all three and is not what is measured. The three
run in interleaved rounds, the one going first rotating each round, after
a warm-up whose results are also checked (the name, the queue count and
the flags, asked of netlink).

The bench re-executes itself in a private network namespace, so that it
never touches the host's interfaces, and a private mount namespace with a
sysfs of its own (a sysfs shows the network namespace of whoever mounted
it: without that, /sys/class/net would show the host's). Needs root.

Usage (from the repository's root)::

    /tmp/venv1/bin/python crates/vmtap-py/bench/opentap.py [--rounds N] [--warmup N]

Prints a table of medians, 10th and 90th percentiles in microseconds and
the ratio of each vmtap call's median to Ganeti's, then one JSON line with
the same figures.
"""

import argparse
import fcntl
import gc
import json
import os
import shlex
import statistics
import struct
import sys
import time
from typing import Callable, Dict, List, Tuple

import vmtap
import vmtap.netdev

# Set in the environment of the re-executed bench.
IN_NETNS_MARK = "VMTAP_BENCH_IN_NETNS"

# Ganeti's constants (x86's values, hard-coded as Ganeti does).
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

QUEUE_COUNTS = (1, 4)
# How long the kernel may take to unregister a closed tap.
GONE_DEADLINE_S = 10.0

OpenResult = Tuple[str, Callable[[], None]]


def ganeti_tun_features(fd: int) -> int:
    """Ganeti's ``_GetTunFeatures``: TUNGETFEATURES on ``fd``, 0 when the
    ioctl fails."""
    try:
        buf = fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0))
    except OSError:
        return 0
    return struct.unpack("I", buf)[0]


def ganeti_open_tap(
    name: bytes = b"", vnet_hdr: bool = True, queues: int = 1
) -> Tuple[bytes, List[int], List[int]]:
    """Ganeti's ``OpenTap`` (without vhost): one /dev/net/tun fd per queue,
    each with the features probed on it and attached by TUNSETIFF to the
    device the first one created. The name stays bytes from one queue to
    the next (Ganeti's Python 3 port passed a str there, a bug)."""
    ifname = name
    tapfds: List[int] = []
    try:
        for _ in range(queues):
            fd = os.open("/dev/net/tun", os.O_RDWR)
            tapfds.append(fd)
            flags = IFF_TAP | IFF_NO_PI
            if vnet_hdr and ganeti_tun_features(fd) & IFF_VNET_HDR:
                flags |= IFF_VNET_HDR
            if queues > 1 and ganeti_tun_features(fd) & IFF_MULTI_QUEUE:
                flags |= IFF_MULTI_QUEUE
            else:
                flags |= IFF_ONE_QUEUE
            ifr = struct.pack("16sh", ifname, flags)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            ifname = struct.unpack("16sh", res)[0].strip(b"\0")
    except OSError:
        for fd in tapfds:
            os.close(fd)
        raise
    return ifname, tapfds, []


def close_fds(fds: List[int]) -> Callable[[], None]:
    """A function that closes ``fds``."""

    def close() -> None:
        for fd in fds:
            os.close(fd)

    return close


def open_ganeti(queues: int) -> OpenResult:
    ifname, fds, _ = ganeti_open_tap(b"", True, queues)
    return ifname.decode("ascii"), close_fds(fds)


def open_netdev(queues: int) -> OpenResult:
    ifname, fds, _ = vmtap.netdev.OpenTap("", {"vnet_hdr": True, "mq": (True, queues)})
    return ifname.decode("ascii"), close_fds(fds)


def open_pythonic(queues: int) -> OpenResult:
    tap = vmtap.open_tap(queues=queues)
    return tap.ifname, tap.close


# The timed calls, by column; "ganeti" is the baseline.
IMPLEMENTATIONS: Dict[str, Callable[[int], OpenResult]] = {
    "ganeti": open_ganeti,
    "netdev": open_netdev,
    "open_tap": open_pythonic,
}


def wait_gone(ifname: str) -> None:
    """Waits until the kernel has unregistered ``ifname``."""
    path = f"/sys/class/net/{ifname}"
    deadline = time.monotonic() + GONE_DEADLINE_S
    while os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"{ifname} still exists {GONE_DEADLINE_S} s after its fds were closed")
        time.sleep(0.0002)


def timed_open(open_fn: Callable[[int], OpenResult], queues: int) -> Tuple[int, str, Callable[[], None]]:
    """One timed call: (nanoseconds, interface name, how to close it)."""
    start = time.perf_counter_ns()
    ifname, close = open_fn(queues)
    elapsed = time.perf_counter_ns() - start
    return elapsed, ifname, close


def check(impl: str, queues: int) -> None:
    """That ``impl`` opens what the others do: one device with ``queues``
    queues attached, vnet_hdr on, multi-queue for several queues; and that
    /sys/class/net shows it (else :func:`wait_gone` would not wait)."""
    ifname, close = IMPLEMENTATIONS[impl](queues)
    try:
        if not os.path.exists(f"/sys/class/net/{ifname}"):
            sys.exit(f"/sys/class/net/{ifname} missing: /sys is not this namespace's sysfs")
        info = vmtap.inspect(ifname)
        want = {"queues": queues, "vnet_hdr": True, "multi_queue": queues > 1}
        got = {k: info[k] for k in want}
        if got != want:
            sys.exit(f"{impl} with {queues} queues opened {ifname}: {got}, not {want}")
    finally:
        close()
        wait_gone(ifname)


def run_rounds(queues: int, rounds: int, record: bool, samples: Dict[str, List[int]]) -> None:
    """``rounds`` interleaved rounds of every implementation, the first one
    rotating; the times are added to ``samples`` when ``record``."""
    names = list(IMPLEMENTATIONS)
    for i in range(rounds):
        shift = i % len(names)
        for impl in names[shift:] + names[:shift]:
            elapsed, ifname, close = timed_open(IMPLEMENTATIONS[impl], queues)
            close()
            wait_gone(ifname)
            if record:
                samples[impl].append(elapsed)


def summary(ns: List[int]) -> Dict[str, float]:
    """Median, 10th and 90th percentiles, in microseconds."""
    deciles = statistics.quantiles(ns, n=10, method="inclusive")
    return {
        "median_us": round(statistics.median(ns) / 1000, 2),
        "p10_us": round(deciles[0] / 1000, 2),
        "p90_us": round(deciles[8] / 1000, 2),
    }


def reexec_in_private_namespace() -> None:
    """Re-executes this bench under ``unshare -n -m`` with a fresh sysfs,
    unless it runs there already."""
    if os.environ.get(IN_NETNS_MARK) == "1":
        return
    os.environ[IN_NETNS_MARK] = "1"
    script = "mount -t sysfs sysfs /sys && exec " + shlex.join(
        [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    )
    try:
        os.execvp("unshare", ["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", script])
    except OSError as err:
        sys.exit(f"cannot run unshare -n -m (run as root): {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds per queue count")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured rounds first")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    reexec_in_private_namespace()

    # results[queues][implementation]: median_us, p10_us, p90_us, ratio.
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    for queues in QUEUE_COUNTS:
        for impl in IMPLEMENTATIONS:
            check(impl, queues)
        samples: Dict[str, List[int]] = {impl: [] for impl in IMPLEMENTATIONS}
        run_rounds(queues, args.warmup, False, samples)
        gc.collect()
        gc.disable()
        try:
            run_rounds(queues, args.rounds, True, samples)
        finally:
            gc.enable()
        figures = {impl: summary(ns) for impl, ns in samples.items()}
        base = figures["ganeti"]["median_us"]
        for f in figures.values():
            f["ratio"] = round(f["median_us"] / base, 3)
        results[str(queues)] = figures

    print(f"OpenTap, {args.rounds} interleaved rounds (after {args.warmup} of warm-up); "
          "times in µs, ratio = median / Ganeti's median")
    header = f"{'queues':>6}  {'implementation':<22}{'median':>9}{'p10':>9}{'p90':>9}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    labels = {
        "ganeti": "Ganeti (pure Python)",
        "netdev": "vmtap.netdev.OpenTap",
        "open_tap": "vmtap.open_tap",
    }
    for queues, figures in results.items():
        for impl, label in labels.items():
            f = figures[impl]
            print(f"{queues:>6}  {label:<22}{f['median_us']:>9.1f}{f['p10_us']:>9.1f}"
                  f"{f['p90_us']:>9.1f}{f['ratio']:>8.2f}")
    print(json.dumps({"bench": "opentap", "rounds": args.rounds, "warmup": args.warmup,
                      "queues": results}, sort_keys=True))


if __name__ == "__main__":
    main()
