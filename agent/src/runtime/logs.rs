//! Container logs in the CRI format kubelet and `kubectl logs` read:
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>\n`, one file per container start
//! (`<log-dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`), rotated by size into
//! `<restart>.log.<YYYYMMDD-HHMMSS>` files, keeping a bounded number.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer ones are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// The directory of a pod's logs.
pub fn pod_dir(log_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    log_dir.join(format!("{namespace}_{pod}_{uid}"))
}

/// The log file of one start of a container.
pub fn container_log(pod_dir: &Path, container: &str, restart: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart}.log"))
}

/// Rotation limits (kubelet's `containerLogMaxSize`, `containerLogMaxFiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

/// One record's prefix.
fn prefix(now: k8s_openapi::jiff::Timestamp, stream: &str, partial: bool) -> String {
    format!("{now} {stream} {} ", if partial { 'P' } else { 'F' })
}

/// Writes both streams of one container start into its CRI log file.
pub struct CriWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
    pending: [Vec<u8>; 2],
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

impl CriWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn record(&mut self, stream: usize, text: &[u8], partial: bool) -> io::Result<()> {
        let mut line = prefix(
            k8s_openapi::jiff::Timestamp::now(),
            STREAMS[stream],
            partial,
        )
        .into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Takes output of stream 0 (stdout) or 1 (stderr); whole lines are written now.
    pub fn write(&mut self, stream: usize, data: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.pending[stream]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let mut s = start;
            while end - s > MAX_LINE {
                self.record(stream, &buf[s..s + MAX_LINE], true)?;
                s += MAX_LINE;
            }
            self.record(stream, &buf[s..end], false)?;
            start = end + 1;
        }
        while buf.len() - start > MAX_LINE {
            self.record(stream, &buf[start..start + MAX_LINE], true)?;
            start += MAX_LINE;
        }
        self.pending[stream] = buf[start..].to_vec();
        Ok(())
    }

    /// Writes what is left of unterminated lines (at the end of the container) as
    /// partial records, as containerd does: a last line without a newline stays
    /// without one in `kubectl logs` and in a termination message taken from the log.
    pub fn finish(&mut self) -> io::Result<()> {
        for stream in 0..2 {
            let rest = std::mem::take(&mut self.pending[stream]);
            if !rest.is_empty() {
                self.record(stream, &rest, true)?;
            }
        }
        self.file.sync_all()
    }

    fn rotate(&mut self) -> io::Result<()> {
        let stamp = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y%m%d-%H%M%S")
            .to_string();
        let mut rotated = self.path.as_os_str().to_owned();
        rotated.push(format!(".{stamp}"));
        let mut rotated = PathBuf::from(rotated);
        let mut n = 1;
        while rotated.exists() {
            let mut r = self.path.as_os_str().to_owned();
            r.push(format!(".{stamp}.{n}"));
            rotated = PathBuf::from(r);
            n += 1;
        }
        std::fs::rename(&self.path, &rotated)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        // Keep max_files in all: the current file and the newest rotated ones.
        let mut old = rotated_files(&self.path);
        let keep = self.rotation.max_files.saturating_sub(1);
        if old.len() > keep {
            old.sort();
            for f in &old[..old.len() - keep] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(())
    }
}

/// Rotated files of a log, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path
        .file_name()
        .map(|n| format!("{}.", n.to_string_lossy()))
    else {
        return Vec::new();
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// One parsed record of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

/// Parses one line of a CRI log.
pub fn parse_line(line: &str) -> Option<Record> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?.to_string();
    let stream = it.next()?.to_string();
    let tag = it.next()?;
    let text = it.next().unwrap_or("").to_string();
    Some(Record {
        time,
        stream,
        partial: tag == "P",
        text,
    })
}

/// What to read of a container's log (kubelet's `PodLogOptions`).
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The last N lines only.
    pub tail: Option<usize>,
    /// Lines written at or after this RFC 3339 time only.
    pub since: Option<k8s_openapi::jiff::Timestamp>,
    /// Each line prefixed with its RFC 3339 time.
    pub timestamps: bool,
    /// At most this many bytes (whole output, cut at the limit).
    pub limit_bytes: Option<usize>,
}

/// The lines of the log at `path` and its rotated files, oldest first, partial records
/// joined, as `options` selects; each with a newline.
pub fn read_lines(path: &Path, options: &ReadOptions) -> Vec<String> {
    let mut files = rotated_files(path);
    files.push(path.to_path_buf());
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for rec in text.lines().filter_map(parse_line) {
            partial.push_str(&rec.text);
            if rec.partial {
                continue;
            }
            let line = std::mem::take(&mut partial);
            if let Some(since) = options.since
                && rec
                    .time
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .is_ok_and(|t| t < since)
            {
                continue;
            }
            lines.push(if options.timestamps {
                format!("{} {line}\n", rec.time)
            } else {
                format!("{line}\n")
            });
        }
    }
    let start = options.tail.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out: Vec<String> = lines.split_off(start);
    if let Some(limit) = options.limit_bytes {
        let mut used = 0;
        let mut kept = Vec::new();
        for l in out {
            if used + l.len() > limit {
                let mut cut = limit - used;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                kept.push(l[..cut].to_string());
                break;
            }
            used += l.len();
            kept.push(l);
        }
        out = kept;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<Record> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| parse_line(l).unwrap())
            .collect()
    }

    #[test]
    fn reading_follows_tail_since_timestamps_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "2026-11-26T01:10:32.1Z stdout F one\n\
             2026-11-26T01:10:42.1Z stdout P tw\n\
             2026-11-26T01:10:42.2Z stdout F o\n\
             2026-11-26T01:10:52.1Z stderr F three\n",
        )
        .unwrap();
        let all = read_lines(&p, &ReadOptions::default());
        assert_eq!(all, ["one\n", "two\n", "three\n"]);
        let tail = read_lines(
            &p,
            &ReadOptions {
                tail: Some(2),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(
            tail,
            [
                "2026-11-26T01:10:42.2Z two\n",
                "2026-11-26T01:10:52.1Z three\n"
            ]
        );
        let since = read_lines(
            &p,
            &ReadOptions {
                since: Some("2026-11-26T01:10:50Z".parse().unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(since, ["three\n"]);
        let limited = read_lines(
            &p,
            &ReadOptions {
                limit_bytes: Some(6),
                ..Default::default()
            },
        );
        assert_eq!(limited.concat(), "one\ntw");
    }

    #[test]
    fn lines_streams_and_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = container_log(&pod_dir(dir.path(), "default", "web", "u1"), "c", 0);
        assert!(p.ends_with("default_web_u1/c/0.log"));
        let mut w = CriWriter::open(&p, Rotation::default()).unwrap();
        w.write(0, b"hello\nwor").unwrap();
        w.write(1, b"oops\n").unwrap();
        w.write(0, b"ld\n").unwrap();
        w.write(0, &vec![b'x'; MAX_LINE + 10]).unwrap();
        w.write(0, b"\ntail").unwrap();
        w.finish().unwrap();
        let r = read(&p);
        let texts: Vec<(&str, bool, usize)> = r
            .iter()
            .map(|r| (r.stream.as_str(), r.partial, r.text.len()))
            .collect();
        assert_eq!(
            texts,
            [
                ("stdout", false, 5),
                ("stderr", false, 4),
                ("stdout", false, 5),
                ("stdout", true, MAX_LINE),
                ("stdout", false, 10),
                ("stdout", true, 4)
            ]
        );
        assert_eq!(r[2].text, "world");
        assert!(r[0].time.ends_with('Z') && r[0].time.contains('T'));
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut w = CriWriter::open(
            &p,
            Rotation {
                max_bytes: 200,
                max_files: 3,
            },
        )
        .unwrap();
        for i in 0..40 {
            w.write(0, format!("line number {i}\n").as_bytes()).unwrap();
        }
        w.finish().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        assert_eq!(rotated_files(&p).len(), 2);
        let last = read(&p);
        assert_eq!(last.last().unwrap().text, "line number 39");
    }
}
