//! The few operating-system calls the crate makes directly: sending signals, a socket write that
//! never waits, reading the host name, and one setting of the C allocator. Kept in one place
//! because they need `unsafe`.

use std::io;

/// Signals the agent sends to its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask to stop gracefully (what `docker stop` sends).
    Term,
    /// Stop now, without cleanup (a crash).
    Kill,
    /// Freeze the process (a hang).
    Stop,
    /// Resume a frozen process.
    Cont,
}

/// Allocations at least this large get pages of their own, given back to the system when freed.
pub const LARGE_ALLOCATION: usize = 4 << 20;

/// Makes glibc map every allocation of [`LARGE_ALLOCATION`] or more on its own and unmap it when
/// it is freed. By default glibc raises that threshold each time such a block is freed, after
/// which blocks of that size come from its heaps and stay resident: a password check (argon2
/// takes 19 MiB) run on a few blocking threads then left over a gigabyte behind after a flood
/// of logins. Setting the threshold fixes it and turns the raising off. Allocations that large
/// are rare on the write path (it reuses its buffers), so the extra system calls cost nothing
/// measurable.
#[allow(unsafe_code)]
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) takes two integers and only changes the allocator's parameters; it is
    // called at start-up, before the process has other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_ALLOCATION as libc::c_int);
    }
}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let number = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
    };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let rc = unsafe { libc::kill(pid, number) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes as much of `bytes` to the socket `fd` as fits in its send buffer *now*, and returns how
/// much that was; `WouldBlock` when nothing fits. Unlike switching the socket to non-blocking
/// mode, this leaves every other handle on the socket blocking. No SIGPIPE is raised on a closed
/// connection: the error is returned.
#[allow(unsafe_code)]
pub fn send_without_waiting(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the pointer and length describe `bytes`, which outlives the call; the descriptor is
    // borrowed, so it stays open for the call's duration.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// This machine's host name (in a container: the container's `hostname`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
