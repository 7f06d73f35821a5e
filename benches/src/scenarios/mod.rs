//! The scenarios of `bench-all`, one module per crate they measure. Register new ones in [`crate::registry`].

pub mod galore;
pub mod griffin;
pub mod megalodon;
pub mod model;
pub mod specexec;
pub mod tensor;
pub mod train;

use effllm_tensor::{Device, Tensor};

use crate::Result;

/// Whether a case reuses one operand (cache-resident when it fits) or rotates over copies of it (DRAM-bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// One operand, called repeatedly: stays in L2/L3 if it fits.
    Resident,
    /// Enough distinct copies to cover [`crate::ceiling::stream_bytes`] (as large as the memory-ceiling buffers, at
    /// least twice the L3), called round-robin, so every call reads its operands from DRAM as a decode step does.
    Streamed,
}

impl Residency {
    /// Both, in report order.
    pub const ALL: [Residency; 2] = [Residency::Streamed, Residency::Resident];

    /// "streamed" / "resident".
    pub fn name(self) -> &'static str {
        match self {
            Residency::Resident => "resident",
            Residency::Streamed => "streamed",
        }
    }

    /// Number of copies of an operand of `bytes` bytes.
    pub fn copies(self, bytes: usize) -> usize {
        match self {
            Residency::Resident => 1,
            Residency::Streamed => crate::inputs::copies_for(bytes, crate::ceiling::stream_bytes()),
        }
    }
}

/// `n` copies of a tensor, each with its own storage.
pub fn tensor_copies(t: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let data = t.to_vec::<f32>()?;
    (0..n).map(|_| Ok(Tensor::from_vec(data.clone(), t.shape(), &Device::Cpu)?)).collect()
}

/// Round-robin index over `n` items.
#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
    i: usize,
}

impl RoundRobin {
    /// Over `n` items (at least one).
    pub fn new(n: usize) -> Self {
        RoundRobin { n: n.max(1), i: 0 }
    }

    /// The next index.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> usize {
        let i = self.i;
        self.i = if i + 1 == self.n { 0 } else { i + 1 };
        i
    }
}
