use burn::tensor::ops::FloatTensor;

use crate::kernel::Fp8Kernels;

pub fn forward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    B::linear(x, weight, bias)
}

pub fn x_backward<B: Fp8Kernels>(
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    B::linear_x_backward(weight, output_grad)
}

pub fn weight_backward<B: Fp8Kernels>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    B::linear_weight_backward(x, output_grad)
}
