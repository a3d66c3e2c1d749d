//! Document areas: a JSON or YAML file stands for a key subtree. Parses a document into a
//! tree of typed scalars that keep their text as written, expands it into keys, writes it in
//! canonical form and rewrites it from changed keys (docs/documents.md). Pure: no I/O.

mod area;
mod json;
mod node;
mod rewrite;
mod yaml;

pub use area::{sort_area, AreaDoc, AreaFiles, AreaProblem, Fault, Naming, NO_KEY};
pub use node::{Node, Scalar, ScalarKind};
pub use rewrite::{rewrite, Rewrite};

use std::fmt;

/// The keys of a document relative to its subtree (segments joined by `/`), with values.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The text format of a document file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocFormat {
    Json,
    Yaml,
}

impl DocFormat {
    /// The format of a file by its extension (`.json`, `.yaml`, `.yml`), or `None`.
    pub fn from_path(path: &str) -> Option<DocFormat> {
        let name = path.rsplit('/').next().unwrap_or(path);
        Self::split_name(name).map(|(_, f)| f)
    }

    /// A document file name split into its stem and format: `a.json` → (`a`, Json). A name
    /// that is only an extension (`.json`) is no document: its stem would be empty.
    pub fn split_name(name: &str) -> Option<(&str, DocFormat)> {
        let (stem, ext) = name.rsplit_once('.')?;
        if stem.is_empty() {
            return None;
        }
        let format = match ext {
            "json" => DocFormat::Json,
            "yaml" | "yml" => DocFormat::Yaml,
            _ => return None,
        };
        Some((stem, format))
    }

    /// The extension fmt and docs name for this format.
    pub fn extension(self) -> &'static str {
        match self {
            DocFormat::Json => "json",
            DocFormat::Yaml => "yaml",
        }
    }
}

impl fmt::Display for DocFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocFormat::Json => "JSON",
            DocFormat::Yaml => "YAML",
        })
    }
}

/// Why a document cannot stand for keys: where (a JSON pointer into the document, `""` for
/// the whole), what, and the 1-based line/column when the parser knows them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocError {
    pub pointer: String,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl DocError {
    pub(crate) fn at(pointer: &str, message: impl Into<String>) -> DocError {
        DocError {
            pointer: pointer.to_owned(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "line {l} column {c}: ")?;
        }
        if !self.pointer.is_empty() {
            write!(f, "at `{}`: ", self.pointer)?;
        }
        f.write_str(&self.message)
    }
}

/// A parsed document: its root is a non-empty object or array, every leaf a scalar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub root: Node,
}

impl Document {
    /// The keys it stands for, relative to its subtree (segments joined by `/`), with values.
    pub fn entries(&self) -> Entries {
        let mut out = Vec::new();
        self.root.entries(&mut Vec::new(), &mut out);
        out
    }

    /// The document as a JSON value (for schema checks): numbers that JSON cannot spell as
    /// written (YAML's `0x1F`, `.inf`) become their value, or a string when it has none.
    pub fn to_json(&self) -> serde_json::Value {
        self.root.to_json()
    }

    /// The canonical text of the document in `format`.
    pub fn render(&self, format: DocFormat) -> Vec<u8> {
        match format {
            DocFormat::Json => json::render(&self.root),
            DocFormat::Yaml => yaml::render(&self.root),
        }
    }
}

/// Parses a document file. Refuses text that does not parse, a root that is not an object
/// or array, `null`, empty objects and arrays, and member names holding `/`.
pub fn parse(format: DocFormat, bytes: &[u8]) -> Result<Document, DocError> {
    let root = match format {
        DocFormat::Json => json::parse(bytes)?,
        DocFormat::Yaml => yaml::parse(bytes)?,
    };
    match &root {
        Node::Object(_) | Node::Array(_) => Ok(Document { root }),
        Node::Scalar(_) => Err(DocError::at(
            "",
            "a document must be an object or an array, not a single value",
        )),
    }
}

/// The keys (relative to the document's subtree) and values a document stands for.
pub fn expand(format: DocFormat, bytes: &[u8]) -> Result<Entries, DocError> {
    Ok(parse(format, bytes)?.entries())
}

/// The canonical text of a document: sorted members, two-space indent, one final newline.
pub fn canonical(format: DocFormat, bytes: &[u8]) -> Result<Vec<u8>, DocError> {
    Ok(parse(format, bytes)?.render(format))
}

/// Appends a member name or index to a JSON pointer (RFC 6901 escapes `~` and `/`).
pub(crate) fn push_pointer(pointer: &str, segment: &str) -> String {
    format!(
        "{pointer}/{}",
        segment.replace('~', "~0").replace('/', "~1")
    )
}
