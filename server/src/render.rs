//! What the one-shot verbs print: the engine returns reports, and this module turns them
//! into the text people (and scripts) read on stdout. One function per report, each
//! writing to any `Write`, so the text is tested here and a JSON rendering of the same
//! reports (they derive `Serialize`) can sit beside it.

use crate::engine::apply::AreaApplied;
use crate::engine::export::{ExportReport, PassKind};
use crate::engine::log::KeyHistory;
use crate::engine::report::PlanReport;
use crate::engine::status::Status;
use crate::engine::validate::ValidateReport;
use std::io::{self, Write};
use sync_core::Key;

/// Live values are shown by their first 64 bytes.
const PREVIEW_BYTES: usize = 64;

/// A raced apply lists this many keys, then counts the rest.
const RACED_SHOWN: usize = 5;

/// `kvgit export`: a line per area, then what needs a person's attention.
pub fn export(out: &mut impl Write, reports: &[ExportReport]) -> io::Result<()> {
    for r in reports {
        let what = match (&r.held, r.commit) {
            (Some(_), _) => "held back".to_string(),
            (None, Some(c)) => {
                format!("committed {} ({} changes)", &c.to_string()[..12], r.changes)
            }
            (None, None) => "no changes".to_string(),
        };
        let pass = match r.pass {
            PassKind::Incremental => "incremental",
            PassKind::NoBase => "full, no base",
            PassKind::Resync => "full resync, checkpoint compacted",
        };
        writeln!(
            out,
            "{}: {what} up to revision {} ({pass})",
            r.area, r.revision
        )?;
        if let Some(cause) = &r.resync {
            writeln!(out, "  resync: {}", cause.why)?;
        }
        for u in r.unmapped.iter().flatten() {
            writeln!(out, "  ? {u}; left as it is (rename or remove it)")?;
        }
        for k in &r.conflicts {
            writeln!(
                out,
                "  ! {k}: live and Git both changed; Git wins on the next apply"
            )?;
        }
        if r.pending_apply > 0 {
            writeln!(
                out,
                "  {} keys differ where Git wins: run `kvgit apply`",
                r.pending_apply
            )?;
        }
    }
    Ok(())
}

/// `kvgit plan` (and `apply --dry-run`): `+`/`~`/`-` per key, drift, then a summary; the
/// text form of the same report `--format json` prints.
pub fn plan(out: &mut impl Write, report: &PlanReport) -> io::Result<()> {
    for a in &report.areas {
        if a.exact {
            let from = report
                .commit
                .as_deref()
                .map_or("an empty tree", |c| &c[..c.len().min(12)]);
            let commits = if a.restore_commit_from.is_some() {
                "; apply commits the restore on the branch"
            } else {
                ""
            };
            writeln!(out, "# {}: exact restore from {from}{commits}", a.area)?;
        }
        for (kind, k) in a.ops_in_key_order() {
            match a.overwritten(&k.raw) {
                Some(v) => writeln!(
                    out,
                    "{} {} (Git wins over live value {})",
                    kind.sign(),
                    k.raw,
                    preview(v)
                )?,
                None => writeln!(out, "{} {}", kind.sign(), k.raw)?,
            }
        }
        for k in &a.drift {
            writeln!(out, "# drift: {} differs from Git", k.raw)?;
        }
        if a.pending_export > 0 {
            writeln!(
                out,
                "# {}: {} keys changed in the KV store are not in Git yet (run export)",
                a.area, a.pending_export
            )?;
        }
    }
    let s = &report.summary;
    if !s.changes {
        writeln!(out, "No changes. The KV store matches Git.")
    } else {
        writeln!(
            out,
            "Plan: {} to add, {} to change, {} to delete.",
            s.add, s.change, s.delete
        )
    }
}

/// `kvgit plan --format json` (and `GET /api/v1/plan`): the report, pretty-printed.
pub fn plan_json(out: &mut impl Write, report: &PlanReport) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

/// `kvgit validate`: every problem, one per line (`text`), as GitHub workflow annotations
/// (`github`), or the report as JSON.
pub fn validate(out: &mut impl Write, r: &ValidateReport, format: &str) -> io::Result<()> {
    match format {
        "json" => {
            serde_json::to_writer_pretty(&mut *out, r)?;
            writeln!(out)
        }
        "github" => {
            for p in &r.problems {
                // Annotation properties and messages escape %, CR and LF (and , : in properties).
                let prop = |v: &str| {
                    v.replace('%', "%25")
                        .replace('\r', "%0D")
                        .replace('\n', "%0A")
                        .replace(':', "%3A")
                        .replace(',', "%2C")
                };
                let msg = p.to_string();
                let msg = msg
                    .replace('%', "%25")
                    .replace('\r', "%0D")
                    .replace('\n', "%0A");
                writeln!(out, "::error file={},title=kvgit::{msg}", prop(&p.file))?;
            }
            Ok(())
        }
        _ => {
            for p in &r.problems {
                writeln!(out, "{p}")?;
            }
            if r.valid {
                writeln!(
                    out,
                    "valid: {} files in {} areas of {}",
                    r.files, r.areas, r.source
                )
            } else {
                writeln!(
                    out,
                    "invalid: {} problems in {} files of {} areas of {}",
                    r.problems.len(),
                    r.files,
                    r.areas,
                    r.source
                )
            }
        }
    }
}

/// The last line of `kvgit apply --dry-run`.
pub fn dry_run(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "dry run: nothing written")
}

/// One round of `kvgit apply`: per area what was written, the live values Git overwrote,
/// and a summary of the keys someone else changed meanwhile.
pub fn applied(out: &mut impl Write, round: &[AreaApplied]) -> io::Result<()> {
    for a in round {
        let rev = a
            .revision
            .map_or_else(|| "-".to_string(), |r| r.to_string());
        writeln!(
            out,
            "{}: {} added, {} changed, {} deleted (revision {rev})",
            a.area, a.added, a.changed, a.deleted,
        )?;
        if let Some(c) = a.restore_commit {
            writeln!(
                out,
                "  restore committed on the branch as {}",
                &c.to_string()[..12]
            )?;
        }
        for o in &a.overwrote {
            writeln!(
                out,
                "  ! {}: overwrote live value {}",
                o.key,
                preview(&o.live_value)
            )?;
        }
        if !a.raced.is_empty() {
            // Another writer (a second apply, an operator): a summary, not a line per key.
            let some: Vec<String> = a
                .raced
                .iter()
                .take(RACED_SHOWN)
                .map(|k| k.to_string())
                .collect();
            let more = a.raced.len().saturating_sub(RACED_SHOWN);
            let tail = if more > 0 {
                format!(", and {more} more")
            } else {
                String::new()
            };
            writeln!(
                out,
                "  ? {} keys changed by someone else meanwhile ({}{tail}); re-deciding them",
                a.raced.len(),
                some.join(", ")
            )?;
        }
    }
    Ok(())
}

/// `kvgit status`: a table, one row per area (`-` where a value is unknown), each area's
/// error under its row.
pub fn status_table(out: &mut impl Write, s: &Status) -> io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<10} {:>12} {:<14} {:<12} {:>8} {:>6} {:>8}",
        "AREA", "MODE", "CHECKPOINT", "BASE COMMIT", "OWNER", "PENDING", "DRIFT", "TO APPLY"
    )?;
    fn or_dash(v: Option<impl ToString>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    for a in &s.areas {
        let commit = or_dash(a.base_commit.as_ref());
        writeln!(
            out,
            "{:<16} {:<10} {:>12} {:<14} {:<12} {:>8} {:>6} {:>8}",
            a.area,
            a.mode,
            or_dash(a.checkpoint.as_ref().map(|c| c.revision)),
            &commit[..commit.len().min(12)],
            or_dash(a.owner.as_ref()),
            or_dash(a.pending_events.as_ref()),
            or_dash(a.drift),
            or_dash(a.pending_apply),
        )?;
        if let Some(e) = &a.error {
            writeln!(out, "  error: {e}")?;
        }
    }
    Ok(())
}

/// `kvgit status --json`: the document, pretty-printed.
pub fn status_json(out: &mut impl Write, s: &Status) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, s)?;
    writeln!(out)
}

/// `kvgit log KEY`: one line per commit, newest first.
pub fn log(out: &mut impl Write, h: &KeyHistory) -> io::Result<()> {
    if h.entries.is_empty() {
        return writeln!(out, "{}: no history in Git", h.key);
    }
    for e in &h.entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.time.max(0) as u64),
        );
        let what = match e.size {
            Some(n) => format!("{n} bytes"),
            None => "deleted".to_string(),
        };
        writeln!(
            out,
            "{} {when} {} <{}> {what}  {}",
            &e.commit.to_string()[..12],
            e.author_name,
            e.author_email,
            e.summary
        )?;
    }
    Ok(())
}

/// A live value as plans show it: quoted, its first bytes, `…` when cut.
fn preview(v: &[u8]) -> String {
    let k = Key(v.iter().copied().take(PREVIEW_BYTES).collect());
    let more = if v.len() > PREVIEW_BYTES { "…" } else { "" };
    format!("\"{k}{more}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::apply::Overwrote;
    use crate::engine::export::{HeldDeletes, ResyncCause};
    use crate::engine::status::{AreaStatus, BackendStatus, CheckpointStatus, Pending};
    use sync_core::Revision;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("writing to a Vec");
        String::from_utf8(out).expect("UTF-8 output")
    }

    fn key(k: &str) -> Key {
        Key(k.as_bytes().to_vec())
    }

    fn export_report(area: &str) -> ExportReport {
        ExportReport {
            area: area.into(),
            pass: PassKind::Incremental,
            commit: None,
            changes: 0,
            revision: Revision(7),
            conflicts: Vec::new(),
            pending_apply: 0,
            resync: None,
            held: None,
            held_changes: Default::default(),
            unmapped: None,
        }
    }

    #[test]
    fn export_lines() {
        let committed = ExportReport {
            commit: Some(gitstore::GitStore::empty_tree_id()),
            changes: 3,
            pass: PassKind::Resync,
            resync: Some(ResyncCause {
                label: "compacted",
                why: "history gone".into(),
            }),
            unmapped: Some(vec!["entries/%ZZ: maps to no key".into()]),
            conflicts: vec![key("/a/x")],
            pending_apply: 2,
            ..export_report("entries")
        };
        let held = ExportReport {
            held: Some(HeldDeletes {
                deletes: 5,
                keys: 5,
                fraction: 0.5,
                prefix: "/r/".into(),
            }),
            ..export_report("routes")
        };
        assert_eq!(
            text(|o| export(o, &[committed, held, export_report("idle")])),
            "entries: committed 4b825dc642cb (3 changes) up to revision 7 (full resync, checkpoint compacted)\n\
             \x20 resync: history gone\n\
             \x20 ? entries/%ZZ: maps to no key; left as it is (rename or remove it)\n\
             \x20 ! /a/x: live and Git both changed; Git wins on the next apply\n\
             \x20 2 keys differ where Git wins: run `kvgit apply`\n\
             routes: held back up to revision 7 (incremental)\n\
             idle: no changes up to revision 7 (incremental)\n"
        );
    }

    #[test]
    fn plan_lines_come_from_the_report_in_key_order() {
        use crate::engine::report::{AreaReport, KeyReport, PlanReport, Summary};
        let k = |s: &str, p: &str| KeyReport::new(&key(s), p.into());
        let id = "ab".repeat(20);
        let area = AreaReport {
            area: "entries".into(),
            mode: "both",
            prefix: "/e/".into(),
            path: "entries".into(),
            exact: true,
            restore_commit_from: Some(id.clone()),
            adds: vec![k("/e/b", "entries/b")],
            changes: vec![k("/e/a", "entries/a")],
            deletes: vec![k("/e/c", "entries/c")],
            conflicts: vec![KeyReport {
                live_value: Some(b"live".to_vec()),
                ..k("/e/a", "entries/a")
            }],
            drift: Vec::new(),
            pending_export: 2,
        };
        let report = PlanReport {
            commit: Some(id),
            areas: vec![area],
            summary: Summary {
                add: 1,
                change: 1,
                delete: 1,
                changes: true,
            },
        };
        assert_eq!(
            text(|o| plan(o, &report)),
            "# entries: exact restore from abababababab; apply commits the restore on the branch\n\
             ~ /e/a (Git wins over live value \"live\")\n\
             + /e/b\n\
             - /e/c\n\
             # entries: 2 keys changed in the KV store are not in Git yet (run export)\n\
             Plan: 1 to add, 1 to change, 1 to delete.\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&text(|o| plan_json(o, &report))).expect("JSON");
        assert_eq!(json["areas"][0]["conflicts"][0]["path"], "entries/a");
        assert!(json["areas"][0]["conflicts"][0].get("live_value").is_none());
    }

    #[test]
    fn applied_lines_summarise_races() {
        let round = [
            AreaApplied {
                area: "entries".into(),
                added: 0,
                changed: 1,
                deleted: 0,
                revision: Some(Revision(10)),
                overwrote: vec![Overwrote {
                    key: key("/e/a"),
                    live_value: vec![b'x'; 70],
                }],
                raced: Vec::new(),
                restore_commit: None,
            },
            AreaApplied {
                area: "routes".into(),
                added: 1,
                changed: 0,
                deleted: 0,
                revision: None,
                overwrote: Vec::new(),
                raced: (0..7).map(|i| key(&format!("/r/{i}"))).collect(),
                restore_commit: None,
            },
        ];
        let x64 = "x".repeat(64);
        assert_eq!(
            text(|o| applied(o, &round)),
            format!(
                "entries: 0 added, 1 changed, 0 deleted (revision 10)\n\
                 \x20 ! /e/a: overwrote live value \"{x64}…\"\n\
                 routes: 1 added, 0 changed, 0 deleted (revision -)\n\
                 \x20 ? 7 keys changed by someone else meanwhile (/r/0, /r/1, /r/2, /r/3, /r/4, and 2 more); re-deciding them\n"
            )
        );
    }

    #[test]
    fn status_table_and_json() {
        let area = |name: &str| AreaStatus {
            area: name.into(),
            base_commit: None,
            checkpoint: None,
            drift: None,
            error: None,
            live: None,
            mode: "both".into(),
            owner: None,
            path: name.into(),
            pending_apply: None,
            pending_events: None,
            pending_export: None,
            prefix: format!("/{name}/"),
        };
        let s = Status {
            areas: vec![
                AreaStatus {
                    base_commit: Some("0123456789abcdef0123".into()),
                    checkpoint: Some(CheckpointStatus {
                        cluster: Some("c1".into()),
                        commit: Some(gitstore::GitStore::empty_tree_id()),
                        distrust: None,
                        node: Some("n1".into()),
                        revision: Revision(22),
                        same_cluster: Some(true),
                        trusted: Some(true),
                    }),
                    drift: Some(6),
                    owner: Some("n1".into()),
                    pending_apply: Some(0),
                    pending_events: Some(Pending::Keys(3)),
                    pending_export: Some(0),
                    ..area("routes")
                },
                AreaStatus {
                    pending_events: Some(Pending::ResyncNeeded("compacted")),
                    error: Some("entries: bad name".into()),
                    ..area("entries")
                },
            ],
            backend: BackendStatus {
                cluster: Some("c1".into()),
                kind: "etcd",
                revision: Some(Revision(22)),
            },
            branch: "main".into(),
            node: "n1".into(),
            service: None,
            tip: None,
        };
        assert_eq!(
            text(|o| status_table(o, &s)),
            "AREA             MODE         CHECKPOINT BASE COMMIT    OWNER         PENDING  DRIFT TO APPLY\n\
             routes           both                 22 0123456789ab   n1                  3      6        0\n\
             entries          both                  - -              -            resync needed (compacted)      -        -\n\
             \x20 error: entries: bad name\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&text(|o| status_json(o, &s))).expect("JSON");
        assert_eq!(json["areas"][0]["checkpoint"]["revision"], 22);
        assert_eq!(json["areas"][0]["pending_events"], 3);
        assert_eq!(
            json["areas"][1]["pending_events"],
            "resync needed (compacted)"
        );
        assert!(json["areas"][1]["checkpoint"].is_null());
        assert!(json["tip"].is_null());
    }
}
