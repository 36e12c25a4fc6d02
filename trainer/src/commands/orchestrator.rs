//! `fp8-trainer orchestrator --port PORT [--bind HOST] [--secret-file FILE]`: burn-collective's
//! global orchestrator, which the nodes of a multi-node job (`nodes` in its config) join. It
//! coordinates only (registration, which node talks to which); the tensors go between the
//! nodes directly. It runs until killed.
//!
//! It listens on `--bind` only (loopback by default: a group on one machine needs nothing
//! else); with `--secret-file`, every connection must pass the shared-secret handshake
//! (burn-communication's `websocket::auth`) before anything it sends is read.

use std::path::PathBuf;

use crate::error::Error;

/// Arguments of `orchestrator`.
#[derive(Clone, Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// TCP port to listen on (the nodes' `nodes.orchestrator` is `ws://THIS_HOST:PORT`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Address to listen on: 127.0.0.1 (default) serves nodes on this machine only; the
    /// address of the interface the other machines reach, or 0.0.0.0 for every interface.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// The group's shared secret (the nodes' `nodes.secret_file`): connections without it are
    /// refused.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

/// Serves until the process is stopped.
pub fn run_orchestrator(args: &OrchestratorArgs) -> Result<(), Error> {
    if let Some(file) = &args.secret_file {
        let secret = crate::job::spec::read_secret(file).map_err(|message| Error::Argument {
            flag: "--secret-file",
            message,
        })?;
        burn_communication::websocket::auth::set_secret(secret);
    } else if !is_loopback(&args.bind) {
        log::warn!(
            "orchestrator on {} without --secret-file: anyone who reaches the port can join a \
             job (give the nodes and the orchestrator a shared secret)",
            args.bind
        );
    }
    // A busy port is said here, before "listening" (burn-collective would log it and return).
    std::net::TcpListener::bind((args.bind.as_str(), args.port)).map_err(|e| Error::Argument {
        flag: "--port",
        message: format!("cannot listen on {}:{}: {e}", args.bind, args.port),
    })?;
    burn_communication::websocket::auth::set_bind_host(args.bind.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Argument {
            flag: "--port",
            message: format!("cannot start the orchestrator's runtime: {e}"),
        })?;
    log::info!(
        "orchestrator listening on {}:{}{}",
        args.bind,
        args.port,
        if args.secret_file.is_some() {
            " (shared secret required)"
        } else {
            ""
        }
    );
    runtime.block_on(burn_collective::start_global_orchestrator(args.port));
    Ok(())
}

/// Whether `host` is a loopback address (or `localhost`).
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
