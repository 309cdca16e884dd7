//! What the kernel needs to start a file: the program interpreter an ELF executable names
//! (`PT_INTERP`, the dynamic loader), or the interpreter on a script's `#!` line.
//!
//! The file comes from the image and is untrusted: every read is bounded and checked, and a
//! file that is not understood is reported as [`Starter::Other`], never a panic.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `PT_INTERP`.
const PT_INTERP: u32 = 3;
/// More program headers than this is not a program anyone runs (Linux caps their table at
/// 64 KiB, ~1170 of the 64-bit kind).
const MAX_PHNUM: u16 = 2048;
/// An interpreter path longer than `PATH_MAX` cannot be opened.
const MAX_INTERP: u64 = 4096;
/// The kernel reads this much of a script for its `#!` line (BINPRM_BUF_SIZE).
const SHEBANG_BUF: usize = 256;

/// How a file starts when executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Starter {
    /// An ELF file, with the interpreter it names (a static program names none).
    Elf(Option<PathBuf>),
    /// A `#!` script and its interpreter.
    Script(PathBuf),
    /// Anything else (not runnable, or not understood).
    Other,
}

/// Bounded reads at an offset.
pub trait ReadAt {
    /// Exactly `len` bytes at `offset`, or `None` when they are not there.
    fn read_at(&self, offset: u64, len: usize) -> Option<Vec<u8>>;
    /// The first bytes, at most `max` of them.
    fn head(&self, max: usize) -> Vec<u8>;
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        self.get(start..end).map(<[u8]>::to_vec)
    }

    fn head(&self, max: usize) -> Vec<u8> {
        self[..self.len().min(max)].to_vec()
    }
}

impl ReadAt for File {
    fn read_at(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    fn head(&self, max: usize) -> Vec<u8> {
        let mut buf = vec![0; max];
        let mut filled = 0;
        while filled < max {
            match FileExt::read_at(self, &mut buf[filled..], filled as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        buf.truncate(filled);
        buf
    }
}

/// Reads how the file at `path` (a host path) starts.
pub fn inspect(path: &Path) -> std::io::Result<Starter> {
    let file = File::open(path)?;
    Ok(starter(&file))
}

/// How the bytes of `src` start.
pub fn starter<R: ReadAt + ?Sized>(src: &R) -> Starter {
    let head = src.head(SHEBANG_BUF);
    if head.starts_with(b"\x7fELF") {
        return elf_interpreter(src).map_or(Starter::Other, Starter::Elf);
    }
    shebang(&head).unwrap_or(Starter::Other)
}

/// The `#!` interpreter: the first word after `#!` on the first line (of the first 256 bytes).
fn shebang(head: &[u8]) -> Option<Starter> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let word = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|w| !w.is_empty())?;
    if word.first() != Some(&b'/') || word.contains(&0) {
        return None;
    }
    Some(Starter::Script(PathBuf::from(OsStr::from_bytes(word))))
}

/// `Some(None)`: a valid ELF header without `PT_INTERP`; `None`: not understood.
fn elf_interpreter<R: ReadAt + ?Sized>(src: &R) -> Option<Option<PathBuf>> {
    let ident = src.read_at(0, 16)?;
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match ident[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let u16_at = |b: &[u8], at: usize| -> Option<u16> {
        let raw: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        })
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        let raw: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if big {
            u64::from_be_bytes(raw)
        } else {
            u64::from_le_bytes(raw)
        })
    };
    // (e_phoff, e_phentsize, e_phnum, the smallest valid e_phentsize)
    let (phoff, phentsize, phnum, min_ent) = if wide {
        let h = src.read_at(0, 64)?;
        (u64_at(&h, 0x20)?, u16_at(&h, 0x36)?, u16_at(&h, 0x38)?, 56)
    } else {
        let h = src.read_at(0, 52)?;
        (
            u64::from(u32_at(&h, 0x1c)?),
            u16_at(&h, 0x2a)?,
            u16_at(&h, 0x2c)?,
            32,
        )
    };
    if phnum == 0 {
        return Some(None);
    }
    if phnum > MAX_PHNUM || usize::from(phentsize) < min_ent {
        return None;
    }
    let table_len = usize::from(phentsize).checked_mul(usize::from(phnum))?;
    let table = src.read_at(phoff, table_len)?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if u32_at(entry, 0)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (u64_at(entry, 0x08)?, u64_at(entry, 0x20)?)
        } else {
            (
                u64::from(u32_at(entry, 0x04)?),
                u64::from(u32_at(entry, 0x10)?),
            )
        };
        if size == 0 || size > MAX_INTERP {
            return None;
        }
        let raw = src.read_at(offset, usize::try_from(size).ok()?)?;
        let path = raw.split(|b| *b == 0).next()?;
        if path.first() != Some(&b'/') {
            return None;
        }
        return Some(Some(PathBuf::from(OsStr::from_bytes(path))));
    }
    Some(None)
}

#[cfg(test)]
/// A minimal little-endian ELF64 with one PT_INTERP header naming `interp`.
pub(crate) fn elf64(interp: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 64 + 56];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
    let off = f.len() as u64;
    f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
    f[ph + 0x20..ph + 0x28].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
    f.extend_from_slice(interp);
    f.push(0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same as a big-endian ELF32.
    fn elf32_be(interp: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 52 + 32];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1;
        f[5] = 2;
        f[0x1c..0x20].copy_from_slice(&52u32.to_be_bytes());
        f[0x2a..0x2c].copy_from_slice(&32u16.to_be_bytes());
        f[0x2c..0x2e].copy_from_slice(&1u16.to_be_bytes());
        f[52..56].copy_from_slice(&PT_INTERP.to_be_bytes());
        let off = f.len() as u32;
        f[56..60].copy_from_slice(&off.to_be_bytes());
        f[52 + 0x10..52 + 0x14].copy_from_slice(&(interp.len() as u32 + 1).to_be_bytes());
        f.extend_from_slice(interp);
        f.push(0);
        f
    }

    #[test]
    fn reads_the_interpreter_of_both_classes_and_byte_orders() {
        let ld = b"/lib64/ld-linux-x86-64.so.2";
        assert_eq!(
            starter(&elf64(ld)[..]),
            Starter::Elf(Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2")))
        );
        assert_eq!(
            starter(&elf32_be(b"/lib/ld.so.1")[..]),
            Starter::Elf(Some(PathBuf::from("/lib/ld.so.1")))
        );
    }

    #[test]
    fn a_static_program_names_no_interpreter() {
        let mut f = elf64(b"/x");
        f[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD instead
        assert_eq!(starter(&f[..]), Starter::Elf(None));
    }

    #[test]
    fn reads_this_test_binary() {
        // The test binary itself is a real ELF file; whatever it names must be absolute.
        let exe = std::env::current_exe().expect("current_exe");
        match inspect(&exe).expect("inspect") {
            Starter::Elf(Some(p)) => assert!(p.is_absolute()),
            Starter::Elf(None) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scripts_name_their_interpreter() {
        assert_eq!(
            starter(&b"#!/usr/bin/env python3\nprint(1)\n"[..]),
            Starter::Script(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(
            starter(&b"#!  /bin/sh"[..]),
            Starter::Script(PathBuf::from("/bin/sh"))
        );
        assert_eq!(starter(&b"#!sh\n"[..]), Starter::Other);
        assert_eq!(starter(&b"#!\n"[..]), Starter::Other);
        assert_eq!(starter(&b"#"[..]), Starter::Other);
        assert_eq!(starter(&b""[..]), Starter::Other);
        assert_eq!(starter(&b"hello world"[..]), Starter::Other);
    }

    #[test]
    fn malformed_elf_never_panics() {
        let good = elf64(b"/lib/ld.so");
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for field in [4usize, 5, 0x20, 0x27, 0x36, 0x38, 0x39, 64, 72, 79, 96, 103] {
            for v in [0u8, 1, 2, 0x7f, 0xff] {
                let mut f = good.clone();
                f[field] = v;
                cases.push(f);
            }
        }
        // Offsets and sizes at the edges of u64.
        for (at, len) in [(0x20, 8), (72, 8), (96, 8)] {
            let mut f = good.clone();
            f[at..at + len].copy_from_slice(&u64::MAX.to_le_bytes());
            cases.push(f);
        }
        // A relative interpreter and one with no NUL.
        cases.push(elf64(b"ld.so"));
        let mut f = elf64(b"/ld");
        f.pop();
        cases.push(f);
        for c in &cases {
            match starter(&c[..]) {
                Starter::Elf(Some(p)) => assert!(p.is_absolute(), "{p:?}"),
                Starter::Elf(None) | Starter::Other | Starter::Script(_) => {}
            }
        }
        // A pseudo-random sweep over every byte of the headers.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut f = good.clone();
            let at = (seed as usize) % f.len();
            f[at] = (seed >> 32) as u8;
            let _ = starter(&f[..]);
        }
    }
}
