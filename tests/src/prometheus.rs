//! A strict reader of the Prometheus text exposition format (version 0.0.4), for
//! tests of the metric endpoints: every line must be a `# HELP`, a `# TYPE` or a sample
//! `name{label="value",...} value [timestamp]` of a family whose TYPE came first, with
//! valid metric and label names and properly escaped values.

use std::collections::BTreeMap;

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: the samples and each family's type.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The samples of `name` whose labels include every pair of `with`.
    pub fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && with
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

fn valid_name(n: &str, colon: bool) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses `{k="v",...}` at the start of `text`; the labels and the rest.
fn labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut out = BTreeMap::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return Ok((out, text));
    };
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let (key, r) = rest
            .split_once("=\"")
            .ok_or(format!("no label in {text:?}"))?;
        if !valid_name(key, false) {
            return Err(format!("label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {text:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value in {text:?}")),
            }
        };
        if out.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key:?} twice in {text:?}"));
        }
        rest = &r[end + 1..];
        if !(rest.starts_with(',') || rest.starts_with('}')) {
            return Err(format!("after label {key:?}: {rest:?}"));
        }
    }
}

/// Parses `text`, refusing anything outside the format.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), _) if valid_name(name, true) => {}
                (Some("TYPE"), Some(name), Some(kind))
                    if valid_name(name, true)
                        && ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&kind) =>
                {
                    if e.types.insert(name.into(), kind.into()).is_some() {
                        return Err(format!("TYPE of {name} twice"));
                    }
                }
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let end = line.find(['{', ' ']).ok_or(format!("no value: {line:?}"))?;
        let name = &line[..end];
        if !valid_name(name, true) {
            return Err(format!("metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| e.types.contains_key(*f)))
            .unwrap_or(name);
        if !e.types.contains_key(family) {
            return Err(format!("{name} has no TYPE before it"));
        }
        let (labels, rest) = labels(&line[end..])?;
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .ok_or(format!("no value: {line:?}"))?
            .replace("+Inf", "inf")
            .replace("-Inf", "-inf");
        let value: f64 = value.parse().map_err(|_| format!("value of {line:?}"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| format!("timestamp of {line:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("trailing fields: {line:?}"));
        }
        e.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_text_parses_and_bad_text_does_not() {
        let e = parse(
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"2\",y=\"\"} 3.5 1700000000000\n# TYPE b gauge\nb 2\n",
        )
        .unwrap();
        assert_eq!(e.find("a_total", &[("x", "1\"2")])[0].value, 3.5);
        assert_eq!(e.find("b", &[])[0].value, 2.0);
        for bad in [
            "a 1\n",
            "# TYPE a gauge\na{x=1} 1\n",
            "# TYPE a gauge\na{x=\"1\"} one\n",
            "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",
            "# TYPE a gauge\n# TYPE a gauge\n",
            "# TYPE 1a gauge\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
