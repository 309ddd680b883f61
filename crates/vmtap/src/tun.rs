//! The context every operation runs in: the kernel (or a fake of it) and
//! the device paths. One value instead of `x`/`x_with` function pairs.

use std::sync::Arc;

use crate::names::DevicePaths;
use crate::syscalls::{Kernel, Syscalls};

/// The kernel vmtap talks to and the device nodes it opens.
///
/// [`Tun::system`] is the real kernel with `/dev/net/tun` and
/// `/dev/vhost-net`; [`Tun::with`] takes any [`Syscalls`] (the fake kernel
/// of the `fake` feature, in tests) and other paths. Cloning is cheap.
///
/// ```no_run
/// use vmtap::{OpenOptions, Tun};
/// let tun = Tun::system();
/// let tap = tun.open(&OpenOptions::new().queues(2))?;
/// println!("{}: {:?}", tap.name(), tun.status(tap.name())?);
/// # Ok::<(), vmtap::Error>(())
/// ```
#[derive(Clone)]
pub struct Tun {
    sys: Arc<dyn Syscalls>,
    paths: Arc<DevicePaths>,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun").field("paths", &self.paths).finish()
    }
}

impl Default for Tun {
    fn default() -> Self {
        Self::system()
    }
}

impl Tun {
    /// The real kernel, with the default device paths.
    pub fn system() -> Self {
        Self::with(Arc::new(Kernel), DevicePaths::default())
    }

    /// Any [`Syscalls`], with these device paths.
    pub fn with(sys: Arc<dyn Syscalls>, paths: DevicePaths) -> Self {
        Self {
            sys,
            paths: Arc::new(paths),
        }
    }

    /// The device paths.
    pub fn paths(&self) -> &DevicePaths {
        &self.paths
    }

    pub(crate) fn sys(&self) -> &dyn Syscalls {
        &*self.sys
    }
}
