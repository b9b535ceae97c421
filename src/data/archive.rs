//! Reading package archives: wheels (zip) and sdists (`.tar.gz`, or an old-style `.zip`), listing
//! their regular files and copying one out; and choosing the one member a path or glob names.
//! Member names are kept only when they are safe relative paths (no `..`, not absolute), because
//! they become paths in the cache.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The two archive layouts a package client downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A wheel (`.whl`) or a zipped sdist (`.zip`).
    Zip,
    /// A gzipped tarball sdist (`.tar.gz` / `.tgz`).
    TarGz,
}

impl ArchiveKind {
    /// The kind of `path` by its name; `None` for anything that is not a package archive.
    pub fn of(path: &Path) -> Option<ArchiveKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".whl") || name.ends_with(".zip") {
            Some(ArchiveKind::Zip)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else {
            None
        }
    }
}

/// A regular file inside an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `/`-separated relative path.
    pub name: String,
    pub size: u64,
}

/// An opened archive with its file list.
pub struct Archive {
    path: PathBuf,
    kind: ArchiveKind,
    files: Vec<Member>,
    zip: Option<zip::ZipArchive<BufReader<File>>>,
}

impl Archive {
    /// Open `path` and list its files (sorted by name). `package` only labels errors.
    pub fn open(package: &str, path: &Path) -> Result<Archive> {
        let kind =
            ArchiveKind::of(path).ok_or_else(|| bad(package, path, "not a .whl/.zip/.tar.gz"))?;
        let mut files = Vec::new();
        let mut zip = None;
        match kind {
            ArchiveKind::Zip => {
                let file = File::open(path).map_err(|e| Error::io(path, e))?;
                let mut z = zip::ZipArchive::new(BufReader::new(file))
                    .map_err(|e| bad(package, path, e))?;
                for i in 0..z.len() {
                    let entry = z.by_index(i).map_err(|e| bad(package, path, e))?;
                    if !entry.is_file() {
                        continue;
                    }
                    if let Some(name) = entry.enclosed_name().as_deref().and_then(safe_name) {
                        files.push(Member {
                            name,
                            size: entry.size(),
                        });
                    }
                }
                zip = Some(z);
            }
            ArchiveKind::TarGz => {
                let mut tar = open_tar(path)?;
                let entries = tar.entries().map_err(|e| bad(package, path, e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| bad(package, path, e))?;
                    if !entry.header().entry_type().is_file() {
                        continue;
                    }
                    let p = entry.path().map_err(|e| bad(package, path, e))?;
                    if let Some(name) = safe_name(&p) {
                        files.push(Member {
                            name,
                            size: entry.size(),
                        });
                    }
                }
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Archive {
            path: path.to_path_buf(),
            kind,
            files,
            zip,
        })
    }

    pub fn files(&self) -> &[Member] {
        &self.files
    }

    /// Stream member `name` (as listed by [`Archive::files`]) into `out`.
    pub fn copy_member(&mut self, package: &str, name: &str, out: &mut dyn Write) -> Result<()> {
        let path = self.path.clone();
        match self.kind {
            ArchiveKind::Zip => {
                let z = self
                    .zip
                    .as_mut()
                    .ok_or_else(|| bad(package, &path, "zip reader missing"))?;
                for i in 0..z.len() {
                    let mut entry = z.by_index(i).map_err(|e| bad(package, &path, e))?;
                    let this = entry.enclosed_name().as_deref().and_then(safe_name);
                    if entry.is_file() && this.as_deref() == Some(name) {
                        std::io::copy(&mut entry, out).map_err(|e| bad(package, &path, e))?;
                        return Ok(());
                    }
                }
            }
            ArchiveKind::TarGz => {
                let mut tar = open_tar(&path)?;
                let entries = tar.entries().map_err(|e| bad(package, &path, e))?;
                for entry in entries {
                    let mut entry = entry.map_err(|e| bad(package, &path, e))?;
                    let this = entry.path().ok().and_then(|p| safe_name(&p));
                    if entry.header().entry_type().is_file() && this.as_deref() == Some(name) {
                        std::io::copy(&mut entry, out).map_err(|e| bad(package, &path, e))?;
                        return Ok(());
                    }
                }
            }
        }
        Err(bad(
            package,
            &path,
            format!("member `{name}` vanished while reading"),
        ))
    }
}

fn open_tar(path: &Path) -> Result<tar::Archive<flate2::read::GzDecoder<BufReader<File>>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(
        BufReader::new(file),
    )))
}

fn bad(package: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::DataArchive {
        package: package.to_string(),
        archive: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A `/`-joined relative path made only of normal components, or `None`.
fn safe_name(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The one file that `member` names among `files`: an exact path wins; otherwise `member` is a
/// glob over whole paths, or over file names when it has no `/`. None or several matches are
/// errors that list what exists.
pub fn select_member(
    package: &str,
    member: &str,
    archive: &Path,
    files: &[Member],
) -> Result<String> {
    if let Some(f) = files.iter().find(|f| f.name == member) {
        return Ok(f.name.clone());
    }
    let pattern = glob::Pattern::new(member).map_err(|e| Error::DataParam {
        field: "member".into(),
        reason: format!("`{member}` of package `{package}` is not a valid glob: {e}"),
    })?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let by_file_name = !member.contains('/');
    let matches: Vec<String> = files
        .iter()
        .filter(|f| {
            let subject = if by_file_name {
                f.name.rsplit('/').next().unwrap_or(&f.name)
            } else {
                f.name.as_str()
            };
            pattern.matches_with(subject, opts)
        })
        .map(|f| f.name.clone())
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        0 => Err(Error::DataMemberMissing {
            package: package.to_string(),
            member: member.to_string(),
            archive: archive.to_path_buf(),
            count: files.len(),
            examples: examples(files),
        }),
        _ => Err(Error::DataMemberAmbiguous {
            package: package.to_string(),
            member: member.to_string(),
            matches,
        }),
    }
}

/// Up to eight members to show in an error: the largest first (data files, not metadata).
fn examples(files: &[Member]) -> Vec<String> {
    let mut by_size: Vec<&Member> = files.iter().collect();
    by_size.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    by_size.iter().take(8).map(|m| m.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<Member> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Member {
                name: n.to_string(),
                size: i as u64,
            })
            .collect()
    }

    #[test]
    fn exact_paths_and_globs_select_one_member() {
        let files = members(&[
            "p/a.txt",
            "p/data/b.txt",
            "p/data/c.gguf",
            "p-1.0.dist-info/RECORD",
        ]);
        let arch = Path::new("x.whl");
        assert_eq!(
            select_member("p", "p/a.txt", arch, &files).unwrap(),
            "p/a.txt"
        );
        assert_eq!(
            select_member("p", "*.gguf", arch, &files).unwrap(),
            "p/data/c.gguf"
        );
        assert_eq!(
            select_member("p", "p/*/b.txt", arch, &files).unwrap(),
            "p/data/b.txt"
        );
        assert_eq!(
            select_member("p", "**/b.txt", arch, &files).unwrap(),
            "p/data/b.txt"
        );
        // `*` does not cross `/` in a path pattern.
        assert!(select_member("p", "p/*.gguf", arch, &files).is_err());
    }

    #[test]
    fn an_ambiguous_glob_lists_its_matches() {
        let files = members(&["p/a.txt", "p/data/b.txt"]);
        let err = select_member("p", "*.txt", Path::new("x.whl"), &files).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::DataMemberAmbiguous { .. }), "{msg}");
        assert!(
            msg.contains("p/a.txt") && msg.contains("p/data/b.txt"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_member_shows_the_largest_files_first() {
        let files = members(&["p/small.txt", "p/big.bin"]);
        let err = select_member("pkg", "nope.json", Path::new("x.whl"), &files).unwrap_err();
        match &err {
            Error::DataMemberMissing {
                examples, count, ..
            } => {
                assert_eq!(*count, 2);
                assert_eq!(
                    examples,
                    &vec!["p/big.bin".to_string(), "p/small.txt".to_string()]
                );
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("pkg") && err.to_string().contains("nope.json"));
    }

    #[test]
    fn unsafe_member_names_are_dropped() {
        assert_eq!(safe_name(Path::new("a/./b")), Some("a/b".into()));
        assert_eq!(safe_name(Path::new("../b")), None);
        assert_eq!(safe_name(Path::new("/etc/passwd")), None);
    }
}
