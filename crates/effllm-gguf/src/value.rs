//! Metadata values ([`Value`], [`ValueArray`]) and the ordered key-value store ([`Metadata`]).

use std::collections::HashMap;

use crate::types::ValueType;

/// One metadata value: one variant per [`ValueType`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `u8` (type 0).
    U8(u8),
    /// `i8` (type 1).
    I8(i8),
    /// `u16` (type 2).
    U16(u16),
    /// `i16` (type 3).
    I16(i16),
    /// `u32` (type 4).
    U32(u32),
    /// `i32` (type 5).
    I32(i32),
    /// `f32` (type 6).
    F32(f32),
    /// `bool` (type 7).
    Bool(bool),
    /// String (type 8).
    String(String),
    /// Array (type 9), possibly nested.
    Array(ValueArray),
    /// `u64` (type 10).
    U64(u64),
    /// `i64` (type 11).
    I64(i64),
    /// `f64` (type 12).
    F64(f64),
}

/// An array value: its element type (kept even when the array is empty) and its elements.
///
/// Every element must have type `elem_type`; the reader guarantees it and the writer checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueArray {
    /// The type of every element.
    pub elem_type: ValueType,
    /// The elements, in file order.
    pub values: Vec<Value>,
}

impl ValueArray {
    /// An array of `elem_type` elements.
    pub fn new(elem_type: ValueType, values: Vec<Value>) -> Self {
        ValueArray { elem_type, values }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The elements as strings, if this is an array of strings.
    pub fn as_strs(&self) -> Option<Vec<&str>> {
        self.values.iter().map(Value::as_str).collect()
    }

    /// The elements widened to `u64`, if they are all non-negative integers.
    pub fn as_u64s(&self) -> Option<Vec<u64>> {
        self.values.iter().map(Value::as_u64).collect()
    }

    /// The elements widened to `i64`, if they are all integers that fit.
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        self.values.iter().map(Value::as_i64).collect()
    }

    /// The elements as `f32`, if this is an array of `f32`.
    pub fn as_f32s(&self) -> Option<Vec<f32>> {
        self.values.iter().map(|v| if let Value::F32(x) = v { Some(*x) } else { None }).collect()
    }

    /// The maximal array nesting of this array: 1 for an array of scalars or strings (or an empty array).
    pub fn depth(&self) -> usize {
        1 + self.values.iter().map(Value::array_depth).max().unwrap_or(0)
    }
}

impl Value {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type holding a non-negative value, widened to `u64` (`u8`/`u16`/`u32`/`u64` and
    /// `i8`/`i16`/`i32`/`i64` when `>= 0`); `None` for negative integers and every other type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits `i64` (so `u64` values above `i64::MAX` give `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(i64::from(v)),
            Value::U16(v) => Some(i64::from(v)),
            Value::U32(v) => Some(i64::from(v)),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(i64::from(v)),
            Value::I16(v) => Some(i64::from(v)),
            Value::I32(v) => Some(i64::from(v)),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// `f32` and `f64` values as `f64` (`f32` widened exactly), and integers converted with `as f64` (exact up to
    /// 2^53); `None` for other types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            Value::U8(v) => Some(f64::from(v)),
            Value::U16(v) => Some(f64::from(v)),
            Value::U32(v) => Some(f64::from(v)),
            Value::I8(v) => Some(f64::from(v)),
            Value::I16(v) => Some(f64::from(v)),
            Value::I32(v) => Some(f64::from(v)),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        if let Value::String(s) = self { Some(s) } else { None }
    }

    /// The boolean, if this is a bool value.
    pub fn as_bool(&self) -> Option<bool> {
        if let Value::Bool(b) = self { Some(*b) } else { None }
    }

    /// The array, if this is an array value.
    pub fn as_array(&self) -> Option<&ValueArray> {
        if let Value::Array(a) = self { Some(a) } else { None }
    }

    /// Array nesting depth of this value: 0 for scalars and strings, [`ValueArray::depth`] for arrays.
    pub fn array_depth(&self) -> usize {
        match self {
            Value::Array(a) => a.depth(),
            _ => 0,
        }
    }

    /// Equality with floats compared by bit pattern (so a NaN equals the same NaN and `0.0 != -0.0`), array
    /// element types included: what a byte-exact round trip preserves.
    pub fn bitwise_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::F32(a), Value::F32(b)) => a.to_bits() == b.to_bits(),
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            (Value::Array(a), Value::Array(b)) => {
                a.elem_type == b.elem_type
                    && a.values.len() == b.values.len()
                    && a.values.iter().zip(&b.values).all(|(x, y)| x.bitwise_eq(y))
            }
            (a, b) => a == b,
        }
    }

    /// An array of strings.
    pub fn string_array<I, S>(items: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Value::Array(ValueArray::new(ValueType::String, items.into_iter().map(|s| Value::String(s.into())).collect()))
    }

    /// An array of the given element type from values convertible into [`Value`].
    pub fn array<I, V>(elem_type: ValueType, items: I) -> Value
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        Value::Array(ValueArray::new(elem_type, items.into_iter().map(Into::into).collect()))
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self {
                Value::$v(x)
            }
        })*
    };
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool,
    String => String, ValueArray => Array, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

/// The metadata key-value pairs of a file, in file (insertion) order, with lookup by key.
///
/// Keys are unique: the reader rejects duplicates ([`GgufError::DuplicateKey`](crate::GgufError)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Metadata { entries: Vec::with_capacity(n), index: HashMap::with_capacity(n) }
    }

    /// Appends a pair; returns the pair back (unchanged) if the key is already present.
    pub fn insert(&mut self, key: String, value: Value) -> Result<(), (String, Value)> {
        if self.index.contains_key(&key) {
            return Err((key, value));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pairs in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys in file order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).and_then(|&i| self.entries.get(i)).map(|(_, v)| v)
    }

    /// `key` as `u64`: any integer type with a non-negative value ([`Value::as_u64`]).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// `key` as `i64`: any integer type whose value fits ([`Value::as_i64`]).
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// `key` as `f64`: `f32`/`f64` widened, or an integer ([`Value::as_f64`]).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// `key` as an array of strings (`None` if absent, not an array, or any element is not a string).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.as_strs()
    }

    /// `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// `key` as an array.
    pub fn get_array(&self, key: &str) -> Option<&ValueArray> {
        self.get(key)?.as_array()
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, Value)>, fn(&'a (String, Value)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        fn pair(e: &(String, Value)) -> (&str, &Value) {
            (e.0.as_str(), &e.1)
        }
        self.entries.iter().map(pair as fn(&'a (String, Value)) -> (&'a str, &'a Value))
    }
}
