//! Productions: background jobs, declared in the install manifest, that run on the primary only.
//!
//! # What
//!
//! IRIS starts a mirrored instance's productions when it becomes primary and never runs them
//! elsewhere: they write mirrored data, which only the primary may. Here a production is one SQL
//! statement run every `every_seconds` in a namespace, with `?1` = this member's name and `?2` =
//! the time. The lab's manifest declares `HEARTBEAT`, which records in the mirrored COMPANY
//! database which member is primary: after a failover the list goes on from the new primary.
//!
//! # When a production runs
//!
//! On a member that is not in a mirror, always; in a mirror, only while this member is the
//! primary, knows it (not a restarted former primary still asking), and is not in the trouble
//! state. The check happens before every run, so a production stops within one tick of losing the
//! role and starts within one tick of a takeover — nobody has to start it by hand. A run that
//! fails (a table missing in an older installation, a write refused) is logged once per change of
//! error and tried again next time.
//!
//! # Left out
//!
//! Anything but SQL statements; schedules other than a fixed interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::names::NamespaceName;

use super::Instance;
use super::sql::SqlValue;

/// One production of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Production {
    /// Its name.
    pub name: String,
    /// What it does, for people.
    #[serde(default)]
    pub about: String,
    /// Where it runs.
    pub namespace: NamespaceName,
    /// Seconds between runs.
    pub every_seconds: u64,
    /// The statement (`?1` = member name, `?2` = time).
    pub sql: String,
}

/// A production's state, for the portal and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProductionStatus {
    /// The production's name.
    pub name: String,
    /// Runs on this member now.
    pub running: bool,
    /// Successful runs since the instance started.
    pub runs: u64,
    /// The last error, if the last run failed.
    pub last_error: Option<String>,
}

/// The productions' states.
pub type ProductionBoard = Arc<Mutex<BTreeMap<String, ProductionStatus>>>;

/// How often the scheduler looks.
const TICK: Duration = Duration::from_millis(100);

/// Whether this member may run productions now.
fn may_run(instance: &Instance) -> bool {
    instance.role.may_run_productions()
}

/// This member's name for `?1`: its mirror member name, or `HOST/INSTANCE`.
fn member_name(instance: &Instance) -> String {
    instance
        .config
        .get()
        .mirror
        .membership
        .as_ref()
        .map(|m| m.this.name.to_string())
        .unwrap_or_else(|| {
            format!(
                "{}/{}",
                instance.settings.host_name, instance.settings.instance_name
            )
            .to_ascii_uppercase()
        })
}

/// Runs the productions of `instance` until the task is dropped.
pub async fn run(instance: Arc<Instance>) {
    let productions = instance.productions.clone();
    if productions.is_empty() {
        return;
    }
    {
        let mut board = instance.productions_board.lock().unwrap();
        for p in &productions {
            board.insert(
                p.name.clone(),
                ProductionStatus {
                    name: p.name.clone(),
                    ..Default::default()
                },
            );
        }
    }
    let mut next: Vec<Instant> = productions.iter().map(|_| Instant::now()).collect();
    let mut was_running = false;
    loop {
        tokio::time::sleep(TICK).await;
        let running = may_run(&instance);
        if running != was_running {
            was_running = running;
            let names: Vec<&str> = productions.iter().map(|p| p.name.as_str()).collect();
            if running {
                tracing::info!("productions started on this member: {}", names.join(", "));
            } else {
                tracing::info!("productions stopped on this member: {}", names.join(", "));
            }
            let mut board = instance.productions_board.lock().unwrap();
            for p in &productions {
                board.entry(p.name.clone()).or_default().running = running;
            }
        }
        if !running {
            continue;
        }
        for (i, production) in productions.iter().enumerate() {
            if Instant::now() < next[i] {
                continue;
            }
            next[i] = Instant::now() + Duration::from_secs(production.every_seconds.max(1));
            let params = vec![
                SqlValue::Text(member_name(&instance)),
                SqlValue::Text(crate::util::format_time(crate::util::now_ms())),
            ];
            // A run may wait for the backup; it must not hold up the checks of the others.
            let outcome = tokio::time::timeout(
                Duration::from_secs(production.every_seconds.max(1)),
                instance.sql(&production.namespace, production.sql.clone(), params),
            )
            .await;
            let error = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("the run did not finish in time".to_string()),
            };
            let mut board = instance.productions_board.lock().unwrap();
            let status = board.entry(production.name.clone()).or_default();
            status.name = production.name.clone();
            if error.is_some() && error != status.last_error {
                tracing::warn!(
                    "production {} failed: {}",
                    production.name,
                    error.as_deref().unwrap_or_default()
                );
            }
            if error.is_none() {
                status.runs += 1;
            }
            status.last_error = error;
        }
    }
}
