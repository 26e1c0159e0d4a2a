//! `cwasi`: what cwasi does on this node, for the operator. It reads the
//! stats files the functions keep under the run directory; it asks no
//! function anything and needs no daemon.

mod calls;
mod cli;
mod functions;
mod metrics;
mod text;

use std::path::PathBuf;

use cli::{Command, Options};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = cli::parse(&args).and_then(|(command, options)| run(command, &options));
    if let Err(e) = result {
        eprintln!("cwasi: {e:#}");
        std::process::exit(2);
    }
}

fn run(command: Command, options: &Options) -> anyhow::Result<()> {
    let run_dir = options.run_dir.clone().unwrap_or_else(default_run_dir);
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            Ok(())
        }
        Command::Functions => functions::show(&run_dir, options.json),
        Command::Calls => calls::show(&run_dir, options.json),
        Command::Metrics => match &options.listen {
            Some(address) => metrics::serve(&run_dir, address),
            None => {
                print!("{}", metrics::render(&cwasi_comm::stats::read_all(&run_dir)?));
                Ok(())
            }
        },
    }
}

/// `CWASI_RUN_DIR` as the shim reads it, else the shim's default.
fn default_run_dir() -> PathBuf {
    std::env::var_os("CWASI_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(cwasi_comm::registry::DEFAULT_RUN_DIR), PathBuf::from)
}
