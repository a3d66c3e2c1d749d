//! `kvgit fmt`: rewrites the document files of a checkout's JSON/YAML areas into canonical
//! form (sorted members, two-space indent, one final newline); `--check` only reports.

use crate::config::AreaConfig;
use std::fmt;
use std::path::{Path, PathBuf};
use sync_core::documents::{self, DocFormat};

/// What became of one document file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Not canonical: rewritten, or with `--check` only reported.
    Reformatted,
    /// Cannot stand for keys (does not parse, holds `null`, an empty object, …): left as it is.
    Invalid(String),
}

/// One document file that was not canonical or not valid; canonical files are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FmtFile {
    /// Relative to the checkout's root, as `git` shows it.
    pub path: String,
    pub outcome: FileOutcome,
}

/// What a `fmt` run found.
#[derive(Debug, Default)]
pub struct FmtReport {
    pub checked: usize,
    pub files: Vec<FmtFile>,
    pub check: bool,
}

impl FmtReport {
    /// Exit code: 1 when `--check` found a file that is not canonical, or any file is invalid.
    pub fn exit_code(&self) -> u8 {
        let failed = self.files.iter().any(|f| match f.outcome {
            FileOutcome::Reformatted => self.check,
            FileOutcome::Invalid(_) => true,
        });
        u8::from(failed)
    }
}

impl fmt::Display for FmtReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            match &file.outcome {
                FileOutcome::Reformatted if self.check => {
                    writeln!(f, "{}: not in canonical form (run `kvgit fmt`)", file.path)?
                }
                FileOutcome::Reformatted => writeln!(f, "{}: reformatted", file.path)?,
                FileOutcome::Invalid(why) => writeln!(f, "{}: {why}", file.path)?,
            }
        }
        let reformatted = self
            .files
            .iter()
            .filter(|f| f.outcome == FileOutcome::Reformatted)
            .count();
        let invalid = self.files.len() - reformatted;
        let verb = if self.check {
            "not canonical"
        } else {
            "reformatted"
        };
        writeln!(
            f,
            "{} document(s) checked, {reformatted} {verb}, {invalid} invalid",
            self.checked
        )
    }
}

/// Why `fmt` could not do its work (a bad file is a report line, not an error).
#[derive(Debug, thiserror::Error)]
pub enum FmtError {
    #[error("{}: cannot read", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Formats (or with `check` only inspects) every document file under the directories of
/// the document areas, inside the checkout rooted at `root`.
pub fn run(root: &Path, areas: &[AreaConfig], check: bool) -> Result<FmtReport, FmtError> {
    let mut report = FmtReport {
        check,
        ..FmtReport::default()
    };
    for area in areas.iter().filter(|a| a.format.is_documents()) {
        let mut files = Vec::new();
        collect(&root.join(&area.path), &mut files)?;
        files.sort();
        for path in files {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let Some(format) = DocFormat::from_path(&rel) else {
                continue;
            };
            report.checked += 1;
            let bytes = std::fs::read(&path).map_err(|source| FmtError::Read {
                path: path.clone(),
                source,
            })?;
            let outcome = match documents::canonical(format, &bytes) {
                Err(e) => FileOutcome::Invalid(format!("{format} document: {e}")),
                Ok(canonical) if canonical == bytes => continue,
                Ok(canonical) => {
                    if !check {
                        write_atomic(&path, &canonical)?;
                    }
                    FileOutcome::Reformatted
                }
            };
            report.files.push(FmtFile { path: rel, outcome });
        }
    }
    Ok(report)
}

/// Every regular file under `dir` (a missing area directory has none); symlinks are not
/// followed and `.git` is not entered.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FmtError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FmtError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| FmtError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| FmtError::Read {
            path: path.clone(),
            source,
        })?;
        if kind.is_dir() && entry.file_name() != ".git" {
            collect(&path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Replaces the file through a sibling temporary file renamed over it, so an interrupted
/// run never leaves half a document; the file's permissions are kept.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FmtError> {
    let failed = |source| FmtError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.kvgit-fmt"));
    std::fs::write(&tmp, bytes).map_err(failed)?;
    let renamed = std::fs::metadata(path)
        .and_then(|meta| std::fs::set_permissions(&tmp, meta.permissions()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(e));
    }
    Ok(())
}
