//! `autograd::custom_op`: a user-defined op with its own backward rule records like a built-in one, is checked
//! against central finite differences, records nothing for untracked inputs, and a rule that returns a gradient of
//! the wrong shape is an error rather than a silent broadcast.

use effllm_tensor::autograd::{CustomBackward, custom_op};
use effllm_tensor::{Device, Error, Tensor};

/// `y = a ⊙ sin(b)` with the hand-written rule `da = g ⊙ sin b`, `db = g ⊙ a ⊙ cos b`.
fn a_sin_b(a: &Tensor, b: &Tensor) -> effllm_tensor::Result<Tensor> {
    custom_op(
        "a_sin_b",
        &[a, b],
        || a.mul(&b.sin()?),
        |_| {
            let (a, b) = (a.detach(), b.detach());
            Ok(Box::new(move |g: &Tensor, needs: &[bool]| {
                let da = if needs[0] { Some(g.mul(&b.sin()?)?) } else { None };
                let db = if needs[1] { Some(g.mul(&a)?.mul(&b.cos()?)?) } else { None };
                Ok(vec![da, db])
            }) as CustomBackward)
        },
    )
}

#[test]
fn custom_op_gradient_matches_finite_differences() {
    let av = vec![0.3f64, -1.2, 2.5, 0.7];
    let bv = vec![1.1f64, 0.4, -0.9, 2.2];
    let w = Tensor::from_vec(vec![0.5f64, -1.5, 2.0, 1.0], &[4], &Device::Cpu).unwrap();
    let loss = |a: &[f64], b: &[f64]| -> f64 {
        let a = Tensor::from_vec(a.to_vec(), &[4], &Device::Cpu).unwrap();
        let b = Tensor::from_vec(b.to_vec(), &[4], &Device::Cpu).unwrap();
        a_sin_b(&a, &b).unwrap().mul(&w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let a = Tensor::from_vec(av.clone(), &[4], &Device::Cpu).unwrap().requires_grad();
    let b = Tensor::from_vec(bv.clone(), &[4], &Device::Cpu).unwrap().requires_grad();
    let y = a_sin_b(&a, &b).unwrap();
    assert!(y.is_tracked());
    let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let (ga, gb) = (grads.get(&a).unwrap().to_vec_f64().unwrap(), grads.get(&b).unwrap().to_vec_f64().unwrap());
    let h = 1e-6;
    for i in 0..4 {
        let (mut ap, mut am) = (av.clone(), av.clone());
        ap[i] += h;
        am[i] -= h;
        let fd = (loss(&ap, &bv) - loss(&am, &bv)) / (2.0 * h);
        assert!((fd - ga[i]).abs() < 1e-8, "da[{i}]: fd {fd} vs {}", ga[i]);
        let (mut bp, mut bm) = (bv.clone(), bv.clone());
        bp[i] += h;
        bm[i] -= h;
        let fd = (loss(&av, &bp) - loss(&av, &bm)) / (2.0 * h);
        assert!((fd - gb[i]).abs() < 1e-8, "db[{i}]: fd {fd} vs {}", gb[i]);
    }
}

#[test]
fn custom_op_records_nothing_for_untracked_inputs() {
    let a = Tensor::from_vec(vec![1.0f64, 2.0], &[2], &Device::Cpu).unwrap();
    let called = std::cell::Cell::new(false);
    let y = custom_op(
        "double",
        &[&a],
        || a.affine(2.0, 0.0),
        |_| {
            called.set(true);
            Ok(Box::new(|g: &Tensor, _: &[bool]| Ok(vec![Some(g.affine(2.0, 0.0)?)])) as CustomBackward)
        },
    )
    .unwrap();
    assert!(!y.is_tracked());
    assert!(!called.get());
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
}

#[test]
fn custom_op_gradient_of_wrong_shape_is_an_error() {
    let a = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], &Device::Cpu).unwrap().requires_grad();
    let y = custom_op(
        "bad_rule",
        &[&a],
        || a.affine(2.0, 0.0),
        |_| {
            Ok(Box::new(|_: &Tensor, _: &[bool]| {
                Ok(vec![Some(Tensor::ones(&[2], effllm_tensor::DType::F64, &Device::Cpu)?)])
            }) as CustomBackward)
        },
    )
    .unwrap();
    let err = y.sum_all().unwrap().backward().unwrap_err();
    assert!(matches!(err, Error::Autograd { op: "bad_rule", .. }), "{err}");
}
