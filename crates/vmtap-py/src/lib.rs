//! `vmtap._vmtap`: the Python extension over the vmtap libraries.
//!
//! A thin front end: it turns Python arguments into the libraries'
//! options, calls them with the GIL released, and turns their errors into
//! the exception classes of `vmtap._errors` (defined in Python, so that
//! `InvalidArgument` can also be a `ValueError` and `SysError` an
//! `OSError`). The Python package (`python/vmtap`) builds the public API
//! and Ganeti's `netdev` module on top of it.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyResourceWarning, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyTuple};

use vmtap::{OpenOptions, PersistentOptions, TapSummary, Tun, TunFlags, VnetHdr};
use vmtap_net::{Ifdown, LinkOptions, MacAddr, NicMode, StateDir};
use vmtap_qemu::hotplug;

/// How an error is raised in Python.
enum Class {
    /// `vmtap.InvalidArgument`: the caller's input; nothing was touched.
    Invalid,
    /// `vmtap.SysError` when an OS error number is behind it, else
    /// `vmtap.Error`.
    Failure,
}

impl Class {
    fn of(invalid_input: bool) -> Self {
        if invalid_input {
            Class::Invalid
        } else {
            Class::Failure
        }
    }
}

/// Raises `err` as the class of `vmtap._errors` it belongs to, with its
/// full message; `device` is the device node that could not be used.
fn raise(
    py: Python<'_>,
    err: &(dyn std::error::Error + 'static),
    class: Class,
    device: Option<String>,
) -> PyErr {
    let message = vmtap::error::escape_controls(&vmtap::error::full_message(err));
    let errno = vmtap::error::os_errno(err);
    let made = (|| -> PyResult<PyErr> {
        let errors = py.import("vmtap._errors")?;
        let value = match (class, errno) {
            (Class::Invalid, _) => errors.getattr("InvalidArgument")?.call1((message,))?,
            (Class::Failure, Some(n)) => errors.getattr("SysError")?.call1((n, message))?,
            (Class::Failure, None) => errors.getattr("Error")?.call1((message,))?,
        };
        value.setattr("device", device)?;
        Ok(PyErr::from_value(value))
    })();
    made.unwrap_or_else(|e| e)
}

fn core_error(py: Python<'_>, e: vmtap::Error) -> PyErr {
    let device = match &e {
        vmtap::Error::OpenDevice { path, .. }
        | vmtap::Error::VhostUnavailable { path, .. }
        | vmtap::Error::NotVhostNet { path, .. } => Some(path.display().to_string()),
        _ => None,
    };
    let class = Class::of(e.is_invalid_input());
    raise(py, &e, class, device)
}

fn link_error(py: Python<'_>, e: vmtap_net::LinkError) -> PyErr {
    let class = Class::of(e.is_invalid_input());
    raise(py, &e, class, None)
}

fn hotplug_error(py: Python<'_>, e: hotplug::HotplugError) -> PyErr {
    if let hotplug::HotplugError::Open(e) = e {
        return core_error(py, e);
    }
    let class = Class::of(e.is_invalid_input());
    let err = raise(py, &e, class, None);
    let remaining: Vec<String> = e.remaining().iter().map(|l| l.to_string()).collect();
    if let Err(set) = err.value(py).setattr("remaining", remaining) {
        return set;
    }
    err
}

fn invalid(py: Python<'_>, message: String) -> PyErr {
    #[derive(Debug)]
    struct Message(String);
    impl std::fmt::Display for Message {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Message {}
    raise(py, &Message(message), Class::Invalid, None)
}

/// Runs `f` without the GIL. Rust's log records reach Python's logging
/// meanwhile (pyo3-log), and an exception raised there (a failing
/// handler, or a Ctrl-C seen while it ran) is left pending: it must not
/// turn the result of work already done into a `SystemError`. A
/// `KeyboardInterrupt` is raised again after the call returns; anything
/// else is reported as unraisable, as logging's own errors are.
fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let out = py.detach(f);
    settle(py);
    out
}

/// [`without_gil`] for an operation that waits on QEMU: a Python signal
/// handler that raises (Ctrl-C's `KeyboardInterrupt`) stops the wait
/// within 100 ms; the operation then ends as after a timeout (undone), and
/// the handler's exception is raised with the operation's error as its
/// cause. Without it a Ctrl-C would wait for the timeout (up to a day).
fn interruptible<T: Send, E: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, E> + Send,
    to_py: impl FnOnce(Python<'_>, E) -> PyErr,
) -> PyResult<T> {
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let store = raised.clone();
    let out = without_gil(py, move || {
        let stop = Rc::new(move || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    *store.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    true
                }
            })
        });
        vmtap_qemu::qmp::interruptible(stop, f)
    });
    let raised = raised.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (out, raised) {
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(to_py(py, e)),
        (Err(e), Some(signal)) => {
            signal.set_cause(py, Some(to_py(py, e)));
            Err(signal)
        }
        (Ok(v), Some(signal)) => {
            // Done before the handler's exception stopped anything: the
            // result stands, the exception follows it.
            signal.restore(py);
            settle(py);
            Ok(v)
        }
    }
}

fn settle(py: Python<'_>) {
    let Some(e) = PyErr::take(py) else { return };
    // Only the main thread gets signals' exceptions: raised there again.
    if e.is_instance_of::<PyKeyboardInterrupt>(py) && on_main_thread(py).unwrap_or(false) {
        let again = py
            .import("_thread")
            .and_then(|t| t.call_method0("interrupt_main"));
        if again.is_ok() {
            return;
        }
    }
    e.write_unraisable(py, None);
}

fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    let main = threading.call_method0("main_thread")?;
    let current = threading.call_method0("current_thread")?;
    Ok(main.is(&current))
}

/// An int argument within `lo..=hi`: a `TypeError` for anything but an
/// int (a bool included), `InvalidArgument` naming it when out of range.
fn int_arg(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str, lo: i64, hi: i64) -> PyResult<i64> {
    if v.is_instance_of::<PyBool>() || !v.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int, not {}",
            v.get_type().name()?
        )));
    }
    match v.extract::<i64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(invalid(
            py,
            format!("invalid {what} {v}: must be {lo} to {hi}"),
        )),
    }
}

/// A state directory argument: an absolute path.
fn state_dir_arg(py: Python<'_>, dir: Option<String>) -> PyResult<Option<StateDir>> {
    match dir {
        Some(d) if !d.starts_with('/') => Err(invalid(
            py,
            format!("invalid state_dir {d:?}: must be an absolute path"),
        )),
        d => Ok(d.map(StateDir::new)),
    }
}

fn vnet_hdr_mode(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<VnetHdr> {
    // True/False/None are accepted as on/off/auto, as Python users write.
    if v.is_none() {
        return Ok(VnetHdr::Auto);
    }
    if let Ok(b) = v.extract::<bool>() {
        return Ok(if b { VnetHdr::On } else { VnetHdr::Off });
    }
    let s: String = v.extract().map_err(|_| {
        PyTypeError::new_err("vnet_hdr must be \"auto\", \"on\", \"off\" or a bool")
    })?;
    VnetHdr::from_str(&s).map_err(|e| core_error(py, e))
}

fn open_options(
    py: Python<'_>,
    name: Option<String>,
    queues: &Bound<'_, PyAny>,
    vnet_hdr: &Bound<'_, PyAny>,
    vhost: bool,
    attach_existing: bool,
) -> PyResult<OpenOptions> {
    let max = i64::try_from(vmtap::MAX_QUEUES).expect("256 fits");
    let queues = int_arg(py, queues, "queue count", 1, max)? as usize;
    let mut opts = OpenOptions::new()
        .queues(queues)
        .vnet_hdr(vnet_hdr_mode(py, vnet_hdr)?)
        .vhost(vhost)
        .attach_existing(attach_existing);
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        opts = opts.name(n);
    }
    opts.validate().map_err(|e| core_error(py, e))?;
    Ok(opts)
}

/// An open tap: its interface name and its fds (one per queue), plus one
/// vhost-net fd per queue with vhost. The fds are closed by `close()`, at
/// the end of a `with` block, or when the object is collected; `detach()`
/// hands them over instead.
#[pyclass(module = "vmtap", name = "Tap", frozen)]
struct PyTap {
    ifname: String,
    flags: u32,
    tap: Mutex<Option<vmtap::Tap>>,
}

impl PyTap {
    fn lock(&self) -> MutexGuard<'_, Option<vmtap::Tap>> {
        // A panic while locked cannot leave the Option half-changed.
        self.tap.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed_error(&self) -> PyErr {
        pyo3::exceptions::PyValueError::new_err(format!(
            "tap {:?} is closed (or detached)",
            self.ifname
        ))
    }

    fn with_open<T>(&self, f: impl FnOnce(&vmtap::Tap) -> T) -> PyResult<T> {
        self.lock()
            .as_ref()
            .map(f)
            .ok_or_else(|| self.closed_error())
    }
}

impl Drop for PyTap {
    /// A tap collected while open: its fds are closed, without the GIL
    /// (the kernel's teardown can take milliseconds), with a
    /// `ResourceWarning` as for an unclosed file.
    fn drop(&mut self) {
        let tap = self.tap.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let Some(tap) = tap else { return };
        Python::attach(|py| {
            let pending = PyErr::take(py);
            let message = std::ffi::CString::new(format!(
                "unclosed vmtap.Tap {:?} (close it, use a with block, or detach() its fds)",
                self.ifname
            ))
            .unwrap_or_default();
            let category = py.get_type::<PyResourceWarning>();
            if let Err(e) = PyErr::warn(py, &category, &message, 1) {
                e.write_unraisable(py, None);
            }
            py.detach(move || drop(tap));
            if let Some(e) = pending {
                e.restore(py);
            }
        });
    }
}

#[pymethods]
impl PyTap {
    /// The interface name.
    #[getter]
    fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The device's `IFF_*` flags.
    #[getter]
    fn flags(&self) -> u32 {
        self.flags
    }

    /// Packets carry a virtio-net header.
    #[getter]
    fn vnet_hdr(&self) -> bool {
        self.flags & TunFlags::VNET_HDR.bits() != 0
    }

    /// A multi-queue device.
    #[getter]
    fn multi_queue(&self) -> bool {
        self.flags & TunFlags::MULTI_QUEUE.bits() != 0
    }

    /// The tap fds, one per queue (numbers owned by this object).
    #[getter]
    fn fds(&self) -> PyResult<Vec<i32>> {
        self.with_open(|t| t.queues().iter().map(|q| q.as_fd().as_raw_fd()).collect())
    }

    /// The vhost-net fds, one per queue (empty without vhost).
    #[getter]
    fn vhost_fds(&self) -> PyResult<Vec<i32>> {
        self.with_open(|t| t.vhost_fds().iter().map(|f| f.as_raw_fd()).collect())
    }

    /// Whether the fds were closed or handed over.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
    }

    /// Checks with `TUNGETIFF` that the fds form one tap with consistent
    /// flags; returns its flags.
    fn verify(&self, py: Python<'_>) -> PyResult<u32> {
        // A few TUNGETIFF calls: done with the GIL held, so that the lock
        // is never held by a thread waiting for the GIL (logging from Rust
        // takes it).
        self.with_open(|t| t.verify())?
            .map(|i| i.flags.bits())
            .map_err(|e| core_error(py, e))
    }

    /// Closes the fds (a tap that is not persistent goes away with them).
    /// Closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        let tap = self.lock().take();
        // The last close unregisters the device, which can wait on the
        // kernel: without the GIL.
        py.detach(move || drop(tap));
    }

    /// Hands the fds over: returns `(ifname, tap_fds, vhost_fds)` as
    /// ints that the caller now owns (and must close); the object is
    /// closed afterwards.
    fn detach(&self) -> PyResult<(String, Vec<i32>, Vec<i32>)> {
        let tap = self.lock().take().ok_or_else(|| self.closed_error())?;
        let (ifname, fds, vhost) = tap.into_parts();
        let raw = |v: Vec<OwnedFd>| v.into_iter().map(IntoRawFd::into_raw_fd).collect();
        Ok((ifname, raw(fds), raw(vhost)))
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        // As a closed file does.
        if slf.get().closed() {
            return Err(slf.get().closed_error());
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        match self.lock().as_ref() {
            Some(t) => format!(
                "<vmtap.Tap {:?} queues={} vhost={}>",
                self.ifname,
                t.queues().len(),
                if t.vhost_fds().is_empty() {
                    "False"
                } else {
                    "True"
                }
            ),
            None => format!("<vmtap.Tap {:?} closed>", self.ifname),
        }
    }
}

/// Opens a tap (see `vmtap.open_tap`).
#[pyfunction]
#[pyo3(signature = (name=None, *, queues=None, vnet_hdr=None, vhost=false, attach_existing=false))]
fn open_tap(
    py: Python<'_>,
    name: Option<String>,
    queues: Option<Bound<'_, PyAny>>,
    vnet_hdr: Option<Bound<'_, PyAny>>,
    vhost: bool,
    attach_existing: bool,
) -> PyResult<PyTap> {
    let none = py.None().into_bound(py);
    let one = 1i64.into_pyobject(py)?.into_any();
    let opts = open_options(
        py,
        name,
        queues.as_ref().unwrap_or(&one),
        vnet_hdr.as_ref().unwrap_or(&none),
        vhost,
        attach_existing,
    )?;
    let tap = without_gil(py, || Tun::system().open(&opts)).map_err(|e| core_error(py, e))?;
    Ok(PyTap {
        ifname: tap.name().to_string(),
        flags: tap.flags().bits(),
        tap: Mutex::new(Some(tap)),
    })
}

/// What the kernel supports, as `vmtap features --json` says it.
#[pyfunction]
fn features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let report = without_gil(py, || Tun::system().features()).map_err(|e| core_error(py, e))?;
    let d = PyDict::new(py);
    d.set_item("flags", report.flags.map(|f| f.bits()))?;
    for (key, flag) in [
        ("tun", TunFlags::TUN),
        ("tap", TunFlags::TAP),
        ("no_pi", TunFlags::NO_PI),
        ("vnet_hdr", TunFlags::VNET_HDR),
        ("multi_queue", TunFlags::MULTI_QUEUE),
        ("napi", TunFlags::NAPI),
    ] {
        d.set_item(key, report.has(flag))?;
    }
    d.set_item("vhost_net", report.vhost_net)?;
    Ok(d)
}

/// `TUNGETFEATURES` on an fd (`None` when the ioctl fails, logged).
#[pyfunction]
fn tun_features(py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    let fd = fd_arg(py, fd)?;
    // The fd is the caller's: it is duplicated, inspected and closed.
    let dup = vmtap_sys::dup_inherited_fd(fd)
        .map_err(|source| core_error(py, vmtap::Error::FdNotOpen { fd, source }))?;
    Ok(without_gil(py, || {
        vmtap::tun_features(dup.as_fd()).map(|f| f.bits())
    }))
}

fn fd_arg(py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<i32> {
    let n = int_arg(py, fd, "fd", 0, i64::from(i32::MAX))?;
    Ok(i32::try_from(n).expect("checked range"))
}

fn summary_dict<'py>(py: Python<'py>, t: &TapSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("ifname", &t.ifname)?;
    d.set_item("this_netns", t.this_netns)?;
    d.set_item("persistent", t.persistent)?;
    d.set_item("owner", t.owner)?;
    d.set_item("group", t.group)?;
    d.set_item("multi_queue", t.multi_queue)?;
    d.set_item("vnet_hdr", t.vnet_hdr)?;
    d.set_item("queues", t.queues)?;
    d.set_item("disabled_queues", t.disabled_queues)?;
    Ok(d)
}

/// What is known of a tap, by name or by an fd of this process.
#[pyfunction]
fn inspect<'py>(py: Python<'py>, name_or_fd: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    if name_or_fd.is_instance_of::<PyInt>() {
        let fd = fd_arg(py, name_or_fd)?;
        let s = without_gil(py, || Tun::system().inspect_inherited_fd(fd))
            .map_err(|e| core_error(py, e))?;
        return summary_dict(py, &s.summary());
    }
    let Ok(name) = name_or_fd.extract::<String>() else {
        return Err(PyTypeError::new_err(
            "inspect() takes an interface name (str) or an fd (int)",
        ));
    };
    vmtap::validate_name(&name, false).map_err(|e| core_error(py, e))?;
    let s = without_gil(py, || Tun::system().status(&name)).map_err(|e| core_error(py, e))?;
    summary_dict(py, &TapSummary::from(&s))
}

/// An owner or group argument: an id (checked now) or a name (looked up
/// later, without the GIL: NSS may ask a directory server).
enum Principal {
    Id(u32),
    Name(String),
}

fn principal(
    py: Python<'_>,
    v: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<Principal>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyBool>() {
        // (uid_t)-1 means "none" to the kernel.
        let n = int_arg(py, v, what, 0, i64::from(u32::MAX) - 1)?;
        return Ok(Some(Principal::Id(
            u32::try_from(n).expect("checked range"),
        )));
    }
    let name: String = v
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a name (str) or an id (int)")))?;
    Ok(Some(Principal::Name(name)))
}

fn resolve(
    p: Option<Principal>,
    lookup: fn(&str) -> vmtap::Result<u32>,
) -> vmtap::Result<Option<u32>> {
    match p {
        None => Ok(None),
        Some(Principal::Id(id)) => Ok(Some(id)),
        Some(Principal::Name(n)) => lookup(&n).map(Some),
    }
}

/// Creates a persistent tap (vmtap picks the name when `name` is None);
/// returns its name.
#[pyfunction]
#[pyo3(signature = (name=None, *, multi_queue=false, vnet_hdr=false, owner=None, group=None, owner_pid=None, tag=None))]
#[allow(clippy::too_many_arguments)]
fn create_persistent(
    py: Python<'_>,
    name: Option<String>,
    multi_queue: bool,
    vnet_hdr: bool,
    owner: Option<Bound<'_, PyAny>>,
    group: Option<Bound<'_, PyAny>>,
    owner_pid: Option<Bound<'_, PyAny>>,
    tag: Option<String>,
) -> PyResult<String> {
    if let Some(name) = &name {
        vmtap::validate_name(name, true).map_err(|e| core_error(py, e))?;
    }
    let owner = principal(py, owner.as_ref(), "owner")?;
    let group = principal(py, group.as_ref(), "group")?;
    let owner_pid = owner_pid
        .map(|p| int_arg(py, &p, "owner_pid", 1, i64::from(u32::MAX)))
        .transpose()?
        .map(|p| p as u32);
    let ownership = vmtap::Ownership::new()
        .tag(tag)
        .map_err(|e| core_error(py, e))?;
    without_gil(py, || {
        let ownership = ownership.owner(owner_pid.map(vmtap::Owner::of_pid).transpose()?);
        let opts = PersistentOptions::new()
            .multi_queue(multi_queue)
            .vnet_hdr(vnet_hdr)
            .owner(resolve(owner, vmtap::owner_uid)?)
            .group(resolve(group, vmtap::owner_gid)?)
            .ownership(ownership);
        match &name {
            Some(name) => Tun::system().create_persistent(name, &opts),
            None => Tun::system().create_persistent_auto(&opts),
        }
    })
    .map(|info| info.name)
    .map_err(|e| core_error(py, e))
}

/// Deletes a persistent tap nobody uses.
#[pyfunction]
fn delete_persistent(py: Python<'_>, name: String) -> PyResult<()> {
    vmtap::validate_name(&name, false).map_err(|e| core_error(py, e))?;
    without_gil(py, || Tun::system().delete_persistent(&name)).map_err(|e| core_error(py, e))
}

/// Per-name outcomes as a dict: name -> None (done) or the exception.
fn outcomes_dict<'py>(py: Python<'py>, out: vmtap::Outcomes) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, r) in out {
        match r {
            Ok(()) => d.set_item(name, py.None())?,
            Err(e) => d.set_item(name, core_error(py, e).into_value(py))?,
        }
    }
    Ok(d)
}

/// Deletes many persistent taps nobody uses in one batch.
#[pyfunction]
fn delete_persistent_many<'py>(
    py: Python<'py>,
    names: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = without_gil(py, || Ok(Tun::system().delete_persistent_many(&names)))
        .map_err(|e: vmtap::Error| core_error(py, e))?;
    outcomes_dict(py, out)
}

/// The taps vmtap tagged, as dicts.
#[pyfunction]
fn list_taps(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let taps = without_gil(py, || Tun::system().tagged_taps()).map_err(|e| core_error(py, e))?;
    taps.iter()
        .map(|t| {
            let d = PyDict::new(py);
            d.set_item("ifname", &t.status.name)?;
            d.set_item("index", t.status.index)?;
            d.set_item("persistent", t.status.persistent)?;
            d.set_item("up", t.up)?;
            d.set_item("queues", t.status.queues)?;
            d.set_item("disabled_queues", t.status.disabled_queues)?;
            d.set_item("in_use", t.status.users() > 0)?;
            d.set_item("owner_pid", t.ownership.owner.map(|o| o.pid))?;
            d.set_item("owner_start_time", t.ownership.owner.map(|o| o.start_time))?;
            d.set_item("owner_alive", t.owner_alive)?;
            d.set_item("tag", &t.ownership.tag)?;
            d.set_item("garbage", t.is_garbage())?;
            Ok(d)
        })
        .collect()
}

/// Deletes the tagged taps whose owner is gone (or, dry, says which).
#[pyfunction]
#[pyo3(signature = (*, dry_run=false))]
fn collect_garbage(py: Python<'_>, dry_run: bool) -> PyResult<Bound<'_, PyDict>> {
    let out = without_gil(py, || Tun::system().collect_garbage(dry_run))
        .map_err(|e| core_error(py, e))?;
    outcomes_dict(py, out)
}

/// The link options of a mode, from Python's arguments.
#[allow(clippy::too_many_arguments)]
fn link_options(
    py: Python<'_>,
    mode: Option<&str>,
    link: Option<&str>,
    vlan: Option<&str>,
    ips: &[String],
    mtu: Option<&Bound<'_, PyAny>>,
    mac: Option<&str>,
    up: bool,
    state_dir: Option<String>,
) -> PyResult<LinkOptions> {
    let mtu = mtu
        .filter(|m| !m.is_none())
        .map(|m| int_arg(py, m, "mtu", 0, i64::from(u32::MAX)))
        .transpose()?
        .map(|m| u32::try_from(m).expect("checked range"));
    let mode = match mode {
        Some(m) => {
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            Some(NicMode::parse(m, link, vlan, &ips).map_err(|e| link_error(py, e))?)
        }
        None if link.is_some() || vlan.is_some() || !ips.is_empty() => {
            return Err(invalid(
                py,
                "link, vlan and ips need a mode (bridged, routed or openvswitch)".into(),
            ));
        }
        None => None,
    };
    let mac = mac
        .map(MacAddr::from_str)
        .transpose()
        .map_err(|e| link_error(py, e))?;
    let mut opts = LinkOptions::new().mtu(mtu).mac(mac).up(up).mode(mode);
    if let Some(dir) = state_dir_arg(py, state_dir)? {
        opts = opts.state_dir(dir);
    }
    Ok(opts)
}

/// Sets up the host side of an existing interface (see
/// `vmtap.configure_link`); the changes are kept (and recorded, in a
/// mode) on success and undone on failure.
#[pyfunction]
#[pyo3(signature = (ifname, *, mode=None, link=None, vlan=None, ips=Vec::new(), mtu=None, mac=None, up=false, nic=None, state_dir=None))]
#[allow(clippy::too_many_arguments)]
fn configure_link(
    py: Python<'_>,
    ifname: String,
    mode: Option<String>,
    link: Option<String>,
    vlan: Option<String>,
    ips: Vec<String>,
    mtu: Option<Bound<'_, PyAny>>,
    mac: Option<String>,
    up: bool,
    nic: Option<String>,
    state_dir: Option<String>,
) -> PyResult<()> {
    vmtap::validate_name(&ifname, false).map_err(|e| core_error(py, e))?;
    let opts = link_options(
        py,
        mode.as_deref(),
        link.as_deref(),
        vlan.as_deref(),
        &ips,
        mtu.as_ref(),
        mac.as_deref(),
        up,
        state_dir,
    )?
    .nic(nic);
    without_gil(py, || {
        opts.check()?;
        vmtap_net::configure(&ifname, &opts).map(vmtap_net::LinkChanges::keep)
    })
    .map_err(|e| link_error(py, e))
}

/// Undoes what `configure_link` recorded for `ifname` (see
/// `vmtap.ifdown`): `"undone"`, `"no-record"` or `"other-nic"`.
#[pyfunction]
#[pyo3(signature = (ifname, *, nic=None, state_dir=None))]
fn ifdown(
    py: Python<'_>,
    ifname: String,
    nic: Option<String>,
    state_dir: Option<String>,
) -> PyResult<&'static str> {
    vmtap::validate_name(&ifname, false).map_err(|e| core_error(py, e))?;
    let dir = state_dir_arg(py, state_dir)?.unwrap_or_else(StateDir::from_env);
    let r = without_gil(py, || match &nic {
        Some(n) => vmtap_net::ifdown_nic(&ifname, n, &dir),
        None => vmtap_net::ifdown(&ifname, &dir),
    })
    .map_err(|e| link_error(py, e))?;
    Ok(match r {
        Ifdown::Undone { .. } => "undone",
        Ifdown::OtherNic => "other-nic",
        _ => "no-record",
    })
}

fn monitor(py: Python<'_>, qmp: String, timeout: f64) -> PyResult<hotplug::Monitor> {
    let t = Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
        .ok_or_else(|| {
            invalid(
                py,
                format!("invalid timeout {timeout}: must be positive and at most a day"),
            )
        })?;
    Ok(hotplug::Monitor::new(qmp, t))
}

/// Hot-plugs a NIC into a running QEMU over QMP (see
/// `vmtap.hotplug_add`); returns the host interface name.
#[pyfunction]
#[pyo3(signature = (qmp, id, *, name=None, queues=None, vnet_hdr=None, vhost=false, attach_existing=false, driver="virtio-net-pci".to_string(), mac=None, mode=None, link=None, vlan=None, ips=Vec::new(), timeout=10.0, state_dir=None))]
#[allow(clippy::too_many_arguments)]
fn hotplug_add(
    py: Python<'_>,
    qmp: String,
    id: String,
    name: Option<String>,
    queues: Option<Bound<'_, PyAny>>,
    vnet_hdr: Option<Bound<'_, PyAny>>,
    vhost: bool,
    attach_existing: bool,
    driver: String,
    mac: Option<String>,
    mode: Option<String>,
    link: Option<String>,
    vlan: Option<String>,
    ips: Vec<String>,
    timeout: f64,
    state_dir: Option<String>,
) -> PyResult<String> {
    let none = py.None().into_bound(py);
    let one = 1i64.into_pyobject(py)?.into_any();
    hotplug::validate_id(&id).map_err(|e| hotplug_error(py, e))?;
    let open = open_options(
        py,
        name,
        queues.as_ref().unwrap_or(&one),
        vnet_hdr.as_ref().unwrap_or(&none),
        vhost,
        attach_existing,
    )?;
    let link = link_options(
        py,
        mode.as_deref(),
        link.as_deref(),
        vlan.as_deref(),
        &ips,
        None,
        None,
        mode.is_some(),
        state_dir,
    )?;
    let guest_mac = mac
        .as_deref()
        .map(MacAddr::from_str)
        .transpose()
        .map_err(|e| link_error(py, e))?;
    let opts = hotplug::HotplugOptions::new(id)
        .open(open)
        .link(link)
        .driver(driver)
        .mac(guest_mac);
    let mon = monitor(py, qmp, timeout)?;
    interruptible(
        py,
        || hotplug::add(&Tun::system(), &mon, &opts),
        hotplug_error,
    )
}

/// Unplugs a NIC from a running QEMU and undoes its host set-up (see
/// `vmtap.hotplug_del`).
#[pyfunction]
#[pyo3(signature = (qmp, id, *, timeout=10.0, state_dir=None))]
fn hotplug_del(
    py: Python<'_>,
    qmp: String,
    id: String,
    timeout: f64,
    state_dir: Option<String>,
) -> PyResult<()> {
    hotplug::validate_id(&id).map_err(|e| hotplug_error(py, e))?;
    let mon = monitor(py, qmp, timeout)?;
    let dir = state_dir_arg(py, state_dir)?;
    interruptible(
        py,
        || hotplug::del_in(&mon, &id, dir.as_ref()),
        hotplug_error,
    )
}

static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// Forgets the cached Python loggers and levels (after a change to the
/// logging configuration).
#[pyfunction]
fn reset_log_cache() {
    if let Some(h) = LOG_RESET.get() {
        h.reset();
    }
}

/// The extension module.
#[pymodule]
fn _vmtap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust's log records go to Python's logging, to the loggers named
    // after their modules ("vmtap.open", "vmtap_net.setup",
    // "vmtap_qemu.qmp"...). Levels are cached: reset_log_cache() after a
    // change. Another extension may have installed the one `log` logger
    // of this process already: then records go there.
    if let Ok(handle) =
        pyo3_log::Logger::new(m.py(), pyo3_log::Caching::LoggersAndLevels)?.install()
    {
        let _ = LOG_RESET.set(handle);
    }
    use vmtap_sys::request;
    m.add("TUNSETIFF", request::TUNSETIFF)?;
    m.add("TUNGETIFF", request::TUNGETIFF)?;
    m.add("TUNGETFEATURES", request::TUNGETFEATURES)?;
    for (name, flag) in [
        ("IFF_TUN", TunFlags::TUN),
        ("IFF_TAP", TunFlags::TAP),
        ("IFF_NO_PI", TunFlags::NO_PI),
        ("IFF_ONE_QUEUE", TunFlags::ONE_QUEUE),
        ("IFF_VNET_HDR", TunFlags::VNET_HDR),
        ("IFF_MULTI_QUEUE", TunFlags::MULTI_QUEUE),
        ("IFF_TUN_EXCL", TunFlags::TUN_EXCL),
        ("IFF_PERSIST", TunFlags::PERSIST),
    ] {
        m.add(name, flag.bits())?;
    }
    m.add("MAX_QUEUES", vmtap::MAX_QUEUES)?;
    m.add("IFNAME_MAX", vmtap_sys::IFNAME_MAX)?;
    m.add_class::<PyTap>()?;
    m.add_function(wrap_pyfunction!(open_tap, m)?)?;
    m.add_function(wrap_pyfunction!(reset_log_cache, m)?)?;
    m.add_function(wrap_pyfunction!(features, m)?)?;
    m.add_function(wrap_pyfunction!(tun_features, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(create_persistent, m)?)?;
    m.add_function(wrap_pyfunction!(delete_persistent, m)?)?;
    m.add_function(wrap_pyfunction!(delete_persistent_many, m)?)?;
    m.add_function(wrap_pyfunction!(list_taps, m)?)?;
    m.add_function(wrap_pyfunction!(collect_garbage, m)?)?;
    m.add_function(wrap_pyfunction!(configure_link, m)?)?;
    m.add_function(wrap_pyfunction!(ifdown, m)?)?;
    m.add_function(wrap_pyfunction!(hotplug_add, m)?)?;
    m.add_function(wrap_pyfunction!(hotplug_del, m)?)?;
    Ok(())
}
