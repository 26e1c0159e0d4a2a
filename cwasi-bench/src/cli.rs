//! The command line of `cwasi-bench`: one benchmark name and known flags, in
//! any order; anything else is refused with the usage text.

use anyhow::{Context, bail};

pub const USAGE: &str = "usage: cwasi-bench [matrix|start|topologies|all] [--quick] [--runs N] [--payloads BYTES,...]
  matrix      every mode x payload x shape, beside memcpy, a raw Redis SET+GET
              and the broker floor (a push-and-pop round trip via a second client)
  start       container start time of hello, cwasi against a stock runwasi shim
  topologies  remote mode with nodes in network namespaces and on a Redis Cluster,
              each beside a raw SET+GET and the broker floor from node A
  all         all three (the default)
  --quick     1 KiB and 1 MiB, fewer iterations (CI)
  --runs N    start-time runs (default 20)
  --payloads  matrix payload sizes in bytes, comma-separated";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    Matrix,
    Start,
    Topologies,
    All,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub benchmark: Benchmark,
    pub quick: bool,
    pub runs: usize,
    pub payloads: Option<Vec<usize>>,
}

pub fn parse(args: &[String]) -> anyhow::Result<Command> {
    let mut benchmark = None;
    let mut options = Options { benchmark: Benchmark::All, quick: false, runs: 20, payloads: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => options.quick = true,
            "--runs" => {
                let runs = value()?;
                options.runs = runs
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("--runs takes a positive number, got {runs:?}"))?;
            }
            "--payloads" => {
                let sizes = value()?;
                options.payloads = Some(
                    sizes
                        .split(',')
                        .map(|p| {
                            p.trim()
                                .parse::<usize>()
                                .ok()
                                .filter(|&n| n > 0)
                                .with_context(|| format!("bad payload size {p:?}"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                );
            }
            flag if flag.starts_with('-') => bail!("unknown option {flag:?}"),
            name => {
                if let Some(first) = benchmark {
                    bail!("one benchmark at a time: {first:?} and {name:?}");
                }
                benchmark = Some(match name {
                    "matrix" => Benchmark::Matrix,
                    "start" => Benchmark::Start,
                    "topologies" => Benchmark::Topologies,
                    "all" => Benchmark::All,
                    other => bail!("unknown benchmark {other:?} (known: matrix, start, topologies, all)"),
                });
            }
        }
    }
    options.benchmark = benchmark.unwrap_or(Benchmark::All);
    Ok(Command::Run(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> anyhow::Result<Command> {
        parse(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    fn options(line: &str) -> Options {
        match parse_str(line).unwrap() {
            Command::Run(options) => options,
            Command::Help => panic!("{line}: help"),
        }
    }

    #[test]
    fn flags_go_before_or_after_the_benchmark() {
        for line in ["--quick matrix", "matrix --quick"] {
            let o = options(line);
            assert_eq!((o.benchmark, o.quick), (Benchmark::Matrix, true), "{line}");
        }
        let o = options("start --runs 5");
        assert_eq!((o.benchmark, o.runs, o.quick), (Benchmark::Start, 5, false));
        let o = options("--payloads 1024,1048576");
        assert_eq!((o.benchmark, o.payloads), (Benchmark::All, Some(vec![1024, 1 << 20])));
    }

    #[test]
    fn unknown_or_malformed_arguments_are_refused() {
        for (line, says) in [
            ("--fast matrix", "unknown option \"--fast\""),
            ("matrix --payloads", "--payloads needs a value"),
            ("matrix --payloads 1k", "bad payload size \"1k\""),
            ("start --runs zero", "--runs takes a positive number"),
            ("matrix start", "one benchmark at a time"),
            ("matrixx", "unknown benchmark \"matrixx\""),
        ] {
            let error = parse_str(line).expect_err(line).to_string();
            assert!(error.contains(says), "{line}: {error}");
        }
        assert_eq!(parse_str("matrix --help").unwrap(), Command::Help);
    }
}
