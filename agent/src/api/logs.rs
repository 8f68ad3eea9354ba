//! `/containerLogs/{ns}/{pod}/{container}`: a container's CRI log as kubelet serves
//! it, with follow, tailLines, sinceSeconds, sinceTime, timestamps, previous and
//! limitBytes.

use super::*;

/// The query parameters of a container log request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub limit_bytes: Option<usize>,
}

impl LogQuery {
    /// The earliest time of a line to show: `sinceTime`, else `sinceSeconds` before `now`.
    pub fn since(&self, now: k8s_openapi::jiff::Timestamp) -> Option<k8s_openapi::jiff::Timestamp> {
        match (&self.since_time, self.since_seconds) {
            (Some(t), _) => t.parse().ok(),
            (None, Some(s)) => now
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .ok(),
            _ => None,
        }
    }
}

/// Parses `follow`, `previous`, `timestamps`, `tailLines`, `sinceSeconds`, `sinceTime`
/// and `limitBytes`; a malformed value is an error naming it.
pub fn parse_log_query(query: &str) -> Result<LogQuery, String> {
    let mut q = LogQuery::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let flag = |v: &str| matches!(v, "true" | "1" | "");
        let num = |v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{k}={v} is not a non-negative number"))
        };
        match k.as_ref() {
            "follow" => q.follow = flag(&v),
            "previous" => q.previous = flag(&v),
            "timestamps" => q.timestamps = flag(&v),
            "tailLines" => q.tail_lines = Some(num(&v)? as usize),
            "sinceSeconds" => q.since_seconds = Some(num(&v)?),
            "sinceTime" => {
                v.parse::<k8s_openapi::jiff::Timestamp>()
                    .map_err(|_| format!("sinceTime={v} is not an RFC 3339 time"))?;
                q.since_time = Some(v.into_owned());
            }
            "limitBytes" => q.limit_bytes = Some(num(&v)? as usize),
            _ => {}
        }
    }
    Ok(q)
}

pub(super) async fn container_logs(
    shared: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    use crate::runtime::container::{ContainerState, state_in};
    let q = match parse_log_query(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let state_dir = shared.cfg.state_dir.clone();
    let Some(p) = crate::podworker::recorded_pods(&state_dir)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == pod)
    else {
        return not_on_node(ns, pod);
    };
    let run = crate::runtime::logs::run_to_read(&state_dir, &p, container, q.previous);
    let Some(run) = run else {
        return text(
            StatusCode::BAD_REQUEST,
            if q.previous {
                format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found\n"
                )
            } else {
                format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start or does not exist\n"
                )
            },
        );
    };
    let since = q.since(k8s_openapi::jiff::Timestamp::now());
    let opts = crate::runtime::logs::ReadOptions {
        tail: q.tail_lines,
        since,
        timestamps: q.timestamps,
        limit_bytes: q.limit_bytes,
    };
    let lines = crate::runtime::logs::read_lines(&run.log_path, &opts);
    let container_dir = state_dir.join("containers").join(&run.id);
    let running = matches!(state_in(&container_dir), ContainerState::Running { .. });
    if !q.follow || !running {
        let mut r = text(StatusCode::OK, lines.concat());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return r;
    }
    // Follow: what is there, then every new complete line until the container stops or
    // the client goes (a send fails), bounded by limitBytes.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let mut sent: usize = lines.iter().map(String::len).sum();
    let mut seen = crate::runtime::logs::read_lines(
        &run.log_path,
        &crate::runtime::logs::ReadOptions {
            timestamps: q.timestamps,
            ..Default::default()
        },
    )
    .len();
    let limit = q.limit_bytes;
    let log_path = run.log_path.clone();
    let timestamps = q.timestamps;
    tokio::spawn(async move {
        use futures::SinkExt as _;
        if tx
            .send(Ok(Frame::data(Bytes::from(lines.concat()))))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let all = crate::runtime::logs::read_lines(
                &log_path,
                &crate::runtime::logs::ReadOptions {
                    timestamps,
                    ..Default::default()
                },
            );
            // A rotation that dropped old files can shrink the list: start over at its end.
            if all.len() < seen {
                seen = all.len();
            }
            for l in &all[seen..] {
                let mut chunk = l.clone();
                if let Some(limit) = limit {
                    if sent >= limit {
                        return;
                    }
                    chunk.truncate(limit - sent);
                }
                sent += chunk.len();
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
            }
            seen = all.len();
            if !matches!(state_in(&container_dir), ContainerState::Running { .. }) {
                return;
            }
        }
    });
    let mut r = Response::new(StreamBody::new(rx).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries_parse_and_bad_values_are_named() {
        let q = parse_log_query(
            "follow=true&tailLines=3&timestamps=1&sinceSeconds=60&limitBytes=100&previous=false",
        )
        .unwrap();
        assert_eq!(
            q,
            LogQuery {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(3),
                since_seconds: Some(60),
                since_time: None,
                limit_bytes: Some(100),
            }
        );
        assert!(
            parse_log_query("tailLines=-1")
                .unwrap_err()
                .contains("tailLines")
        );
        assert!(
            parse_log_query("sinceTime=yesterday")
                .unwrap_err()
                .contains("sinceTime")
        );
        let q = parse_log_query("sinceTime=2026-11-26T01:10:42Z").unwrap();
        assert_eq!(q.since_time.as_deref(), Some("2026-11-26T01:10:42Z"));
        let now: k8s_openapi::jiff::Timestamp = "2026-11-26T02:00:00Z".parse().unwrap();
        assert_eq!(q.since(now), Some("2026-11-26T01:10:42Z".parse().unwrap()));
        let q = parse_log_query("sinceSeconds=60").unwrap();
        assert_eq!(q.since(now), Some("2026-11-26T01:59:00Z".parse().unwrap()));
    }
}
