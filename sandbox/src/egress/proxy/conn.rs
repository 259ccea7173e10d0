//! A client or upstream connection with the bytes read from it but not used yet: heads,
//! lines and bodies read within bounds, and bodies forwarded as they are framed.

use super::http::Body;
use super::{MAX_CHUNK_LINE, MAX_HEAD};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection and the bytes read from it but not used yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buffer: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads more into the buffer; false at the end of the stream.
    pub(super) async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let read = self.stream.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(read > 0)
    }

    /// A message head, up to and with its blank line, of at most `max` bytes
    /// (`InvalidData` past that). None: the stream ended, or stayed quiet for `quiet`,
    /// before a first byte.
    pub(super) async fn head(
        &mut self,
        max: usize,
        quiet: Option<Duration>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let rest = self.buffer.split_off(end + 4);
                return Ok(Some(std::mem::replace(&mut self.buffer, rest)));
            }
            if self.buffer.len() > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a message head over {max} bytes"),
                ));
            }
            let more = match quiet {
                Some(limit) => match tokio::time::timeout(limit, self.fill()).await {
                    Ok(more) => more?,
                    Err(_) if self.buffer.is_empty() => return Ok(None),
                    Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
                },
                None => self.fill().await?,
            };
            if !more {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    false => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// One CRLF-ended line of at most `max` bytes, with its CRLF.
    pub(super) async fn line(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n") {
                let rest = self.buffer.split_off(end + 2);
                return Ok(std::mem::replace(&mut self.buffer, rest));
            }
            if self.buffer.len() > max {
                return Err(invalid("a chunked body's line is too long"));
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Copies exactly `count` bytes to `to`.
    pub(super) async fn forward(
        &mut self,
        mut count: u64,
        to: &mut TcpStream,
    ) -> std::io::Result<()> {
        loop {
            let take = usize::try_from(count)
                .unwrap_or(usize::MAX)
                .min(self.buffer.len());
            to.write_all(&self.buffer[..take]).await?;
            self.buffer.drain(..take);
            count -= take as u64;
            if count == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Copies a body, framed as `body`, to `to`, verbatim; what follows it stays buffered.
    pub(super) async fn forward_body(
        &mut self,
        body: Body,
        to: &mut TcpStream,
    ) -> std::io::Result<()> {
        match body {
            Body::Empty => Ok(()),
            Body::Length(count) => self.forward(count, to).await,
            Body::Chunked => self.forward_chunks(to).await,
            Body::ToEnd => {
                to.write_all(&std::mem::take(&mut self.buffer)).await?;
                tokio::io::copy(&mut self.stream, to).await?;
                Ok(())
            }
        }
    }

    /// A chunked body: chunks up to the last (size 0), then trailer lines to a blank one.
    pub(super) async fn forward_chunks(&mut self, to: &mut TcpStream) -> std::io::Result<()> {
        loop {
            let line = self.line(MAX_CHUNK_LINE).await?;
            to.write_all(&line).await?;
            let size = chunk_size(&line).ok_or_else(|| invalid("a malformed chunk size"))?;
            if size == 0 {
                break;
            }
            self.forward(size, to).await?;
            if self.line(0).await? != b"\r\n" {
                return Err(invalid("a chunk longer than its size"));
            }
            to.write_all(b"\r\n").await?;
        }
        let mut trailers = 0;
        loop {
            let line = self.line(MAX_HEAD).await?;
            trailers += line.len();
            if trailers > MAX_HEAD {
                return Err(invalid("a chunked body's trailers are too long"));
            }
            to.write_all(&line).await?;
            if line == b"\r\n" {
                return Ok(());
            }
        }
    }
}

pub(super) fn invalid(reason: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_owned())
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `1a3f` or `1a3f;extension=x`, with its CRLF.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line.strip_suffix(b"\r\n")?).ok()?;
    let digits = line.split(';').next()?.trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}
