//! A deadline for writing each response: a client that stops reading (a
//! small receive buffer, pipelined requests, never a read) would otherwise
//! hold its connection, and its slot, for as long as it likes.
//!
//! The server writes a response through its buffer and then flushes, so a
//! response is "the writes since the last completed flush". Its deadline
//! starts at the first of those writes that has to wait for the client
//! (until then the client keeps up and no timer is touched: most responses
//! never arm it) and ends at the next flush that completes. Past it, writes
//! fail with `TimedOut` and the server drops the connection. Reads are not
//! touched (the head deadline covers those).

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// One timer per connection, made the first time a response waits and
    /// reset for each later one that does (most connections never need it).
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether the response being written has waited, so `sleep` is its
    /// deadline.
    armed: bool,
}

impl<T: Unpin> WriteDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self { inner, timeout, sleep: None, armed: false }
    }

    /// `write` on the inner stream, under the response's deadline: `Err`
    /// once it passed; the deadline armed when `write` has to wait.
    fn guarded<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        // A client that reads a little at a time lets writes through now
        // and then: the deadline still counts from the first wait.
        if self.armed {
            self.passed(cx)?;
        }
        let poll = write(Pin::new(&mut self.inner), cx);
        if poll.is_pending() && !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
            // Polling registers the waker: a write left pending is woken
            // at the deadline and fails then, instead of waiting for the peer.
            self.passed(cx)?;
        }
        poll
    }

    fn passed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.sleep.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "response write deadline passed"))
            }
            // Armed always has a timer; none means no deadline yet.
            Some(Poll::Pending) | None => Ok(()),
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
        self.guarded(cx, |inner, cx| inner.poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = self.guarded(cx, |inner, cx| inner.poll_flush(cx));
        if let Poll::Ready(Ok(())) = flushed {
            // The response is with the kernel: the next one gets its own deadline.
            self.armed = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |inner, cx| inner.poll_shutdown(cx))
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

    /// Writes that go through now and then (a client reading 16 bytes a
    /// second) do not restart the deadline: it counts from the first wait.
    #[tokio::test(start_paused = true)]
    async fn a_client_reading_a_trickle_is_cut_off_at_the_deadline() {
        let (client, mut server_end) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(client, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if server_end.read(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        });
        let started = Instant::now();
        let err = io.write_all(&[3; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        reader.abort();
    }
}
