//! `fp8-trainer orchestrator --port PORT`: burn-collective's global orchestrator, which the
//! nodes of a multi-node job (`nodes` in its config) join. It coordinates only (registration,
//! which node talks to which); the tensors go between the nodes directly. It runs until killed.

use crate::error::Error;

/// Arguments of `orchestrator`.
#[derive(Clone, Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// TCP port to listen on (the nodes' `nodes.orchestrator` is `ws://THIS_HOST:PORT`).
    #[arg(long)]
    pub port: u16,
}

/// Serves until the process is stopped.
pub fn run_orchestrator(args: &OrchestratorArgs) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Argument {
            flag: "--port",
            message: format!("cannot start the orchestrator's runtime: {e}"),
        })?;
    log::info!("orchestrator listening on port {}", args.port);
    runtime.block_on(burn_collective::start_global_orchestrator(args.port));
    Ok(())
}
