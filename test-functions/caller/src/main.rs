//! `caller PEER TEXT...`: calls PEER with each TEXT in turn (a TEXT
//! `@OTHER:T` calls OTHER with T instead; `!swap-data` replaces `/data` with
//! a symlink climbing out of the rootfs, as a hostile guest would) and
//! prints each reply or error (an error with how long the call took, `after N us`). It
//! goes on after an error; the exit status tells the first error
//! (3 forbidden, 4 peer gone, 5 unknown peer, 6 peer failed, 2 other).
use cwasi_guest::Status;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((peer, texts)) = args.split_first().filter(|(_, t)| !t.is_empty()) else {
        eprintln!("usage: caller PEER TEXT...");
        std::process::exit(2);
    };
    let mut status = 0;
    for text in texts {
        let started = std::time::Instant::now();
        if text == "!swap-data" {
            swap_data();
            continue;
        }
        let (peer, text) = match text.strip_prefix('@').and_then(|t| t.split_once(':')) {
            Some((other, text)) => (other, text),
            None => (peer.as_str(), text.as_str()),
        };
        match cwasi_guest::call(peer, text.as_bytes()) {
            Ok(reply) => println!("reply: {}", String::from_utf8_lossy(&reply)),
            Err(e) => {
                println!("error: {e} (after {} us)", started.elapsed().as_micros());
                if status == 0 {
                    status = match e.status() {
                        Status::Forbidden => 3,
                        Status::PeerGone => 4,
                        Status::UnknownPeer => 5,
                        Status::PeerFailed => 6,
                        _ => 2,
                    };
                }
            }
        }
    }
    std::process::exit(status);
}

/// Removes `/data` and puts a relative symlink to the host's root in its
/// place (WASI refuses absolute targets, not `..` ones). (Removed, not
/// moved: an overlay rootfs does not rename a directory of the image.)
fn swap_data() {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn path_symlink(target: *const u8, target_len: usize, dir_fd: u32, path: *const u8, path_len: usize) -> u16;
    }
    // The rootfs is the first preopen, descriptor 3 (the shim preopens it first).
    const ROOTFS_FD: u32 = 3;
    if let Err(e) = std::fs::remove_dir_all("/data") {
        println!("cannot remove /data: {e}");
        return;
    }
    let (target, path) = ("../../../../../../../../..", "data");
    // SAFETY: both strings are valid for their lengths; WASI only reads them.
    let errno = unsafe { path_symlink(target.as_ptr(), target.len(), ROOTFS_FD, path.as_ptr(), path.len()) };
    match errno {
        0 => println!("swapped /data"),
        errno => println!("cannot link /data: errno {errno}"),
    }
}
