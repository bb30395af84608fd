//! What the peers' modules (`postgres.rs`, `mariadb.rs`) share: running their servers' client
//! tools, and giving each step a scratch folder of its own (scripts, logs), removed afterwards.

use std::path::Path;
use std::process::Output;

use tokio::process::Command;

use super::StepResult;
use mirrorlab::error::{Error, Result};

/// Runs `command` (`what` names it in errors) and returns what it printed; a tool that is
/// missing or fails is an error with everything it said.
pub async fn run(mut command: Command, what: &str) -> Result<Output> {
    let out = command
        .output()
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Unavailable(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// Runs one step in a fresh folder under the system's temporary folder, removed afterwards.
pub async fn in_scratch_folder(
    tool: &str,
    step: impl AsyncFnOnce(&Path) -> Result<StepResult>,
) -> Result<StepResult> {
    let dir = std::env::temp_dir().join(format!(
        "mirrorlab-{tool}-{}",
        mirrorlab::util::random_hex(6)
    ));
    std::fs::create_dir_all(&dir)?;
    let result = step(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
