use std::process::ExitCode;

use clap::Parser;
use portway_operator::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match portway_crds::generate::render_stream() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portway: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plan(args) => portway_operator::cli::plan::main(&args),
        Command::Run(args) => portway_operator::cli::run::main(*args),
        Command::Migrate(args) => portway_operator::cli::migrate::main(args),
        Command::Cleanup(args) => portway_operator::cli::cleanup::main(&args),
    }
}
