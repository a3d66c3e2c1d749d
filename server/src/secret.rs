//! Secrets from the config (`server.sync_token`, `server.webhook_secret`, ...): a newtype
//! that never prints its value, and the one reader of `*_file` settings (SPEC "every secret
//! also as a `*_file` setting; a secret is never printed").

use std::fmt;
use std::path::Path;

/// A secret string: `Debug` shows `<redacted>` and there is no `Display`, so it never reaches
/// a log line, an error message or `/status`; [`Secret::expose`] is for the one place that
/// compares or sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `None` for an empty string: an empty secret would let anyone in.
    pub fn new(s: String) -> Option<Secret> {
        (!s.is_empty()).then_some(Secret(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads the secret in `path` for `setting` (e.g. `server.webhook_secret_file`), without its
/// trailing newline (files written by `echo` or editors end with one). An unreadable or empty
/// file is one line naming the setting and the path, never the content.
pub fn read_file(setting: &str, path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Secret::new(trimmed.to_string())
        .ok_or_else(|| format!("{setting}: {} is empty", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_files_lose_one_trailing_newline() {
        let s = Secret::new("hunter2".into()).expect("non-empty");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert!(Secret::new(String::new()).is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "hunter2\n").expect("write");
        assert_eq!(
            read_file("x_file", &file).expect("read").expose(),
            "hunter2"
        );
        std::fs::write(&file, " two words \r\n").expect("write");
        assert_eq!(
            read_file("x_file", &file).expect("read").expose(),
            " two words "
        );
        std::fs::write(&file, "\n").expect("write");
        let err = read_file("x_file", &file).expect_err("empty");
        assert!(
            err.starts_with("x_file: ") && err.ends_with("is empty"),
            "{err}"
        );
        let err = read_file("x_file", &dir.path().join("absent")).expect_err("absent");
        assert!(err.starts_with("x_file: cannot read "), "{err}");
        assert_eq!(err.lines().count(), 1);
    }
}
