//! Commit and checkpoint messages: the SPEC's one-line summary plus `Kvgit-*` trailers,
//! written and parsed in one place so both stay in step.

use std::collections::BTreeMap;
use sync_core::{AreaName, ClusterId, Epoch, Revision};

pub const AREA: &str = "Kvgit-Area";
pub const REVISION: &str = "Kvgit-Revision";
pub const CLUSTER: &str = "Kvgit-Cluster";
pub const NODE: &str = "Kvgit-Node";
pub const COMMIT: &str = "Kvgit-Commit";
/// The fencing token of the owner that wrote the commit (`serve` only).
pub const EPOCH: &str = "Kvgit-Epoch";
/// The commit an exact restore (`apply --ref REV --exact`) restored the area from.
pub const RESTORED_FROM: &str = "Kvgit-Restored-From";

/// The trailers every kvgit commit carries.
pub struct Trailers<'a> {
    pub area: &'a AreaName,
    pub revision: Revision,
    pub cluster: &'a ClusterId,
    pub node: &'a str,
    /// The owner's claim epoch, when the writer owns the area through the backend.
    pub epoch: Option<Epoch>,
}

impl Trailers<'_> {
    fn write(&self, out: &mut String) {
        out.push_str(&format!("{AREA}: {}\n", self.area));
        out.push_str(&format!("{REVISION}: {}\n", self.revision));
        out.push_str(&format!("{CLUSTER}: {}\n", self.cluster));
        out.push_str(&format!("{NODE}: {}\n", self.node));
        if let Some(e) = self.epoch {
            out.push_str(&format!("{EPOCH}: {e}\n"));
        }
    }
}

/// `entries: 42 changes up to revision 1234`, an optional body, then the trailers.
pub fn commit_message(t: &Trailers<'_>, changes: usize, body: &str) -> String {
    let noun = if changes == 1 { "change" } else { "changes" };
    let mut msg = format!(
        "{}: {changes} {noun} up to revision {}\n\n",
        t.area, t.revision
    );
    if !body.is_empty() {
        msg.push_str(body.trim_end());
        msg.push_str("\n\n");
    }
    t.write(&mut msg);
    msg
}

/// `entries: restore from 1a2b3c4d5e6f`, then the trailers and `Kvgit-Restored-From`.
pub fn restore_message(t: &Trailers<'_>, from: &str) -> String {
    let short = &from[..from.len().min(12)];
    let mut msg = format!("{}: restore from {short}\n\n", t.area);
    t.write(&mut msg);
    msg.push_str(&format!("{RESTORED_FROM}: {from}\n"));
    msg
}

/// The message of a checkpoint commit (kept on `refs/kvgit/checkpoints/<area>`).
pub fn checkpoint_message(t: &Trailers<'_>, branch_commit: Option<&str>) -> String {
    let mut msg = format!(
        "kvgit checkpoint: {} at revision {}\n\n",
        t.area, t.revision
    );
    t.write(&mut msg);
    if let Some(c) = branch_commit {
        msg.push_str(&format!("{COMMIT}: {c}\n"));
    }
    msg
}

/// The `Key: value` trailers of the last paragraph of a message.
pub fn parse_trailers(message: &str) -> BTreeMap<String, String> {
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or("");
    last.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with("Kvgit-"))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_summary_blank_line_and_trailers() {
        let area = AreaName("entries".into());
        let cluster = ClusterId("abc".into());
        let t = Trailers {
            area: &area,
            revision: Revision(1234),
            cluster: &cluster,
            node: "core-1",
            epoch: None,
        };
        let msg = commit_message(&t, 42, "");
        assert_eq!(
            msg,
            "entries: 42 changes up to revision 1234\n\nKvgit-Area: entries\nKvgit-Revision: 1234\nKvgit-Cluster: abc\nKvgit-Node: core-1\n"
        );
        let parsed = parse_trailers(&msg);
        assert_eq!(parsed[REVISION], "1234");
        assert_eq!(parsed[NODE], "core-1");
    }
}
