//! The files of an area sorted out: which documents stand for which subtrees, which plain
//! files hold which keys, and every file that can do neither, with why (docs/documents.md).
//! Pure: the caller lists the paths and reads a document's bytes when asked.

use super::{parse, DocError, DocFormat, Document};
use crate::mapper::{self, MapError};
use crate::Key;
use std::collections::BTreeMap;

/// A document that parsed and stands for its subtree alone.
#[derive(Debug, Clone)]
pub struct AreaDoc {
    /// Its index in the listed paths.
    pub index: usize,
    /// Its path relative to the area directory.
    pub path: String,
    /// The key its path maps to as a plain file (`dir/name.json`): where it is written.
    pub file_key: Vec<u8>,
    /// The subtree it stands for, relative to the area: `dir/name/`.
    pub prefix: Vec<u8>,
    pub format: DocFormat,
    pub doc: Document,
}

/// Why a file of an area stands for no key, or for keys another file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Its path decodes to no key.
    NoKey(MapError),
    /// A document name whose extension is escaped (`a%2Ejson`).
    EscapedName,
    /// A document that does not parse or stands for no key.
    Unusable { format: DocFormat, error: DocError },
    /// A document whose subtree is, or is inside, the subtree of `owner` (the first by path).
    ClaimedTwice { prefix: Vec<u8>, owner: String },
    /// A plain file whose key is inside the subtree of the document `owner`.
    InsideDocument { owner: String },
    /// A plain file holding `key`, which the earlier listed `first` holds too.
    Duplicate { key: Vec<u8>, first: String },
}

/// A file of an area at fault. Paths are relative to the area directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaProblem {
    /// Its index in the listed paths.
    pub index: usize,
    pub path: String,
    pub fault: Fault,
}

/// How the message of a problem names other files and keys: the area's directory (from
/// the repository root, `""` for paths relative to the area) and its key prefix.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naming<'a> {
    pub dir: &'a str,
    pub prefix: &'a [u8],
}

impl AreaProblem {
    /// A JSON pointer into the file (`""` for the whole file).
    pub fn pointer(&self) -> &str {
        match &self.fault {
            Fault::Unusable { error, .. } => &error.pointer,
            _ => "",
        }
    }

    /// What is wrong, as users read it (the pointer apart).
    pub fn message(&self, naming: Naming<'_>) -> String {
        let file = |p: &str| {
            if naming.dir.is_empty() {
                p.to_owned()
            } else {
                format!("{}/{p}", naming.dir)
            }
        };
        match &self.fault {
            Fault::NoKey(e) => format!("{NO_KEY}: {e}"),
            Fault::EscapedName => "an escaped name cannot be a document".into(),
            Fault::Unusable { format, error } => {
                let message = format!("not a usable {format} document: {}", error.message);
                match (error.line, error.column) {
                    (Some(line), Some(col)) => format!("line {line} column {col}: {message}"),
                    _ => message,
                }
            }
            Fault::ClaimedTwice { prefix, owner } => format!(
                "claims the keys under {:?} that {} stands for",
                String::from_utf8_lossy(prefix),
                file(owner)
            ),
            Fault::InsideDocument { owner } => {
                format!("holds a key inside the subtree of {}", file(owner))
            }
            Fault::Duplicate { key, first } => {
                let mut full = naming.prefix.to_vec();
                full.extend_from_slice(key);
                format!("holds key {} that {} holds too", Key(full), file(first))
            }
        }
    }
}

/// How a path that maps to no key begins its message.
pub const NO_KEY: &str = "maps to no key";

/// An area's files sorted out by [`sort_area`].
#[derive(Debug, Default)]
pub struct AreaFiles {
    pub docs: Vec<AreaDoc>,
    /// Plain files: relative key -> index in the listed paths.
    pub plain: BTreeMap<Vec<u8>, usize>,
    /// Every file that is neither, in the order: documents, then plain files.
    pub problems: Vec<AreaProblem>,
}

/// Sorts the files at `paths` (relative to the area directory) into documents, when
/// `documents` (a `json`/`yaml` area), and plain files. `read(i)` gives the bytes of
/// `paths[i]`; it is asked only for documents. Two documents claiming one subtree, or one
/// inside another's: the first by path keeps it; a plain file inside a document's subtree,
/// or holding the key of an earlier plain file, is a problem.
pub fn sort_area<P, E>(
    paths: &[P],
    documents: bool,
    mut read: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<AreaFiles, E>
where
    P: AsRef<str>,
{
    let mut out = AreaFiles::default();
    let mut docs: Vec<AreaDoc> = Vec::new();
    let mut plain_idx = Vec::new();
    // Every plain file's key, also those inside a document: a second file of one key is
    // named as such wherever it is.
    let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (index, path) in paths.iter().enumerate() {
        let path = path.as_ref();
        let name = path.rsplit('/').next().unwrap_or(path);
        let format = match DocFormat::split_name(name) {
            Some((_, format)) if documents => format,
            _ => {
                plain_idx.push(index);
                continue;
            }
        };
        let mut problem = |fault| {
            out.problems.push(AreaProblem {
                index,
                path: path.to_owned(),
                fault,
            })
        };
        // A document at `dir/name.json` stands for the subtree `dir/name/` (its path
        // decoded as a plain file's, less the extension).
        let file_key = match mapper::decode_path(path) {
            Ok(k) => k,
            Err(e) => {
                problem(Fault::NoKey(e));
                continue;
            }
        };
        let ext_len = name.len() - name.rfind('.').unwrap_or(name.len());
        if !file_key.ends_with(&name.as_bytes()[name.len() - ext_len..]) {
            problem(Fault::EscapedName);
            continue;
        }
        let mut prefix = file_key[..file_key.len() - ext_len].to_vec();
        prefix.push(b'/');
        match parse(format, &read(index)?) {
            Ok(doc) => docs.push(AreaDoc {
                index,
                path: path.to_owned(),
                file_key,
                prefix,
                format,
                doc,
            }),
            Err(error) => problem(Fault::Unusable { format, error }),
        }
    }
    docs.sort_by(|a, b| a.prefix.cmp(&b.prefix).then(a.path.cmp(&b.path)));
    for d in docs {
        match out.docs.iter().find(|o| d.prefix.starts_with(&o.prefix)) {
            Some(owner) => out.problems.push(AreaProblem {
                index: d.index,
                fault: Fault::ClaimedTwice {
                    prefix: d.prefix,
                    owner: owner.path.clone(),
                },
                path: d.path,
            }),
            None => out.docs.push(d),
        }
    }
    for index in plain_idx {
        let path = paths[index].as_ref();
        let fault = match mapper::decode_path(path) {
            Err(e) => Fault::NoKey(e),
            Ok(key) => match seen.get(&key) {
                Some(&first) => Fault::Duplicate {
                    key,
                    first: paths[first].as_ref().to_owned(),
                },
                None => {
                    seen.insert(key.clone(), index);
                    match out.docs.iter().find(|d| key.starts_with(&d.prefix)) {
                        Some(owner) => Fault::InsideDocument {
                            owner: owner.path.clone(),
                        },
                        None => {
                            out.plain.insert(key, index);
                            continue;
                        }
                    }
                }
            },
        };
        out.problems.push(AreaProblem {
            index,
            path: path.to_owned(),
            fault,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn sort(files: &[(&str, &str)], documents: bool) -> AreaFiles {
        let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
        let read = |i: usize| Ok::<_, Infallible>(files[i].1.as_bytes().to_vec());
        match sort_area(&paths, documents, read) {
            Ok(sorted) => sorted,
            Err(never) => match never {},
        }
    }

    fn lines(sorted: &AreaFiles) -> Vec<String> {
        let naming = Naming {
            dir: "cfg",
            prefix: b"/cfg/",
        };
        sorted
            .problems
            .iter()
            .map(|p| format!("{} [{}] {}", p.path, p.pointer(), p.message(naming)))
            .collect()
    }

    #[test]
    fn documents_claim_their_subtree_and_every_other_file_is_named() {
        let sorted = sort(
            &[
                ("a.json", r#"{"x": 1}"#),
                ("a.yaml", "y: 2\n"),
                ("a/z", "3"),
                ("b.json", r#"{"e": {}}"#),
                ("bad%ZZ", "1"),
                ("p", "1"),
                ("p%+/%empty", "1"),
                ("q.yml", "q: [1\n"),
            ],
            true,
        );
        assert_eq!(sorted.docs.len(), 1);
        assert_eq!(sorted.docs[0].path, "a.json");
        assert_eq!(sorted.docs[0].prefix, b"a/");
        assert_eq!(sorted.plain.keys().collect::<Vec<_>>(), [b"p"]);
        let lines = lines(&sorted);
        let has = |start: &str| lines.iter().any(|l| l.starts_with(start));
        assert!(has("b.json [/e] not a usable JSON document: "), "{lines:?}");
        assert!(has("q.yml [] line "), "{lines:?}");
        assert!(
            has(r#"a.yaml [] claims the keys under "a/" that cfg/a.json stands for"#),
            "{lines:?}"
        );
        assert!(
            has("a/z [] holds a key inside the subtree of cfg/a.json"),
            "{lines:?}"
        );
        assert!(has("bad%ZZ [] maps to no key: "), "{lines:?}");
        assert!(
            has("p%+/%empty [] holds key /cfg/p that cfg/p holds too"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 6, "{lines:?}");
    }

    #[test]
    fn in_a_files_area_every_file_is_plain() {
        let sorted = sort(&[("a.json", "not read"), ("a/b", "1")], false);
        assert!(sorted.docs.is_empty() && sorted.problems.is_empty());
        assert_eq!(sorted.plain.len(), 2);
    }
}
