//! The contract between the shim and the helper: where the helper finds its filters inside the
//! container, and how the filters file is laid out. Shared by the helper (which reads it) and
//! the shim (which writes it); nothing here does I/O.

/// The directory, as the container sees it, holding the helper and its filters: a read-only
/// bind the shim adds at Create.
pub const DIR: &str = "/.safehouse";

/// The helper's file name in [`DIR`].
pub const HELPER: &str = "seccomp-exec";

/// The filters' file name in [`DIR`].
pub const FILTERS: &str = "seccomp.bpf";

/// The first bytes of a filters file.
pub const MAGIC: &[u8; 8] = b"SHSECBPF";

/// The kernel's limit on one filter's length (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// More filters than this is a malformed file (the shim writes one per distinct action).
pub const MAX_FILTERS: usize = 64;

/// One BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// The opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// The immediate operand.
    pub k: u32,
}

/// Reads a filters file: [`MAGIC`], then for each filter, in the order they are installed, its
/// length in instructions (`u32`, little endian) and its instructions (8 bytes each: `code` as
/// `u16` LE, `jt`, `jf`, `k` as `u32` LE). At least one filter, none empty.
pub fn decode(bytes: &[u8]) -> Result<Vec<Vec<Instruction>>, String> {
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a filters file (bad magic)")?;
    let mut filters = Vec::new();
    while !rest.is_empty() {
        if filters.len() == MAX_FILTERS {
            return Err(format!("more than {MAX_FILTERS} filters"));
        }
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("truncated filter length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if len == 0 || len > MAX_INSTRUCTIONS {
            return Err(format!(
                "filter {} has {len} instructions (1 to {MAX_INSTRUCTIONS})",
                filters.len()
            ));
        }
        let size = len * 8;
        if tail.len() < size {
            return Err(format!("filter {} is truncated", filters.len()));
        }
        let (body, tail) = tail.split_at(size);
        let filter = body
            .chunks_exact(8)
            .map(|b| Instruction {
                code: u16::from_le_bytes([b[0], b[1]]),
                jt: b[2],
                jf: b[3],
                k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            })
            .collect();
        filters.push(filter);
        rest = tail;
    }
    if filters.is_empty() {
        return Err("no filter in the file".into());
    }
    Ok(filters)
}
