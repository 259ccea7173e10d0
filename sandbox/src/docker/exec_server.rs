//! Commands through the job image's command server (`image/specrun-exec-server`): the
//! container's main process, attached once when the container starts. A command is one
//! request line on its stdin and frames back on its stdout, with no engine request and no
//! runc process per command (a Docker exec costs both).
//!
//! The server shares the container with the agent, so what it sends is the agent's word:
//! the same trust as an exec's output and exit code, read through bounded frames
//! ([`specrun_core::exec_protocol`]). A session that saw anything out of place, or whose
//! command was abandoned (timed out, stalled), takes no more commands.

use super::client::DockerError;
use crate::port::{ExecEnd, ExecSpec, OutputSink, Stream};
use bollard::container::LogOutput;
use futures_util::{Stream as FutureStream, StreamExt};
use specrun_core::exec_protocol::{request_line, Frame, FrameReader};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

type Output = Pin<Box<dyn FutureStream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// How much of the server's own stderr (its complaints, not a command's) is logged.
const DIAGNOSTIC_BYTES: usize = 2048;

/// The attached command server of one container.
pub struct ExecSession {
    output: Output,
    input: Input,
    frames: FrameReader,
    ready: bool,
    /// Set when a command starts and cleared when its exit frame arrives: a session left
    /// in between (the caller stopped waiting) is out of step with its server.
    in_command: bool,
}

impl ExecSession {
    pub(crate) fn new(output: Output, input: Input) -> Self {
        Self {
            output,
            input,
            frames: FrameReader::default(),
            ready: false,
            in_command: false,
        }
    }

    /// Runs one command to its end (or `limit`), streaming its output into `sink`.
    pub async fn exec(
        &mut self,
        spec: &ExecSpec,
        workdir: &str,
        sink: &mut dyn OutputSink,
        limit: Duration,
    ) -> Result<ExecEnd, DockerError> {
        if self.in_command {
            return Err(gone(
                "an earlier command was abandoned before it ended, so it takes no more",
            ));
        }
        self.in_command = true;
        match tokio::time::timeout(limit, self.run(spec, workdir, sink)).await {
            Err(_) => Ok(ExecEnd::TimedOut),
            Ok(Ok(code)) => {
                self.in_command = false;
                Ok(ExecEnd::Exited(code))
            }
            Ok(Err(e)) => Err(e),
        }
    }

    async fn run(
        &mut self,
        spec: &ExecSpec,
        workdir: &str,
        sink: &mut dyn OutputSink,
    ) -> Result<i64, DockerError> {
        while !self.ready {
            match self.next_frame().await? {
                Frame::Ready => self.ready = true,
                other => return Err(out_of_step(&other)),
            }
        }
        let line = request_line(&spec.argv, &spec.env, workdir);
        self.input
            .write_all(&line)
            .await
            .map_err(|e| gone(&format!("a command could not be sent: {e}")))?;
        self.input
            .flush()
            .await
            .map_err(|e| gone(&format!("a command could not be sent: {e}")))?;
        loop {
            let (stream, bytes) = match self.next_frame().await? {
                Frame::Exited(code) => return Ok(code),
                Frame::Stdout(bytes) => (Stream::Stdout, bytes),
                Frame::Stderr(bytes) => (Stream::Stderr, bytes),
                other @ Frame::Ready => return Err(out_of_step(&other)),
            };
            sink.write(stream, &bytes).await.map_err(|e| {
                DockerError::ContainerGone(format!("writing the phase log failed: {e}"))
            })?;
        }
    }

    async fn next_frame(&mut self) -> Result<Frame, DockerError> {
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(gone(&format!("it sent {e}"))),
            }
            match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    self.frames.push(&message);
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    let shown = &message[..message.len().min(DIAGNOSTIC_BYTES)];
                    tracing::warn!(said = %String::from_utf8_lossy(shown), "the job's command server complained");
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => return Err(gone(&format!("reading it failed: {e}"))),
                None => return Err(gone("it ended, and the container with it")),
            }
        }
    }
}

fn gone(what: &str) -> DockerError {
    DockerError::ContainerGone(format!("the job's command server: {what}"))
}

fn out_of_step(frame: &Frame) -> DockerError {
    let kind = match frame {
        Frame::Ready => "a second ready frame",
        Frame::Stdout(_) | Frame::Stderr(_) => "output before it was ready",
        Frame::Exited(_) => "an exit before it was ready",
    };
    gone(&format!("{kind}, out of step with the runner"))
}
