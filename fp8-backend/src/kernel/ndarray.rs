//! The direct CPU kernel for Burn's ndarray backend: amax and cast over the tensor's own memory.

use burn::backend::ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use burn::tensor::ops::FloatTensor;
use ndarray::{ArrayD, IxDyn};

use super::cpu::{self, HostQuant};
use super::{quantize_on_host, Fp8Kernels, QuantOutput};
use crate::format::Fp8Format;
use crate::scaling::BiasRule;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> Fp8Kernels for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn fp8_quantize(
        tensor: FloatTensor<Self>,
        format: Fp8Format,
        rule: BiasRule,
        want_stats: bool,
    ) -> QuantOutput<Self> {
        let NdArrayTensor::F32(storage) = &tensor else {
            // f64 (or any other float element): the generic path converts through f32.
            return quantize_on_host::<Self>(tensor, format, rule, want_stats);
        };
        let view = storage.view();
        let shape = view.shape().to_vec();
        // Transposed or sliced views are made contiguous once; the common case reads in place.
        let contiguous;
        let src = match view.as_slice() {
            Some(s) => s,
            None => {
                contiguous = view.iter().copied().collect::<Vec<f32>>();
                &contiguous
            }
        };
        let mut dst = vec![0.0f32; src.len()];
        match cpu::quantize_slice(src, &mut dst, format, rule, want_stats) {
            HostQuant::NonFinite(amax) => QuantOutput::NonFinite(tensor, amax),
            HostQuant::Done(stats) => {
                let array = ArrayD::from_shape_vec(IxDyn(&shape), dst)
                    .expect("output has the input's element count")
                    .into_shared();
                QuantOutput::Quantized(NdArrayTensor::from(array), stats)
            }
        }
    }
}
