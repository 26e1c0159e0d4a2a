//! Bounds-checked access to a guest's linear memory by `(ptr, len)` pairs.

use cwasi_abi::Status;

/// The guest's `(ptr, len)` as a slice, if it lies inside its memory.
/// Both are unsigned 32-bit values passed as `i32`.
pub fn range(memory_len: usize, ptr: i32, len: i32) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize).ok_or(Status::BadPointer)?;
    if end > memory_len {
        return Err(Status::BadPointer);
    }
    Ok(start..end)
}

pub fn guest_slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    Ok(&memory[range(memory.len(), ptr, len)?])
}

pub fn guest_slice_mut(memory: &mut [u8], ptr: i32, len: i32) -> Result<&mut [u8], Status> {
    let range = range(memory.len(), ptr, len)?;
    Ok(&mut memory[range])
}

pub fn write_u32(memory: &mut [u8], ptr: i32, value: u32) -> Result<(), Status> {
    guest_slice_mut(memory, ptr, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_memory_are_bad_pointers() {
        assert_eq!(range(100, 0, 100), Ok(0..100));
        assert_eq!(range(100, 100, 0), Ok(100..100));
        assert_eq!(range(100, 90, 11), Err(Status::BadPointer));
        assert_eq!(range(100, -1, 1), Err(Status::BadPointer));
        assert_eq!(range(100, 4, -1), Err(Status::BadPointer));
        let mut memory = [0u8; 8];
        assert_eq!(write_u32(&mut memory, 6, 1), Err(Status::BadPointer));
        write_u32(&mut memory, 4, 0x0403_0201).unwrap();
        assert_eq!(memory, [0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
