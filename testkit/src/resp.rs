//! The one RESP2 client of the tests and benchmarks: blocking, one connection, every read
//! bounded by a timeout, just enough protocol to drive `hotspare-kv` and Redis.
//!
//! Hand-written rather than a crate so that a serial client's cost per request is small, fixed
//! and the same for both servers (one `write` and one buffered read per request, no allocation
//! on the GET/SET path beyond the reply payload).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long any single reply may take by default: a stuck server must not stall a test or a
/// benchmark run for ever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+…`
    Simple(String),
    /// `-…`
    Error(String),
    /// `:…`
    Int(i64),
    /// `$…` (`None`: the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*…` (`None`: the null array)
    Array(Option<Vec<Reply>>),
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Reply {
    /// The reply as text (simple or bulk string); an error reply becomes an `Err`.
    pub fn text(self) -> io::Result<String> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Error(e) => Err(io::Error::other(format!("server error: {e}"))),
            other => Err(bad(format!("expected a string reply, got {other:?}"))),
        }
    }

    /// Fails on an error reply, passes anything else through.
    pub fn ok(self) -> io::Result<Reply> {
        match self {
            Reply::Error(e) => Err(io::Error::other(format!("server error: {e}"))),
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
pub struct RespConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl RespConn {
    /// Connects (within `timeout`) with TCP_NODELAY (a serial client must not wait for Nagle);
    /// replies must come within `read_timeout`.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        read_timeout: Duration,
    ) -> io::Result<RespConn> {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(read_timeout))?;
        s.set_write_timeout(Some(read_timeout))?;
        Ok(RespConn {
            reader: BufReader::with_capacity(64 * 1024, s.try_clone()?),
            writer: s,
            line: Vec::with_capacity(128),
        })
    }

    /// A loopback port, 5 s to connect, [`DEFAULT_TIMEOUT`] per reply.
    pub fn local(port: u16) -> io::Result<RespConn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        RespConn::connect(addr, Duration::from_secs(5), DEFAULT_TIMEOUT)
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Changes the reply timeout (e.g. for a full checkpoint of 10M keys).
    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(t))
    }

    /// Writes already encoded commands (see [`encode`]).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends one command without waiting for its reply.
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::new();
        encode(&mut buf, args);
        self.send_raw(&buf)
    }

    /// The next reply (`UnexpectedEof` if the server closed the connection).
    pub fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader, &mut self.line)
    }

    /// Sends one command and waits for its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&bytes)?;
        self.read()
            .map_err(|e| io::Error::new(e.kind(), format!("reply to {}: {e}", args.join(" "))))
    }

    /// `INFO section` parsed into `name -> value` pairs.
    pub fn info(&mut self, section: &str) -> io::Result<Vec<(String, String)>> {
        let text = self.cmd(&["INFO", section])?.text()?;
        Ok(parse_info(&text))
    }

    /// The pid of the server process answering this connection (`INFO server`'s `process_id`).
    pub fn server_pid(&mut self) -> io::Result<i32> {
        info_f64(&self.info("server")?, "process_id")
            .map(|p| p as i32)
            .ok_or_else(|| bad("INFO server has no process_id".into()))
    }
}

/// Reads one RESP value from `r` (a socket, or recorded bytes as `&mut &[u8]`); `line` is
/// scratch space.
pub fn read_reply<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<Reply> {
    read_line(r, line)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| bad("empty RESP line".into()))?;
    let rest = std::str::from_utf8(rest).map_err(|_| bad("RESP header is not UTF-8".into()))?;
    let num = |what: &str| {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad {what} {rest:?}")))
    };
    Ok(match kind {
        b'+' => Reply::Simple(rest.to_owned()),
        b'-' => Reply::Error(rest.to_owned()),
        b':' => Reply::Int(num("integer reply")?),
        b'$' => match usize::try_from(num("bulk length")?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut data = vec![0u8; n + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(bad("bulk string without CRLF".into()));
                }
                data.truncate(n);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match usize::try_from(num("array length")?) {
            Err(_) => Reply::Array(None),
            Ok(n) => {
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_reply(r, line)?);
                }
                Reply::Array(Some(items))
            }
        },
        other => return Err(bad(format!("unknown RESP type byte {:?}", *other as char))),
    })
}

/// Reads one CRLF-terminated line into `line`, without the CRLF.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    if r.read_until(b'\n', line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("RESP line without CRLF".into()));
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
    fn parses_replies_of_every_type_and_refuses_damage() {
        let mut rec: &[u8] = b"+OK\r\n-ERR x\r\n:-3\r\n$2\r\nab\r\n$-1\r\n*2\r\n:1\r\n*-1\r\n";
        let mut line = Vec::new();
        let want = [
            Reply::Simple("OK".into()),
            Reply::Error("ERR x".into()),
            Reply::Int(-3),
            Reply::Bulk(Some(b"ab".to_vec())),
            Reply::Bulk(None),
            Reply::Array(Some(vec![Reply::Int(1), Reply::Array(None)])),
        ];
        for w in want {
            assert_eq!(read_reply(&mut rec, &mut line).unwrap(), w);
        }
        let eof = read_reply(&mut rec, &mut line).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        for damaged in [&b"?x\r\n"[..], b"+no crlf\n", b":12a\r\n", b"$2\r\nabc\r\n"] {
            let mut d = damaged;
            assert!(read_reply(&mut d, &mut line).is_err(), "{damaged:?}");
        }
    }

    #[test]
    fn parses_info() {
        let i = parse_info("# Stats\r\nlatest_fork_usec:540\r\nx:y\r\n");
        assert_eq!(info_f64(&i, "latest_fork_usec"), Some(540.0));
        assert_eq!(info_f64(&i, "x"), None);
    }
}
