//! Device names in dataflow files (`cpu`, `wgpu`, `wgpu:N`, `cuda:N`) and their burn devices. Which devices
//! exist depends on the Cargo features the binary was built with; asking for a missing one is a validation error.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A device named in a dataflow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU, through burn's `flex` backend.
    Cpu,
    /// A wgpu adapter (index into the discrete GPUs; `wgpu` = the default adapter).
    Wgpu(Option<usize>),
    /// A CUDA device by index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let idx = i.parse::<usize>().map_err(|_| format!("device index `{i}` in `{s}` is not a number"))?;
                (n, Some(idx))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("cpu", Some(_)) => Err(format!("`{s}`: the cpu device takes no index")),
            ("wgpu", idx) => Ok(DeviceSpec::Wgpu(idx)),
            ("cuda", idx) => Ok(DeviceSpec::Cuda(idx.unwrap_or(0))),
            _ => Err(format!("unknown device `{s}` (use cpu, wgpu, wgpu:N or cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Wgpu(None) => f.write_str("wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Whether this binary was built with the backend this device needs.
    pub fn check_available(&self) -> Result<(), String> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Wgpu(_) if cfg!(feature = "wgpu") => Ok(()),
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceSpec::Wgpu(_) => Err(format!("device `{self}` needs perceptio built with `--features wgpu`")),
            DeviceSpec::Cuda(_) => Err(format!("device `{self}` needs perceptio built with `--features cuda`")),
        }
    }

    /// The burn device. Call [`DeviceSpec::check_available`] first (validation does).
    pub fn device(&self) -> Result<Device, String> {
        self.check_available()?;
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(None) => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(Some(i)) => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(*i))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => Ok(Device::cuda(*i)),
            #[allow(unreachable_patterns)]
            _ => Err(format!("device `{self}` is not available in this build")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(None));
        assert!("tpu:0".parse::<DeviceSpec>().unwrap_err().contains("unknown device"));
        assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().contains("not a number"));
    }
}
