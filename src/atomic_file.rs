//! Writing a whole file so that a reader sees either the old file or the new one, never half of
//! one: temp file beside it → fsync → rename → fsync the folder. For the files tyr writes outside
//! the store (the saved model's config and tokenizer, reports); the store has its own writer
//! (`engine::fsio`), which keeps temp files in the store's `tmp/`.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` through `<name>.tmp` in the same folder.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(parent) = path.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        // Syncing a folder is not possible on every platform; the rename is what matters.
        let _ = d.sync_all();
    }
    Ok(())
}
