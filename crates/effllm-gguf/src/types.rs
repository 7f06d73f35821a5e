//! The two type tags of the format: metadata [`ValueType`]s and tensor [`GgmlType`]s.

use std::fmt;

/// The type tag of a metadata value (`gguf_metadata_value_type`, a `u32` in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ValueType {
    /// 0: `u8`.
    U8 = 0,
    /// 1: `i8`.
    I8 = 1,
    /// 2: `u16`.
    U16 = 2,
    /// 3: `i16`.
    I16 = 3,
    /// 4: `u32`.
    U32 = 4,
    /// 5: `i32`.
    I32 = 5,
    /// 6: `f32`.
    F32 = 6,
    /// 7: `bool`, one byte (0 or 1).
    Bool = 7,
    /// 8: string (length + UTF-8 bytes).
    String = 8,
    /// 9: array (element type + length + elements; arrays may nest).
    Array = 9,
    /// 10: `u64`.
    U64 = 10,
    /// 11: `i64`.
    I64 = 11,
    /// 12: `f64`.
    F64 = 12,
}

impl ValueType {
    /// All 13 value types, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type with this id, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The upper-case name used by gguf-py (`UINT8`, ..., `FLOAT64`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }

    /// Size in bytes of a value of this type if it is fixed (scalars), else `None` (strings, arrays).
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value of this type can occupy in a file of the given version (v1 stores lengths as
    /// `u32`, v2+ as `u64`): scalars their size, a string its length field, an array its element type and length.
    /// Used to bound declared counts by the bytes that remain before anything is allocated.
    pub fn min_encoded_size(self, version: u32) -> u64 {
        let len_field = if version == 1 { 4 } else { 8 };
        match self {
            ValueType::String => len_field,
            ValueType::Array => 4 + len_field,
            scalar => scalar.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A ggml tensor element type (`ggml_type`, a `u32` in the file).
///
/// Every id that ggml and gguf-py 0.19.0 define is known; ids 4, 5, 31-33 and 36-38 were removed from ggml and,
/// like any other number, are rejected by the reader with [`GgufError::UnknownGgmlType`](crate::GgufError)
/// naming the tensor. Each known type has a block size (elements per block) and a type size (bytes per block);
/// a tensor's first dimension `ne0` must be a multiple of the block size.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 0: IEEE binary32.
    F32 = 0,
    /// 1: IEEE binary16.
    F16 = 1,
    /// 2: 32 weights, `d: f16` + 16 bytes of 4-bit quants (18 B).
    Q4_0 = 2,
    /// 3: 32 weights, `d: f16`, `m: f16` + 16 bytes of 4-bit quants (20 B).
    Q4_1 = 3,
    /// 6: 32 weights, 22 B.
    Q5_0 = 6,
    /// 7: 32 weights, 24 B.
    Q5_1 = 7,
    /// 8: 32 weights, `d: f16` + 32 `i8` (34 B).
    Q8_0 = 8,
    /// 9: 32 weights, `d: f16`, `s: f16` + 32 `i8` (36 B, current ggml; gguf-py's table still says 40).
    Q8_1 = 9,
    /// 10: 256-weight super-block, 84 B.
    Q2_K = 10,
    /// 11: 256-weight super-block, 110 B.
    Q3_K = 11,
    /// 12: 256-weight super-block, 144 B.
    Q4_K = 12,
    /// 13: 256-weight super-block, 176 B.
    Q5_K = 13,
    /// 14: 256-weight super-block, 210 B.
    Q6_K = 14,
    /// 15: 256-weight super-block, 292 B.
    Q8_K = 15,
    /// 16: i-quant, 256 weights, 66 B.
    IQ2_XXS = 16,
    /// 17: i-quant, 256 weights, 74 B.
    IQ2_XS = 17,
    /// 18: i-quant, 256 weights, 98 B.
    IQ3_XXS = 18,
    /// 19: i-quant, 256 weights, 50 B.
    IQ1_S = 19,
    /// 20: i-quant, 32 weights, 18 B.
    IQ4_NL = 20,
    /// 21: i-quant, 256 weights, 110 B.
    IQ3_S = 21,
    /// 22: i-quant, 256 weights, 82 B.
    IQ2_S = 22,
    /// 23: i-quant, 256 weights, 136 B.
    IQ4_XS = 23,
    /// 24: `i8`.
    I8 = 24,
    /// 25: `i16`.
    I16 = 25,
    /// 26: `i32`.
    I32 = 26,
    /// 27: `i64`.
    I64 = 27,
    /// 28: IEEE binary64.
    F64 = 28,
    /// 29: i-quant, 256 weights, 56 B.
    IQ1_M = 29,
    /// 30: bfloat16 (upper half of an f32).
    BF16 = 30,
    /// 34: ternary, 256 weights, 54 B.
    TQ1_0 = 34,
    /// 35: ternary, 256 weights, 66 B.
    TQ2_0 = 35,
    /// 39: microscaling FP4, 32 weights, 17 B.
    MXFP4 = 39,
    /// 40: NVIDIA FP4, 64 weights, 36 B (gguf-py 0.19.0).
    NVFP4 = 40,
    /// 41: 1-bit, 128 weights, 18 B (gguf-py 0.19.0).
    Q1_0 = 41,
}

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 34] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
    ];

    /// The type with this id, or `None` for an unknown (or removed) id.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name of the type (`"F32"`, `"Q4_1"`, `"IQ2_XXS"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::IQ2_XXS => "IQ2_XXS",
            GgmlType::IQ2_XS => "IQ2_XS",
            GgmlType::IQ3_XXS => "IQ3_XXS",
            GgmlType::IQ1_S => "IQ1_S",
            GgmlType::IQ4_NL => "IQ4_NL",
            GgmlType::IQ3_S => "IQ3_S",
            GgmlType::IQ2_S => "IQ2_S",
            GgmlType::IQ4_XS => "IQ4_XS",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::IQ1_M => "IQ1_M",
            GgmlType::BF16 => "BF16",
            GgmlType::TQ1_0 => "TQ1_0",
            GgmlType::TQ2_0 => "TQ2_0",
            GgmlType::MXFP4 => "MXFP4",
            GgmlType::NVFP4 => "NVFP4",
            GgmlType::Q1_0 => "Q1_0",
        }
    }

    /// `(block size B in elements, type size S in bytes per block)`, as in ggml's `type_traits` (and gguf-py's
    /// `GGML_QUANT_SIZES`, except Q8_1: 36 B, ggml's current `block_q8_1` with f16 `d` and `s`).
    pub fn block_layout(self) -> (u64, u64) {
        const QK_K: u64 = 256;
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 2 + 16),
            GgmlType::Q4_1 => (32, 2 + 2 + 16),
            GgmlType::Q5_0 => (32, 2 + 4 + 16),
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (32, 2 + 32),
            GgmlType::Q8_1 => (32, 2 + 2 + 32),
            GgmlType::Q2_K => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
            GgmlType::Q3_K => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
            GgmlType::Q4_K => (QK_K, 2 + 2 + QK_K / 2 + 12),
            GgmlType::Q5_K => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
            GgmlType::Q6_K => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
            GgmlType::Q8_K => (QK_K, 4 + QK_K + QK_K / 8),
            GgmlType::IQ2_XXS => (QK_K, 2 + QK_K / 4),
            GgmlType::IQ2_XS => (QK_K, 2 + QK_K / 4 + QK_K / 32),
            GgmlType::IQ3_XXS => (QK_K, 2 + QK_K / 4 + QK_K / 8),
            GgmlType::IQ1_S => (QK_K, 2 + QK_K / 8 + QK_K / 16),
            GgmlType::IQ4_NL => (32, 2 + 16),
            GgmlType::IQ3_S => (QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
            GgmlType::IQ2_S => (QK_K, 2 + QK_K / 4 + QK_K / 16),
            GgmlType::IQ4_XS => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 => (1, 8),
            GgmlType::F64 => (1, 8),
            GgmlType::IQ1_M => (QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
            GgmlType::BF16 => (1, 2),
            GgmlType::TQ1_0 => (QK_K, 2 + 4 * 13),
            GgmlType::TQ2_0 => (QK_K, 2 + 64),
            GgmlType::MXFP4 => (32, 1 + 16),
            GgmlType::NVFP4 => (64, 4 + 32),
            GgmlType::Q1_0 => (128, 2 + 16),
        }
    }

    /// Elements per block (1 for plain element types, 32 for the legacy quants, 256 for K-quants).
    pub fn block_size(self) -> u64 {
        self.block_layout().0
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.block_layout().1
    }

    /// Whether the type is block-quantized (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a tensor with these GGUF dims (innermost first): `(ne0 / B) · S · ne1 · ne2 · ...`.
    ///
    /// `None` if `dims` is empty, `ne0` is not a multiple of the block size, or the size overflows `u64`.
    pub fn nbytes(self, dims_gguf: &[u64]) -> Option<u64> {
        let (&ne0, rest) = dims_gguf.split_first()?;
        let (block, size) = self.block_layout();
        if !ne0.is_multiple_of(block) {
            return None;
        }
        rest.iter().try_fold((ne0 / block).checked_mul(size)?, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
