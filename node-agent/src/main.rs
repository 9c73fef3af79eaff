//! `portway-agent`: see `portway_node_agent::cli`.

fn main() -> std::process::ExitCode {
    portway_node_agent::cli::main()
}
