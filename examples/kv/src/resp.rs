//! RESP2, the Redis wire protocol: requests (multibulk arrays, or inline lines as typed into
//! `telnet`) parsed incrementally from a connection's buffer, and replies encoded into it.

/// Limits that keep a hostile client from making us allocate without bound (Redis's own).
const MAX_ARGS: usize = 1024 * 1024;
const MAX_BULK: usize = 512 * 1024 * 1024;
const MAX_INLINE: usize = 64 * 1024;

/// A request that cannot be parsed: the connection gets this error and is closed, as Redis does.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// A parsed request (its arguments) and the bytes it took, or `None` when more are needed.
pub type Parsed = Option<(Vec<Vec<u8>>, usize)>;

/// Parses one request from the front of `buf`. Returns the arguments and how many bytes they
/// took, `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((n, mut pos)) = number_line(buf, 1)? else {
        return Ok(None);
    };
    if n > MAX_ARGS as i64 {
        return Err(ProtocolError("invalid multibulk length".into()));
    }
    let n = n.max(0) as usize;
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&c) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(c)
                )))
            }
        }
        let Some((len, start)) = number_line(buf, pos + 1)? else {
            return Ok(None);
        };
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(ProtocolError("invalid bulk length".into()));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        args.push(buf[start..end].to_vec());
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

/// An integer terminated by CRLF starting at `at`; returns it and the index after the CRLF.
fn number_line(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(nl) = buf[at.min(buf.len())..].iter().position(|&b| b == b'\n') else {
        if buf.len() - at.min(buf.len()) > 32 {
            return Err(ProtocolError("too big count".into()));
        }
        return Ok(None);
    };
    let line = &buf[at..at + nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError("invalid count".into()))?;
    Ok(Some((n, at + nl + 1)))
}

/// An inline request: one line, arguments separated by blanks, quotes as redis-cli accepts them.
fn parse_inline(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args =
        split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    Ok(Some((args, nl + 1)))
}

/// Splits a line like Redis's `sdssplitargs`: blanks separate, "double" quotes take \n \t \xHH
/// escapes, 'single' quotes are literal. `None` on unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let mut quote = None;
        while i < line.len() {
            let c = line[i];
            match quote {
                None if c.is_ascii_whitespace() => break,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None => cur.push(c),
                Some(q) if c == q => {
                    quote = None;
                    // A closing quote must be followed by a blank or the end.
                    if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                        return None;
                    }
                }
                Some(b'"') if c == b'\\' && i + 1 < line.len() => {
                    i += 1;
                    let e = line[i];
                    let hex = |b: u8| char::from(b).to_digit(16);
                    match e {
                        b'n' => cur.push(b'\n'),
                        b'r' => cur.push(b'\r'),
                        b't' => cur.push(b'\t'),
                        b'a' => cur.push(7),
                        b'b' => cur.push(8),
                        b'x' if i + 2 < line.len() => match (hex(line[i + 1]), hex(line[i + 2])) {
                            (Some(h), Some(l)) => {
                                cur.push((h * 16 + l) as u8);
                                i += 2;
                            }
                            _ => cur.push(e),
                        },
                        _ => cur.push(e),
                    }
                }
                Some(_) => cur.push(c),
            }
            i += 1;
        }
        if quote.is_some() {
            return None;
        }
        out.push(cur);
    }
}

/// Reply encoders: each appends one RESP2 value to a connection's output buffer.
pub mod reply {
    /// `n` in decimal, without allocating.
    fn number(out: &mut Vec<u8>, n: i64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut m = n.unsigned_abs();
        loop {
            i -= 1;
            buf[i] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        if n < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(&buf[i..]);
    }

    /// `+OK`-style status.
    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `-ERR …`: `msg` starts with the error code (`ERR`, `WRONGTYPE`, …).
    pub fn error(out: &mut Vec<u8>, msg: &str) {
        out.push(b'-');
        // CR/LF in an error would break the protocol; Redis replaces them with blanks.
        out.extend(
            msg.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    /// `:n`.
    pub fn int(out: &mut Vec<u8>, n: i64) {
        out.push(b':');
        number(out, n);
        out.extend_from_slice(b"\r\n");
    }

    /// `$len` + bytes.
    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        out.push(b'$');
        number(out, b.len() as i64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    /// `$-1`.
    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    /// `*-1`: the null array.
    pub fn nil_array(out: &mut Vec<u8>) {
        out.extend_from_slice(b"*-1\r\n");
    }

    /// `*n`: the header of an array whose `n` elements follow.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        out.push(b'*');
        number(out, n as i64);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_whole_and_in_pieces() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let (a, used) = parse(req).unwrap().unwrap();
        assert_eq!(a, args(&["SET", "k", "hello"]));
        assert_eq!(parse(&req[used..]).unwrap().unwrap().0, args(&["PING"]));
        for cut in 0..used {
            assert_eq!(parse(&req[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn inline_with_quotes() {
        let (a, used) = parse(b"set \"a b\" 'c d' \"\\x41\\n\"\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c d".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert_eq!(used, 26);
        assert!(parse(b"set \"a\r\n").is_err());
        assert_eq!(parse(b"get k").unwrap(), None);
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert!(parse(b"*99999999999\r\n").is_err());
        assert!(parse(b"*1\r\n$-5\r\n").is_err());
        assert!(parse(b"*1\r\n$999999999999\r\n").is_err());
        assert!(parse(b"*1\r\nX\r\n").is_err());
        assert!(parse(b"*abc\r\n").is_err());
    }
}
