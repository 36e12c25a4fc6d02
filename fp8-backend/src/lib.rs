//! FP8 formats, FP8-AMAX scaling and the `Fp8<B>` backend decorator.
