//! Admission of connections: a cap on the connections that are served, with a reserve above
//! it for `GET /v0/health` up to a ceiling sized from the file-descriptor limit, and a cap per
//! source address.
//!
//! Every accepted connection takes a [`Slot`] (counted when the connection opens, released
//! when it closes) that says at once whether the connection is over its peer's cap or in the
//! health reserve (it opened while the cap was reached). Its refusal is cheap: an answer to
//! its first request and a close. At the ceiling itself the listener stops accepting: further
//! connections wait in the kernel's backlog and no byte is answered until one closes.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use crate::error::ServerError;
use crate::handlers::error;
use crate::limits::{
    CONNECTIONS_MAX, FDS_RESERVED, HEALTH_RESERVE_CONNECTIONS, TRIM_AFTER_CONNECTIONS,
};

/// The path a connection in the health reserve may still ask for.
pub(crate) const HEALTH_PATH: &str = "/v0/health";

/// The counts of open connections, shared by the workers.
#[derive(Debug)]
pub(crate) struct Connections {
    /// Most connections open at once (the listener stops accepting there).
    ceiling: usize,
    /// Most connections served; those past it (up to the ceiling) ask for health only.
    cap: usize,
    /// Most connections from one source address.
    peer_cap: usize,
    open: AtomicUsize,
    /// Most connections open at once since memory was last given back.
    open_high: AtomicUsize,
    /// The next check gives memory back again.
    trim_again: AtomicBool,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// What one connection may do, decided when it opened; it gives its place back when dropped
/// (with the connection).
#[derive(Debug)]
pub(crate) struct Slot {
    connections: Arc<Connections>,
    peer: Option<IpAddr>,
    /// Its peer already had `peer_cap` connections open.
    over_peer_cap: bool,
    /// It opened while `cap` connections were open.
    in_health_reserve: bool,
}

impl Connections {
    /// `cap` connections served, the health reserve up to `ceiling`, `peer_cap` per source
    /// address.
    pub(crate) fn new(Caps { ceiling, cap }: Caps, peer_cap: usize) -> Self {
        Self {
            ceiling,
            cap,
            peer_cap,
            open: AtomicUsize::new(0),
            open_high: AtomicUsize::new(0),
            trim_again: AtomicBool::new(false),
            per_peer: Mutex::new(HashMap::new()),
        }
    }

    /// Most connections open at once.
    pub(crate) fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Counts a connection that just opened from `peer` (None: a Unix socket's).
    pub(crate) fn open(self: &Arc<Self>, peer: Option<IpAddr>) -> Slot {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.open_high.fetch_max(open, Ordering::SeqCst);
        let over_peer_cap = match peer {
            None => false,
            Some(address) => {
                let mut per_peer = self
                    .per_peer
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                let count = per_peer.entry(address).or_insert(0);
                *count += 1;
                *count > self.peer_cap
            }
        };
        Slot {
            connections: Arc::clone(self),
            peer,
            over_peer_cap,
            in_health_reserve: open > self.cap,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Once [`TRIM_AFTER_CONNECTIONS`] or more connections closed since the last time, gives
    /// the heap's free pages back to the system: the buffers of thousands of closed connections
    /// would otherwise stay resident (the allocator keeps freed memory for reuse).
    /// The check after a trim trims again: what the closed connections held is freed a
    /// little after their count drops.
    pub(crate) fn give_back_memory(&self) {
        let open = self.open.load(Ordering::SeqCst);
        let high = self.open_high.load(Ordering::SeqCst);
        let trimmed_last_time = self.trim_again.swap(false, Ordering::SeqCst);
        if high.saturating_sub(open) >= TRIM_AFTER_CONNECTIONS {
            self.open_high.store(open, Ordering::SeqCst);
            self.trim_again.store(true, Ordering::SeqCst);
            trim_heap();
        } else if trimmed_last_time {
            trim_heap();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::SeqCst);
        if let Some(address) = self.peer {
            let mut per_peer = self
                .connections
                .per_peer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(count) = per_peer.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    // The map holds only the peers connected now.
                    per_peer.remove(&address);
                }
            }
        }
    }
}

impl Slot {
    /// The refusal of a request to `path` on this connection, if it is refused: 429 over the
    /// peer's cap, 503 in the health reserve for anything but `GET /v0/health`.
    pub(crate) fn refusal(&self, path: &str) -> Option<HttpResponse> {
        if self.over_peer_cap {
            let peer = self
                .peer
                .map_or_else(String::new, |address| format!(" from {address}"));
            return Some(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!(
                    "too many connections{peer}: at most {} per address",
                    self.connections.peer_cap
                ),
            ));
        }
        if self.in_health_reserve && path != HEALTH_PATH {
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "connections_full",
                format!(
                    "the server holds {} connections, its cap: this connection may only ask \
                     for {HEALTH_PATH}; try again later",
                    self.connections.cap
                ),
            ));
        }
        None
    }
}

/// Gives the free pages of every malloc arena back to the system (glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give free memory back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// The source address of a connection's stream (TCP, or TLS over TCP); None for a Unix socket.
pub(crate) fn peer_of(io: &dyn Any) -> Option<IpAddr> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    if let Some(tcp) = io.downcast_ref::<TcpStream>() {
        return tcp.peer_addr().ok().map(|address| address.ip());
    }
    if let Some(tls) = io.downcast_ref::<TlsStream<TcpStream>>() {
        return tls.get_ref().0.peer_addr().ok().map(|address| address.ip());
    }
    None
}

/// The connection caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Most connections open at once.
    pub(crate) ceiling: usize,
    /// Most connections served (the rest, up to the ceiling, ask for health only).
    pub(crate) cap: usize,
}

/// Raises the soft file-descriptor limit to the hard one and sizes the caps from it: the
/// ceiling is the limit less [`FDS_RESERVED`], at most [`CONNECTIONS_MAX`]; the cap is
/// [`HEALTH_RESERVE_CONNECTIONS`] under it, or `wanted` when given (which must leave the
/// reserve).
pub(crate) fn connection_caps(wanted: Option<usize>) -> Result<Caps, ServerError> {
    caps(raise_fd_limit()?, wanted)
}

fn caps(descriptors: u64, wanted: Option<usize>) -> Result<Caps, ServerError> {
    let fits = descriptors.saturating_sub(FDS_RESERVED);
    let ceiling = usize::try_from(fits)
        .unwrap_or(usize::MAX)
        .min(CONNECTIONS_MAX);
    let least = 1;
    let most = ceiling.saturating_sub(HEALTH_RESERVE_CONNECTIONS);
    if most < least {
        return Err(ServerError::FdLimit {
            limit: descriptors,
            needed: FDS_RESERVED + (HEALTH_RESERVE_CONNECTIONS + least) as u64,
        });
    }
    match wanted {
        None => Ok(Caps { ceiling, cap: most }),
        Some(cap) if (least..=most).contains(&cap) => Ok(Caps { ceiling, cap }),
        Some(cap) => Err(ServerError::ConnectionCap { cap, least, most }),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
fn raise_fd_limit() -> Result<u64, ServerError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(ServerError::Rlimit {
            error: std::io::Error::last_os_error(),
        });
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the valid `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(ServerError::Rlimit {
                error: std::io::Error::last_os_error(),
            });
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_past_a_peers_cap_and_in_the_reserve_are_refused_and_given_back_on_close() {
        let caps = Caps {
            ceiling: 2 + HEALTH_RESERVE_CONNECTIONS,
            cap: 2,
        };
        let connections = Arc::new(Connections::new(caps, 2));
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let first = connections.open(Some(a));
        let second = connections.open(Some(a));
        let third = connections.open(Some(a));
        assert!(first.refusal("/v0/jobs").is_none());
        assert!(second.refusal("/v0/jobs").is_none());
        let refused = third.refusal("/v0/jobs").map(|response| response.status());
        assert_eq!(refused, Some(StatusCode::TOO_MANY_REQUESTS));
        // The third is in the health reserve as well: two slots are left out of the reserve.
        drop(third);
        let other = connections.open(Some(b));
        let refused = other.refusal("/v0/jobs").map(|response| response.status());
        assert_eq!(refused, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(other.refusal(HEALTH_PATH).is_none());
        drop((first, second, other));
        assert_eq!(connections.open_now(), 0);
        assert!(connections
            .per_peer
            .lock()
            .map(|map| map.is_empty())
            .unwrap_or(false));
        let unix = connections.open(None);
        assert!(unix.refusal("/v0/jobs").is_none());
    }

    #[test]
    fn caps_leave_the_reserve_and_the_descriptors_the_fabric_needs() {
        let reserve = HEALTH_RESERVE_CONNECTIONS;
        let caps_of = |descriptors, wanted| caps(descriptors, wanted).ok();
        let ceiling = (20_000 - FDS_RESERVED as usize).min(CONNECTIONS_MAX);
        let default = Caps {
            ceiling,
            cap: ceiling - reserve,
        };
        assert_eq!(caps_of(20_000, None), Some(default));
        let lower = Caps {
            ceiling,
            cap: 1_000,
        };
        assert_eq!(caps_of(20_000, Some(1_000)), Some(lower));
        assert_eq!(caps_of(20_000, Some(ceiling - reserve + 1)), None);
        assert_eq!(caps_of(20_000, Some(0)), None);
        assert_eq!(caps_of(FDS_RESERVED + reserve as u64, None), None);
        let small = caps_of(1_024, None).map(|caps| caps.cap);
        assert_eq!(small, Some(1_024 - 512 - reserve));
    }
}
