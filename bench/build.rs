//! Build script: gives the `torchwire-bench` binary and its tests an rpath to libtorch's `lib/`
//! folder (the `raw` subcommand runs models through tch), so they run without
//! `LD_LIBRARY_PATH`. The server's own `build.rs` does the same for its binaries; an rpath set
//! there does not reach this package's link lines.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
