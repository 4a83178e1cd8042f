//! A small blocking HTTP/1.1 client over TCP, TLS over TCP (rustls, trusting the CA
//! certificates it is given and no others) or a Unix socket, for `fabric submit | status |
//! result`, the `serve` benchmark and the tests: one request at a time per connection, kept
//! alive between requests, bodies by `Content-Length` or chunked transfer coding. Nothing more
//! is needed to talk to `fabric serve`, and it keeps the build small. Transport and framing
//! errors are [`std::io::Error`]s (`InvalidData` for a response that is not HTTP/1.1).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest response body the client reads.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Longest status or header line.
const LINE_BYTES_MAX: usize = 16 * 1024;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port` on TCP.
    Tcp(String),
    /// `host:port` on TCP with TLS; `host` is the name the certificate must carry.
    Https(String),
    /// A Unix socket.
    Unix(PathBuf),
}

/// Why a server address does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `unix:` without a path.
    #[error("{0:?}: `unix:` needs a socket path")]
    NoSocketPath(String),
    /// Neither `http://`, `https://` nor `unix:`.
    #[error(
        "{0:?} is not a server address: give http://HOST:PORT, https://HOST:PORT or unix:PATH"
    )]
    Scheme(String),
    /// `http://` or `https://` without a port, or with a path.
    #[error("{0:?} is not a server address: give http(s)://HOST:PORT (with a port, no path)")]
    HostPort(String),
}

impl Target {
    /// Parses `http://HOST:PORT`, `https://HOST:PORT` (a trailing `/` allowed) or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError::NoSocketPath(text.to_owned()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let (rest, tls) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(TargetError::Scheme(text.to_owned())),
        };
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
            return Err(TargetError::HostPort(text.to_owned()));
        }
        Ok(if tls {
            Target::Https(host_port.to_owned())
        } else {
            Target::Tcp(host_port.to_owned())
        })
    }

    /// The host of a TCP target, without its port (and without the brackets of an IPv6
    /// address).
    fn host(host_port: &str) -> &str {
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _port)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(host_port) => write!(f, "http://{host_port}"),
            Target::Https(host_port) => write!(f, "https://{host_port}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The TLS settings of a client that trusts the CA certificates of the PEM file at `ca`
/// (and no others).
pub fn trusting(ca: &Path) -> io::Result<Arc<rustls::ClientConfig>> {
    let named = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            named(format!(
                "{}: not a PEM certificate file: {error}",
                ca.display()
            ))
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|error| {
            named(format!(
                "{}: a certificate cannot be trusted: {error}",
                ca.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(named(format!("{}: holds no certificate", ca.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| named(format!("TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One connection to a server, opened on first use and reopened when the server closed it.
pub struct Client {
    target: Target,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    stream: Option<BufReader<Box<dyn Stream>>>,
    /// The longest response body read; a longer one is an error.
    response_bytes_max: usize,
}

impl Client {
    /// A client like this one (timeout, TLS settings) of the server a `Location` names: its
    /// scheme, host and port (`http(s)://HOST:PORT/...`); the path is the caller's.
    pub fn to_location(&self, location: &str) -> Result<Client, TargetError> {
        let after_scheme = location.find("://").map_or(0, |at| at + 3);
        let origin = match location[after_scheme..].find('/') {
            Some(at) => &location[..after_scheme + at],
            None => location,
        };
        Ok(Client {
            target: Target::parse(origin)?,
            timeout: self.timeout,
            tls: self.tls.clone(),
            stream: None,
            response_bytes_max: self.response_bytes_max,
        })
    }

    /// A client of `target`; every read and write waits at most `timeout`. An `https://`
    /// target needs [`Client::with_tls`].
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            tls: None,
            stream: None,
            response_bytes_max: RESPONSE_BYTES_MAX,
        }
    }

    /// Reads response bodies of at most `bytes` (at most the default, 256 MiB): a client of
    /// a server it does not trust (a witness asking for notes) reads no more than it needs.
    pub fn with_response_bytes_max(mut self, bytes: usize) -> Self {
        self.response_bytes_max = bytes.min(RESPONSE_BYTES_MAX);
        self
    }

    /// Speaks TLS with `config` (see [`trusting`]) to an `https://` target.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    fn tcp(&self, host_port: &str) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(host_port)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        Ok(stream)
    }

    fn connect(&self) -> io::Result<BufReader<Box<dyn Stream>>> {
        let stream: Box<dyn Stream> = match &self.target {
            Target::Tcp(host_port) => Box::new(self.tcp(host_port)?),
            Target::Https(host_port) => {
                let Some(config) = &self.tls else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("https://{host_port} needs the CA that signed its certificate (--ca FILE)"),
                    ));
                };
                let name =
                    ServerName::try_from(Target::host(host_port).to_owned()).map_err(|error| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("https://{host_port}: not a server name: {error}"),
                        )
                    })?;
                let connection = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(io::Error::other)?;
                Box::new(rustls::StreamOwned::new(connection, self.tcp(host_port)?))
            }
            Target::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(self.timeout))?;
                stream.set_write_timeout(Some(self.timeout))?;
                Box::new(stream)
            }
        };
        Ok(BufReader::new(stream))
    }

    /// Sends one request and reads its whole response. A request on a kept-alive connection
    /// that the server had closed meanwhile is sent again once on a new connection (only when
    /// nothing of the response was read, so nothing is sent twice that was answered).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match self.try_request(method, path, body) {
            Err(error) if reused && error.kind() == io::ErrorKind::ConnectionAborted => {
                self.stream = None;
                self.try_request(method, path, body)
            }
            other => other,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> io::Result<Response> {
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        let host = match &self.target {
            Target::Tcp(host_port) | Target::Https(host_port) => host_port.as_str(),
            Target::Unix(_) => "localhost",
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        if let Some((content_type, bytes)) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some((_, bytes)) = body {
            out.extend_from_slice(bytes);
        }
        let written = stream
            .get_mut()
            .write_all(&out)
            .and_then(|()| stream.get_mut().flush());
        if let Err(error) = written {
            self.stream = None;
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, error));
        }
        let result = read_response(stream, method == "HEAD", self.response_bytes_max);
        match &result {
            Ok(response) => {
                // A body read to the end of the stream, or a server that says so, ends the
                // connection.
                let delimited = response.header("content-length").is_some()
                    || response.header("transfer-encoding").is_some();
                if !delimited
                    || response
                        .header("connection")
                        .is_some_and(|value| value.eq_ignore_ascii_case("close"))
                {
                    self.stream = None;
                }
            }
            Err(_) => self.stream = None,
        }
        result
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(LINE_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line of the response is longer than {LINE_BYTES_MAX} bytes"),
        ));
    }
    String::from_utf8(line)
        .map(|line| line.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a header is not UTF-8"))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn read_response(
    reader: &mut impl BufRead,
    head_only: bool,
    bytes_max: usize,
) -> io::Result<Response> {
    let status_line = match read_line(reader) {
        // Nothing of a response came: the server had closed the kept-alive connection.
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, error))
        }
        other => other?,
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("not an HTTP/1.1 status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("not a header line: {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
        // No body.
    } else if find("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        loop {
            let size_line = read_line(reader)?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("not a chunk size: {size_line:?}")))?;
            if body.len() + size > bytes_max {
                return Err(invalid(format!(
                    "the response is longer than {bytes_max} bytes"
                )));
            }
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            if !read_line(reader)?.is_empty() {
                return Err(invalid("a chunk does not end with CRLF".to_owned()));
            }
        }
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("not a content length: {length:?}")))?;
        if length > bytes_max {
            return Err(invalid(format!(
                "the response is longer than {bytes_max} bytes"
            )));
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader
            .by_ref()
            .take(bytes_max as u64)
            .read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        let tcp = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(tcp.to_string(), "http://127.0.0.1:8080");
        let unix = Target::parse("unix:/tmp/fabric.sock").unwrap();
        assert_eq!(unix.to_string(), "unix:/tmp/fabric.sock");
        assert_eq!(
            Target::parse("unix:").unwrap_err(),
            TargetError::NoSocketPath("unix:".to_owned())
        );
        let https = Target::parse("https://localhost:8443/").unwrap();
        assert_eq!(https.to_string(), "https://localhost:8443");
        assert_eq!(Target::host("localhost:8443"), "localhost");
        assert_eq!(Target::host("[::1]:8443"), "::1");
        assert_eq!(
            Target::parse("ftp://x:1").unwrap_err().to_string(),
            "\"ftp://x:1\" is not a server address: give http://HOST:PORT, https://HOST:PORT \
             or unix:PATH"
        );
        assert!(matches!(
            Target::parse("http://host/path"),
            Err(TargetError::HostPort(_))
        ));
    }

    #[test]
    fn responses_are_read_by_length_and_by_chunks() {
        let mut plain: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let response = read_response(&mut plain, false, RESPONSE_BYTES_MAX).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(response.text(), "hello");
        let mut chunked: &[u8] = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = read_response(&mut chunked, false, RESPONSE_BYTES_MAX).unwrap();
        assert_eq!(response.status, 202);
        assert_eq!(response.body, b"abcde");
        let mut garbage: &[u8] = b"SMTP ready\r\n\r\n";
        let error = read_response(&mut garbage, false, RESPONSE_BYTES_MAX).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let mut empty: &[u8] = b"";
        let error = read_response(&mut empty, false, RESPONSE_BYTES_MAX).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn a_body_over_the_clients_limit_is_an_error_however_it_is_framed() {
        let framings: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello!",
        ];
        for (index, mut framed) in framings.into_iter().enumerate() {
            match read_response(&mut framed, false, 5) {
                // Read to the end of the connection: cut at the limit, never more.
                Ok(response) => assert!(index == 2 && response.body == b"hello"),
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::InvalidData),
            }
        }
    }
}
