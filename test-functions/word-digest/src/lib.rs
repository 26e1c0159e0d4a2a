//! Large buffers as u64 words, and an FNV-1a digest over them: what the
//! page-moving test functions check 256 MiB with, fast enough for
//! WasmEdge's interpreter (a byte-wise SHA-256 takes minutes there).

/// `buf` as words; it must start on a word and hold whole words.
pub fn words(buf: &[u8]) -> &[u64] {
    // SAFETY: any bytes are a valid u64; align_to only reinterprets.
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    assert!(head.is_empty() && tail.is_empty(), "a buffer of whole words");
    words
}

/// `buf` as words, to write.
pub fn words_mut(buf: &mut [u8]) -> &mut [u64] {
    // SAFETY: as in `words`.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    assert!(head.is_empty() && tail.is_empty(), "a buffer of whole words");
    words
}

/// FNV-1a over the words of `buf`.
pub fn digest(buf: &[u8]) -> u64 {
    words(buf).iter().fold(0xcbf2_9ce4_8422_2325, |hash, &w| (hash ^ w).wrapping_mul(0x100_0000_01b3))
}
