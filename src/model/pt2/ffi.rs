//! The crate's one FFI boundary besides `device.rs`'s `dlopen`: safe wrappers over the
//! `extern "C"` functions of `src/model/pt2_shim.cpp` (AOTInductor's package loader).
//!
//! The shim catches every C++ exception and returns it as an error string, so nothing unwinds
//! across this boundary. Tensors cross as `at::Tensor*`, the pointer tch's `Tensor` wraps:
//! inputs are borrowed for the call, outputs are new heap tensors that tch then owns and frees.
//! Only [`super`] calls this, on the worker thread that owns the package.

// Every unsafe block below carries its own SAFETY argument; the lint stays denied elsewhere.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

/// An error the shim returned: a C++ exception's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimError(pub String);

impl std::fmt::Display for ShimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(torchwire_pt2)]
mod sys {
    use std::ffi::{c_char, c_int, c_void};

    /// Opaque handle of a loaded package (`TwPt2` in the shim).
    #[repr(C)]
    pub struct TwPt2 {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        pub fn tw_pt2_free_str(s: *mut c_char);
        pub fn tw_pt2_torch_version() -> *mut c_char;
        pub fn tw_pt2_read_metadata(path: *const c_char, out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
        pub fn tw_pt2_load(
            path: *const c_char,
            device_index: c_int,
            out: *mut *mut TwPt2,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn tw_pt2_free(h: *mut TwPt2);
        pub fn tw_pt2_metadata(h: *mut TwPt2, out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
        pub fn tw_pt2_run(
            h: *mut TwPt2,
            inputs: *const *mut c_void,
            n_in: usize,
            outputs: *mut *mut c_void,
            cap: usize,
            n_out: *mut usize,
            err: *mut *mut c_char,
        ) -> c_int;
    }
}

/// Takes ownership of a string the shim allocated.
#[cfg(torchwire_pt2)]
fn take_string(p: *mut c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: `p` is a NUL-terminated string the shim allocated with malloc and handed over;
    // it is read once and freed once, here, by the shim's own free.
    unsafe {
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        sys::tw_pt2_free_str(p);
        s
    }
}

/// Turns a shim status and its error string into a `Result`. A c10 error's text is kept to its
/// first line (the rest is a C++ stack trace).
#[cfg(torchwire_pt2)]
fn status(rc: c_int, err: *mut c_char) -> Result<(), ShimError> {
    let msg = take_string(err);
    if rc == 0 {
        return Ok(());
    }
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown error");
    Err(ShimError(first.trim().to_owned()))
}

fn c_path(path: &Path) -> Result<CString, ShimError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| ShimError("the path holds a NUL byte".into()))
}

/// Splits the shim's `key \x1f value \x1e ...` encoding.
fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('\x1e')
        .filter(|e| !e.is_empty())
        .filter_map(|e| e.split_once('\x1f'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(not(torchwire_pt2))]
fn missing() -> ShimError {
    ShimError("this binary was built without the .pt2 backend (LIBTORCH was not set)".into())
}

/// The libtorch release the shim was compiled against (`TORCH_VERSION`, e.g. `2.13.0`).
pub fn torch_version() -> String {
    #[cfg(torchwire_pt2)]
    {
        // SAFETY: no arguments; returns a malloc'd string (or NULL) that take_string frees.
        take_string(unsafe { sys::tw_pt2_torch_version() })
    }
    #[cfg(not(torchwire_pt2))]
    String::new()
}

/// A package's metadata, read from the archive without loading its code.
pub fn read_metadata(path: &Path) -> Result<Vec<(String, String)>, ShimError> {
    let p = c_path(path)?;
    #[cfg(torchwire_pt2)]
    {
        let mut out = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: `p` is a valid C string for the call; `out` and `err` are valid out-pointers
        // the shim fills with malloc'd strings (or leaves NULL), freed by take_string.
        let rc = unsafe { sys::tw_pt2_read_metadata(p.as_ptr(), &mut out, &mut err) };
        status(rc, err)?;
        Ok(parse_pairs(&take_string(out)))
    }
    #[cfg(not(torchwire_pt2))]
    {
        let _ = p;
        Err(missing())
    }
}

/// A loaded AOTInductor package. Not `Sync`: one thread runs it at a time (the worker's, or
/// the fast path's under the engine's mutex).
pub struct Package {
    #[cfg(torchwire_pt2)]
    handle: std::ptr::NonNull<sys::TwPt2>,
}

// SAFETY: the loader holds no thread-affine state (its runner container takes a lock per run);
// the handle is moved to, and then used only by, the one thread that owns the backend.
unsafe impl Send for Package {}

/// Most outputs a package may return (torchwire's models return one).
const MAX_OUTPUTS: usize = 16;

impl Package {
    /// Loads the package at `path`; `cuda` is the CUDA ordinal, `None` for the CPU.
    pub fn load(path: &Path, cuda: Option<usize>) -> Result<Self, ShimError> {
        let p = c_path(path)?;
        let index = match cuda {
            None => -1,
            Some(i) => c_int::try_from(i).map_err(|_| ShimError(format!("CUDA ordinal {i} out of range")))?,
        };
        #[cfg(torchwire_pt2)]
        {
            let mut out = std::ptr::null_mut();
            let mut err = std::ptr::null_mut();
            // SAFETY: valid C string and out-pointers for the call; on success `out` is a
            // handle this Package owns and frees once in Drop.
            let rc = unsafe { sys::tw_pt2_load(p.as_ptr(), index, &mut out, &mut err) };
            status(rc, err)?;
            let handle =
                std::ptr::NonNull::new(out).ok_or_else(|| ShimError("the loader returned no handle".into()))?;
            Ok(Package { handle })
        }
        #[cfg(not(torchwire_pt2))]
        {
            let _ = (p, index);
            Err(missing())
        }
    }

    /// The loaded package's metadata.
    pub fn metadata(&self) -> Result<Vec<(String, String)>, ShimError> {
        #[cfg(torchwire_pt2)]
        {
            let mut out = std::ptr::null_mut();
            let mut err = std::ptr::null_mut();
            // SAFETY: the handle is live (owned by self); out-pointers as in read_metadata.
            let rc = unsafe { sys::tw_pt2_metadata(self.handle.as_ptr(), &mut out, &mut err) };
            status(rc, err)?;
            Ok(parse_pairs(&take_string(out)))
        }
        #[cfg(not(torchwire_pt2))]
        Err(missing())
    }

    /// Runs the package on `inputs` (on its device, of the dtypes and shapes it was exported
    /// for: the caller checks them first, as the compiled code does not).
    pub fn run(&mut self, inputs: &[tch::Tensor]) -> Result<Vec<tch::Tensor>, ShimError> {
        let ptrs: Vec<*mut c_void> = inputs.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        #[cfg(torchwire_pt2)]
        {
            let mut outs: [*mut c_void; MAX_OUTPUTS] = [std::ptr::null_mut(); MAX_OUTPUTS];
            let mut n_out = 0usize;
            let mut err = std::ptr::null_mut();
            // SAFETY: the handle is live and used by this thread only (&mut self); `ptrs` are
            // `at::Tensor*` borrowed from `inputs`, which outlive the call (the shim copies the
            // tensors, i.e. takes its own references); `outs` has room for MAX_OUTPUTS, which
            // the shim is told and never exceeds.
            let rc = unsafe {
                sys::tw_pt2_run(
                    self.handle.as_ptr(),
                    ptrs.as_ptr(),
                    ptrs.len(),
                    outs.as_mut_ptr(),
                    MAX_OUTPUTS,
                    &mut n_out,
                    &mut err,
                )
            };
            status(rc, err)?;
            Ok(outs[..n_out.min(MAX_OUTPUTS)]
                .iter()
                // SAFETY: each is a `new at::Tensor` the shim handed over; tch's Tensor takes
                // ownership and frees it once (at_free = delete) when dropped.
                .map(|p| unsafe { tch::Tensor::from_ptr(p.cast()) })
                .collect())
        }
        #[cfg(not(torchwire_pt2))]
        {
            let _ = (ptrs, MAX_OUTPUTS);
            Err(missing())
        }
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        #[cfg(torchwire_pt2)]
        {
            // SAFETY: the handle came from tw_pt2_load and is freed exactly once, here.
            unsafe { sys::tw_pt2_free(self.handle.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_are_split_on_the_shims_separators() {
        let pairs = parse_pairs("a\x1f1\x1eb\x1fx=y\nz\x1e");
        assert_eq!(pairs, vec![("a".into(), "1".into()), ("b".into(), "x=y\nz".into())]);
        assert!(parse_pairs("").is_empty());
    }

    #[test]
    fn a_missing_or_truncated_package_is_an_error_not_a_crash() {
        let dir = std::env::temp_dir().join(format!("tw-pt2-ffi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pt2");
        std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
        for p in [dir.join("absent.pt2"), junk] {
            assert!(read_metadata(&p).is_err(), "{}", p.display());
            assert!(Package::load(&p, None).is_err(), "{}", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
