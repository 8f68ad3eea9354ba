//! Container logs in the CRI format kubelet and `kubectl logs` read:
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>\n`, one file per container start,
//! rotated by size into `<file>.<YYYYMMDD-HHMMSS>` files, keeping a bounded number.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer ones are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

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
fn prefix(now: jiff::Timestamp, stream: &str, partial: bool) -> String {
    format!("{now} {stream} {} ", if partial { 'P' } else { 'F' })
}

/// Writes both streams of one container start into its CRI log file.
pub struct CriWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
    pending: [Vec<u8>; 2],
    /// When the path was last compared with the open file (see [`Self::follow_path`]).
    checked: std::time::Instant,
}

/// How often the writer looks whether its log was moved away (the CRI's
/// ReopenContainerLog: logrotate or kubelet renamed it and asks for a new file).
const PATH_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

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
            checked: std::time::Instant::now(),
        })
    }

    /// Opens the log path again when the file there is no longer the one written to
    /// (renamed away, or replaced by a new empty file): at most once per [`PATH_CHECK`].
    fn follow_path(&mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        if self.checked.elapsed() < PATH_CHECK {
            return Ok(());
        }
        self.checked = std::time::Instant::now();
        let open = self.file.metadata()?;
        let same = std::fs::metadata(&self.path)
            .is_ok_and(|m| m.ino() == open.ino() && m.dev() == open.dev());
        if !same {
            let pending = std::mem::take(&mut self.pending);
            *self = Self::open(&self.path.clone(), self.rotation)?;
            self.pending = pending;
        }
        Ok(())
    }

    fn record(&mut self, stream: usize, text: &[u8], partial: bool) -> io::Result<()> {
        self.follow_path()?;
        let mut line = prefix(jiff::Timestamp::now(), STREAMS[stream], partial).into_bytes();
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
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
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

/// kubelet's limits for a message taken from the log: 80 lines and 2 KiB.
const MAX_LOG_LINES: usize = 80;
pub const MAX_LOG_MESSAGE: usize = 2048;

/// The last lines of a CRI log as the container wrote them (partial lines joined),
/// cut to kubelet's size.
pub fn log_tail(cri: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for record in cri.lines().filter_map(parse_line) {
        partial.push_str(&record.text);
        if !record.partial {
            lines.push(std::mem::take(&mut partial) + "\n");
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    let start = lines.len().saturating_sub(MAX_LOG_LINES);
    let text: String = lines[start..].concat();
    let mut cut = text.len().saturating_sub(MAX_LOG_MESSAGE);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text[cut..].to_string()
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
    fn a_log_moved_away_is_followed_by_a_new_file_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut w = CriWriter::open(&p, Rotation::default()).unwrap();
        w.write(0, b"before\n").unwrap();
        let moved = dir.path().join("0.log.1");
        std::fs::rename(&p, &moved).unwrap();
        w.write(0, b"within the check period\n").unwrap();
        w.checked -= PATH_CHECK;
        w.write(0, b"after\n").unwrap();
        w.finish().unwrap();
        let texts = |p: &Path| read(p).into_iter().map(|r| r.text).collect::<Vec<_>>();
        assert_eq!(texts(&moved), ["before", "within the check period"]);
        assert_eq!(texts(&p), ["after"]);
    }

    #[test]
    fn lines_streams_and_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c").join("0.log");
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

    #[test]
    fn the_log_tail_is_what_the_container_wrote_cut_like_kubelet() {
        let cri = "2026-11-26T01:00:00.000000001Z stdout F one\n\
                   2026-11-26T01:00:00.000000002Z stderr P fail\n\
                   2026-11-26T01:00:00.000000003Z stderr F ing\n";
        assert_eq!(log_tail(cri), "one\nfailing\n");
        let many: String = (0..100)
            .map(|i| format!("2026-11-26T01:00:00.000000001Z stdout F line{i}\n"))
            .collect();
        let tail = log_tail(&many);
        assert!(
            tail.starts_with("line20\n") && tail.ends_with("line99\n"),
            "{tail}"
        );
        let long = format!(
            "2026-11-26T01:00:00.000000001Z stdout F {}\n",
            "é".repeat(2000)
        );
        let tail = log_tail(&long);
        assert!(tail.len() <= MAX_LOG_MESSAGE && tail.ends_with("é\n"));
    }
}
