//! Builds what the shim embeds for seccomp in `runsc exec`'d processes:
//! - the seccomp exec helper (`../seccomp-exec/src/main.rs`), compiled by `$RUSTC` directly
//!   as a static executable (an image may have no libc or loader);
//! - the x86_64 system call table (name, number), read from the kernel's UAPI header
//!   (`asm/unistd_64.h`, in linux-libc-dev, which the static build's libc6-dev pulls in).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the x86_64 UAPI system call numbers.
const UNISTD_64: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

/// x86_64 system calls added after Linux 6.1 (bookworm's headers), from the kernel's
/// `syscall_64.tbl`: added when the header lacks them, so a profile naming one is not read as
/// naming an unknown call (skipped) on an older build host.
const NEWER_THAN_6_1: &[(&str, u32)] = &[
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set")));
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| fail("no manifest dir")));
    let helper_src = manifest.join("../seccomp-exec/src");
    println!("cargo:rerun-if-changed={}", helper_src.display());
    println!("cargo:rerun-if-changed={UNISTD_64}");
    build_helper(&helper_src.join("main.rs"), &out.join("seccomp-exec"));
    // Names the node-wide copy bundles hard-link to: one per helper content.
    let helper = std::fs::read(out.join("seccomp-exec"))
        .unwrap_or_else(|e| fail(&format!("read the built helper: {e}")));
    println!(
        "cargo:rustc-env=SAFEHOUSE_SECCOMP_EXEC_SHA256={}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&helper))
    );
    syscall_table(Path::new(UNISTD_64), &out.join("syscalls_x86_64.rs"));
}

fn fail(why: &str) -> ! {
    panic!("safehouse-shim build: {why}")
}

fn build_helper(main: &Path, dest: &Path) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").unwrap_or_else(|_| fail("TARGET is not set"));
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin"])
        .args(["--crate-name", "seccomp_exec", "--target", &target])
        .args(["-C", "target-feature=+crt-static", "-C", "panic=abort"])
        .args(["-C", "opt-level=s", "-C", "strip=symbols"])
        .arg("-o")
        .arg(dest)
        .arg(main)
        .status()
        .unwrap_or_else(|e| fail(&format!("run rustc for the seccomp exec helper: {e}")));
    if !status.success() {
        fail(&format!(
            "the static seccomp exec helper did not build ({status}); it needs glibc's libc.a (apt-get install libc6-dev)"
        ));
    }
}

fn syscall_table(header: &Path, dest: &Path) {
    let text = std::fs::read_to_string(header).unwrap_or_else(|e| {
        fail(&format!(
            "read {}: {e} (apt-get install linux-libc-dev)",
            header.display()
        ))
    });
    let mut table: Vec<(&str, u32)> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("#define __NR_")?.split_whitespace();
            let name = words.next()?;
            let nr = words.next()?.parse().ok()?;
            Some((name, nr))
        })
        .collect();
    if table.len() < 300 {
        fail(&format!(
            "{}: only {} system calls found",
            header.display(),
            table.len()
        ));
    }
    for &(name, nr) in NEWER_THAN_6_1 {
        if !table.iter().any(|&(n, _)| n == name) {
            table.push((name, nr));
        }
    }
    table.sort_unstable();
    let mut src = String::from("/// x86_64 system calls by name, sorted (from asm/unistd_64.h).\npub const SYSCALLS: &[(&str, u32)] = &[\n");
    for (name, nr) in table {
        let _ = writeln!(src, "    ({name:?}, {nr}),");
    }
    src.push_str("];\n");
    std::fs::write(dest, src).unwrap_or_else(|e| fail(&format!("write {}: {e}", dest.display())));
}
