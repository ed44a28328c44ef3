//! The admin endpoint's shell, on a glommio executor: one listener, served
//! from a low-share task queue the caller names, so a scrape never delays
//! the daemon's own traffic (the data plane passes core 0's `background`
//! queue). Reads a request head (bounded in size and time), asks
//! [`super::parse_head`] what to answer, renders the daemon's
//! [`Pages`], writes the response, closes.

use std::cell::Cell;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::TaskQueueHandle;
use socket2::Socket;
use tracing::{debug, warn};

use super::{Pages, Route, Status};
use crate::admin::{self, Head};
use crate::clock::monotonic_ms;
use crate::throttle::LogThrottle;

/// Hands a bound, listening socket (from [`super::bind_listener`], or any
/// other the caller bound and listened on) to glommio.
#[must_use]
pub fn into_glommio(sock: Socket) -> TcpListener {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so it is an open
    // TCP socket that nothing else owns; the listener takes sole ownership
    // and closes it on drop. Callers pass only bound, listening sockets
    // (the test below accepts a connection through one).
    #[allow(unsafe_code)]
    unsafe {
        TcpListener::from_raw_fd(fd)
    }
}

/// Accepts admin connections on `queue` (a task queue of the calling
/// executor) and answers each from `pages`, until the executor stops.
/// Spawn it on that executor; at most [`admin::CONNECTIONS_MAX`]
/// connections are served at once, the rest get a 503.
pub async fn accept_loop<P: Pages + 'static>(
    pages: Rc<P>,
    listener: TcpListener,
    queue: TaskQueueHandle,
) {
    let active = Rc::new(Cell::new(0usize));
    // Out of file descriptors, accepts fail as fast as they are retried:
    // back off (10 ms doubling to 100) and log once a second.
    let mut log = LogThrottle::new(1_000);
    let mut backoff = Duration::from_millis(10);
    loop {
        let mut stream = match listener.accept().await {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                if let Some(suppressed) = log.failed(monotonic_ms()) {
                    warn!(error = %e, suppressed, "admin accept failed (more failures since the last line: suppressed)");
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
                continue;
            }
        };
        if active.get() >= admin::CONNECTIONS_MAX {
            spawn(queue, async move {
                let response =
                    admin::error_response(Status::Unavailable, "too many admin connections; retry");
                let _ = with_deadline(admin::WRITE_DEADLINE, stream.write_all(&response)).await;
                let _ = stream.close().await;
            });
            continue;
        }
        active.set(active.get() + 1);
        let pages = pages.clone();
        let active = active.clone();
        spawn(queue, async move {
            serve(&*pages, &mut stream).await;
            let _ = stream.close().await;
            active.set(active.get() - 1);
        });
    }
}

fn spawn(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local_into(future, queue)
        .expect("the admin queue was created on this executor")
        .detach();
}

/// `future`'s output, or `None` once `limit` has passed.
async fn with_deadline<T>(
    limit: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

async fn serve(pages: &impl Pages, stream: &mut TcpStream) {
    let deadline_ms = monotonic_ms() + admin::READ_DEADLINE.as_millis() as u64;
    let mut buf = vec![0u8; admin::REQUEST_HEAD_MAX];
    let mut filled = 0;
    let route = loop {
        let left = Duration::from_millis(deadline_ms.saturating_sub(monotonic_ms()));
        match with_deadline(left, stream.read(&mut buf[filled..])).await {
            None => {
                break Route::Error(
                    Status::RequestTimeout,
                    "the request head did not arrive within 5 s",
                )
            }
            Some(Err(e)) => {
                debug!(error = %e, "admin connection failed");
                return;
            }
            Some(Ok(0)) => return,
            Some(Ok(n)) => filled += n,
        }
        match admin::parse_head(&buf[..filled]) {
            Head::Incomplete => {}
            Head::Complete(route) => break route,
        }
    };
    let response = admin::answer(pages, route, monotonic_ms());
    match with_deadline(admin::WRITE_DEADLINE, stream.write_all(&response)).await {
        Some(Ok(())) => {}
        Some(Err(e)) => debug!(error = %e, "admin client went away"),
        None => debug!("admin client did not take the response in time"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use glommio::{Latency, LocalExecutorBuilder, Shares};

    use super::*;
    use crate::admin::bind_listener;

    #[test]
    fn a_listener_handed_to_glommio_serves_the_pages() {
        let (sock, local) = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(local).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        });
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let queue = glommio::executor().create_task_queue(
                    Shares::Static(50),
                    Latency::NotImportant,
                    "admin",
                );
                let pages = Rc::new(|_now_ms: u64| "palisade_test 1\n".to_string());
                let listener = into_glommio(sock);
                let _server = glommio::spawn_local_into(accept_loop(pages, listener, queue), queue)
                    .unwrap()
                    .detach();
                while !client.is_finished() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                let answer = client.join().unwrap();
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                assert!(answer.ends_with("palisade_test 1\n"), "{answer}");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn only_a_reuse_port_listener_shares_its_port() {
        let (_first, local) = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let err = bind_listener(local, false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let (_a, local) = bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
        bind_listener(local, true).expect("SO_REUSEPORT lets a second listener bind");
    }
}
