//! `mirrorlab ctl`: drive a member from a shell — its agent (instance status, start, stop) and
//! its `/api` (any endpoint, with Basic credentials) — and `ctl health`, the container health
//! check, which needs nothing but this binary (the image has no shell and no curl).
//!
//! `health` asks whatever answers on the agent port. The arbiter answers a status request with
//! its summary: healthy. A member's agent answers with its instance's state: healthy only when the
//! instance runs *and* its portal answers `/api/health`, so a member whose instance was stopped or
//! hangs is reported unhealthy — saying how its last run ended, why its agent forced it down if
//! it did (`docker inspect` shows it), and how to start it again.
//!
//! `health --liveness` is for orchestrators that *replace* an unhealthy container (Docker
//! Swarm, a Kubernetes liveness probe): healthy whenever the agent answers, whatever its
//! instance's state. An instance down by the failover rules (forced down by the other member's
//! agent, or stopped) must stay down until a person starts it; a health check that failed on it
//! would have the orchestrator restart the member, again and again. What the liveness answer
//! says still tells the instance's state, and the mirror's own readiness is `/mirror_status`.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::agent::{self, AgentRequest, InstanceState, InstanceStatus};
use crate::error::{Error, Result};

/// `mirrorlab ctl` arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The member's agent address.
    #[arg(long, env = "MIRRORLAB_CTL_AGENT", default_value = "127.0.0.1:2188")]
    agent: String,
    /// The member's portal URL.
    #[arg(
        long,
        env = "MIRRORLAB_CTL_URL",
        default_value = "http://127.0.0.1:52773"
    )]
    url: String,
    /// User for `/api`.
    #[arg(long, env = "MIRRORLAB_USER", default_value = "superuser")]
    user: String,
    /// Password for `/api`.
    #[arg(long, env = "MIRRORLAB_PASSWORD", default_value = "SYS")]
    password: String,
    /// Give up on an answer after this many milliseconds (a primary that waits for its backup
    /// holds a write until the failover rules decide).
    #[arg(long, env = "MIRRORLAB_CTL_TIMEOUT_MS", default_value_t = 30_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Ask the agent whether the instance runs.
    Status,
    /// Exit 0 when this host serves: the arbiter answers, or the member's instance runs and its
    /// portal answers (the container health check).
    Health {
        /// Healthy whenever the agent answers, the instance running or not (for orchestrators
        /// that replace unhealthy containers: a member the failover rules keep down stays down).
        #[arg(long)]
        liveness: bool,
    },
    /// Ask the agent to start the instance (after a crash or a stop).
    Start,
    /// Ask the agent to stop the instance gracefully.
    Stop,
    /// GET an API path, e.g. `/api/databases`.
    Get {
        /// Path under the portal URL.
        path: String,
    },
    /// POST JSON to an API path, e.g. `/api/sql '{"namespace":"COMPANY","sql":"SELECT 1"}'`.
    Post {
        /// Path under the portal URL.
        path: String,
        /// JSON body.
        #[arg(default_value = "{}")]
        body: String,
    },
}

/// Runs a `ctl` command; prints the answer as JSON.
pub async fn run(args: CtlArgs) -> Result<u8> {
    let request = match &args.command {
        CtlCommand::Status => Some(AgentRequest::Status),
        CtlCommand::Start => Some(AgentRequest::Start),
        CtlCommand::Stop => Some(AgentRequest::Stop),
        _ => None,
    };
    if let CtlCommand::Health { liveness } = args.command {
        return health(&args, liveness).await;
    }
    if let Some(request) = request {
        let reply = agent::call(&args.agent, request).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("reply serializes")
        );
        return Ok(if reply.ok { 0 } else { 1 });
    }
    let client = client(&args)?;
    let url = |path: &str| format!("{}{}", args.url.trim_end_matches('/'), path);
    let response = match args.command {
        CtlCommand::Get { path } => client.get(url(&path)),
        CtlCommand::Post { path, body } => {
            let json: serde_json::Value = serde_json::from_str(&body)?;
            client.post(url(&path)).json(&json)
        }
        _ => unreachable!("agent commands handled above"),
    }
    .basic_auth(&args.user, Some(&args.password))
    .send()
    .await
    .map_err(|e| Error::Unavailable(format!("{}: {e}", args.url)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| Error::Io(e.to_string()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("json serializes")
        ),
        Err(_) => println!("{text}"),
    }
    Ok(if status.is_success() { 0 } else { 1 })
}

fn client(args: &CtlArgs) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .map_err(|e| Error::Io(e.to_string()))
}

/// `ctl health`: see the module documentation.
async fn health(args: &CtlArgs, liveness: bool) -> Result<u8> {
    let limit = Duration::from_millis(args.timeout_ms.min(5_000));
    let asked = tokio::time::timeout(limit, agent::call_raw(&args.agent, &AgentRequest::Status));
    let reply = match asked.await {
        Ok(Ok(reply)) => reply,
        Ok(Err(err)) => return unhealthy(&format!("{err}")),
        Err(_) => return unhealthy(&format!("agent at {} did not answer", args.agent)),
    };
    if reply["type"] == "status" {
        println!("healthy: arbiter at {}", args.agent);
        return Ok(0);
    }
    let instance = serde_json::from_value::<InstanceStatus>(reply["instance"].clone());
    if liveness {
        // The agent answered: the member lives, whatever else its answer says. Its instance's
        // state is the mirror's business.
        let story = instance.map_or_else(
            |_| "its answer is not understood".into(),
            |i| down_story(&i),
        );
        println!("healthy: agent at {} answers ({story})", args.agent);
        return Ok(0);
    }
    let instance = match instance {
        Ok(instance) => instance,
        Err(err) => return unhealthy(&format!("the agent's answer is not understood: {err}")),
    };
    if instance.state != InstanceState::Running {
        return unhealthy(&down_story(&instance));
    }
    let url = format!("{}/api/health", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .map_err(|e| Error::Io(e.to_string()))?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("healthy: instance running, portal answers at {url}");
            Ok(0)
        }
        Ok(r) => unhealthy(&format!("{url} answered {}", r.status())),
        Err(err) => unhealthy(&format!("{url}: {err}")),
    }
}

/// What a down instance's status says: how it ended, why it was forced down, and how to start
/// it again (the agent never restarts it by itself).
fn down_story(instance: &InstanceStatus) -> String {
    let mut story = format!("instance is {}", instance.state);
    if let Some(why) = &instance.forced_down {
        story.push_str(&format!(": forced down by its agent because {why}"));
    } else if let Some(exit) = &instance.last_exit {
        story.push_str(&format!(" (its last run ended: {exit})"));
    }
    if instance.state == InstanceState::Down {
        story.push_str(&format!("; {}", agent::START_AGAIN));
    }
    story
}

fn unhealthy(why: &str) -> Result<u8> {
    println!("unhealthy: {why}");
    Ok(1)
}
