//! The job image's command server (`image/specrun-exec-server`, version 1): what the runner
//! sends it and the frames it answers with. The server runs inside the job container,
//! where the agent can reach it, so every frame is hostile input: sizes are bounded and
//! anything out of place is an error, never a guess.
//!
//! Requests are one JSON line each (`{"argv": [...], "env": {...}, "cwd": "..."}`);
//! frames are one byte of kind, a 4-byte big-endian length and that many bytes.

use std::collections::BTreeMap;

/// The label a job image carries when its command server is
/// `/usr/local/bin/specrun-exec-server` speaking this protocol.
pub const IMAGE_LABEL: &str = "io.specrun.exec-server";
/// The label's value for this protocol's version.
pub const PROTOCOL_VERSION: &str = "1";
/// The server's command, the container's main process.
pub const SERVER_COMMAND: &str = "specrun-exec-server";

/// The largest payload a frame may carry (the server sends at most 64 KiB of output at
/// a time).
pub const MAX_PAYLOAD: usize = 1024 * 1024;
const HEADER: usize = 5;

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The server started and reads requests.
    Ready,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended with this exit code (128+N for signal N).
    Exited(i64),
}

/// The server said something this protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("a frame of kind {0:#04x}, which the protocol does not have")]
    UnknownKind(u8),
    #[error("a frame of {0} bytes, more than the protocol's {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("an exit frame whose code is not a number: {0:?}")]
    BadExitCode(String),
}

/// The request line for one command (ends with `\n`). serde_json escapes every control
/// character, so the line holds no raw byte below 0x20 but its end: nothing in it can be
/// taken for the engine's detach keys on the attached stdin.
pub fn request_line(argv: &[String], env: &BTreeMap<String, String>, cwd: &str) -> Vec<u8> {
    let request = serde_json::json!({ "argv": argv, "env": env, "cwd": cwd });
    let mut line = serde_json::to_vec(&request).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Cuts frames out of the server's output as it arrives, in pieces of any size.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some(header) = self.pending.get(..HEADER) else {
            return Ok(None);
        };
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !matches!(kind, b'R' | b'O' | b'E' | b'X') {
            return Err(ProtocolError::UnknownKind(kind));
        }
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::TooLarge(len));
        }
        if self.pending.len() < HEADER + len {
            return Ok(None);
        }
        let payload = self.pending[HEADER..HEADER + len].to_vec();
        self.pending.drain(..HEADER + len);
        Ok(Some(match kind {
            b'R' => Frame::Ready,
            b'O' => Frame::Stdout(payload),
            b'E' => Frame::Stderr(payload),
            _ => Frame::Exited(exit_code(&payload)?),
        }))
    }
}

fn exit_code(payload: &[u8]) -> Result<i64, ProtocolError> {
    let text = String::from_utf8_lossy(payload);
    match text.parse::<i64>() {
        Ok(code) if (0..=255).contains(&code) => Ok(code),
        _ => Err(ProtocolError::BadExitCode(text.chars().take(40).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn all_frames(reader: &mut FrameReader) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame().expect("valid frames") {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn frames_are_cut_out_of_pieces_of_any_size() {
        let stream = [
            frame(b'R', b"specrun-exec-server 1"),
            frame(b'O', b"hello\n"),
            frame(b'E', b""),
            frame(b'E', b"warn\n"),
            frame(b'X', b"3"),
        ]
        .concat();
        let expected = vec![
            Frame::Ready,
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Stderr(b"warn\n".to_vec()),
            Frame::Exited(3),
        ];
        for piece in 1..=stream.len() {
            let mut reader = FrameReader::default();
            let mut frames = Vec::new();
            for chunk in stream.chunks(piece) {
                reader.push(chunk);
                frames.extend(all_frames(&mut reader));
            }
            assert_eq!(frames, expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_frame_the_protocol_does_not_have_is_refused() {
        let mut reader = FrameReader::default();
        reader.push(&frame(b'Z', b"x"));
        assert_eq!(reader.next_frame(), Err(ProtocolError::UnknownKind(b'Z')));

        let mut reader = FrameReader::default();
        reader.push(&[b'O', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            reader.next_frame(),
            Err(ProtocolError::TooLarge(u32::MAX as usize))
        );

        for bad in [&b"-1"[..], b"256", b"zero", b""] {
            let mut reader = FrameReader::default();
            reader.push(&frame(b'X', bad));
            assert!(
                matches!(reader.next_frame(), Err(ProtocolError::BadExitCode(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_request_is_one_line_without_raw_control_bytes() {
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "printf '\x10\x11\n'".to_owned(),
        ];
        let env = BTreeMap::from([("K".to_owned(), "a\u{10}\u{11}b\r\n".to_owned())]);
        let line = request_line(&argv, &env, "/workspace/repo");
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(line[..line.len() - 1].iter().all(|b| *b >= 0x20));
        let back: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(back["argv"][2], "printf '\x10\x11\n'");
        assert_eq!(back["env"]["K"], "a\u{10}\u{11}b\r\n");
        assert_eq!(back["cwd"], "/workspace/repo");
    }
}
