//! A named FP8 layer's forward and backward through `Autodiff<Fp8<G>>` on a cubecl device (wgpu,
//! CUDA) against the same layer on `Autodiff<Fp8<NdArray>>`: the FP8 operands are cast from the
//! same values, so they are equal bit for bit, and the outputs differ only by the order in
//! which each backend sums a GEMM's products. Inputs are given as a contiguous tensor, a
//! transposed view and a slice at an offset of a larger buffer (the layouts the model hands a
//! layer: the attention's q/k/v are slices of one projection).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fp8_backend::{fp8_linear, Fp8, Fp8Context, Fp8Kernels, Fp8Policy};

use crate::common::values;

/// f32 GEMMs of K <= 96 products summed in different orders: the relative error of a result is
/// a few ulps times sqrt(K) at most, far below 1e-5 (a wrong FP8 cast moves results by 1e-2).
const GEMM_ORDER_REL_TOL: f64 = 1e-5;

const BATCH: usize = 3;
const ROWS: usize = 37;
const IN: usize = 96;
const OUT: usize = 80;

#[derive(Clone, Copy, Debug)]
enum Layout {
    Contiguous,
    Transposed,
    Sliced,
}

fn input<B: Backend>(x: &[f32], layout: Layout) -> Tensor<B, 3> {
    let device = Default::default();
    match layout {
        Layout::Contiguous => {
            Tensor::from_data(TensorData::new(x.to_vec(), [BATCH, ROWS, IN]), &device)
        }
        // Stored [BATCH, IN, ROWS]: the same logical values, read through swapped strides.
        Layout::Transposed => {
            let mut t = vec![0.0; x.len()];
            for b in 0..BATCH {
                for r in 0..ROWS {
                    for i in 0..IN {
                        t[(b * IN + i) * ROWS + r] = x[(b * ROWS + r) * IN + i];
                    }
                }
            }
            Tensor::<B, 3>::from_data(TensorData::new(t, [BATCH, IN, ROWS]), &device)
                .swap_dims(1, 2)
        }
        // The middle third of a [BATCH, ROWS, 3 * IN] tensor, as q/k/v are of c_attn's output.
        Layout::Sliced => {
            let mut wide = values(BATCH * ROWS * 3 * IN, 99, 4.0);
            for row in 0..BATCH * ROWS {
                wide[row * 3 * IN + IN..row * 3 * IN + 2 * IN]
                    .copy_from_slice(&x[row * IN..(row + 1) * IN]);
            }
            Tensor::<B, 3>::from_data(TensorData::new(wide, [BATCH, ROWS, 3 * IN]), &device)
                .slice([0..BATCH, 0..ROWS, IN..2 * IN])
        }
    }
}

/// (y, dx, dw, db) of one FP8-AMAX layer on `B`, as f32 values.
fn run<B: Fp8Kernels>(x: &[f32], w: &[f32], b: &[f32], g: &[f32], layout: Layout) -> [Vec<f32>; 4] {
    type Ad<B> = Autodiff<Fp8<B>>;
    let device = Default::default();
    let context = Fp8Context::new(Fp8Policy::amax());
    let x = input::<Ad<B>>(x, layout).require_grad();
    let w = Tensor::<Ad<B>, 2>::from_data(TensorData::new(w.to_vec(), [IN, OUT]), &device)
        .require_grad();
    let b =
        Tensor::<Ad<B>, 1>::from_data(TensorData::new(b.to_vec(), [OUT]), &device).require_grad();
    let g = Tensor::<Ad<B>, 3>::from_data(TensorData::new(g.to_vec(), [BATCH, ROWS, OUT]), &device);
    let y = fp8_linear(
        x.clone(),
        w.clone(),
        Some(b.clone()),
        &context.site("h.0.mlp.c_fc"),
    );
    let grads = (y.clone() * g).sum().backward();
    let host = |data: TensorData| data.to_vec::<f32>().expect("f32");
    [
        host(y.into_data()),
        host(x.grad(&grads).expect("dx").into_data()),
        host(w.grad(&grads).expect("dw").into_data()),
        host(b.grad(&grads).expect("db").into_data()),
    ]
}

/// ||a - b|| / ||b||.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    (d / n).sqrt()
}

fn layer_matches_ndarray<G: Fp8Kernels>() {
    let x = values(BATCH * ROWS * IN, 1, 1.0);
    let w = values(IN * OUT, 2, 0.05);
    let b = values(OUT, 3, 0.5);
    let g = values(BATCH * ROWS * OUT, 4, 1e-4);
    let want = run::<NdArray>(&x, &w, &b, &g, Layout::Contiguous);
    // FP8 is really on: an f32 layer is far from it.
    let f32_y: Vec<f32> = {
        let xs = Tensor::<NdArray, 2>::from_data(
            TensorData::new(x.clone(), [BATCH * ROWS, IN]),
            &Default::default(),
        );
        let ws = Tensor::<NdArray, 2>::from_data(
            TensorData::new(w.clone(), [IN, OUT]),
            &Default::default(),
        );
        let bs =
            Tensor::<NdArray, 1>::from_data(TensorData::new(b.clone(), [OUT]), &Default::default());
        (xs.matmul(ws) + bs.unsqueeze())
            .into_data()
            .to_vec()
            .unwrap()
    };
    assert!(rel(&f32_y, &want[0]) > 100.0 * GEMM_ORDER_REL_TOL);
    for layout in [Layout::Contiguous, Layout::Transposed, Layout::Sliced] {
        let got = run::<G>(&x, &w, &b, &g, layout);
        for (i, what) in ["y", "dx", "dw", "db"].iter().enumerate() {
            let r = rel(&got[i], &want[i]);
            eprintln!("{layout:?} {what}: rel {r:.2e}");
            assert!(
                r < GEMM_ORDER_REL_TOL,
                "{layout:?}: {what} differs by {r:e} relative"
            );
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_layer_matches_ndarray() {
    layer_matches_ndarray::<burn::backend::Wgpu>();
}

/// On CUDA's device kernel (`FP8_CUDA_KERNEL=device`; the default host path is exact by
/// construction).
#[cfg(feature = "cuda")]
#[test]
fn cuda_layer_matches_ndarray() {
    crate::common::cuda_device_kernel();
    layer_matches_ndarray::<burn::backend::Cuda>();
}
