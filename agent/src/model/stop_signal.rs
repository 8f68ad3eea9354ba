//! The signal that stops a container, as kubelet and containerd pick it: the
//! container's `lifecycle.stopSignal` when the pod sets one, else the image's
//! `StopSignal` (e.g. nginx's SIGQUIT), else SIGTERM.

use k8s_openapi::api::core::v1::Container;

/// Why a stop signal cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StopSignalError {
    #[error("{0:?} is not a signal (a name such as SIGQUIT or QUIT, or a number 1-64)")]
    Unknown(String),
}

/// The stop signal's number for `c` with the image's `StopSignal` `image`.
pub fn stop_signal(c: &Container, image: &str) -> Result<i32, StopSignalError> {
    let asked = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.stop_signal.as_deref())
        .filter(|s| !s.is_empty());
    match asked.or(Some(image).filter(|s| !s.is_empty())) {
        Some(s) => parse(s),
        None => Ok(15),
    }
}

/// A signal by name (`SIGQUIT`, `quit`), real-time name (`SIGRTMIN+3`) or number.
pub fn parse(s: &str) -> Result<i32, StopSignalError> {
    let unknown = || StopSignalError::Unknown(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n).ok_or_else(unknown);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    // Real-time signals: SIGRTMIN[+n] is 34 + n, SIGRTMAX[-n] is 64 - n (n ≤ 30).
    for (prefix, sign, base, step) in [("RTMIN", '+', 34, 1), ("RTMAX", '-', 64, -1)] {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let off: i32 = match rest.strip_prefix(sign) {
            Some(n) => n.parse().map_err(|_| unknown())?,
            None if rest.is_empty() => 0,
            None => return Err(unknown()),
        };
        return (0..=30)
            .contains(&off)
            .then_some(base + step * off)
            .ok_or_else(unknown);
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(unknown)
}

/// Linux's signal numbers (x86-64, arm64).
const NAMES: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn container(stop: Option<&str>) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "c",
            "lifecycle": stop.map(|s| serde_json::json!({"stopSignal": s})),
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_then_the_image_then_sigterm() {
        assert_eq!(stop_signal(&container(None), ""), Ok(15));
        assert_eq!(stop_signal(&container(None), "SIGQUIT"), Ok(3));
        assert_eq!(stop_signal(&container(Some("SIGUSR1")), "SIGQUIT"), Ok(10));
        assert_eq!(stop_signal(&container(Some("")), "SIGWINCH"), Ok(28));
        assert!(stop_signal(&container(Some("SIGNOPE")), "").is_err());
    }

    #[test]
    fn names_numbers_and_realtime_signals_parse() {
        assert_eq!(parse("quit"), Ok(3));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse("37"), Ok(37));
        assert_eq!(parse("SIGRTMIN"), Ok(34));
        assert_eq!(parse("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse("SIGRTMAX-1"), Ok(63));
        for bad in ["0", "65", "SIGRTMIN+31", "RTMINX", "", "SIG"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
