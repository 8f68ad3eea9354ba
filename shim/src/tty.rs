//! The frames attach and exec sessions carry to a terminal: input, a resize, the end.

/// What the helper's stdin carries in the agent's exec relay and the reaper's attach socket: a type byte, a 4-byte
/// big-endian length, the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum TtyFrame {
    /// Input for the terminal.
    Data(Vec<u8>),
    /// The terminal's new size (columns, rows).
    Resize(u16, u16),
    /// The client's input ended (^D to the terminal).
    End,
}

impl TtyFrame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, Vec<u8>) = match self {
            Self::Data(d) => (0, d.clone()),
            Self::Resize(c, r) => (1, [c.to_be_bytes(), r.to_be_bytes()].concat()),
            Self::End => (2, Vec::new()),
        };
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Gives the frame to the terminal whose master is `master`: input written, the
    /// window resized, the end as ^D (as a terminal's user ends input).
    pub fn apply(self, master: &std::os::fd::OwnedFd) -> Result<(), nix::errno::Errno> {
        use std::os::fd::AsFd as _;
        match self {
            Self::Data(d) => write_all_fd(master, &d),
            Self::End => write_all_fd(master, &[4]),
            Self::Resize(cols, rows) => rustix::termios::tcsetwinsize(
                master.as_fd(),
                rustix::termios::Winsize {
                    ws_col: cols,
                    ws_row: rows,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                },
            )
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error())),
        }
    }

    /// The frames at the start of `buf`, which keeps what is not whole yet.
    pub fn decode(buf: &mut Vec<u8>) -> Vec<Self> {
        let mut out = Vec::new();
        let mut at = 0;
        while buf.len() - at >= 5 {
            let len =
                u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
            if buf.len() - at - 5 < len {
                break;
            }
            let body = &buf[at + 5..at + 5 + len];
            out.push(match buf[at] {
                0 => Self::Data(body.to_vec()),
                1 if len == 4 => Self::Resize(
                    u16::from_be_bytes([body[0], body[1]]),
                    u16::from_be_bytes([body[2], body[3]]),
                ),
                _ => Self::End,
            });
            at += 5 + len;
        }
        buf.drain(..at);
        out
    }
}

/// Writes all of `data` to `fd`.
fn write_all_fd(fd: &std::os::fd::OwnedFd, mut data: &[u8]) -> Result<(), nix::errno::Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
