//! The mirror with no clicks: a description of the mirror that every member carries out by
//! itself at start — in the spirit of IRIS's configuration merge files.
//!
//! # The plan
//!
//! A JSON file ([`MirrorPlan`]; the lab's is `install/mirror.json`) names the mirror, its
//! arbiter, QoS timeout and SSL/TLS requirement, the databases to mirror, and its members by
//! host name: the first failover member creates the mirror, the second joins it as failover,
//! the others join as async members of the type given. A member started with `--auto-mirror`
//! (`MIRRORLAB_AUTO_MIRROR=1` for the install folder's plan, or a file's path) finds itself in
//! the plan by its host name and converges on it ([`converge`]):
//!
//! 1. Enable Mirror Service;
//! 2. Create the mirror (the first failover member — unless another member already describes a
//!    mirror of that name, which it then joins), or Join as Failover / as Async through any
//!    failover member whose agent answers;
//! 3. on the primary: Add to Mirror every planned database not mirrored yet, and, with Require
//!    SSL/TLS, Authorize a pending member only when its name is a planned member's *and* its
//!    hello came from the address the planned host name resolves to;
//! 4. on a backup or an async: Copy from Primary each planned database it lacks (or whose copy
//!    is unusable), then Activate and Catchup — until every one is `Dejournaling`.
//!
//! # Invariants
//!
//! - Idempotent: each pass looks at the member as it is and does only what is missing, with the
//!   same service calls the portal's buttons make; a restart simply converges again.
//! - It never overrides a person: a member of another mirror, or a plan it cannot find itself
//!   in, is reported and left alone.
//! - What it did and what waits is on the Mirror Monitor (*No-Click Mirror*) and in
//!   `GET /api/mirror` (`auto_mirror`); each action it takes is also an operator event.
//!
//! # Left out
//!
//! Changing a mirror that exists (another QoS, another arbiter, removing a database): the plan
//! sets a mirror up; Edit Mirror changes it.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::copy::CopyState;
use super::service::{CreateRequest, JoinInfoRequest, JoinRequest, MirrorService, async_kind};
use super::state::Role;
use crate::config::mirror::{DEFAULT_AGENT_PORT, split_address};
use crate::error::{Error, Result};
use crate::names::DbName;

/// The lab's plan, built in: used when the install folder has none.
const EMBEDDED_PLAN: &str = include_str!("../../install/mirror.json");
/// The plan's file name in the install folder.
pub const PLAN_FILE: &str = "mirror.json";
/// How long between two passes while something waits.
const PASS_EVERY: Duration = Duration::from_secs(1);

/// What a member is told to build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPlan {
    /// For people reading the file.
    #[serde(default)]
    pub about: Option<String>,
    /// Mirror Name.
    pub mirror_name: String,
    /// The arbiter (`host` or `host:port`); none: no arbiter.
    #[serde(default)]
    pub arbiter: Option<String>,
    /// Quality of Service Timeout (ms); IRIS's default when absent.
    #[serde(default)]
    pub qos_timeout_ms: Option<u64>,
    /// Require SSL/TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// The databases to mirror.
    #[serde(default)]
    pub databases: Vec<String>,
    /// The members, by host name: failover members first.
    pub members: Vec<PlannedMember>,
}

/// One member of the plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedMember {
    /// Its host name (as `--host-name` or the machine says).
    pub host: String,
    /// `failover` (the default), `dr`, `reporting_ro` or `reporting_rw`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Where its agent answers (`host` or `host:port`; default: the host, port 2188).
    #[serde(default)]
    pub agent: Option<String>,
}

impl PlannedMember {
    fn is_failover(&self) -> bool {
        self.kind
            .as_deref()
            .is_none_or(|k| k.eq_ignore_ascii_case("failover"))
    }

    fn agent_address(&self) -> Result<(String, u16)> {
        split_address(
            self.agent.as_deref().unwrap_or(&self.host),
            DEFAULT_AGENT_PORT,
        )
    }
}

/// Where the plan comes from: `--auto-mirror 1` (or `true`, `yes`, `on`) means the install
/// folder's `mirror.json`; `0`, `false`, `no`, `off` or nothing means no plan; anything else is
/// a file's path.
pub fn plan_path(setting: Option<&str>, install_dir: &Path) -> Option<PathBuf> {
    let setting = setting.map(str::trim).filter(|s| !s.is_empty())?;
    match setting.to_ascii_lowercase().as_str() {
        "0" | "false" | "no" | "off" => None,
        "1" | "true" | "yes" | "on" => Some(install_dir.join(PLAN_FILE)),
        _ => Some(PathBuf::from(setting)),
    }
}

impl MirrorPlan {
    /// Reads and checks the plan at `path`; the install folder's plan falls back to the built-in
    /// copy when the folder has none. Returns the plan and where it came from.
    pub fn load(path: &Path) -> Result<(MirrorPlan, String)> {
        let (text, origin) = match std::fs::read_to_string(path) {
            Ok(text) => (text, path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.ends_with(PLAN_FILE) => (
                EMBEDDED_PLAN.to_string(),
                "the built-in install/mirror.json".into(),
            ),
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "the mirror plan {}: {e}",
                    path.display()
                )));
            }
        };
        let plan = MirrorPlan::parse(&text)
            .map_err(|e| Error::InvalidInput(format!("the mirror plan {origin}: {e}")))?;
        Ok((plan, origin))
    }

    /// Parses and checks a plan.
    pub fn parse(text: &str) -> Result<MirrorPlan> {
        let plan: MirrorPlan =
            serde_json::from_str(text).map_err(|e| Error::InvalidInput(e.to_string()))?;
        crate::config::mirror::mirror_name(&plan.mirror_name)?;
        for db in &plan.databases {
            DbName::new(db)?;
        }
        let failover = plan.members.iter().filter(|m| m.is_failover()).count();
        if !(1..=2).contains(&failover) {
            return Err(Error::InvalidInput(format!(
                "a mirror has one or two failover members; the plan names {failover}"
            )));
        }
        for (i, m) in plan.members.iter().enumerate() {
            if !m.is_failover() {
                async_kind(m.kind.as_deref())?;
            }
            m.agent_address()?;
            if plan.members[..i]
                .iter()
                .any(|o| o.host.eq_ignore_ascii_case(&m.host))
            {
                return Err(Error::InvalidInput(format!(
                    "the plan names {} twice",
                    m.host
                )));
            }
        }
        Ok(plan)
    }

    fn member(&self, host: &str) -> Option<&PlannedMember> {
        self.members
            .iter()
            .find(|m| m.host.eq_ignore_ascii_case(host))
    }

    fn failover(&self) -> impl Iterator<Item = &PlannedMember> {
        self.members.iter().filter(|m| m.is_failover())
    }
}

/// What the no-click mirror did and what waits, for the monitor and `/api/mirror`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AutoMirrorReport {
    /// Where the plan came from.
    pub plan: String,
    /// Every step is done.
    pub done: bool,
    /// The steps, in order.
    pub steps: Vec<AutoStep>,
}

/// One step of the plan on this member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoStep {
    /// What the step is.
    pub what: String,
    /// Done.
    pub done: bool,
    /// What happened, or what it waits for.
    pub note: String,
    /// This start did it (rather than finding it done).
    pub acted: bool,
}

/// A step found done.
fn done(what: impl Into<String>, note: impl Into<String>) -> AutoStep {
    AutoStep {
        what: what.into(),
        done: true,
        note: note.into(),
        acted: false,
    }
}

/// A step this pass carried out.
fn did(what: impl Into<String>, note: impl Into<String>) -> AutoStep {
    AutoStep {
        acted: true,
        ..done(what, note)
    }
}

/// A step that waits (for another member, or for its own work to finish).
fn waits(what: impl Into<String>, note: impl Into<String>) -> AutoStep {
    AutoStep {
        done: false,
        ..done(what, note)
    }
}

/// Carries the plan out, one pass a second, until every step is done (or the member is found to
/// belong elsewhere); the report is published after each pass.
pub async fn run(service: Arc<MirrorService>, plan: MirrorPlan, origin: String) {
    tracing::info!("no-click mirror: carrying out {origin}");
    // What this start did, by step: a later pass that finds the step done still says how.
    let mut carried_out = std::collections::BTreeMap::new();
    loop {
        let (mut steps, finished) = converge(&service, &plan).await;
        for step in &mut steps {
            if step.acted {
                carried_out.insert(step.what.clone(), step.note.clone());
            } else if let Some(note) = carried_out.get(&step.what).filter(|_| step.done) {
                step.note = note.clone();
                step.acted = true;
            }
        }
        let all_done = steps.iter().all(|s| s.done);
        service.set_auto_report(AutoMirrorReport {
            plan: origin.clone(),
            done: all_done,
            steps,
        });
        if all_done {
            tracing::info!("no-click mirror: the mirror of {origin} is in place here");
            return;
        }
        if finished {
            return;
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}

/// One pass: the steps as they stand, after doing whatever is missing. `true` with them when
/// the plan cannot go further here by itself (a person must act).
pub async fn converge(service: &Arc<MirrorService>, plan: &MirrorPlan) -> (Vec<AutoStep>, bool) {
    let context = service.context().clone();
    let host = context.host_name.clone();
    let mut steps = Vec::new();
    let Some(me) = plan.member(&host) else {
        steps.push(waits(
            "Find this member in the plan",
            format!("the plan names no member with host name {host}: nothing to do here"),
        ));
        return (steps, true);
    };
    if !context.config.get().mirror.service_enabled {
        match service.set_service(true) {
            Ok(message) => steps.push(did("Enable Mirror Service", message)),
            Err(err) => {
                steps.push(waits("Enable Mirror Service", err.to_string()));
                return (steps, false);
            }
        }
    } else {
        steps.push(done("Enable Mirror Service", "enabled"));
    }

    // Member of the planned mirror: create it, or join it.
    let membership = context.config.get().mirror.membership.clone();
    match membership {
        Some(m) if m.mirror.name != plan.mirror_name.to_ascii_uppercase() => {
            steps.push(waits(
                member_of(plan),
                format!(
                    "this member belongs to mirror {}: the plan is left alone here",
                    m.mirror.name
                ),
            ));
            return (steps, true);
        }
        Some(_) => steps.push(done(
            member_of(plan),
            format!("a member, {}", service.context().mirror.role().display()),
        )),
        None => {
            let step = become_member(service, plan, me).await;
            let joined = step.done;
            steps.push(step);
            if !joined {
                return (steps, false);
            }
        }
    }

    match context.mirror.role() {
        Role::Primary => primary_steps(service, plan, &mut steps).await,
        Role::Backup | Role::Async(_) => follower_steps(service, plan, &mut steps).await,
        role => steps.push(waits(
            "Databases",
            format!(
                "this member is {}: it waits to know its role",
                role.display()
            ),
        )),
    }
    (steps, false)
}

/// The step of creating or joining the mirror.
fn member_of(plan: &MirrorPlan) -> String {
    format!("Member of {}", plan.mirror_name.to_ascii_uppercase())
}

/// Create (the first failover member, when nobody describes the mirror yet) or join through a
/// failover member's agent.
async fn become_member(
    service: &Arc<MirrorService>,
    plan: &MirrorPlan,
    me: &PlannedMember,
) -> AutoStep {
    let name = plan.mirror_name.to_ascii_uppercase();
    let creator = plan
        .failover()
        .next()
        .expect("a plan has a failover member");
    let others: Vec<&PlannedMember> = plan.failover().filter(|m| m.host != me.host).collect();
    // Whoever describes the mirror already is asked first: the creator restarted with empty
    // files joins the mirror that exists instead of making a second one of the same name.
    let mut last_error = String::new();
    for other in &others {
        let Ok((address, port)) = other.agent_address() else {
            continue;
        };
        let info = JoinInfoRequest {
            mirror_name: name.clone(),
            agent_address: address,
            agent_port: Some(port),
            instance_name: None,
        };
        match service.join_info(&info).await {
            Ok(_) => {
                let request = JoinRequest {
                    info,
                    async_type: (!me.is_failover()).then(|| me.kind.clone()).flatten(),
                    ..JoinRequest::default()
                };
                let joined = if me.is_failover() {
                    service.join_failover(request).await
                } else {
                    service.join_async(request).await
                };
                let how = format!("Join {name} through {}", other.host);
                return match joined {
                    Ok(message) => {
                        service.auto_event(&how, &message);
                        did(member_of(plan), format!("{how}: {message}"))
                    }
                    Err(err) => waits(member_of(plan), format!("{how}: {err}")),
                };
            }
            Err(err) => last_error = format!("{}: {err}", other.host),
        }
    }
    if me.host == creator.host {
        let (use_arbiter, arbiter_address, arbiter_port) = match &plan.arbiter {
            Some(arbiter) => match split_address(arbiter, DEFAULT_AGENT_PORT) {
                Ok((host, port)) => (true, host, Some(port)),
                Err(err) => return waits(member_of(plan), format!("Create {name}: {err}")),
            },
            None => (false, String::new(), None),
        };
        let request = CreateRequest {
            mirror_name: name.clone(),
            use_arbiter,
            arbiter_address,
            arbiter_port,
            qos_timeout_ms: plan.qos_timeout_ms,
            require_tls: plan.require_tls,
            ..CreateRequest::default()
        };
        let how = format!("Create {name}");
        return match service.create(request).await {
            Ok(message) => {
                service.auto_event(&how, &message);
                did(member_of(plan), format!("{how}: {message}"))
            }
            Err(err) => waits(member_of(plan), format!("{how}: {err}")),
        };
    }
    waits(
        member_of(plan),
        format!("Join {name}: waiting for a failover member to describe the mirror ({last_error})"),
    )
}

/// The primary: the planned databases mirrored, planned members authorized.
async fn primary_steps(service: &Arc<MirrorService>, plan: &MirrorPlan, steps: &mut Vec<AutoStep>) {
    let context = service.context();
    let config = context.config.get();
    let Ok(m) = config.mirror.member() else {
        return;
    };
    let missing: Vec<DbName> = plan
        .databases
        .iter()
        .filter_map(|d| DbName::new(d).ok())
        .filter(|d| m.database(d).is_none())
        .collect();
    let what = format!("Add to Mirror: {}", plan.databases.join(", "));
    if missing.is_empty() {
        steps.push(done(what, "mirrored"));
    } else {
        match service.add_databases(missing).await {
            Ok(message) => steps.push(did(what, message)),
            Err(err) => steps.push(waits(what, err.to_string())),
        }
    }
    if plan.require_tls {
        for pending in service.pending().waiting {
            let info = &pending.request.info;
            let host = info.name.as_str().split('/').next().unwrap_or_default();
            let Some(planned) = plan.member(host) else {
                continue;
            };
            let what = format!("Authorize {}", info.name);
            if !came_from(&planned.host, pending.request.asked_from.as_deref()) {
                steps.push(waits(
                    what,
                    format!(
                        "it asked from {}, not from {}'s address: authorize it by hand if it is \
                         that member",
                        pending
                            .request
                            .asked_from
                            .as_deref()
                            .unwrap_or("an unknown address"),
                        planned.host
                    ),
                ));
                continue;
            }
            let certificate = info.certificate.clone().unwrap_or_default();
            match service.authorize(info.name.as_str(), &certificate) {
                Ok(message) => {
                    service.auto_event(&what, &message);
                    steps.push(did(what, message));
                }
                Err(err) => steps.push(waits(what, err.to_string())),
            }
        }
    }
}

/// Whether `asked_from` (an address, maybe with a port) is one `host` resolves to.
fn came_from(host: &str, asked_from: Option<&str>) -> bool {
    let Some(asked) = asked_from else {
        return false;
    };
    let ip = asked
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| asked.parse::<std::net::IpAddr>());
    let Ok(ip) = ip else {
        return false;
    };
    (host, 0)
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.any(|a| a.ip() == ip))
}

/// A backup or async: each planned database copied, activated and caught up.
async fn follower_steps(
    service: &Arc<MirrorService>,
    plan: &MirrorPlan,
    steps: &mut Vec<AutoStep>,
) {
    let view = service.view();
    let copies = service.copies();
    let config = service.context().config.get();
    let Ok(m) = config.mirror.member() else {
        return;
    };
    for name in &plan.databases {
        let Ok(db) = DbName::new(name) else {
            continue;
        };
        let what = format!("{db}: copied, activated, caught up");
        if m.database(&db).is_none() {
            steps.push(waits(
                what,
                "waiting for the primary to add it to the mirror",
            ));
            continue;
        }
        if let Some(copy) = copies.iter().find(|c| c.database == db && c.running()) {
            steps.push(waits(
                what,
                format!("Copy from Primary: {} ({}%)", copy.state, copy.percent()),
            ));
            continue;
        }
        let status = view
            .databases
            .iter()
            .find(|d| d.name == db.as_str())
            .map(|d| d.status.as_str());
        let acted = match status {
            Some("Dejournaling") => {
                let copied = copies
                    .iter()
                    .find(|c| c.database == db && c.state == CopyState::Done)
                    .and_then(|c| c.message.clone());
                steps.push(match copied {
                    Some(how) => did(what, format!("{how}; Dejournaling")),
                    None => done(what, "Dejournaling"),
                });
                continue;
            }
            Some("Catchup Running") => {
                steps.push(waits(what, "Catchup Running"));
                continue;
            }
            Some("Needs Activation") => service.activate(db.clone()).await,
            // Right after a start the member resumes following its activated copies by
            // itself; a Catchup clicked meanwhile would only say so.
            Some("Needs Catchup") if !service.context().mirror.read(|s| s.copies_resumed) => {
                steps.push(waits(what, "this member resumes following its copies"));
                continue;
            }
            Some("Needs Catchup") => service.catchup(db.clone()).await,
            // Missing, dismounted, obsolete, stopped: a fresh copy from the primary.
            _ => {
                let failed_lately = copies.iter().any(|c| {
                    c.database == db
                        && c.state == CopyState::Failed
                        && crate::util::now_ms() - c.started_ms < 5_000
                });
                if failed_lately {
                    steps.push(waits(what, "the last copy failed: trying again shortly"));
                    continue;
                }
                service.copy_from_primary(db.clone(), None)
            }
        };
        steps.push(match acted {
            Ok(message) => waits(what, message),
            Err(err) => waits(what, err.to_string()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mirror::MemberKind;

    #[test]
    fn the_labs_plan_is_valid() {
        let plan = MirrorPlan::parse(EMBEDDED_PLAN).unwrap();
        assert_eq!(plan.mirror_name, "MIRRORSET");
        assert_eq!(plan.failover().count(), 2);
        assert_eq!(plan.databases, ["COMPANY", "CUSTOMER", "PERSONAL"]);
    }

    #[test]
    fn a_plan_a_person_got_wrong_is_refused_with_a_reason() {
        let bad = [
            (
                r#"{"mirror_name": "MIRROR SET", "members": [{"host": "a"}]}"#,
                "Mirror Name",
            ),
            (
                r#"{"mirror_name": "M", "members": []}"#,
                "one or two failover",
            ),
            (
                r#"{"mirror_name": "M", "members": [{"host": "a"}, {"host": "b"}, {"host": "c"}]}"#,
                "one or two failover",
            ),
            (
                r#"{"mirror_name": "M", "members": [{"host": "a"}, {"host": "A", "type": "dr"}]}"#,
                "twice",
            ),
            (
                r#"{"mirror_name": "M", "members": [{"host": "a"}, {"host": "c", "type": "dc"}]}"#,
                "Async Member System Type",
            ),
            (r#"{"mirror_name": "M", "member": []}"#, "unknown field"),
            (
                r#"{"mirror_name": "M", "databases": ["no such"], "members": [{"host": "a"}]}"#,
                "",
            ),
        ];
        for (text, says) in bad {
            let err = MirrorPlan::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn the_setting_names_a_file_or_the_install_folders_plan() {
        let install = Path::new("/install");
        assert_eq!(plan_path(None, install), None);
        assert_eq!(plan_path(Some(""), install), None);
        assert_eq!(plan_path(Some("0"), install), None);
        assert_eq!(plan_path(Some("off"), install), None);
        assert_eq!(
            plan_path(Some("1"), install),
            Some(PathBuf::from("/install/mirror.json"))
        );
        assert_eq!(
            plan_path(Some("/etc/plan.json"), install),
            Some(PathBuf::from("/etc/plan.json"))
        );
    }

    #[test]
    fn only_the_planned_hosts_address_is_authorized() {
        assert!(came_from("localhost", Some("127.0.0.1:40000")));
        assert!(came_from("127.0.0.1", Some("127.0.0.1")));
        assert!(!came_from("127.0.0.1", Some("10.0.0.9:40000")));
        assert!(!came_from("127.0.0.1", None));
        assert!(!came_from("127.0.0.1", Some("nonsense")));
    }

    #[test]
    fn a_follower_kind_is_kept_for_the_join() {
        let plan = MirrorPlan::parse(
            r#"{"mirror_name": "M", "members": [{"host": "a"}, {"host": "c", "type": "reporting_ro"}]}"#,
        )
        .unwrap();
        let c = plan.member("C").unwrap();
        assert!(!c.is_failover());
        assert_eq!(
            async_kind(c.kind.as_deref()).unwrap(),
            MemberKind::ReportingRo
        );
    }
}
