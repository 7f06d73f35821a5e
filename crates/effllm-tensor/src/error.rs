//! Typed errors. Every fallible operation of the crate returns [`Result`]; no user-reachable path panics.

use crate::{DType, Device};

/// Everything that can go wrong in `effllm-tensor`.
///
/// Variants name the operation (`op`) and the offending shapes, dtypes or devices, so that a message read in a
/// log says what to fix.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The crate was built without the `cuda` feature and a CUDA device was asked for.
    #[error("device {device:?} needs the `cuda` feature of effllm-tensor, which this build does not have")]
    NotCompiledWithCuda {
        /// The device that was asked for.
        device: Device,
    },
    /// Two operands of an op live on different devices.
    #[error("{op}: operands live on different devices ({lhs:?} and {rhs:?})")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// Device of the first operand.
        lhs: Device,
        /// Device of the second operand.
        rhs: Device,
    },
    /// Two operands of an op have different dtypes.
    #[error("{op}: dtype mismatch ({lhs:?} and {rhs:?})")]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// Dtype of the first operand.
        lhs: DType,
        /// Dtype of the second operand.
        rhs: DType,
    },
    /// The op does not support this dtype.
    #[error("{op}: unsupported dtype {dtype:?} (expected {expected})")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The dtype that was given.
        dtype: DType,
        /// What the op accepts, in words.
        expected: &'static str,
    },
    /// Shapes of operands are incompatible.
    #[error("{op}: incompatible shapes {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand.
        rhs: Vec<usize>,
    },
    /// A shape does not fit the op (wrong rank, wrong size of one dimension).
    #[error("{op}: bad shape {shape:?}: {msg}")]
    BadShape {
        /// The operation.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
        /// What was expected.
        msg: String,
    },
    /// The number of elements of the data does not match the shape.
    #[error("{op}: {got} elements do not fill shape {shape:?} ({expected} expected)")]
    ElementCount {
        /// The operation.
        op: &'static str,
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// A dimension index is out of range for the tensor's rank.
    #[error("{op}: dimension {dim} is out of range for rank {rank}")]
    DimOutOfRange {
        /// The operation.
        op: &'static str,
        /// The requested dimension.
        dim: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// An index (into a dimension, or a gathered id) is out of bounds.
    #[error("{op}: index {index} is out of bounds for a dimension of size {size}")]
    IndexOutOfBounds {
        /// The operation.
        op: &'static str,
        /// The index.
        index: usize,
        /// The size of the indexed dimension.
        size: usize,
    },
    /// A view or memory layout is not usable for the op (e.g. a negative-stride ndarray view).
    #[error("{op}: unsupported layout: {msg}")]
    Layout {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// An argument outside the op's domain (a zero thread count, k larger than the dimension, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Quantized data is malformed (length not a whole number of blocks, row length not a multiple of 32, ...).
    #[error("{op}: bad quantized data: {msg}")]
    Quant {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A linear-algebra routine failed (e.g. the SVD did not converge, or the input held NaN/inf).
    #[error("{op}: {msg}")]
    Linalg {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        msg: String,
    },
    /// CUDA cannot be used on this machine (no driver, no device, or a library failed to load).
    #[error("{device}: CUDA is unavailable: {reason}")]
    CudaUnavailable {
        /// The device that was asked for.
        device: Device,
        /// What the probe found.
        reason: String,
    },
    /// A CUDA driver or cuBLAS call failed.
    #[error("CUDA {op}: {msg}")]
    Cuda {
        /// The failing call.
        op: &'static str,
        /// The driver's message.
        msg: String,
    },
    /// A device allocation failed.
    #[error("{device}: could not allocate {bytes} bytes: {msg}")]
    CudaOutOfMemory {
        /// The device.
        device: Device,
        /// The requested size.
        bytes: usize,
        /// The driver's message.
        msg: String,
    },
    /// NVRTC could not compile a kernel.
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Nvrtc {
        /// The kernel (module) name.
        kernel: String,
        /// The compiler log.
        log: String,
    },
    /// The thread pool could not be built.
    #[error("thread pool: {0}")]
    ThreadPool(String),
    /// A gradient was asked of an op that has none for this input (a quantized weight, an in-place write into a
    /// tracked tensor, a decomposition).
    #[error("{op} is not differentiable: {reason}")]
    NotDifferentiable {
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// `backward` from a tensor that depends on no tensor requiring a gradient.
    #[error("backward: the root does not depend on any tensor that requires a gradient")]
    NotTracked,
    /// `backward` without a seed gradient from a root that is not a single element.
    #[error("backward: the root has shape {shape:?}; pass a seed gradient of that shape or reduce it to a scalar")]
    NonScalarRoot {
        /// The root's shape.
        shape: Vec<usize>,
    },
    /// A second backward sweep through a graph whose rules have already run (and freed their saved tensors).
    #[error("backward: the graph through {op} was already consumed by an earlier backward; recompute the forward")]
    GraphConsumed {
        /// The op whose rule is gone.
        op: &'static str,
    },
    /// A backward rule returned a gradient that does not fit its input (a bug in the rule).
    #[error("backward of {op}: {msg}")]
    Autograd {
        /// The op whose rule misbehaved.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A gradient holds NaN or infinity.
    #[error("the gradient of tensor #{id} holds {count} non-finite values")]
    NonFiniteGradient {
        /// The leaf's [`TensorId`](crate::autograd::TensorId) number.
        id: u64,
        /// How many elements are NaN or infinite.
        count: usize,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
