//! The one runtime that the member's blocking threads use for asynchronous work.
//!
//! The mirror's data channel, its failover driver and the helpers that ask agents run on plain
//! threads; some of what they do is written async (TLS with tokio-rustls, the agent client).
//! Rather than start a runtime for each such piece of work — a runtime per agent question, as
//! it once was — they share this one: one worker thread, started on first use. A blocking thread
//! runs its future with `runtime().block_on(…)` (the future runs on the calling thread; the
//! worker drives timers and sockets and the TLS connections handed over for good, see
//! [`crate::tls`]).
//!
//! Never call `block_on` from inside an async task (tokio refuses): async code awaits directly.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// The shared runtime (see the module essay).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("background")
            .enable_all()
            .build()
            .expect("start the background runtime")
    })
}
