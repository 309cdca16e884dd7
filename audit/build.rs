//! Compiles Safehouse's own description of gVisor's trace-point messages
//! (`proto/*.proto`) into Rust with protobuf-codegen's pure-Rust parser, so the
//! build needs no `protoc`.

fn main() {
    let protos = [
        "proto/common.proto",
        "proto/container.proto",
        "proto/sentry.proto",
        "proto/syscall.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .inputs(protos)
        .cargo_out_dir("trace_proto")
        .run_from_script();
}
