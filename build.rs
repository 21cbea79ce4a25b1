//! Build script: compiles `proto/torchwire/v1/*.proto` and `proto/inference/*.proto` (KServe
//! v2, Triton-compatible) with protox (no system `protoc`) and
//! tonic-prost-build (and their proto3 JSON serde impls with pbjson-build), writes the file descriptor set that reflection serves, and links the
//! binaries against libtorch with an rpath so they run without `LD_LIBRARY_PATH`. With libtorch
//! present it also compiles the `.pt2` shim (`src/model/pt2_shim.cpp`, AOTInductor's package
//! loader behind `extern "C"` functions) and sets `cfg(torchwire_pt2)`.

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/torchwire/v1/torchwire.proto",
        "proto/inference/grpc_service.proto",
        "proto/inference/model_config.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=src/model/pt2_shim.cpp");
    println!("cargo::rustc-check-cfg=cfg(torchwire_pt2)");

    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds_path = out.join("torchwire_descriptor.bin");
    std::fs::write(&fds_path, prost::Message::encode_to_vec(&fds))?;
    // KServe tensors travel as raw bytes: `Bytes` avoids a copy per tensor.
    tonic_prost_build::configure().bytes(".inference").compile_fds(fds)?;
    proto3_json(&std::fs::read(&fds_path)?)?;

    link_libtorch();
    compile_pt2_shim();
    Ok(())
}

/// serde impls in the proto3 JSON mapping, for the HTTP door: torchwire.v1 in canonical form
/// (lowerCamelCase, every field emitted); KServe in Triton's form (the proto's field names).
fn proto3_json(descriptors: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    pbjson_build::Builder::new().register_descriptors(descriptors)?.emit_fields().build(&[".torchwire.v1"])?;
    pbjson_build::Builder::new()
        .register_descriptors(descriptors)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".inference"])?;
    Ok(())
}

/// Compiles the `.pt2` shim against the wheel's headers, with the wheel's C++ ABI
/// (`torch._C._GLIBCXX_USE_CXX11_ABI`, given as `LIBTORCH_CXX11_ABI` like torch-sys takes it).
/// Its libtorch symbols (`AOTIModelPackageLoader`, in `libtorch_cpu`) resolve against the
/// libraries torch-sys already links. Without `LIBTORCH` nothing links libtorch and the server
/// reports `.pt2` models as unloadable.
fn compile_pt2_shim() {
    let Ok(libtorch) = env::var("LIBTORCH") else {
        return;
    };
    let include = PathBuf::from(libtorch).join("include");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("src/model/pt2_shim.cpp")
        .std("c++17")
        // The headers are libtorch's: their warnings are not ours to fix.
        .flag("-isystem")
        .flag(include.as_os_str())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").as_os_str())
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(true)
        .compile("torchwire_pt2_shim");
    println!("cargo:rustc-cfg=torchwire_pt2");
}

/// torch-sys links libtorch but leaves the run-time search path to us. We add an rpath to the
/// libtorch `lib/` folder. `torch_cuda` is left out (`--as-needed` drops it, no symbol of it is
/// used): `device.rs` loads it at run time only where an NVIDIA driver exists, and needs its
/// folder, passed as `TORCHWIRE_LIBTORCH_LIB`.
fn link_libtorch() {
    let Ok(libtorch) = env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=TORCHWIRE_LIBTORCH_LIB={}", lib.display());
}
