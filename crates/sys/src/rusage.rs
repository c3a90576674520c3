//! A child process's peak memory, for the memory figures of `cargo xtask bench apply-memory`
//! and the tests that hold the host to them.
//!
//! `std::process::Child::wait` drops the kernel's resource usage of the child; `wait4` returns
//! it, and its `ru_maxrss` is the child's peak resident set (its `VmHWM` at exit).
// `wait4` with a `rusage` out-parameter: rustix has no wrapper for it.
#![allow(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};

use super::error::{SysError, SysResult};

/// Waits for `child` to exit; its status and peak resident set size in bytes.
///
/// The child is reaped here, so it must not be waited for again (dropping it is fine).
pub fn wait_with_peak_rss(child: &mut Child) -> SysResult<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| SysError::invalid("wait4", "", "process id out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero bytes are a valid `rusage` (a struct of integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the call; `pid` is
        // our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if r == -1 && errno == libc::EINTR {
            continue;
        }
        return Err(SysError::from_errno(
            "wait4",
            "",
            rustix::io::Errno::from_raw_os_error(errno),
        ));
    }
    // ru_maxrss is in KiB on Linux.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((ExitStatus::from_raw(status), peak))
}
