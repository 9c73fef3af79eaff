//! The pod sandbox process of the local cluster (containerd's `sandbox_image`): it holds the
//! pod's namespaces, reaps children (PID 1 of a shared PID namespace) and exits on SIGTERM or
//! SIGINT, like Kubernetes' own pause.

extern "C" fn on_stop(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<(), String> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is a valid argument.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sigaction({signal}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn main() {
    let installed = handle(libc::SIGINT, on_stop)
        .and_then(|()| handle(libc::SIGTERM, on_stop))
        .and_then(|()| handle(libc::SIGCHLD, on_child));
    if let Err(e) = installed {
        eprintln!("pause: {e}");
        std::process::exit(1);
    }
    loop {
        // SAFETY: pause has no preconditions; it returns after each handled signal.
        unsafe { libc::pause() };
    }
}
