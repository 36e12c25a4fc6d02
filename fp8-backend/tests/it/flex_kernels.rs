//! The decorator's own kernels for burn-flex compute what flex computes, bit for bit: 2-D matrix
//! products (contiguous, transposed, sliced; below and above flex's threshold for threads),
//! zeros and the embedding backward. With FP8 off, `Fp8<Flex>` must stay `Flex`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use fp8_backend::Fp8;

type Ours = Fp8<Flex>;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
            ((h % 20_001) as f32 / 10_000.0 - 1.0) * (1.0 + (h >> 20) as f32 / 4096.0)
        })
        .collect()
}

fn bits<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    let v = t.into_data().to_vec::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

fn tensor<B: burn::tensor::backend::Backend>(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum View {
    Contiguous,
    /// A transposed view (what autodiff's matmul backward multiplies).
    Transposed,
    /// Columns 1 .. c-1 of a wider matrix (an offset and its parent's row stride).
    Sliced,
}

/// An `[r, c]` operand laid out as `view`, the same values on any backend.
fn operand<B: burn::tensor::backend::Backend>(
    r: usize,
    c: usize,
    view: View,
    seed: u32,
) -> Tensor<B, 2> {
    match view {
        View::Contiguous => tensor::<B>(&values(r * c, seed), [r, c]),
        View::Transposed => tensor::<B>(&values(r * c, seed), [c, r]).transpose(),
        View::Sliced => tensor::<B>(&values(r * (c + 2), seed), [r, c + 2]).narrow(1, 1, c),
    }
}

fn product<B: burn::tensor::backend::Backend>(
    m: usize,
    k: usize,
    n: usize,
    views: (View, View),
) -> Vec<u32> {
    let out = operand::<B>(m, k, views.0, 1).matmul(operand::<B>(k, n, views.1, 2));
    assert_eq!(out.dims(), [m, n]);
    bits(out)
}

#[test]
fn two_d_products_are_flex_bit_for_bit() {
    use View::*;
    // (m, k, n): small (one thread) and above flex's 192^3 multiply-adds (all threads).
    for (m, k, n) in [(7, 5, 3), (64, 48, 80), (256, 192, 320)] {
        for views in [
            (Contiguous, Contiguous),
            (Transposed, Transposed),
            (Sliced, Contiguous),
            (Contiguous, Sliced),
        ] {
            assert_eq!(
                product::<Flex>(m, k, n, views),
                product::<Ours>(m, k, n, views),
                "{m}x{k}x{n} {views:?}"
            );
        }
    }
}

#[test]
fn zeros_and_embedding_backward_are_flex_bit_for_bit() {
    let d = Default::default();
    let z: Tensor<Ours, 2> = Tensor::zeros([33, 17], &d);
    assert!(bits(z).iter().all(|&b| b == 0));
    // The embedding gradient of repeated tokens: rows summed in order, as flex sums them.
    let grad_of = |tokens: &[i64]| -> (Vec<u32>, Vec<u32>) {
        let w = values(11 * 6, 3);
        let g = values(tokens.len() * 6, 4);
        let run = |flex: bool| -> Vec<u32> {
            macro_rules! on {
                ($b:ty) => {{
                    let weight = Tensor::<Autodiff<$b>, 2>::from_data(
                        TensorData::new(w.clone(), [11, 6]),
                        &d,
                    )
                    .require_grad();
                    let ids = Tensor::<Autodiff<$b>, 2, Int>::from_data(
                        TensorData::new(tokens.to_vec(), [1, tokens.len()]),
                        &d,
                    );
                    let out = burn::tensor::module::embedding(weight.clone(), ids);
                    let upstream = Tensor::<Autodiff<$b>, 3>::from_data(
                        TensorData::new(g.clone(), [1, tokens.len(), 6]),
                        &d,
                    );
                    let grads = (out * upstream).sum().backward();
                    bits(weight.grad(&grads).unwrap())
                }};
            }
            if flex {
                on!(Flex)
            } else {
                on!(Ours)
            }
        };
        (run(true), run(false))
    };
    let (flex, ours) = grad_of(&[3, 7, 3, 0, 3, 10]);
    assert_eq!(flex, ours);
    assert!(
        flex.iter().any(|&b| b != 0),
        "the gradient is not all zeros"
    );
}
