//! Idle keep-alive connections to origins, by key (the authority; for TLS also the scheme and the TLS setting):
//! most recently used first, closed after the idle timeout, checked for a close by the origin before reuse.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::transport::Transport;

/// Bytes of buffer space made available before each read from an origin.
pub(super) const READ_CHUNK: usize = 8192;

/// An origin connection and the bytes read from it but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: Transport,
    pub(super) buf: BytesMut,
}

impl Conn {
    pub(super) fn new(stream: Transport) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections of every origin.
pub(super) struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<Idle>>>,
    max_per_host: usize,
    timeout: Duration,
}

impl Pool {
    pub(super) fn new(max_per_host: usize, timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_per_host,
            timeout,
        }
    }

    /// The most recently used idle connection to `key` that is still open, if any.
    pub(super) fn checkout(&self, key: &str) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut map = self.idle.lock();
                let list = map.get_mut(key)?;
                let idle = list.pop()?;
                if now.saturating_duration_since(idle.since) >= self.timeout {
                    // The newest is too old, so are the others.
                    list.clear();
                    return None;
                }
                idle
            };
            if idle.conn.stream.is_open() {
                return Some(idle.conn);
            }
        }
    }

    /// Returns a connection whose last response was read completely.
    pub(super) fn put(&self, key: &str, mut conn: Conn) {
        if self.max_per_host == 0 || !conn.buf.is_empty() {
            return;
        }
        // The buffer's memory is kept for the next response only if no slice of it is still alive elsewhere;
        // otherwise let the next read allocate a fresh one.
        conn.buf.clear();
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let mut map = self.idle.lock();
        if let Some(list) = map.get_mut(key) {
            if list.len() < self.max_per_host {
                list.push(idle);
            }
        } else {
            map.insert(key.into(), vec![idle]);
        }
    }

    /// Forgets every idle connection to `key` (they are closed).
    pub(super) fn clear(&self, key: &str) {
        let dropped = self.idle.lock().remove(key);
        drop(dropped);
    }

    /// Closes every idle connection.
    pub(super) fn close_all(&self) {
        let dropped = std::mem::take(&mut *self.idle.lock());
        drop(dropped);
    }

    /// Closes connections idle for longer than the timeout.
    pub(super) fn sweep(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut map = self.idle.lock();
            map.retain(|_, list| {
                let keep_from = list
                    .iter()
                    .position(|i| now.saturating_duration_since(i.since) < self.timeout)
                    .unwrap_or(list.len());
                expired.extend(list.drain(..keep_from));
                !list.is_empty()
            });
        }
        drop(expired);
    }

    /// Idle connections in the pool.
    pub(super) fn len(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}
