//! Hand-assembled GGUF bytes for hostile-input tests (candle `gguf_tests.rs` style) and shared helpers.
#![allow(dead_code)]

use effllm_gguf::{GgmlType, GgufWriter, Value, ValueType};

/// Little-endian byte builder. `v1` switches counts, lengths and dims to `u32`.
#[derive(Clone, Debug, Default)]
pub struct B {
    pub buf: Vec<u8>,
    pub v1: bool,
}

impl B {
    /// Header: magic, version, tensor count, KV count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B { buf: Vec::new(), v1: version == 1 };
        b.raw(b"GGUF").u32(version).len(n_tensors).len(n_kv);
        b
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    /// A count or length: u32 in v1, u64 otherwise.
    pub fn len(&mut self, v: u64) -> &mut Self {
        if self.v1 { self.u32(v as u32) } else { self.u64(v) }
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.len(s.len() as u64).raw(s.as_bytes())
    }

    /// Key and value type; the value follows.
    pub fn key(&mut self, key: &str, ty: ValueType) -> &mut Self {
        self.str(key).u32(ty.id())
    }

    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, ValueType::U32).u32(v)
    }

    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key, ValueType::String).str(v)
    }

    /// A tensor info record.
    pub fn tinfo(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.len(d);
        }
        self.u32(ty).u64(offset)
    }

    /// Zero bytes up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
        self
    }

    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

/// A small valid file exercising every value type and a few tensor types.
pub fn rich_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("u8", 7u8)
        .add("i8", -7i8)
        .add("u16", 700u16)
        .add("i16", -700i16)
        .add("u32", 70_000u32)
        .add("i32", -70_000i32)
        .add("f32", 1.5f32)
        .add("bool", true)
        .add("string", "héllo")
        .add("empty", "")
        .add("u64", u64::MAX)
        .add("i64", i64::MIN)
        .add("f64", -0.25f64)
        .add("strings", Value::string_array(["a", "", "ccc"]))
        .add("empty_array", Value::array(ValueType::U32, Vec::<u32>::new()))
        .add(
            "nested",
            Value::array(
                ValueType::Array,
                [Value::array(ValueType::I16, [1i16, -2]), Value::array(ValueType::F64, Vec::<f64>::new())],
            ),
        )
        .add_tensor("a.weight", GgmlType::F32, &[3, 2], (0..24u8).collect::<Vec<u8>>())
        .add_tensor("b.weight", GgmlType::Q4_1, &[32, 2], vec![0x11; 40])
        .add_tensor("c.weight", GgmlType::Q8_0, &[64], vec![0x22; 68])
        .add_tensor("d.empty", GgmlType::F16, &[0, 5], Vec::new())
        .add_tensor("e.bias", GgmlType::I8, &[5, 1, 1, 1], vec![1, 2, 3, 4, 5]);
    w
}

/// Compares two metadata values bit for bit.
pub fn same(a: &Value, b: &Value) -> bool {
    a.bitwise_eq(b)
}
