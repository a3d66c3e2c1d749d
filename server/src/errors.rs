//! One line from an error and its causes, for logs, `/status` and the CLI's last word:
//! the culprit first, each cause once (a cause already quoted by its parent is not repeated).

/// `error: cause: deeper cause`, skipping a cause whose text the line already holds.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("area entries")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("disk full")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("area entries: disk full")]
    struct Quoting(#[source] Inner);

    #[test]
    fn each_cause_once() {
        assert_eq!(super::chain(&Outer(Inner)), "area entries: disk full");
        assert_eq!(super::chain(&Quoting(Inner)), "area entries: disk full");
    }
}
