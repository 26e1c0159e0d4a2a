use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use cwasi_image::ImageSpec;

/// An OCI image tarball of one test function, ready for `ctr images import`.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Image reference, e.g. `docker.io/cwasi/hello:test`.
    pub reference: String,
    pub tar: PathBuf,
    /// Path of the module inside the image.
    pub module: String,
}

/// The repository root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate has a parent").to_path_buf()
}

/// Builds `test-functions/` once per process and returns the image of `function`.
pub fn test_image(function: &str) -> anyhow::Result<TestImage> {
    test_image_with_peers(function, &[])
}

/// The image of `function` that also ships the modules of `peers`, each at
/// `/<peer>.wasm` (for `cwasi.io/embed`). Named `<function>-with-<peers>`.
pub fn test_image_with_peers(function: &str, peers: &[&str]) -> anyhow::Result<TestImage> {
    build_image(function, peers, false)
}

/// The image of `function` published for this node's Linux platform too,
/// as Kubernetes (the CRI plugin) needs it.
pub fn test_image_for_kubernetes(function: &str) -> anyhow::Result<TestImage> {
    build_image(function, &[], true)
}

/// A pod sandbox ("pause") image: no wasm, just a file the shim does not run.
pub fn pause_image() -> anyhow::Result<TestImage> {
    let spec = ImageSpec::new("docker.io/cwasi/pause:test")
        .file("/pause", b"#!/bin/true\n# the cwasi shim keeps a pod's sandbox until it is killed\n".to_vec())
        .entrypoint(["/pause"])
        .also_for_platform("linux", linux_arch());
    write_once("pause", "docker.io/cwasi/pause:test", "/pause", spec)
}

/// Writes each image once per process: tests in one binary run in parallel
/// and share images.
fn write_once(image_name: &str, reference: &str, module: &str, spec: ImageSpec) -> anyhow::Result<TestImage> {
    static WRITTEN: Mutex<BTreeMap<String, TestImage>> = Mutex::new(BTreeMap::new());
    let mut written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = written.get(image_name) {
        return Ok(image.clone());
    }
    let images = workspace_root().join("target/cwasi-images");
    std::fs::create_dir_all(&images)?;
    let tar = images.join(format!("{image_name}.tar"));
    // Other test binaries may write the same image: write aside, then rename.
    let tmp = images.join(format!(".{image_name}.{}.tar", std::process::id()));
    spec.write_tar(&tmp)?;
    std::fs::rename(&tmp, &tar)?;
    let image = TestImage { reference: reference.to_owned(), tar, module: module.to_owned() };
    written.insert(image_name.to_owned(), image.clone());
    Ok(image)
}

fn linux_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn build_image(function: &str, peers: &[&str], kubernetes: bool) -> anyhow::Result<TestImage> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let wasm_dir = BUILT
        .get_or_init(|| build_test_functions().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let read_module = |name: &str| {
        std::fs::read(wasm_dir.join(format!("{name}.wasm"))).with_context(|| format!("no test function {name}"))
    };
    let mut image_name = match peers {
        [] => function.to_owned(),
        _ => format!("{function}-with-{}", peers.join("-")),
    };
    if kubernetes {
        image_name.push_str("-k8s");
    }
    let reference = format!("docker.io/cwasi/{image_name}:test");
    let module = format!("/{function}.wasm");
    let mut spec = ImageSpec::new(reference.clone()).file(&module, read_module(function)?).entrypoint([module.clone()]);
    for peer in peers {
        spec = spec.file(format!("/{peer}.wasm"), read_module(peer)?);
    }
    if kubernetes {
        spec = spec.also_for_platform("linux", linux_arch());
    }
    // A data file in every image, for guests and embedded peers that read files.
    spec = spec.file("/data/greeting.txt", b"greetings from inside the image\n".to_vec());
    write_once(&image_name, &reference, &module, spec)
}

/// `cargo build --release --target wasm32-wasip1` of `test-functions/`.
fn build_test_functions() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/test-functions");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        // Quiet: errors still show, "Finished" lines do not clutter the demo.
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(root.join("test-functions/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("running cargo for test-functions")?;
    if !status.success() {
        bail!(
            "building test-functions failed ({status}); is the wasm32-wasip1 target installed? (rustup target add wasm32-wasip1)"
        );
    }
    Ok(target_dir.join("wasm32-wasip1/release"))
}
