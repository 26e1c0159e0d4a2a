//! Sizes and latencies as the demo and the benchmark report print them.

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// `1 KiB`, `10 MiB`, `512 B`.
pub fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= MIB => format!("{} MiB", b / MIB),
        b if b >= KIB => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

/// `2.71 µs` below 0.1 ms, else `24.32 ms`.
pub fn human_latency(ns: u64) -> String {
    match ns {
        n if n < 100_000 => format!("{:.2} µs", n as f64 / 1e3),
        n => format!("{:.2} ms", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(10 << 20), "10 MiB");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_latency(2_710), "2.71 µs");
        assert_eq!(human_latency(24_320_000), "24.32 ms");
    }
}
