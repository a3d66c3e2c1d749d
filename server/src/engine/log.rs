//! `kvgit log KEY`: the history of one key from Git (commit, time, author, value size),
//! found per commit through the mapper so renames such as `a` -> `a/%self` are followed.

use super::view::key_tree_lenient;
use super::{ser, Context, GitError};
use gitstore::ObjectId;
use std::collections::{BTreeSet, BinaryHeap};
use std::path::PathBuf;
use sync_core::mapper::{self, Locator};

/// Why a key's history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("key {key:?} is under no configured area of {} (prefixes: {prefixes})", .config.display())]
    NoArea {
        key: String,
        /// The config file, and its areas' prefixes: what to check.
        config: PathBuf,
        prefixes: String,
    },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// The commits that changed one key, newest first.
#[derive(Debug, serde::Serialize)]
pub struct KeyHistory {
    pub key: String,
    pub entries: Vec<LogEntry>,
}

/// One commit that changed the key.
#[derive(Debug, serde::Serialize)]
pub struct LogEntry {
    #[serde(serialize_with = "ser::display")]
    pub commit: ObjectId,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
    pub author_name: String,
    pub author_email: String,
    /// The value's size after the commit; None when the commit deleted the key.
    pub size: Option<usize>,
    /// The first line of the commit message.
    pub summary: String,
    /// The value's blob after the commit (None: deleted), for readers that may show values
    /// (the web page with `server.ui_show_values`); never in the JSON, which holds no values.
    #[serde(skip)]
    pub blob: Option<ObjectId>,
}

/// `kvgit log KEY`: the commits that changed `key`, newest first, at most `limit`.
pub async fn run(ctx: &Context, key: &str, limit: Option<usize>) -> Result<KeyHistory, LogError> {
    let area = ctx
        .cfg
        .area_of_key(key.as_bytes())
        .ok_or_else(|| LogError::NoArea {
            key: key.to_string(),
            config: ctx.cfg.source.clone(),
            prefixes: ctx
                .cfg
                .areas
                .iter()
                .map(|a| format!("{:?}", String::from_utf8_lossy(&a.prefix)))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    history(ctx, area, key.as_bytes(), limit).await
}

/// The commits that changed `key` (whole key, bytes, under `area`'s prefix), newest first,
/// at most `limit`; the key is shown lossily in the report.
pub async fn history(
    ctx: &Context,
    area: &crate::config::AreaConfig,
    key: &[u8],
    limit: Option<usize>,
) -> Result<KeyHistory, LogError> {
    let rel = key.get(area.prefix.len()..).unwrap_or_default().to_vec();
    let path = area.path.clone();
    let format = area.format;
    let limit = limit.unwrap_or(usize::MAX);
    let entries = ctx
        .git_blocking(move |git| -> Result<_, GitError> {
            let Some(tip) = git.tip()? else {
                return Ok(Vec::new());
            };
            // Newest first by commit time over all parents; each commit compared with its parents.
            let mut heap = BinaryHeap::new();
            let mut seen = BTreeSet::new();
            let info = git.commit_info(tip)?;
            heap.push((info.time, tip));
            seen.insert(tip);
            let mut out = Vec::new();
            while let Some((_, id)) = heap.pop() {
                if out.len() >= limit {
                    break;
                }
                let info = git.commit_info(id)?;
                let here = blob_at(git, Some(id), &path, format, &rel)?;
                let mut differs = info.parents.is_empty() && here.is_some();
                for p in &info.parents {
                    if blob_at(git, Some(*p), &path, format, &rel)? != here {
                        differs = true;
                    }
                    if seen.insert(*p) {
                        heap.push((git.commit_info(*p)?.time, *p));
                    }
                }
                if differs {
                    let size = match here {
                        Some(b) => Some(git.read_blob(b)?.len()),
                        None => None,
                    };
                    out.push(LogEntry {
                        commit: info.id,
                        time: info.time,
                        summary: info.message.lines().next().unwrap_or("").to_string(),
                        author_name: info.author_name,
                        author_email: info.author_email,
                        size,
                        blob: here,
                    });
                }
            }
            Ok(out)
        })
        .await?;
    Ok(KeyHistory {
        key: String::from_utf8_lossy(key).into_owned(),
        entries,
    })
}

fn blob_at(
    git: &gitstore::GitStore,
    commit: Option<ObjectId>,
    path: &str,
    format: crate::config::AreaFormat,
    rel: &[u8],
) -> Result<Option<ObjectId>, GitError> {
    // In a document area a key's history is that of its value inside the document.
    let tree = key_tree_lenient(git, commit, path, format)?;
    Ok(mapper::lookup(
        git,
        tree.as_ref(),
        rel,
        &mut Locator::default(),
    )?)
}
