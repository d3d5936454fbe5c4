//! A minimal blocking RESP2 client: just enough protocol to drive Redis and hotspare-kv.
//!
//! Hand-written rather than a crate so the serial client's cost per request is small, fixed and
//! identical for both servers (one `write` and one buffered read per request, no allocation on
//! the GET/SET path beyond the reply payload).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How long any single reply may take before the harness gives up: a stuck server must not
/// stall a benchmark run forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk string); an error reply becomes an `Err`.
    pub fn text(self) -> Result<String> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Error(e) => bail!("server error: {e}"),
            other => bail!("expected a string reply, got {other:?}"),
        }
    }

    /// Fails on an error reply, passes anything else through.
    pub fn ok(self) -> Result<Reply> {
        match self {
            Reply::Error(e) => bail!("server error: {e}"),
            other => Ok(other),
        }
    }
}

/// Appends one command, encoded as a RESP array of bulk strings, to `buf`.
pub fn encode(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

/// One connection to a RESP2 server.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl Conn {
    /// Connects with TCP_NODELAY (a serial client must not wait for Nagle) and the default
    /// reply timeout.
    pub fn connect(port: u16) -> Result<Conn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        s.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, s.try_clone()?),
            writer: s,
            line: Vec::with_capacity(128),
        })
    }

    /// Changes the reply timeout (e.g. for a full checkpoint of 10M keys).
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(t))?;
        Ok(())
    }

    /// Writes already encoded commands (see [`encode`]).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).context("write to server")
    }

    /// Sends one command and waits for its reply.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply> {
        let mut buf = Vec::new();
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode(&mut buf, &bytes);
        self.send_raw(&buf)?;
        self.read_reply()
            .with_context(|| format!("reply to {}", args.join(" ")))
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        read_reply(&mut self.reader, &mut self.line)
    }

    /// `INFO section` parsed into `name -> value` pairs.
    pub fn info(&mut self, section: &str) -> Result<Vec<(String, String)>> {
        let text = self.cmd(&["INFO", section])?.text()?;
        Ok(parse_info(&text))
    }
}

/// Reads one RESP value from `r` (a socket, or recorded bytes as `&mut &[u8]`); `line` is
/// scratch space.
pub fn read_reply<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> Result<Reply> {
    read_line(r, line)?;
    let (kind, rest) = line.split_first().context("empty RESP line")?;
    let rest = std::str::from_utf8(rest).context("RESP header is not UTF-8")?;
    Ok(match kind {
        b'+' => Reply::Simple(rest.to_owned()),
        b'-' => Reply::Error(rest.to_owned()),
        b':' => Reply::Int(rest.parse().context("integer reply")?),
        b'$' => {
            let n: i64 = rest.parse().context("bulk length")?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0u8; n as usize + 2];
                r.read_exact(&mut data).context("read bulk")?;
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n: i64 = rest.parse().context("array length")?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r, line)?);
                }
                Reply::Array(Some(items))
            }
        }
        other => bail!("unknown RESP type byte {:?}", *other as char),
    })
}

/// Reads one CRLF-terminated line into `line`, without the CRLF.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> Result<()> {
    line.clear();
    let n = r.read_until(b'\n', line).context("read RESP")?;
    if n == 0 {
        bail!("connection closed");
    }
    if !line.ends_with(b"\r\n") {
        bail!("RESP line without CRLF");
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// Parses INFO text (`name:value` lines, `# Section` headers ignored).
pub fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Looks up one INFO field and parses it as a number.
pub fn info_f64(info: &[(String, String)], name: &str) -> Option<f64> {
    info.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut b = Vec::new();
        encode(&mut b, &[b"GET", b"k"]);
        assert_eq!(b, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn parses_info() {
        let i = parse_info("# Stats\r\nlatest_fork_usec:540\r\nx:y\r\n");
        assert_eq!(info_f64(&i, "latest_fork_usec"), Some(540.0));
        assert_eq!(info_f64(&i, "x"), None);
    }
}
