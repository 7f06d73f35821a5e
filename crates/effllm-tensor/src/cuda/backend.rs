//! Devices, storage, transfers and the kernel cache of the CUDA backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use crate::cpu::CpuStorage;
use crate::layout::Layout;
use crate::{DType, Device, Error, Result};

/// One CUDA device as the backend uses it: the primary context, one stream, a cuBLAS handle and the cache of
/// compiled kernel modules.
pub struct CudaDevice {
    ordinal: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Mutex<CudaBlas>,
    /// cuBLAS's workspace (kept alive as long as the handle uses it).
    _blas_workspace: Option<CudaSlice<u8>>,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    compiles: AtomicUsize,
    arch: &'static str,
    multiprocessors: usize,
    name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

fn cuda_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Cuda { op, msg: e.to_string() }
}

/// Why CUDA cannot be used, probed once; `None` when it can. Never panics: cudarc panics when `libcuda` is missing,
/// so the libraries are checked first and the rest runs under `catch_unwind`.
fn probe() -> &'static Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        // SAFETY: these only try to dlopen the libraries.
        let present = unsafe {
            [
                ("libcuda", cudarc::driver::sys::is_culib_present()),
                ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
                ("libcublas", cudarc::cublas::sys::is_culib_present()),
            ]
        };
        if let Some((lib, _)) = present.iter().find(|(_, ok)| !ok) {
            return Some(format!("{lib} could not be loaded"));
        }
        match std::panic::catch_unwind(|| -> std::result::Result<(), String> {
            let ctx = CudaContext::new(0).map_err(|e| e.to_string())?;
            CudaBlas::new(ctx.default_stream()).map_err(|e| e.to_string())?;
            compile_ptx_with_opts("extern \"C\" __global__ void probe() {}", CompileOptions::default())
                .map_err(|e| e.to_string())?;
            Ok(())
        }) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("the CUDA driver panicked during initialisation".into()),
        }
    })
}

/// Whether a CUDA device can be used (driver, NVRTC and cuBLAS load, device 0 initialises). Cached; never panics.
pub fn cuda_available() -> bool {
    probe().is_none()
}

/// Number of CUDA devices (0 when CUDA is unavailable).
pub fn device_count() -> usize {
    if !cuda_available() {
        return 0;
    }
    CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

pub(crate) fn check_device(device: Device) -> Result<()> {
    get(device).map(|_| ())
}

/// The backend's handle of CUDA device `ordinal` (device name, NVRTC target, compile counter, synchronisation).
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    get(Device::Cuda(ordinal))
}

/// The backend's handle of `device` (created on first use).
pub(crate) fn get(device: Device) -> Result<Arc<CudaDevice>> {
    let Device::Cuda(ordinal) = device else {
        return Err(Error::InvalidArgument { op: "cuda", msg: format!("{device} is not a CUDA device") });
    };
    if let Some(reason) = probe() {
        return Err(Error::CudaUnavailable { device, reason: reason.clone() });
    }
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(Arc::clone(d));
    }
    let count = device_count();
    if ordinal >= count {
        return Err(Error::CudaUnavailable { device, reason: format!("only {count} CUDA device(s) present") });
    }
    let ctx = CudaContext::new(ordinal).map_err(cuda_err("CudaContext::new"))?;
    // SAFETY: every tensor buffer is allocated, used and freed on the one compute stream, which orders them, so the
    // per-buffer read/write events cudarc would create (two per allocation, recorded at every launch once a second
    // stream exists) are pure overhead. The only other streams are `offload::CopyStream`s, whose callers order them
    // against this one explicitly (`CopyStream::fence` / `CopyFence::wait`, `CopyStream::wait_for_compute`): with
    // tracking off, cudarc neither records nor waits for any buffer event, whatever stream made the buffer.
    unsafe { ctx.disable_event_tracking() };
    keep_freed_memory(&ctx);
    // A stream of its own, not the legacy default stream: CUDA graphs (`capture_graph`) cannot be captured on the
    // legacy stream, and nothing here relies on its implicit synchronisation (the offload copy stream orders its
    // uploads through events).
    let stream = ctx.new_stream().map_err(cuda_err("new_stream"))?;
    let blas = CudaBlas::new(Arc::clone(&stream)).map_err(|e| Error::Cuda { op: "cublas", msg: e.to_string() })?;
    let blas_workspace = set_blas_workspace(&blas, &stream);
    use cudarc::driver::sys::CUdevice_attribute as A;
    let major = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(cuda_err("attribute"))?;
    let minor = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(cuda_err("attribute"))?;
    // NVRTC wants a &'static str; one short string per device for the life of the process.
    let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
    let multiprocessors =
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(cuda_err("attribute"))?.max(1) as usize;
    let dev = Arc::new(CudaDevice {
        ordinal,
        ctx,
        stream,
        blas: Mutex::new(blas),
        _blas_workspace: blas_workspace,
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
        compiles: AtomicUsize::new(0),
        arch,
        multiprocessors,
        name,
    });
    map.insert(ordinal, Arc::clone(&dev));
    Ok(dev)
}

/// Buffers come from the device's default memory pool (stream-ordered `cuMemAllocAsync`). Its release threshold
/// is 0 by default: at every synchronisation the pool hands all freed memory back to the driver, and the next
/// step's allocations map it again (milliseconds per step for a training step's gigabytes of activations). Keeping
/// freed memory in the pool makes it a caching allocator; `memory::stats` still counts only live tensors. Failure
/// only costs speed, so it is ignored.
fn keep_freed_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver calls on a valid device handle; `threshold` outlives the call that reads it.
    unsafe {
        if ctx.bind_to_thread().is_ok()
            && sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

/// Gives cuBLAS a 32 MiB workspace of its own (what PyTorch gives it on Hopper): the fastest Hopper GEMM kernels for
/// 16-bit inputs need one. `None` (cuBLAS keeps its default) if the buffer cannot be allocated or set.
fn set_blas_workspace(blas: &CudaBlas, stream: &Arc<CudaStream>) -> Option<CudaSlice<u8>> {
    use cudarc::driver::DevicePtrMut;
    const BYTES: usize = 32 << 20;
    // SAFETY: cuBLAS uses the workspace as scratch; nothing reads it before cuBLAS writes it.
    let mut ws = unsafe { stream.alloc::<u8>(BYTES) }.ok()?;
    let status = {
        let (ptr, _guard) = ws.device_ptr_mut(stream);
        // SAFETY: `ws` holds BYTES bytes on the handle's device and outlives the handle (both live in `CudaDevice`).
        unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut std::ffi::c_void, BYTES) }
    };
    (status == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(ws)
}

impl CudaDevice {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NVRTC target, e.g. `sm_90`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Whether kernels can be launched as programmatic dependent launches (compute capability 9.0, Hopper, or
    /// later): they may start while the previous kernel on the stream is still running.
    pub(crate) fn overlapping_launch(&self) -> bool {
        self.arch.trim_start_matches("sm_").parse::<u32>().is_ok_and(|cc| cc >= 90)
    }

    /// The number of streaming multiprocessors (the grid of a persistent kernel with one block per SM).
    pub fn multiprocessor_count(&self) -> usize {
        self.multiprocessors
    }

    /// How many modules NVRTC has compiled on this device (each source compiles once per process).
    pub fn compile_count(&self) -> usize {
        self.compiles.load(Ordering::Relaxed)
    }

    /// The compiled module for `source`, keyed by `key` (compiled once per process; later calls return the same
    /// `Arc`).
    pub fn module(&self, key: &str, source: &str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(key) {
            return Ok(Arc::clone(m));
        }
        let opts = CompileOptions {
            arch: Some(self.arch),
            use_fast_math: Some(false),
            options: vec!["-std=c++17".into()],
            name: Some(format!("{key}.cu")),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(source, opts)
            .map_err(|e| Error::Nvrtc { kernel: key.to_string(), log: e.to_string() })?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let m = self.ctx.load_module(ptx).map_err(cuda_err("load_module"))?;
        modules.insert(key.to_string(), Arc::clone(&m));
        Ok(m)
    }

    /// Function `name` of a built-in kernel family (the prelude is prepended).
    /// Looked up in a function cache first: the launch path costs a hash lookup, not a source concatenation or a
    /// driver call.
    pub(crate) fn builtin(&self, family: &'static str, body: &'static str, name: &str) -> Result<CudaFunction> {
        let key = (family, name.to_string());
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let m = self.module(family, &format!("{}{}", super::kernels::PRELUDE, body))?;
        let f = m.load_function(name).map_err(cuda_err("load_function"))?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(key, f.clone());
        Ok(f)
    }

    /// Waits for all work queued on the device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    pub(crate) fn alloc(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or(Error::InvalidArgument {
            op: "cuda alloc",
            msg: format!("{len} elements of {dtype} overflow usize"),
        })?;
        // SAFETY: the buffer is written by a kernel or a copy before it is read.
        let first = unsafe { self.stream.alloc::<u8>(bytes.max(1)) };
        // Out of memory with freed memory cached in the pool (see `keep_freed_memory`): wait for pending frees,
        // hand the cache back to the driver and try once more.
        let buf = first.or_else(|_| {
            self.release_cached_memory();
            // SAFETY: as above.
            unsafe { self.stream.alloc::<u8>(bytes.max(1)) }
        });
        let buf =
            buf.map_err(|e| Error::CudaOutOfMemory { device: Device::Cuda(self.ordinal), bytes, msg: e.to_string() })?;
        Ok(CudaStorage { buf, dtype, len, dev: Arc::clone(&self.me()?) })
    }

    /// Synchronises and returns the freed memory cached by the device's memory pool to the driver.
    fn release_cached_memory(&self) {
        use cudarc::driver::sys;
        let _ = self.stream.synchronize();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain driver calls on a valid device handle.
        unsafe {
            if sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
                let _ = sys::cuMemPoolTrimTo(pool, 0);
            }
        }
    }

    fn me(&self) -> Result<Arc<CudaDevice>> {
        get(Device::Cuda(self.ordinal))
    }
}

/// Device memory of one tensor: a byte buffer plus its dtype and element count.
pub struct CudaStorage {
    pub(crate) buf: CudaSlice<u8>,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} x {} on cuda:{})", self.len, self.dtype, self.dev.ordinal)
    }
}

impl CudaStorage {
    /// The device.
    pub fn device(&self) -> Device {
        Device::Cuda(self.dev.ordinal)
    }

    /// Uploads host data.
    pub(crate) fn upload(cpu: &CpuStorage, dev: &Arc<CudaDevice>) -> Result<CudaStorage> {
        let bytes = cpu.as_bytes();
        let buf = if bytes.is_empty() {
            // SAFETY: a one-byte placeholder that is never read.
            unsafe { dev.stream.alloc::<u8>(1) }
        } else {
            dev.stream.clone_htod(bytes)
        }
        .map_err(|e| Error::CudaOutOfMemory {
            device: Device::Cuda(dev.ordinal),
            bytes: bytes.len(),
            msg: e.to_string(),
        })?;
        Ok(CudaStorage { buf, dtype: cpu.dtype(), len: cpu.len(), dev: Arc::clone(dev) })
    }

    /// Downloads elements `off..off + len` to host memory (synchronises the stream).
    pub(crate) fn download_range(&self, off: usize, len: usize) -> Result<CpuStorage> {
        let size = self.dtype.size_in_bytes();
        if off + len > self.len {
            return Err(Error::Cuda {
                op: "download",
                msg: format!("range {off}+{len} exceeds {} elements", self.len),
            });
        }
        let bytes: Vec<u8> = if len == 0 {
            Vec::new()
        } else {
            self.dev.stream.clone_dtoh(&self.buf.slice(off * size..(off + len) * size)).map_err(cuda_err("download"))?
        };
        Ok(CpuStorage::from_bytes(self.dtype, &bytes))
    }
}

/// A strided layout as the kernels receive it (rank ≤ 8).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct KLayout {
    rank: i32,
    pad: i32,
    off: i64,
    shape: [i64; 8],
    stride: [i64; 8],
}

// SAFETY: `#[repr(C)]` plain data matching `struct Lay` of the kernel prelude.
unsafe impl DeviceRepr for KLayout {}

impl KLayout {
    pub(crate) fn new(op: &'static str, l: &Layout) -> Result<KLayout> {
        if l.rank() > 8 {
            return Err(Error::BadShape { op, shape: l.shape().to_vec(), msg: "CUDA kernels take rank <= 8".into() });
        }
        let mut k = KLayout { rank: l.rank() as i32, pad: 0, off: l.offset() as i64, shape: [1; 8], stride: [0; 8] };
        for (d, (&s, &st)) in l.shape().iter().zip(l.strides()).enumerate() {
            k.shape[d] = s as i64;
            k.stride[d] = st as i64;
        }
        // `pad` tells the kernels that element indices fit in 32 bits (cheaper index arithmetic).
        k.pad = i32::from(l.shape().iter().try_fold(1usize, |a, &s| a.checked_mul(s)).is_some_and(|n| n < 1 << 31));
        Ok(k)
    }
}

/// A 1-D grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535 * 4) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block of 256 threads per row.
pub(crate) fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

pub(crate) fn dtype_id(d: DType) -> i32 {
    match d {
        DType::F16 => 0,
        DType::BF16 => 1,
        DType::F32 => 2,
        DType::F64 => 3,
        DType::U8 => 4,
        DType::U32 => 5,
    }
}

pub(crate) fn launch_err(e: cudarc::driver::DriverError) -> Error {
    Error::Cuda { op: "kernel launch", msg: e.to_string() }
}

/// Launches a checked custom kernel (see [`super::CustomKernel`]).
pub(crate) fn launch_custom(
    kernel: &super::CustomKernel,
    device: Device,
    dims: super::LaunchDims,
    args: &mut [super::Arg<'_>],
    mode: super::LaunchMode,
) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let dev = get(device)?;
    let module = dev.module(kernel.key(), kernel.source())?;
    let f = module.load_function(kernel.function()).map_err(cuda_err("load_function"))?;
    // Outputs must be uniquely owned so that the write is visible through exactly one tensor.
    for a in args.iter_mut() {
        if let super::Arg::Out(t) = a
            && std::sync::Arc::get_mut(&mut t.storage).is_none()
        {
            return Err(Error::InvalidArgument {
                op: "CustomKernel::launch",
                msg: "an output tensor shares its storage with another tensor".into(),
            });
        }
    }
    // Device pointers (with each tensor's offset) and scalars, kept alive until the launch returns.
    let mut views = Vec::new();
    for a in args.iter() {
        match a {
            super::Arg::In(t) => views.push(tensor_view(t)?),
            super::Arg::Out(t) => views.push(tensor_view(t)?),
            _ => {}
        }
    }
    match mode {
        super::LaunchMode::Plain => {}
        // Programmatic dependent launch needs compute capability 9.0 (Hopper) or later; elsewhere a plain launch.
        super::LaunchMode::Overlapping => {
            if dev.overlapping_launch() {
                return launch_ex(&dev, &f, dims, args, &views, mode);
            }
        }
        super::LaunchMode::Cooperative => return launch_ex(&dev, &f, dims, args, &views, mode),
    }
    let mut b = dev.stream.launch_builder(&f);
    let mut vi = 0;
    for a in args.iter() {
        match a {
            super::Arg::In(_) | super::Arg::Out(_) => {
                b.arg(&views[vi]);
                vi += 1;
            }
            super::Arg::I32(v) => {
                b.arg(v);
            }
            super::Arg::U32(v) => {
                b.arg(v);
            }
            super::Arg::I64(v) => {
                b.arg(v);
            }
            super::Arg::U64(v) => {
                b.arg(v);
            }
            super::Arg::F32(v) => {
                b.arg(v);
            }
            super::Arg::F64(v) => {
                b.arg(v);
            }
        }
    }
    let cfg = LaunchConfig { grid_dim: dims.grid, block_dim: dims.block, shared_mem_bytes: dims.shared_mem_bytes };
    // SAFETY: arguments match the declared signature (kind, dtype, device, contiguity, element counts checked by
    // `CustomKernel::check`); the kernel's own indexing is the caller's contract, as with any CUDA kernel.
    unsafe { b.launch(cfg) }.map_err(launch_err)?;
    Ok(())
}

/// `cuLaunchKernelEx` with one launch attribute: programmatic stream serialization (the kernel may start while the
/// previous kernel on the stream is still running, and waits for it where it executes `griddepcontrol.wait`) or
/// cooperative (every block of the grid resident at once, or an error).
fn launch_ex(
    dev: &CudaDevice,
    f: &CudaFunction,
    dims: super::LaunchDims,
    args: &[super::Arg<'_>],
    views: &[cudarc::driver::CudaView<'_, u8>],
    mode: super::LaunchMode,
) -> Result<()> {
    use cudarc::driver::DevicePtr;
    // One 8-byte slot per parameter (device pointers and scalars, little-endian, the value in the low bytes); the
    // driver reads each parameter's own size from the kernel's signature.
    let mut guards = Vec::with_capacity(views.len());
    let mut slots: Vec<u64> = Vec::with_capacity(args.len());
    let mut vi = 0;
    for a in args {
        slots.push(match a {
            super::Arg::In(_) | super::Arg::Out(_) => {
                let (ptr, guard) = views[vi].device_ptr(&dev.stream);
                guards.push(guard);
                vi += 1;
                ptr
            }
            super::Arg::I32(v) => u64::from(*v as u32),
            super::Arg::U32(v) => u64::from(*v),
            super::Arg::I64(v) => *v as u64,
            super::Arg::U64(v) => *v,
            super::Arg::F32(v) => u64::from(v.to_bits()),
            super::Arg::F64(v) => v.to_bits(),
        });
    }
    let mut params: Vec<*mut std::ffi::c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
    let cfg = LaunchConfig { grid_dim: dims.grid, block_dim: dims.block, shared_mem_bytes: dims.shared_mem_bytes };
    // SAFETY: `params` points at one live slot per declared parameter (checked by `CustomKernel::check`), the
    // function belongs to this device's context, and the buffers stay alive (their views and guards) until the
    // launch is queued.
    let r = unsafe { launch_with_attribute(dev, f, cfg, &mut params, mode) };
    drop(guards);
    r
}

/// A launch on the device's stream: `cuLaunchKernelEx` with one launch attribute, programmatic stream serialization
/// (`LaunchMode::Overlapping`) or cooperative; a plain `cuLaunchKernel` for `LaunchMode::Plain`.
///
/// # Safety
/// `params` holds one pointer per parameter of `f`, each to a live value of the parameter's type (device pointers
/// to buffers that outlive the kernel), and the kernel's indexing stays within those buffers for `cfg`. For
/// `Overlapping` the kernel must execute `griddepcontrol.wait` before it reads anything an earlier kernel may still
/// write or writes anything an earlier kernel may still read. "Earlier" means any kernel queued before it, not only
/// the one just before: a kernel that lets its dependents start before its own wait (as the tile-layout GEMV does)
/// lets them overlap its own predecessor too.
pub(crate) unsafe fn launch_with_attribute(
    dev: &CudaDevice,
    f: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut [*mut std::ffi::c_void],
    mode: super::LaunchMode,
) -> Result<()> {
    use cudarc::driver::sys;
    dev.ctx.bind_to_thread().map_err(cuda_err("bind_to_thread"))?;
    // SAFETY: a plain-old-data union; the attribute id says which member the driver reads.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    match mode {
        super::LaunchMode::Plain => {
            let (g, b) = (cfg.grid_dim, cfg.block_dim);
            // SAFETY: the caller's contract above; the function belongs to this device's context.
            let r = unsafe {
                sys::cuLaunchKernel(
                    f.cu_function(),
                    g.0,
                    g.1,
                    g.2,
                    b.0,
                    b.1,
                    b.2,
                    cfg.shared_mem_bytes,
                    dev.stream.cu_stream(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            };
            return r.result().map_err(launch_err);
        }
        super::LaunchMode::Cooperative => {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            attr.value.cooperative = 1;
        }
        super::LaunchMode::Overlapping => {
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
        }
    }
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: dev.stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: the caller's contract above; the function belongs to this device's context.
    let r = unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) };
    r.result().map_err(launch_err)
}

/// The device address of `t`'s first element (its buffer plus its offset), for kernels that read tables of
/// pointers (e.g. one entry per layer). The address stays valid as long as `t`'s storage lives; writes through it
/// bypass [`CustomKernel::launch`](super::CustomKernel::launch)'s checks, so the caller owns their correctness.
///
/// # Errors
/// [`Error::DeviceMismatch`] for a tensor that is not on a CUDA device.
pub fn device_address(t: &crate::Tensor) -> Result<u64> {
    use cudarc::driver::DevicePtr;
    let view = tensor_view(t)?;
    let dev = get(t.device())?;
    let (ptr, _guard) = view.device_ptr(&dev.stream);
    Ok(ptr)
}

fn tensor_view(t: &crate::Tensor) -> Result<cudarc::driver::CudaView<'_, u8>> {
    let s = t.cuda_storage().ok_or(Error::DeviceMismatch {
        op: "CustomKernel::launch",
        lhs: Device::Cuda(0),
        rhs: t.device(),
    })?;
    Ok(s.buf.slice(t.layout().offset() * s.dtype.size_in_bytes()..))
}

/// A recorded sequence of kernel launches, cuBLAS calls, copies and stream-ordered allocations on a device's
/// compute stream, replayed by [`CudaGraph::launch`] as one driver call (CUDA graphs).
///
/// Replays run the recorded kernels with the recorded arguments: the same buffers, shapes and scalar values. Work
/// that changes between replays must read what changes from device memory that the caller updates (a position or
/// a length in a small tensor), and every buffer the graph reads or writes must stay alive, unmoved, as long as the
/// graph is used. Memory allocated while capturing is owned by the graph when it is also freed while capturing
/// (intermediate tensors dropped inside the closure); keep outputs in tensors allocated before the capture.
pub struct CudaGraph {
    graph: cudarc::driver::CudaGraph,
    device: Device,
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph").field("device", &self.device).finish()
    }
}

impl CudaGraph {
    /// Queues one replay on the device's compute stream (asynchronous, like a kernel launch).
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(cuda_err("graph launch"))
    }

    /// The device the graph runs on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Records everything `f` queues on `device`'s compute stream into a [`CudaGraph`] instead of running it, and
/// returns the graph with `f`'s result.
///
/// While `f` runs nothing executes, so `f` must not read results back to the host (no `to_vec`, no
/// synchronisation: the driver then reports an error and the capture fails) and must not upload host data; kernels
/// should be compiled beforehand (run the same work once outside the capture). No other thread may queue work on
/// the same device during the capture: it would be recorded into the graph or invalidate it.
pub fn capture_graph<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
    use cudarc::driver::sys;
    let dev = get(device)?;
    dev.stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(cuda_err("begin graph capture"))?;
    let out = f();
    // Always end the capture (even when `f` failed), so that the stream is usable again.
    let graph = dev.stream.end_capture(sys::CUgraphInstantiate_flags(0));
    let out = out?;
    let graph = graph
        .map_err(cuda_err("end graph capture"))?
        .ok_or(Error::Cuda { op: "end graph capture", msg: "nothing was captured".into() })?;
    Ok((CudaGraph { graph, device }, out))
}
