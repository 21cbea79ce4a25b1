//! Devices: parsing the `device` field of a request, and the set of devices this server has.
//!
//! `auto` picks the first GPU when libtorch sees one, else the CPU. Asking for a device that is
//! not there is FAILED_PRECONDITION naming the devices that are. Detection calls libtorch, so
//! [`Devices::detect`] must run off the tokio worker threads.

use std::fmt;

use crate::error::{Error, Result, clip};

/// A device a model can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The device kind as a metric label (`cpu` / `cuda:N`); bounded by the number of GPUs.
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// Default largest batch, in rows, on this device kind (a manifest may set its own).
    pub fn default_max_batch_size(self) -> usize {
        match self {
            Device::Cpu => 16,
            Device::Cuda(_) => 32,
        }
    }

    /// Default tokens per text on this device kind (a request may ask for less).
    pub fn default_max_text_length(self) -> usize {
        match self {
            Device::Cpu => 256,
            Device::Cuda(_) => 512,
        }
    }

    /// The libtorch device.
    pub fn to_tch(self) -> tch::Device {
        match self {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

/// What a request asked for, before it is matched against the devices that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// Let the server choose (GPU when present).
    Auto,
    /// This exact device.
    Exact(Device),
}

impl DeviceRequest {
    /// Parses `""`, `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "" | "auto" => return Ok(DeviceRequest::Auto),
            "cpu" => return Ok(DeviceRequest::Exact(Device::Cpu)),
            "cuda" | "gpu" => return Ok(DeviceRequest::Exact(Device::Cuda(0))),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("cuda:")
            && !n.is_empty()
            && n.len() <= 3
            && n.bytes().all(|b| b.is_ascii_digit())
            && let Ok(i) = n.parse::<usize>()
        {
            return Ok(DeviceRequest::Exact(Device::Cuda(i)));
        }
        Err(Error::InvalidDevice { device: clip(s, 32) })
    }
}

/// The devices this server found at start-up.
#[derive(Debug, Clone)]
pub struct Devices {
    gpus: usize,
}

impl Devices {
    /// Asks libtorch how many CUDA devices there are, and sets libtorch's inter-op pool to one
    /// thread (each worker is its own inter-op unit). Blocking libtorch call.
    pub fn detect() -> Self {
        static INTEROP: std::sync::Once = std::sync::Once::new();
        // libtorch refuses a second call, so it is made once per process.
        INTEROP.call_once(|| tch::set_num_interop_threads(1));
        let gpus = if load_cuda_backend() && tch::Cuda::is_available() {
            usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
        } else {
            0
        };
        Devices { gpus }
    }

    /// A CPU-only device set (tests, or `--no-cuda`).
    pub fn cpu_only() -> Self {
        Devices { gpus: 0 }
    }

    /// Every device, CPU first.
    pub fn all(&self) -> Vec<Device> {
        std::iter::once(Device::Cpu).chain((0..self.gpus).map(Device::Cuda)).collect()
    }

    /// Number of CUDA devices.
    pub fn gpu_count(&self) -> usize {
        self.gpus
    }

    /// Matches a request against the devices that exist.
    pub fn resolve(&self, req: DeviceRequest) -> Result<Device> {
        match req {
            DeviceRequest::Auto if self.gpus > 0 => Ok(Device::Cuda(0)),
            DeviceRequest::Auto => Ok(Device::Cpu),
            DeviceRequest::Exact(Device::Cuda(i)) if i >= self.gpus => Err(Error::DeviceUnavailable {
                device: Device::Cuda(i).to_string(),
                available: self.all().iter().map(Device::to_string).collect::<Vec<_>>().join(", "),
            }),
            DeviceRequest::Exact(d) => Ok(d),
        }
    }
}

/// Whether this machine has an NVIDIA driver (a GPU libtorch could use).
pub fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists() || std::path::Path::new("/dev/nvidiactl").exists()
}

/// Loads libtorch's CUDA half (`libtorch_cuda.so` and the CUDA libraries it pulls in) when, and
/// only when, an NVIDIA driver is present. The binary links `libtorch_cpu` only: mapping the
/// CUDA libraries costs about 270 MB of resident memory that a CPU-only server never uses.
/// Once loaded, the library's static initialisers register CUDA with libtorch, so
/// `tch::Cuda::is_available()` sees the GPUs. Returns whether CUDA support is loaded.
fn load_cuda_backend() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        if !nvidia_driver_present() {
            return false;
        }
        let mut candidates = Vec::new();
        if let Some(dir) = option_env!("TORCHWIRE_LIBTORCH_LIB") {
            candidates.push(std::path::Path::new(dir).join("libtorch_cuda.so"));
        }
        // Else the dynamic loader's search path (the binary's RUNPATH, LD_LIBRARY_PATH).
        candidates.push("libtorch_cuda.so".into());
        let mut errors = Vec::new();
        for path in candidates {
            match open_global(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "loaded libtorch CUDA support");
                    return true;
                }
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        tracing::warn!(errors = ?errors, "NVIDIA driver present but libtorch CUDA support did not load; CPU only");
        false
    })
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, never closed.
#[allow(unsafe_code)]
fn open_global(path: &std::path::Path) -> Result<(), libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: the library is libtorch's own CUDA half, built together with the libtorch_cpu
    // this binary links; its initialisers only register CUDA hooks with libtorch. It runs once,
    // from device detection, before any model is loaded, and is never unloaded (forgotten), so
    // no code or data it registers can dangle.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }?;
    std::mem::forget(lib);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_libraries_are_mapped_only_with_an_nvidia_driver() {
        let devices = Devices::detect();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        if nvidia_driver_present() {
            assert!(maps.contains("libtorch_cuda"), "driver present but CUDA support not loaded");
        } else {
            assert_eq!(devices.gpu_count(), 0);
            assert!(!maps.contains("libtorch_cuda"), "libtorch_cuda mapped on a machine without a GPU");
            assert!(!maps.contains("libcublas"), "cuBLAS mapped on a machine without a GPU");
        }
    }

    #[test]
    fn parses_device_strings() {
        assert_eq!(DeviceRequest::parse("").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse("AUTO").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Exact(Device::Cpu));
        assert_eq!(DeviceRequest::parse("cuda:2").unwrap(), DeviceRequest::Exact(Device::Cuda(2)));
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:99999", "cuda:1x", "cpu0"] {
            let err = DeviceRequest::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidDevice { .. }), "{bad}");
        }
    }

    #[test]
    fn missing_gpu_is_failed_precondition_naming_the_devices() {
        let d = Devices::cpu_only();
        assert_eq!(d.resolve(DeviceRequest::Auto).unwrap(), Device::Cpu);
        let err = d.resolve(DeviceRequest::Exact(Device::Cuda(0))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("available devices: cpu"), "{err}");
    }
}
