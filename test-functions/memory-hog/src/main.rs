//! Allocates (and touches) the MiB given as its first argument, 16 MiB at a time.
fn main() {
    let total_mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let mut held: Vec<Vec<u8>> = Vec::new();
    for step in 0..total_mib.div_ceil(16) {
        held.push(vec![1u8; 16 << 20]);
        println!("holding {} MiB", (step + 1) * 16);
    }
    println!("allocated {total_mib} MiB");
}
