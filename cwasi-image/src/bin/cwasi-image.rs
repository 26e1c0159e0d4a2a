//! `cwasi-image --name REF --out IMAGE.tar [--entrypoint ARG]... [--env K=V]... [--platform OS/ARCH]... FILE=/PATH...`
//!
//! Packs files into an OCI image tarball for `ctr image import --all-platforms`.
//! The image is for `wasip1/wasm`; `--platform linux/amd64` adds that
//! platform too (Kubernetes nodes with containerd 1.6/1.7 need it).

use std::path::PathBuf;

use anyhow::{Context, bail};
use cwasi_image::ImageSpec;

const USAGE: &str = "usage: cwasi-image --name REF --out IMAGE.tar [--entrypoint ARG]... [--env K=V]... [--platform OS/ARCH]... FILE=/PATH_IN_IMAGE...";

fn main() {
    match parse(std::env::args().skip(1).collect()) {
        Ok(None) => println!("{USAGE}"),
        Ok(Some(args)) => {
            if let Err(e) = pack(args) {
                eprintln!("cwasi-image: {e:#}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("cwasi-image: {e:#}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    name: String,
    out: PathBuf,
    entrypoint: Vec<String>,
    env: Vec<String>,
    platforms: Vec<(String, String)>,
    /// (file on the host, path in the image)
    files: Vec<(PathBuf, String)>,
}

/// `Ok(None)` asks for the usage text.
fn parse(args: Vec<String>) -> anyhow::Result<Option<Args>> {
    let mut parsed = Args::default();
    let (mut name, mut out) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--entrypoint" => parsed.entrypoint.push(value()?),
            "--env" => parsed.env.push(value()?),
            "--platform" => {
                let platform = value()?;
                let (os, arch) = platform
                    .split_once('/')
                    .filter(|(os, arch)| !os.is_empty() && !arch.is_empty())
                    .with_context(|| format!("--platform takes OS/ARCH, got {platform:?}"))?;
                parsed.platforms.push((os.to_owned(), arch.to_owned()));
            }
            "-h" | "--help" => return Ok(None),
            flag if flag.starts_with('-') => bail!("unknown option {flag:?}"),
            file => {
                let (host, in_image) = file
                    .split_once('=')
                    .filter(|(host, in_image)| !host.is_empty() && in_image.starts_with('/'))
                    .with_context(|| format!("expected FILE=/PATH_IN_IMAGE, got {file:?}"))?;
                parsed.files.push((PathBuf::from(host), in_image.to_owned()));
            }
        }
    }
    let (Some(name), Some(out)) = (name, out) else {
        bail!("--name and --out are required");
    };
    parsed.name = name;
    parsed.out = out;
    Ok(Some(parsed))
}

fn pack(args: Args) -> anyhow::Result<()> {
    let mut image = ImageSpec::new(args.name).entrypoint(args.entrypoint);
    for kv in args.env {
        image = image.env(kv);
    }
    for (os, arch) in &args.platforms {
        image = image.also_for_platform(os, arch);
    }
    for (host, in_image) in args.files {
        let bytes = std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        image = image.file(in_image, bytes);
    }
    image.write_tar(&args.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> anyhow::Result<Option<Args>> {
        parse(line.split_whitespace().map(str::to_owned).collect())
    }

    #[test]
    fn a_full_command_line_is_understood() {
        let args =
            parse_str("--name r:1 --out o.tar --entrypoint /f.wasm --env A=1 --platform linux/amd64 f.wasm=/f.wasm")
                .unwrap()
                .unwrap();
        assert_eq!(args.name, "r:1");
        assert_eq!(args.out, PathBuf::from("o.tar"));
        assert_eq!(args.entrypoint, ["/f.wasm"]);
        assert_eq!(args.env, ["A=1"]);
        assert_eq!(args.platforms, [("linux".to_owned(), "amd64".to_owned())]);
        assert_eq!(args.files, [(PathBuf::from("f.wasm"), "/f.wasm".to_owned())]);
        assert!(parse_str("--help").unwrap().is_none());
    }

    #[test]
    fn unknown_flags_and_malformed_values_are_refused() {
        for (line, says) in [
            ("--name r --out o.tar --entry /f.wasm", "unknown option \"--entry\""),
            ("--name r --out o.tar --quiet=1=/x", "unknown option \"--quiet=1=/x\""),
            ("--name r --out o.tar f.wasm", "expected FILE=/PATH_IN_IMAGE"),
            ("--name r --out o.tar f.wasm=rel", "expected FILE=/PATH_IN_IMAGE"),
            ("--name r --out o.tar --platform linux", "--platform takes OS/ARCH"),
            ("--name r --out", "--out needs a value"),
            ("--out o.tar f.wasm=/f.wasm", "--name and --out are required"),
        ] {
            let error = parse_str(line).expect_err(line).to_string();
            assert!(error.contains(says), "{line}: {error}");
        }
    }
}
