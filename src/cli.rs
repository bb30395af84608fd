//! The command line: `mirrorlab member | instance | arbiter | ctl` (the benchmark is a program
//! of its own, `mirrorlab-bench`).
//!
//! Every setting is a flag and an environment variable (`MIRRORLAB_*`), so Docker Compose can set
//! them without a command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::FalseyValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::agent::AgentSettings;
use crate::instance::{DEFAULT_INSTANCE_NAME, InstanceSettings};
use crate::journal::DEFAULT_MAX_SEGMENT_BYTES;

/// mirrorlab: an open lab kit that reproduces IRIS-style database mirroring.
#[derive(Debug, Parser)]
#[command(name = "mirrorlab", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a member: the agent, which starts and watches the instance.
    Member(MemberArgs),
    /// Run the instance alone (the agent runs this for a member).
    Instance(MemberArgs),
    /// Run the arbiter: the agent of a third host that both failover members stay connected to.
    Arbiter(ArbiterArgs),
    /// Talk to a running member from a shell.
    Ctl(crate::ctl::CtlArgs),
}

/// Settings of the arbiter.
#[derive(Debug, Clone, Args)]
pub struct ArbiterArgs {
    /// Agent address the arbiter listens on.
    #[arg(long, env = "MIRRORLAB_AGENT", default_value = "0.0.0.0:2188")]
    pub agent: String,
    /// Serve Prometheus metrics (members seen, answers given) at http://ADDR/metrics.
    #[arg(long, env = "MIRRORLAB_ARBITER_METRICS", value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// Settings of a member and its instance.
#[derive(Debug, Clone, Args)]
pub struct MemberArgs {
    /// Data directory: configuration, databases, journal, logs.
    #[arg(long, env = "MIRRORLAB_DATA_DIR", default_value = "/shared/durable")]
    pub data_dir: PathBuf,
    /// Portal and API address.
    #[arg(long, env = "MIRRORLAB_WEB", default_value = "0.0.0.0:52773")]
    pub web: String,
    /// Superserver address (the mirror data channel).
    #[arg(long, env = "MIRRORLAB_SUPERSERVER", default_value = "0.0.0.0:1972")]
    pub superserver: String,
    /// Agent address.
    #[arg(long, env = "MIRRORLAB_AGENT", default_value = "0.0.0.0:2188")]
    pub agent: String,
    /// Host name shown in the portal and used in member names (default: this machine's).
    #[arg(long, env = "MIRRORLAB_HOST_NAME")]
    pub host_name: Option<String>,
    /// Instance name.
    #[arg(long, env = "MIRRORLAB_INSTANCE_NAME", default_value = DEFAULT_INSTANCE_NAME)]
    pub instance_name: String,
    /// Folder with the install manifest (the built-in copy is used when it has none).
    #[arg(long, env = "MIRRORLAB_INSTALL", default_value = "/install")]
    pub install: PathBuf,
    /// Journal segment size in bytes before a new file is started.
    #[arg(
        long,
        env = "MIRRORLAB_JOURNAL_SEGMENT_BYTES",
        default_value_t = DEFAULT_MAX_SEGMENT_BYTES,
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    pub journal_segment_bytes: u64,
    /// Seconds a read statement may run before it is stopped.
    #[arg(
        long,
        env = "MIRRORLAB_STATEMENT_TIMEOUT",
        default_value_t = (crate::storage::namespace::STATEMENT_TIMEOUT_MS / 1000) as u64,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub statement_timeout: u64,
    /// Seconds a write statement may run before it is stopped (no other write commits meanwhile).
    #[arg(
        long,
        env = "MIRRORLAB_WRITE_TIMEOUT",
        default_value_t = (crate::storage::namespace::WRITE_TIMEOUT_MS / 1000) as u64,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub write_timeout: u64,
    /// `GET /metrics` asks for a portal user's login (HTTP Basic), as `/api` does; without it
    /// the figures are open (they show no data).
    #[arg(long, env = "MIRRORLAB_METRICS_LOGIN", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub metrics_login: bool,
    /// The no-click mirror: carry out a mirror plan at start — `1` for the install folder's
    /// `mirror.json`, or a plan file's path; `0` or nothing: none (the manual walk-through).
    #[arg(long, env = "MIRRORLAB_AUTO_MIRROR", value_name = "1|FILE")]
    pub auto_mirror: Option<String>,
    /// The portal's Lab page: kill or hang this instance, and the acknowledged-write ledger
    /// (the Compose lab turns it on).
    #[arg(long, env = "MIRRORLAB_LAB", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub lab: bool,
    /// A file with the superuser's password for a fresh instance (a mounted secret), instead of
    /// `SYS`; read at every start, used only at the first.
    #[arg(long, env = "MIRRORLAB_SUPERUSER_PASSWORD_FILE", value_name = "FILE")]
    pub superuser_password_file: Option<PathBuf>,
}

impl MemberArgs {
    fn host(&self) -> String {
        self.host_name.clone().unwrap_or_else(crate::os::host_name)
    }

    /// The plan `--auto-mirror` names, if any.
    fn auto_mirror_plan(&self) -> Option<PathBuf> {
        crate::mirror::auto::plan_path(self.auto_mirror.as_deref(), &self.install)
            .map(|p| std::path::absolute(&p).unwrap_or(p))
    }

    fn instance_settings(&self) -> InstanceSettings {
        InstanceSettings {
            data_dir: self.data_dir.clone(),
            web: self.web.clone(),
            superserver: self.superserver.clone(),
            agent: self.agent.clone(),
            host_name: self.host(),
            instance_name: self.instance_name.to_ascii_uppercase(),
            install_dir: self.install.clone(),
            max_segment_bytes: self.journal_segment_bytes,
            statement_timeout_ms: self.statement_timeout as i64 * 1000,
            write_timeout_ms: self.write_timeout as i64 * 1000,
            metrics_login: self.metrics_login,
            lab: self.lab,
            superuser_password_file: self.superuser_password_file.clone(),
            journal_io: std::sync::Arc::new(crate::journal::DirectIo),
            network: std::sync::Arc::new(crate::transport::Tcp),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        }
    }

    /// The arguments that make `mirrorlab instance` run with these settings.
    fn instance_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["instance".into()];
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--data-dir", self.data_dir.clone().into());
        push("--web", self.web.clone().into());
        push("--superserver", self.superserver.clone().into());
        push("--agent", self.agent.clone().into());
        push("--host-name", self.host().into());
        push("--instance-name", self.instance_name.clone().into());
        push("--install", self.install.clone().into());
        push(
            "--journal-segment-bytes",
            self.journal_segment_bytes.to_string().into(),
        );
        push(
            "--statement-timeout",
            self.statement_timeout.to_string().into(),
        );
        push("--write-timeout", self.write_timeout.to_string().into());
        if self.metrics_login {
            args.push("--metrics-login".into());
        }
        if self.lab {
            args.push("--lab".into());
        }
        if let Some(file) = &self.superuser_password_file {
            args.push("--superuser-password-file".into());
            args.push(file.clone().into());
        }
        // Always passed, so a plan path relative to the member's folder means the same to the
        // instance, and "off" stays off whatever the environment says.
        args.push("--auto-mirror".into());
        args.push(
            self.auto_mirror_plan()
                .map(|p| p.into_os_string())
                .unwrap_or_else(|| "0".into()),
        );
        args
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime")
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Member(args) => {
            crate::server::init_logging(None);
            // Checked before the agent starts, not only by the instance: a member whose secret
            // is missing or unfit must end (and an orchestrator show it failing), rather than
            // run an agent whose instance can never start.
            if let Some(file) = &args.superuser_password_file
                && let Err(err) = crate::instance::users::read_password_file(file)
            {
                eprintln!("mirrorlab: {err}");
                return ExitCode::from(1);
            }
            let settings = AgentSettings {
                listen: args.agent.clone(),
                program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mirrorlab")),
                args: args.instance_args(),
                host_name: args.host(),
                instance_name: args.instance_name.to_ascii_uppercase(),
                superserver: args.superserver.clone(),
                data_dir: args.data_dir.clone(),
                install_dir: args.install.clone(),
                lab: args.lab,
            };
            runtime().block_on(crate::server::run_member(settings))
        }
        Command::Instance(args) => {
            // Before any thread starts (see the function's reasons).
            crate::os::return_large_allocations();
            crate::server::init_logging(Some(&args.data_dir.join("mgr/messages.log")));
            runtime().block_on(crate::server::run_instance(
                args.instance_settings(),
                args.auto_mirror_plan(),
            ))
        }
        Command::Arbiter(args) => {
            crate::server::init_logging(None);
            runtime().block_on(crate::server::run_arbiter(args.agent, args.metrics))
        }
        Command::Ctl(args) => runtime().block_on(crate::ctl::run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mirrorlab: {err}");
            ExitCode::from(1)
        }
    }
}
