//! The command line.

use std::path::PathBuf;

use anyhow::{Context, bail};

pub const USAGE: &str = "usage: cwasi <command> [--json] [--run-dir DIR]
  functions            functions running on this node: namespace, function, container, pid,
                       uptime, requests served, failed, in hand / concurrency
  calls                calls between functions: caller -> peer, mode, calls, errors, p50, p99
  metrics              the same figures in the Prometheus text format, once on stdout
  metrics --listen ADDR
                       serve them at http://ADDR/metrics (e.g. 0.0.0.0:9464)
  --json               machine-readable output (functions, calls)
  --run-dir DIR        the shim's run directory (default: $CWASI_RUN_DIR, else /run/cwasi)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Functions,
    Calls,
    Metrics,
    Help,
}

#[derive(Debug, Default)]
pub struct Options {
    pub json: bool,
    pub run_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

pub fn parse(args: &[String]) -> anyhow::Result<(Command, Options)> {
    let mut command = None;
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok((Command::Help, options)),
            "--json" => options.json = true,
            "--run-dir" => options.run_dir = Some(args.next().context("--run-dir needs a directory")?.into()),
            "--listen" => options.listen = Some(args.next().context("--listen needs an address")?.clone()),
            "functions" | "calls" | "metrics" if command.is_none() => {
                command = Some(match arg.as_str() {
                    "functions" => Command::Functions,
                    "calls" => Command::Calls,
                    _ => Command::Metrics,
                });
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let command = command.unwrap_or(Command::Help);
    if options.listen.is_some() && command != Command::Metrics {
        bail!("--listen goes with `metrics`");
    }
    Ok((command, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> anyhow::Result<(Command, Options)> {
        parse(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn commands_and_flags_in_any_order_and_mistakes_named() {
        let (command, options) = parse_str("--json calls --run-dir /tmp/r").unwrap();
        assert_eq!(command, Command::Calls);
        assert!(options.json);
        assert_eq!(options.run_dir, Some(PathBuf::from("/tmp/r")));
        let (command, options) = parse_str("metrics --listen 127.0.0.1:9464").unwrap();
        assert_eq!((command, options.listen.as_deref()), (Command::Metrics, Some("127.0.0.1:9464")));
        assert_eq!(parse_str("").unwrap().0, Command::Help);
        assert!(parse_str("functions --listen :1").is_err());
        assert!(parse_str("functions calls").is_err());
        assert!(parse_str("--run-dir").unwrap_err().to_string().contains("needs a directory"));
        assert!(parse_str("fonctions").unwrap_err().to_string().contains("fonctions"));
    }
}
