//! Run-time choice of vector width for the CPU loops: the crates are built for the target's
//! baseline (SSE2 on x86_64), and a loop written with [`multiversion!`] is compiled once more for
//! each wider instruction set and dispatched on what the CPU has. Used by the FP8 cast and amax
//! loops (`kernel/cpu.rs`) and by the trainer's fused element-wise passes.

/// Which compiled build of a [`multiversion!`] loop runs. Production code takes
/// [`Isa::best`] once per call; unit tests run each build this CPU has, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The target's baseline instructions (SSE2 on x86_64: 4 f32 lanes).
    Baseline,
    /// AVX2 and FMA (8 f32 lanes), on x86_64 CPUs that have them.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F (16 f32 lanes, mask registers for the selects), on x86_64 CPUs that have it.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The fastest build this CPU runs (std caches the CPUID answers: these are loads).
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if Self::Avx512.supported() {
                return Self::Avx512;
            }
            if Self::Avx2.supported() {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    /// Every build this CPU runs, narrowest first (for tests that check each against a
    /// reference).
    pub fn available() -> Vec<Self> {
        let mut isas = vec![Self::Baseline];
        #[cfg(target_arch = "x86_64")]
        if Self::Avx2.supported() {
            isas.push(Self::Avx2);
            if Self::Avx512.supported() {
                isas.push(Self::Avx512);
            }
        }
        isas
    }

    /// Whether this CPU has every instruction set the build uses.
    pub fn supported(self) -> bool {
        match self {
            Self::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                Self::Avx2.supported() && std::arch::is_x86_feature_detected!("avx512f")
            }
        }
    }
}

/// Defines `$name(isa: Isa, args...)`, which runs `$body` (a loop over one chunk) compiled for
/// the build `isa` names: AVX-512 (16 lanes), AVX2 (8 lanes) or the baseline target (SSE2's 4).
/// The body is `#[inline(always)]` so that each build gets its own vectorized copy of the loop.
/// Arguments are best passed by value or as slices: read through a captured reference, LLVM
/// cannot tell that the loop's writes leave a constant unchanged, and the loop does not
/// vectorize.
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::simd::Isa, $($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            match isa {
                $crate::simd::Isa::Baseline => body($($arg),*),
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) -> $ret {
                        body($($arg),*)
                    }
                    // Cached loads per call keep this sound whoever made the `Isa`.
                    assert!(isa.supported(), "Isa::Avx2 on a CPU without AVX2 and FMA");
                    // SAFETY: the CPU was just seen to support AVX2 and FMA.
                    unsafe { avx2($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx512 => {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn avx512($($arg: $ty),*) -> $ret {
                        body($($arg),*)
                    }
                    assert!(isa.supported(), "Isa::Avx512 on a CPU without AVX-512 F, AVX2, FMA");
                    // SAFETY: the CPU was just seen to support AVX-512 F, AVX2 and FMA.
                    unsafe { avx512($($arg),*) }
                }
            }
        }
    };
}
