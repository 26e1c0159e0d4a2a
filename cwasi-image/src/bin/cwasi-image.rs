//! `cwasi-image --name REF --out IMAGE.tar [--entrypoint ARG]... [--env K=V]... [--platform OS/ARCH]... FILE=/PATH...`
//!
//! Packs files into an OCI image tarball for `ctr image import --all-platforms`.
//! The image is for `wasip1/wasm`; `--platform linux/amd64` adds that
//! platform too (Kubernetes nodes with containerd 1.6/1.7 need it).

use std::path::PathBuf;

use anyhow::{Context, bail};
use cwasi_image::ImageSpec;

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("cwasi-image: {e:#}");
        std::process::exit(2);
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut name = None;
    let mut out = None;
    let mut entrypoint = Vec::new();
    let mut env = Vec::new();
    let mut files = Vec::new();
    let mut platforms = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--entrypoint" => entrypoint.push(value()?),
            "--env" => env.push(value()?),
            "--platform" => {
                let platform = value()?;
                let (os, arch) = platform
                    .split_once('/')
                    .with_context(|| format!("--platform takes OS/ARCH, got {platform:?}"))?;
                platforms.push((os.to_owned(), arch.to_owned()));
            }
            "-h" | "--help" => {
                println!("usage: cwasi-image --name REF --out IMAGE.tar [--entrypoint ARG]... [--env K=V]... [--platform OS/ARCH]... FILE=/PATH_IN_IMAGE...");
                return Ok(());
            }
            file => {
                let (host, in_image) = file
                    .split_once('=')
                    .with_context(|| format!("expected FILE=/PATH_IN_IMAGE, got {file:?}"))?;
                files.push((PathBuf::from(host), in_image.to_owned()));
            }
        }
    }
    let (Some(name), Some(out)) = (name, out) else {
        bail!("--name and --out are required (see --help)");
    };
    let mut image = ImageSpec::new(name).entrypoint(entrypoint);
    for kv in env {
        image = image.env(kv);
    }
    for (os, arch) in &platforms {
        image = image.also_for_platform(os, arch);
    }
    for (host, in_image) in files {
        let bytes = std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        image = image.file(in_image, bytes);
    }
    image.write_tar(&out)
}
