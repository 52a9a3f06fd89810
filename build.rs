//! Builds the CO-RE BPF object and generates the Rust side of the ABI.
//!
//! `bpf/egress.h` is the single source of truth for every struct and constant
//! shared with the kernel: bindgen turns it into `$OUT_DIR/abi.rs`, and
//! libbpf-cargo compiles `bpf/egress.bpf.c` into a skeleton in
//! `$OUT_DIR/egress.skel.rs`.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const ABI_HEADER: &str = "bpf/egress.h";
/// Each program file becomes one skeleton; they share maps by pinning.
const PROGRAMS: &[(&str, &str)] = &[
    ("bpf/egress.bpf.c", "egress.skel.rs"),
    ("bpf/flow.bpf.c", "flow.skel.rs"),
    ("bpf/dns.bpf.c", "dns.skel.rs"),
    ("bpf/lsm.bpf.c", "lsm.skel.rs"),
    ("bpf/packet.bpf.c", "packet.skel.rs"),
    ("bpf/sockopt.bpf.c", "sockopt.skel.rs"),
    ("bpf/iter.bpf.c", "iter.skel.rs"),
    ("bpf/promote.bpf.c", "promote.skel.rs"),
    ("bpf/exec.bpf.c", "exec.skel.rs"),
];
const SHARED: &[&str] = &["bpf/common.bpf.h", "bpf/lib"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch_include = format!("-I/usr/include/{}-linux-gnu", target_arch());

    for (source, skel) in PROGRAMS {
        SkeletonBuilder::new()
            .source(source)
            .clang_args([
                arch_include.as_str(),
                "-Ibpf",
                "-mcpu=v3",
                "-Wall",
                "-Werror",
            ])
            .build_and_generate(out.join(skel))
            .unwrap_or_else(|e| {
                panic!("compile {source} (needs clang and libelf; see README): {e:#}")
            });
    }

    bindgen::Builder::default()
        .header(ABI_HEADER)
        .clang_arg(&arch_include)
        .allowlist_file(".*/egress\\.h")
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .prepend_enum_name(false)
        .constified_enum_module(
            "egress_hook|egress_verdict|egress_scope_mode|event_kind|egress_drop|close_reason|rule_kind|policy_mode|scope_loss|scope_full|dns_message|dns_reject|sweep_outcome",
        )
        .generate()
        .expect("bindgen bpf/egress.h")
        .write_to_file(out.join("abi.rs"))
        .expect("write abi.rs");

    let sources = PROGRAMS.iter().map(|(s, _)| *s);
    for path in sources.chain(SHARED.iter().copied()).chain([ABI_HEADER]) {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn target_arch() -> String {
    match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") | Err(_) => "x86_64".into(),
        Ok("aarch64") => "aarch64".into(),
        Ok(other) => other.into(),
    }
}
