//! The Prometheus text exposition format's one rule shared by the hand-built metric
//! endpoints: how a label value is escaped.

/// `v` as a label value goes between double quotes: backslash, double quote and line
/// feed escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
