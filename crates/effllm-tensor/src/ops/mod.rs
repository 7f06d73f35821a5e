//! The ops of [`Tensor`](crate::Tensor), grouped by family. Each file adds an `impl Tensor` block.

pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod loss;
pub mod matmul;
pub mod nn;
pub mod random;
pub mod reduce;
