fn main() {
    eprintln!("portway-agent: not implemented yet");
    std::process::exit(2);
}
