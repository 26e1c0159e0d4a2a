use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let wasm_dir = BUILT
        .get_or_init(|| build_test_functions().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let read_module = |name: &str| {
        std::fs::read(wasm_dir.join(format!("{name}.wasm"))).with_context(|| format!("no test function {name}"))
    };
    let image_name = match peers {
        [] => function.to_owned(),
        _ => format!("{function}-with-{}", peers.join("-")),
    };
    let reference = format!("docker.io/cwasi/{image_name}:test");
    let module = format!("/{function}.wasm");
    let mut spec = ImageSpec::new(reference.clone()).file(&module, read_module(function)?).entrypoint([module.clone()]);
    for peer in peers {
        spec = spec.file(format!("/{peer}.wasm"), read_module(peer)?);
    }
    if function == "read-file" {
        spec = spec.file("/data/greeting.txt", b"greetings from inside the image\n".to_vec());
    }
    let images = workspace_root().join("target/cwasi-images");
    std::fs::create_dir_all(&images)?;
    let tar = images.join(format!("{image_name}.tar"));
    // Tests run in parallel: write aside, then rename into place.
    let tmp = images.join(format!(".{image_name}.{}.tar", std::process::id()));
    spec.write_tar(&tmp)?;
    std::fs::rename(&tmp, &tar)?;
    Ok(TestImage { reference, tar, module })
}

/// `cargo build --release --target wasm32-wasip1` of `test-functions/`.
fn build_test_functions() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/test-functions");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(root.join("test-functions/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("running cargo for test-functions")?;
    if !status.success() {
        bail!("building test-functions failed ({status}); is the wasm32-wasip1 target installed? (rustup target add wasm32-wasip1)");
    }
    Ok(target_dir.join("wasm32-wasip1/release"))
}
