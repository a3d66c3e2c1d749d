//! The three-way sync rule as one pure function: per key, base/live/desired in, what to
//! write to each side out. Every command and the service decide through `decide` only.

/// An area's direction (`mode` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    KvToGit,
    GitToKv,
    Both,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::KvToGit => "kv-to-git",
            Mode::GitToKv => "git-to-kv",
            Mode::Both => "both",
        }
    }

    /// Whether Git's desired state is written to the KV store in this mode.
    pub fn applies_git(self) -> bool {
        !matches!(self, Mode::KvToGit)
    }
}

/// What to do to one side for one key: `Some(v)` put, `None` delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<V> {
    Put(V),
    Delete,
}

/// The outcome for one key. Both sides empty means nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<V> {
    /// Write to the KV store (apply).
    pub kv: Option<Action<V>>,
    /// Write to Git (commit).
    pub git: Option<Action<V>>,
    /// A live value (the one in `live`) is overwritten because Git wins: report and count it.
    pub conflict: bool,
    /// Live differs from desired in a way Git did not ask for (git-to-kv): report it.
    pub drift: bool,
}

impl<V> Decision<V> {
    fn none() -> Self {
        Decision {
            kv: None,
            git: None,
            conflict: false,
            drift: false,
        }
    }

    pub fn is_noop(&self) -> bool {
        self.kv.is_none() && self.git.is_none() && !self.conflict && !self.drift
    }
}

/// What the base says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base<V> {
    /// No base at all (first pass, another cluster): nothing may be deleted.
    Unknown,
    /// The base is known; the key was absent from it.
    Absent,
    /// The base is known and held this value.
    Present(V),
}

/// The per-area settings the rule depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub mode: Mode,
    /// git-to-kv: revert live drift (true) or only report it (false).
    pub self_heal: bool,
}

/// Decide one key. `V` is anything comparable: values, or Git blob ids of values.
///
/// Deletions happen only when base had the key and one side removed it; with no base the
/// pass is a union where Git wins on differing values (the live value in kv-to-git areas).
pub fn decide<V: Clone + PartialEq>(
    rule: Rule,
    base: Base<&V>,
    live: Option<&V>,
    desired: Option<&V>,
) -> Decision<V> {
    if live == desired {
        return Decision::none();
    }
    let to_action = |v: Option<&V>| match v {
        Some(v) => Action::Put(v.clone()),
        None => Action::Delete,
    };
    let base_value = match base {
        Base::Unknown => {
            // The no-base pass: carry one-sided keys over; on a difference Git wins, except
            // in kv-to-git areas, which record the KV store (the live value is committed).
            return match (live, desired) {
                (Some(l), None) => Decision {
                    git: Some(Action::Put(l.clone())),
                    ..Decision::none()
                },
                (Some(l), Some(_)) if rule.mode == Mode::KvToGit => Decision {
                    git: Some(Action::Put(l.clone())),
                    ..Decision::none()
                },
                (_, Some(d)) => Decision {
                    kv: Some(Action::Put(d.clone())),
                    conflict: live.is_some(),
                    ..Decision::none()
                },
                (None, None) => Decision::none(),
            };
        }
        Base::Absent => None,
        Base::Present(b) => Some(b),
    };
    // A deletion is allowed only of a key the base had.
    let may = |target: Option<&V>| target.is_some() || base_value.is_some();
    let live_changed = live != base_value;
    let desired_changed = desired != base_value;
    match rule.mode {
        Mode::KvToGit => {
            if may(live) {
                Decision {
                    git: Some(to_action(live)),
                    ..Decision::none()
                }
            } else {
                Decision::none()
            }
        }
        Mode::GitToKv => {
            // Live moved away from what was agreed: drift, reverted by writing desired
            // unless the operator asked for reports only and Git did not change the key.
            let drift = live_changed;
            let write = may(desired) && (rule.self_heal || desired_changed);
            Decision {
                kv: write.then(|| to_action(desired)),
                drift,
                ..Decision::none()
            }
        }
        Mode::Both => match (live_changed, desired_changed) {
            (true, false) => Decision {
                git: may(live).then(|| to_action(live)),
                ..Decision::none()
            },
            (false, true) => Decision {
                kv: may(desired).then(|| to_action(desired)),
                ..Decision::none()
            },
            // Both moved, to different values: Git wins, the live value is reported.
            (true, true) => Decision {
                kv: may(desired).then(|| to_action(desired)),
                conflict: true,
                ..Decision::none()
            },
            (false, false) => Decision::none(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row: base ("?" = no base, "-" = absent), live, desired, then the expected outcome
    /// for kv-to-git, git-to-kv and both. Outcome notation: `kv=X`/`git=X` put X, `kv=-`
    /// delete, `!` conflict (a live value overwritten), `~` drift, `.` nothing.
    const TABLE: &[(&str, &str, &str, &str, &str, &str)] = &[
        // base known and holding A
        ("A", "A", "A", ".", ".", "."),
        ("A", "A", "B", "git=A", "kv=B", "kv=B"),
        ("A", "A", "-", "git=A", "kv=-", "kv=-"),
        ("A", "B", "A", "git=B", "kv=A ~", "git=B"),
        ("A", "-", "A", "git=-", "kv=A ~", "git=-"),
        ("A", "B", "B", ".", ".", "."),
        ("A", "B", "C", "git=B", "kv=C ~", "kv=C !"),
        ("A", "B", "-", "git=B", "kv=- ~", "kv=- !"),
        ("A", "-", "B", "git=-", "kv=B ~", "kv=B !"),
        ("A", "-", "-", ".", ".", "."),
        // base known, key absent from it
        ("-", "-", "-", ".", ".", "."),
        ("-", "B", "-", "git=B", "~", "git=B"),
        ("-", "-", "B", ".", "kv=B", "kv=B"),
        ("-", "B", "B", ".", ".", "."),
        ("-", "B", "C", "git=B", "kv=C ~", "kv=C !"),
        // no base: union, nothing deleted; Git wins a difference, except in kv-to-git
        ("?", "-", "-", ".", ".", "."),
        ("?", "B", "-", "git=B", "git=B", "git=B"),
        ("?", "-", "B", "kv=B", "kv=B", "kv=B"),
        ("?", "B", "B", ".", ".", "."),
        ("?", "B", "C", "git=B", "kv=C !", "kv=C !"),
    ];

    fn val(s: &str) -> Option<String> {
        (s != "-").then(|| s.to_string())
    }

    fn render(d: &Decision<String>) -> String {
        let mut parts = Vec::new();
        let act = |a: &Action<String>| match a {
            Action::Put(v) => v.clone(),
            Action::Delete => "-".to_string(),
        };
        if let Some(a) = &d.kv {
            parts.push(format!("kv={}", act(a)));
        }
        if let Some(a) = &d.git {
            parts.push(format!("git={}", act(a)));
        }
        if d.conflict {
            parts.push("!".into());
        }
        if d.drift {
            parts.push("~".into());
        }
        if parts.is_empty() {
            ".".into()
        } else {
            parts.join(" ")
        }
    }

    fn run(rule: Rule, b: &str, l: &str, d: &str) -> String {
        let base_v = val(b);
        let base = match (b, &base_v) {
            ("?", _) => Base::Unknown,
            (_, None) => Base::Absent,
            (_, Some(v)) => Base::Present(v),
        };
        let (l, d) = (val(l), val(d));
        render(&decide(rule, base, l.as_ref(), d.as_ref()))
    }

    #[test]
    fn every_combination_in_every_mode() {
        let modes = [Mode::KvToGit, Mode::GitToKv, Mode::Both];
        let mut failures = Vec::new();
        for &(b, l, d, e1, e2, e3) in TABLE {
            for (mode, expected) in modes.iter().zip([e1, e2, e3]) {
                let rule = Rule {
                    mode: *mode,
                    self_heal: true,
                };
                let got = run(rule, b, l, d);
                if got != expected {
                    failures.push(format!(
                        "{} base={b} live={l} desired={d}: expected {expected:?}, got {got:?}",
                        mode.as_str()
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn table_covers_every_relation() {
        // live: absent, equal to base, different; desired: absent, equal to base, equal to
        // live, different from both; under a base holding A, a base without the key, no base.
        for b in ["A", "-", "?"] {
            let lives: &[&str] = if b == "A" {
                &["-", "A", "B"]
            } else {
                &["-", "B"]
            };
            for &l in lives {
                let mut desireds = vec!["-", l];
                if b == "A" {
                    desireds.push("A");
                }
                desireds.push(if l == "B" { "C" } else { "B" });
                desireds.dedup();
                for d in desireds {
                    assert!(
                        TABLE.iter().any(|r| (r.0, r.1, r.2) == (b, l, d)),
                        "table misses base={b} live={l} desired={d}"
                    );
                }
            }
        }
    }

    #[test]
    fn self_heal_off_reports_drift_but_keeps_git_changes() {
        let rule = Rule {
            mode: Mode::GitToKv,
            self_heal: false,
        };
        assert_eq!(run(rule, "A", "B", "A"), "~", "live edit only reported");
        assert_eq!(run(rule, "A", "-", "A"), "~", "live delete only reported");
        assert_eq!(
            run(rule, "A", "B", "C"),
            "kv=C ~",
            "a Git change is still applied"
        );
        assert_eq!(run(rule, "A", "A", "C"), "kv=C");
    }

    #[test]
    fn nothing_is_deleted_without_a_base() {
        for mode in [Mode::KvToGit, Mode::GitToKv, Mode::Both] {
            let rule = Rule {
                mode,
                self_heal: true,
            };
            for (l, d) in [("B", "-"), ("-", "B"), ("B", "C")] {
                let out = run(rule, "?", l, d);
                assert!(
                    !out.contains("=-"),
                    "{} deleted with no base: {out}",
                    mode.as_str()
                );
            }
        }
    }
}
