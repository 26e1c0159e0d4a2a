//! `make demo`: start a private containerd with the cwasi shim and run the
//! hello function through it, printing what the guest printed.

use anyhow::Context;
use cwasi_testkit::{Containerd, test_image, workspace_root};

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
    let image = test_image("hello")?;
    println!("== starting a private containerd with {}", shim.display());
    let containerd = Containerd::start(&shim, &[])?;
    containerd.import(&image)?;
    let (flags, command) = (["--rm", "--env", "GREETING=hello"], ["/hello.wasm", "from", "make demo"]);
    println!("== ctr {}", Containerd::run_args("hello-demo", &image, &flags, &command).join(" "));
    let out = containerd.run("hello-demo", &image, &flags, &command)?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    out.ok().context("the hello function failed")?;
    println!("== the function ran in a container started by containerd through io.containerd.cwasi.v1");
    Ok(())
}
