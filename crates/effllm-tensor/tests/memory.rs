//! The live-memory counters: exact byte deltas for creation, views, drops and the peak. One test function, so
//! that no other test of this binary allocates tensors concurrently (the counters are process-wide).

use effllm_tensor::{DType, Device, Tensor, memory};

#[test]
fn counters_track_storages_exactly() {
    let before = memory::stats();
    let a = Tensor::from_vec((0..1000).map(|i| i as f32).collect(), &[10, 100], &Device::Cpu).unwrap();
    let s = memory::stats();
    assert_eq!(s.host_live - before.host_live, 4000);
    // Views share the storage: nothing new is counted.
    let view = a.transpose(0, 1).unwrap().narrow(0, 3, 5).unwrap();
    assert_eq!(memory::stats().host_live, s.host_live);
    // A bf16 copy is 2 bytes per element.
    let b = a.to_dtype(DType::BF16).unwrap();
    assert_eq!(memory::stats().host_live - before.host_live, 4000 + 2000);
    memory::reset_peak();
    {
        let big = Tensor::zeros(&[1 << 16], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(memory::stats().host_live - before.host_live, 6000 + (1 << 18));
        drop(big);
    }
    let s = memory::stats();
    assert_eq!(s.host_live - before.host_live, 6000);
    assert!(s.host_peak >= before.host_live + 6000 + (1 << 18), "the peak remembers the dropped tensor");
    drop((a, b));
    // The view keeps `a`'s storage alive.
    assert_eq!(memory::stats().host_live - before.host_live, 4000);
    drop(view);
    assert_eq!(memory::stats().host_live, before.host_live);
    memory::reset_peak();
    assert_eq!(memory::stats().host_peak, before.host_live);
}
