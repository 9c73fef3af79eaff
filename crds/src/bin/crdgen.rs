//! Prints every Portway CRD (`cargo run -p portway-crds --bin crdgen`), or with `--write DIR`
//! writes one file per CRD into DIR (how `charts/portway/crds/` is regenerated).

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.as_slice() {
        [] => match portway_crds::generate::render_stream() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crdgen: {e}");
                ExitCode::FAILURE
            }
        },
        [flag, dir] if flag == "--write" => write_all(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--write DIR]");
            ExitCode::from(2)
        }
    }
}

fn write_all(dir: PathBuf) -> ExitCode {
    let files = match portway_crds::generate::render_all() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, yaml) in files {
        let path = dir.join(&name);
        if let Err(e) = fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
