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
    }
}
