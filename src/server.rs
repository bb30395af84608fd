//! Running the processes: the instance server and the member (agent + instance), with logging
//! and graceful shutdown on SIGTERM / Ctrl-C.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::agent::{self, AgentSettings};
use crate::error::{Error, Result};
use crate::instance::InstanceSettings;
use crate::node::{Exits, Node};

/// Exit code of an instance that stopped because its writer or its mirror journal failed
/// (fail-stop).
pub const EXIT_WRITER_FAILED: u8 = 70;
/// The instance's exit status when the other member took over and this one stopped at once.
pub const EXIT_SUPERSEDED: u8 = 3;

/// Logs to stderr and, when given, appends to a file (`mgr/messages.log`). With
/// `MIRRORLAB_LOG=json`, stderr (what `docker logs` and log collectors read) carries one JSON
/// object per line instead of text; the file stays text, for people.
pub fn init_logging(file: Option<&std::path::Path>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MIRRORLAB_LOG").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only for a person at a terminal, not in `docker logs` or a log file.
    let stderr = (!json).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let stderr_json = json.then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
    });
    let file_layer = file.and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(
            fmt::layer()
                .with_writer(Mutex::new(file))
                .with_ansi(false)
                .with_target(false),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(stderr_json)
        .with(file_layer)
        .try_init();
}

/// Resolves when the process is asked to stop (SIGTERM, as `docker stop` sends, or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Runs an instance until SIGTERM (exit 0), or until its writer or its mirror journal fails
/// (exit 70).
pub async fn run_instance(settings: InstanceSettings, auto_mirror: Option<PathBuf>) -> Result<u8> {
    // A plan a person got wrong stops the start with the reason, before anything is opened.
    let plan = auto_mirror
        .map(|path| crate::mirror::auto::MirrorPlan::load(&path))
        .transpose()?;
    let (failed_tx, mut failed_rx) = watch::channel(false);
    let stopped_failed = failed_rx.clone();
    let failed_tx = Arc::new(failed_tx);
    let hook_tx = failed_tx.clone();
    let open_settings = settings.clone();
    let node = tokio::task::spawn_blocking(move || {
        Node::open(
            open_settings,
            Exits {
                failed: Arc::new(move |_| {
                    let _ = hook_tx.send(true);
                }),
                // The member must stop accepting writes now, not after a graceful shutdown:
                // the other member is primary (the agent reports the exit status).
                superseded: Arc::new(|| std::process::exit(EXIT_SUPERSEDED.into())),
            },
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("start-up task failed: {e}")))??;
    let listener = TcpListener::bind(&settings.web)
        .await
        .map_err(|e| Error::Io(format!("listen on {}: {e}", settings.web)))?;
    tracing::info!(
        "instance {} on {} ready: portal http://{}/portal/ (data directory {})",
        settings.instance_name,
        settings.host_name,
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        settings.data_dir.display()
    );
    let app = crate::web::router(&node);
    let productions = tokio::spawn(crate::instance::productions::run(node.instance.clone()));
    // A Copy from Primary that a stop or a kill cut off goes on.
    node.mirror_service.resume_copies();
    let auto_mirror = plan.map(|(plan, origin)| {
        tokio::spawn(crate::mirror::auto::run(
            node.mirror_service.clone(),
            plan,
            origin,
        ))
    });
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("stopping (signal)"),
            _ = failed_rx.wait_for(|f| *f) => tracing::error!("stopping: a journal failed; restart to recover from the journal files"),
        }
    };
    crate::web::serve::serve(listener, app, stop).await;
    productions.abort();
    if let Some(task) = auto_mirror {
        task.abort();
    }
    let failed = node.instance.failure().is_some() || *stopped_failed.borrow();
    tokio::task::spawn_blocking(move || node.close()).await.ok();
    tracing::info!("instance stopped");
    Ok(if failed { EXIT_WRITER_FAILED } else { 0 })
}

/// Runs a member: the agent, which starts the instance, until SIGTERM.
pub async fn run_member(settings: AgentSettings) -> Result<u8> {
    agent::run(settings, shutdown_signal()).await?;
    Ok(0)
}

/// `mirrorlab arbiter`: the arbiter on the agent port until SIGTERM or SIGINT.
pub async fn run_arbiter(listen: String, metrics: Option<String>) -> Result<u8> {
    crate::arbiter::run(&listen, metrics.as_deref(), shutdown_signal()).await?;
    Ok(0)
}
