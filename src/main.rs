//! clawker-egress: see docs/ARCHITECTURE.md for the pipeline.

use std::process::ExitCode;

use clap::Parser;

use clawker_egress::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::run(args))),
        Command::Bypass(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::bypass(args))),
        Command::Observe(args) => cli::observe(args),
        Command::Top(args) => cli::top(args),
        Command::Check(args) => cli::check(args),
        Command::Detach(args) => cli::detach(args),
        Command::Policy(args) => cli::policy(args),
        Command::Report(args) => cli::report(args),
        Command::Version => {
            println!(
                "clawker-egress {} (kernel ABI v{})",
                env!("CARGO_PKG_VERSION"),
                clawker_egress::kernel::abi::EGRESS_ABI_VERSION
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain, outermost first.
            eprintln!("clawker-egress: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
