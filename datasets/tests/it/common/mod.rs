//! Helpers shared by the integration tests: temporary corpora and configs.

use std::path::{Path, PathBuf};

use datasets::{DataConfig, Paths};

/// Folder of the shipped corpora, from the `CARGO_MANIFEST_DIR` that `cargo test` sets when it
/// runs the test (not the one compiled in: a shared target directory can hold a binary built
/// from a clone at another path, which cargo reuses without rebuilding).
pub fn data_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest).join("data")
}

/// A temporary folder with files written into it; the cache goes to `<tmp>/cache`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` to `name` (creating parent folders) and returns the path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path("cache")
    }

    /// A config for `train` with `seq_len`, caching into this folder.
    pub fn config(&self, train: impl Into<Paths>, seq_len: usize) -> DataConfig {
        let mut c = DataConfig::new(train, seq_len);
        c.cache_dir = self.cache_dir();
        c
    }

    /// Files in the cache folder (names), sorted.
    pub fn cache_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache_dir())
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Bytes of `text` as byte-tokenizer ids.
pub fn bytes_ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}
