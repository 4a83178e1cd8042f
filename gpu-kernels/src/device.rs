//! The one GPU device of a process, and the plumbing every kernel shares: cached pipelines,
//! buffers in and out, one dispatch or a sequence of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;
use wgpu::util::DeviceExt;

/// What `FABRIC_GPU` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuMode {
    /// Use a hardware adapter when there is one, else the CPU reference (said once on
    /// stderr). A software adapter (lavapipe) is no faster than the references on the same
    /// cores, so `auto` does not use it.
    Auto,
    /// Never touch a GPU: CPU references only.
    Off,
    /// An adapter is required: its absence is an error.
    Require,
}

impl GpuMode {
    /// Reads `FABRIC_GPU` (`auto` when unset).
    pub fn from_env() -> Result<Self, GpuError> {
        match std::env::var("FABRIC_GPU") {
            Err(std::env::VarError::NotPresent) => Ok(GpuMode::Auto),
            Err(std::env::VarError::NotUnicode(_)) => Err(GpuError::BadMode("(not UTF-8)".into())),
            Ok(value) => match value.as_str() {
                "auto" | "" => Ok(GpuMode::Auto),
                "off" => Ok(GpuMode::Off),
                "require" => Ok(GpuMode::Require),
                other => Err(GpuError::BadMode(other.to_owned())),
            },
        }
    }
}

/// Errors of the GPU layer.
#[derive(Debug, Error, Clone)]
pub enum GpuError {
    /// `FABRIC_GPU` holds something else than auto, off or require.
    #[error("FABRIC_GPU={0} is not one of auto, off, require")]
    BadMode(String),
    /// `FABRIC_GPU=require` and wgpu found no adapter.
    #[error("FABRIC_GPU=require but no GPU adapter was found: {0} (on Debian, `apt-get install mesa-vulkan-drivers libvulkan1` gives the lavapipe adapter)")]
    NoAdapter(String),
    /// The adapter would not give a device.
    #[error("the GPU adapter {adapter} refused a device: {detail}")]
    NoDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        detail: String,
    },
    /// Input sizes the kernel cannot take.
    #[error("{kernel}: {detail}")]
    BadInput {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A buffer is larger than the device allows in one binding.
    #[error(
        "{kernel}: a buffer of {bytes} bytes is over the device's binding limit of {limit} bytes"
    )]
    TooLarge {
        /// The kernel.
        kernel: &'static str,
        /// Bytes asked.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// Mapping the result back failed.
    #[error("reading a GPU result back failed: {0}")]
    Readback(String),
}

/// A kernel's identity, as receipts carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelId {
    /// Its name, e.g. `embed`.
    pub id: &'static str,
    /// Its version: bumped whenever its output for some input changes.
    pub version: u32,
}

/// The process's device: created once, shared by every kernel and job.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter.name)
            .finish_non_exhaustive()
    }
}

/// Where kernels run.
#[derive(Clone, Copy, Debug)]
pub enum Engine {
    /// On the shared device.
    Gpu(&'static Gpu),
    /// On the CPU reference, every core.
    Cpu,
}

impl Engine {
    /// The engine `FABRIC_GPU` asks for (see [`shared`]).
    pub fn from_env() -> Result<Self, GpuError> {
        Ok(match shared(GpuMode::from_env()?)? {
            Some(gpu) => Engine::Gpu(gpu),
            None => Engine::Cpu,
        })
    }

    /// The adapter's name, or `cpu-reference`.
    pub fn name(&self) -> String {
        match self {
            Engine::Gpu(gpu) => gpu.adapter_name().to_owned(),
            Engine::Cpu => "cpu-reference".to_owned(),
        }
    }
}

static SHARED: OnceLock<Result<Option<Gpu>, GpuError>> = OnceLock::new();

/// The process's device under `mode`: opened on first use, then the same for every caller.
/// `Off` gives `None`; `Auto` gives `None` (and says so once on stderr) when there is no
/// adapter; `Require` gives an error then.
pub fn shared(mode: GpuMode) -> Result<Option<&'static Gpu>, GpuError> {
    if mode == GpuMode::Off {
        return Ok(None);
    }
    let opened = SHARED.get_or_init(|| match Gpu::open() {
        Ok(gpu) => Ok(Some(gpu)),
        Err(GpuError::NoAdapter(detail)) => {
            eprintln!("fabric: no GPU adapter ({detail}); GPU kernels run on their CPU references");
            Ok(None)
        }
        Err(other) => Err(other),
    });
    match (opened, mode) {
        // A software rasterizer runs on the same cores as the CPU references, with a dispatch
        // overhead of its own (about a millisecond per small job on lavapipe): `auto` leaves
        // it alone; `require` uses it.
        (Ok(Some(gpu)), GpuMode::Auto) if gpu.is_software() => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "fabric: the only GPU adapter is {}, a software rasterizer on the CPU; GPU \
                     kernels run on their CPU references (FABRIC_GPU=require uses it anyway)",
                    gpu.adapter_name()
                )
            });
            Ok(None)
        }
        (Ok(Some(gpu)), _) => Ok(Some(gpu)),
        (Ok(None), GpuMode::Require) => Err(GpuError::NoAdapter(
            "wgpu found no Vulkan adapter".to_owned(),
        )),
        (Ok(None), _) => Ok(None),
        (Err(err), _) => Err(err.clone()),
    }
}

impl Gpu {
    fn open() -> Result<Self, GpuError> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(descriptor);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|err| GpuError::NoAdapter(err.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fabric"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|err| GpuError::NoDevice {
            adapter: info.name.clone(),
            detail: err.to_string(),
        })?;
        Ok(Self {
            device,
            queue,
            adapter: info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// The adapter's name as the driver reports it (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub fn adapter_name(&self) -> &str {
        &self.adapter.name
    }

    /// Whether the adapter is a software rasterizer running on the CPU (lavapipe).
    pub fn is_software(&self) -> bool {
        self.adapter.device_type == wgpu::DeviceType::Cpu
    }

    /// The pipeline of `entry` in `source`, compiled once per process under `key`.
    pub(crate) fn pipeline(
        &self,
        key: &'static str,
        source: &'static str,
        entry: &'static str,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(pipelines.entry(key).or_insert_with(|| {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(key),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            Arc::new(
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(key),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    }),
            )
        }))
    }

    /// Checks a binding's size against the device's limit.
    pub(crate) fn check_size(&self, kernel: &'static str, bytes: u64) -> Result<(), GpuError> {
        let limit = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > limit {
            return Err(GpuError::TooLarge {
                kernel,
                bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Checks a dispatch's workgroup count against the device's per-dimension limit.
    pub(crate) fn check_groups(&self, groups: u32) -> Result<(), GpuError> {
        let limit = self.limits.max_compute_workgroups_per_dimension;
        if groups > limit {
            return Err(GpuError::BadInput {
                kernel: "dispatch",
                detail: format!(
                    "{groups} workgroups in one dimension, over the device's limit of {limit}"
                ),
            });
        }
        Ok(())
    }

    /// A storage buffer holding `words` (at least 4 bytes, as wgpu wants).
    pub(crate) fn input<T: Word>(&self, label: &str, words: &[T]) -> wgpu::Buffer {
        let mut bytes = Vec::with_capacity(words.len().max(1) * 4);
        for word in words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        if bytes.is_empty() {
            bytes.extend_from_slice(&[0; 4]);
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// A uniform buffer of parameters.
    pub(crate) fn uniform(&self, label: &str, words: &[u32]) -> wgpu::Buffer {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// An output storage buffer of `words` 32-bit words.
    pub(crate) fn output(&self, label: &str, words: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (words.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Runs `passes` (pipeline, buffers bound at 0.., workgroups) in order in one submission,
    /// then reads `words` 32-bit words of `result` back.
    pub(crate) fn run<T: Word>(
        &self,
        passes: &[Pass<'_>],
        result: &wgpu::Buffer,
        words: usize,
    ) -> Result<Vec<T>, GpuError> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for (pipeline, buffers, (x, y, z)) in passes {
            let layout = pipeline.get_bind_group_layout(0);
            let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
                .iter()
                .enumerate()
                .map(|(binding, buffer)| wgpu::BindGroupEntry {
                    binding: binding as u32,
                    resource: buffer.as_entire_binding(),
                })
                .collect();
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
            // One pass per dispatch: each sees the previous one's writes.
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(*x, *y, *z);
        }
        let bytes = (words.max(1) * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(result, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |outcome| {
            // The receiver waits below; if it is gone there is nobody to tell.
            let _ = sender.send(outcome);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|err| GpuError::Readback(err.to_string()))?;
        receiver
            .recv()
            .map_err(|err| GpuError::Readback(err.to_string()))?
            .map_err(|err| GpuError::Readback(err.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|err| GpuError::Readback(err.to_string()))?;
        let out = view
            .chunks_exact(4)
            .take(words)
            .map(|chunk| T::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

/// One dispatch: the pipeline, the buffers bound at 0, 1, …, and the workgroup counts.
pub(crate) type Pass<'a> = (
    &'a wgpu::ComputePipeline,
    &'a [&'a wgpu::Buffer],
    (u32, u32, u32),
);

/// A 32-bit word kernels read and write.
pub trait Word: Copy {
    /// Little-endian bytes.
    fn to_le_bytes(self) -> [u8; 4];
    /// From little-endian bytes.
    fn from_le_bytes(bytes: [u8; 4]) -> Self;
}

impl Word for u32 {
    fn to_le_bytes(self) -> [u8; 4] {
        u32::to_le_bytes(self)
    }
    fn from_le_bytes(bytes: [u8; 4]) -> Self {
        u32::from_le_bytes(bytes)
    }
}

impl Word for i32 {
    fn to_le_bytes(self) -> [u8; 4] {
        i32::to_le_bytes(self)
    }
    fn from_le_bytes(bytes: [u8; 4]) -> Self {
        i32::from_le_bytes(bytes)
    }
}

/// Workgroups needed to cover `items` with groups of `size`.
pub(crate) fn groups(items: usize, size: u32) -> u32 {
    items.div_ceil(size as usize).max(1) as u32
}
