//! A small stable hash (64-bit FNV-1a) for identifiers: tokenizer ids, cache file names.
//! Stable across Rust versions and platforms, unlike `std`'s `DefaultHasher`; not for security.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental FNV-1a.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Fnv64(FNV_OFFSET)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Writes a field followed by a separator byte, so ("ab","c") and ("a","bc") differ.
    pub(crate) fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.write(bytes).write(&[0xff])
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// The FNV-1a hash of `bytes` (e.g. a config's JSON, to compare between processes).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv64::new().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fnv1a_values() {
        // Reference values of 64-bit FNV-1a (draft-eastlake-fnv, test vectors).
        assert_eq!(Fnv64::new().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv64::new().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv64::new().write(b"foobar").finish(), 0x85944171f73967e8);
    }
}
