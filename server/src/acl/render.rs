//! What `kvgit acl plan|apply` prints: one `+`/`~`/`-` line per change, the notes, and a
//! summary line; or the plan as JSON.

use super::{AclPlan, Change, Op};
use std::io::{self, Write};

/// The plan as text: changes, then `# ` notes, then the summary.
pub fn plan(out: &mut impl Write, plan: &AclPlan) -> io::Result<()> {
    for change in &plan.changes {
        writeln!(out, "{change}")?;
    }
    for note in &plan.notes {
        writeln!(out, "# {note}")?;
    }
    summary(out, plan, false)
}

/// `acl: 3 to add, 1 to change, 0 to remove (etcd, user kvgit-core-1)`, or "no changes".
pub fn summary(out: &mut impl Write, plan: &AclPlan, applied: bool) -> io::Result<()> {
    let (add, change, remove) = (
        plan.count(Op::Add),
        plan.count(Op::Change),
        plan.count(Op::Remove),
    );
    let whom = format!("{}, {}", plan.backend, plan.principal);
    if add + change + remove == 0 {
        return writeln!(out, "acl: no changes ({whom})");
    }
    let verb = if applied { "" } else { "to " };
    writeln!(
        out,
        "acl: {add} {verb}add{}, {change} {verb}change{}, {remove} {verb}remove{} ({whom})",
        if applied { "ed" } else { "" },
        if applied { "d" } else { "" },
        if applied { "d" } else { "" },
    )
}

/// One change, as apply makes it.
pub fn applied(out: &mut impl Write, change: &Change) -> io::Result<()> {
    writeln!(out, "{change}")
}

pub fn plan_json(out: &mut impl Write, plan: &AclPlan) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, plan)?;
    writeln!(out)
}
