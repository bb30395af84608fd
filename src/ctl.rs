//! `mirrorlab ctl`: drive a member from a shell — its agent (instance status, start, stop) and
//! its `/api` (any endpoint, with Basic credentials).

use clap::{Args, Subcommand};

use crate::agent::{self, AgentRequest};
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
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Ask the agent whether the instance runs.
    Status,
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
    if let Some(request) = request {
        let reply = agent::call(&args.agent, request).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("reply serializes")
        );
        return Ok(if reply.ok { 0 } else { 1 });
    }
    let client = reqwest::Client::new();
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
