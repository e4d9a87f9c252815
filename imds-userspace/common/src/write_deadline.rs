//! A deadline for writing each response: a client that stops reading (a
//! small receive buffer, pipelined requests, never a read) would otherwise
//! hold its connection, and its slot, for as long as it likes.
//!
//! The server writes a response through its buffer and then flushes, so a
//! response is "the writes since the last completed flush": the deadline
//! starts at the first write after a flush and ends at the next flush that
//! completes. Past it, writes fail with `TimedOut` and the server drops the
//! connection. Reads are not touched (the head deadline covers those).

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// One timer per connection, reset for each response (no allocation
    /// per request).
    sleep: Pin<Box<Sleep>>,
    /// Whether a response is being written, so `sleep` is its deadline.
    armed: bool,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)), armed: false }
    }

    /// Arms the deadline if no response is in progress; `Err` once it passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        // Polling registers the waker: a write left pending is woken at the
        // deadline and fails then, instead of waiting for the peer.
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, "response write deadline passed")),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        // The response is with the kernel: the next one gets its own deadline.
        self.armed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stuck_write_fails_at_the_deadline_and_a_flushed_one_resets_it() {
        // A 64-byte pipe nobody reads: the second write blocks.
        let (client, mut server_end) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(client, Duration::from_secs(10));
        io.write_all(&[0; 64]).await.unwrap();
        io.flush().await.unwrap();
        // Each response gets its full time: 9 s of reading later, still fine.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let mut buf = [0; 64];
        server_end.read_exact(&mut buf).await.unwrap();
        io.write_all(&[1; 64]).await.unwrap();
        io.flush().await.unwrap();
        server_end.read_exact(&mut buf).await.unwrap();

        let started = Instant::now();
        let err = io.write_all(&[2; 1000]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
