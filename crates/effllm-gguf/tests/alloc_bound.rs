//! Invariant 15's memory half: parsing never allocates more than O(input length), whatever the header claims.
//! A counting global allocator measures the peak heap use of `GgufFile::parse` on hostile and valid inputs.
//! (One `#[test]` only, so no other test thread allocates while a measurement runs.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{B, rich_writer};
use effllm_gguf::{GgufFile, ReadOptions, ValueType};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated (above the level at entry) while parsing `data` in both modes.
fn peak_parse(data: &[u8]) -> usize {
    let mut worst = 0;
    for opts in [ReadOptions::default(), ReadOptions::strict()] {
        let base = CURRENT.load(Ordering::SeqCst);
        PEAK.store(base, Ordering::SeqCst);
        let r = GgufFile::parse(data, &opts);
        worst = worst.max(PEAK.load(Ordering::SeqCst) - base);
        drop(r);
    }
    worst
}

fn nested_claims(levels: usize, claim: u64, pad: usize) -> Vec<u8> {
    // Every level claims `claim` elements of type ARRAY but holds one; the file is padded so the claims pass the
    // remaining-bytes bound.
    let mut b = B::header(3, 0, 1);
    b.key("deep", ValueType::Array);
    for _ in 0..levels {
        b.u32(ValueType::Array.id()).u64(claim);
    }
    b.zeros(pad);
    b.bytes()
}

#[test]
fn parsing_allocates_o_input_length() {
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("rich", rich_writer().to_bytes().unwrap()),
        ("kv_count_max", {
            let mut b = B::header(3, 0, u64::MAX);
            b.zeros(1 << 16);
            b.bytes()
        }),
        ("kv_count_fits", {
            let mut b = B::header(3, 0, (1 << 16) / 13);
            b.zeros(1 << 16);
            b.bytes()
        }),
        ("tensor_count_fits", {
            let mut b = B::header(3, (1 << 16) / 24, 0);
            b.zeros(1 << 16);
            b.bytes()
        }),
        ("string_claims_1gib", {
            let mut b = B::header(3, 0, 1);
            b.key("s", ValueType::String).u64(1 << 30).zeros(1 << 12);
            b.bytes()
        }),
        ("array_of_u8_claims_all", {
            let mut b = B::header(3, 0, 1);
            b.key("a", ValueType::Array).u32(ValueType::U8.id()).u64(1 << 16).zeros(1 << 16);
            b.bytes()
        }),
        // Each level's claim fits the bytes left, but the levels share those bytes.
        ("nested_claims", nested_claims(64, 4000, 4000 * 12 + 1024)),
        ("nested_claims_small_file", nested_claims(64, 1 << 20, 1 << 10)),
    ];
    for f in ["metadata_all_types.gguf", "tensors_align64.gguf"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(f);
        inputs.push((f, std::fs::read(path).unwrap()));
    }
    for (name, data) in &inputs {
        let peak = peak_parse(data);
        // A 32-byte `Value` per parsed element with vector doubling (an array of n u8 peaks near 48n), the owned
        // copy of the input, and the fixed preallocation caps (a few thousand entries, under 1 MiB).
        let bound = 64 * data.len() + (1 << 20);
        assert!(peak <= bound, "{name}: {peak} bytes allocated for a {}-byte input", data.len());
    }
}
