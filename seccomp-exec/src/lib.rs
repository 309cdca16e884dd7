//! The format of the filters file the seccomp exec helper reads ([`format`]), and how the shim
//! writes one ([`encode`]). The helper itself is `src/main.rs`, built static by the shim's
//! build script and embedded in the shim.

pub mod format;

use format::{Instruction, MAGIC};

/// The filters file for `filters`, installed in this order (see [`format::decode`]).
pub fn encode(filters: &[Vec<Instruction>]) -> Vec<u8> {
    let size: usize = filters.iter().map(|f| 4 + f.len() * 8).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + size);
    out.extend_from_slice(MAGIC);
    for filter in filters {
        let len = u32::try_from(filter.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        for i in filter {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;
    use super::format::{decode, Instruction, MAGIC, MAX_INSTRUCTIONS};

    fn insn(code: u16, k: u32) -> Instruction {
        Instruction {
            code,
            jt: 1,
            jf: 2,
            k,
        }
    }

    #[test]
    fn filters_survive_the_round_trip_in_order() {
        let filters = vec![
            vec![insn(0x20, 4), insn(0x15, 0xc000_003e), insn(6, 0x7fff_0000)],
            vec![insn(6, 0x0005_0026)],
        ];
        let bytes = encode(&filters);
        assert_eq!(bytes.len(), 8 + (4 + 3 * 8) + (4 + 8));
        assert_eq!(decode(&bytes).expect("decode"), filters);
    }

    #[test]
    fn malformed_files_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(b"NOTMAGIC").is_err());
        // The magic alone: no filter, and running unfiltered is never the answer.
        assert!(decode(MAGIC).is_err());
        let good = encode(&[vec![insn(6, 0)]]);
        assert!(decode(&good[..good.len() - 1]).is_err(), "truncated");
        let mut empty = MAGIC.to_vec();
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode(&empty).is_err(), "an empty filter");
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&(MAX_INSTRUCTIONS as u32 + 1).to_le_bytes());
        huge.resize(huge.len() + (MAX_INSTRUCTIONS + 1) * 8, 0);
        assert!(decode(&huge).is_err(), "longer than the kernel allows");
    }
}
