//! The service's limits on connections, request heads and bodies and on shutdown, in one
//! place (docs/FORMAT.md §14.6 lists them with their values).

/// A request head (request line and headers) must have arrived this long after the
/// connection opened or the previous response; else the connection is closed (408).
pub const HEAD_READ_TIMEOUT_MS: u64 = 5_000;
/// A TLS handshake must be complete this long after the connection opened; else the
/// connection is closed (no HTTP answer is possible before it).
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
/// An idle kept-alive connection is closed after this long.
pub const KEEP_ALIVE_MS: u64 = 5_000;
/// The longest wait for the next piece of a request body: a body that stalls this long is
/// cut off (408 `body_timeout`) and its connection closed.
pub const BODY_READ_TIMEOUT_MS: u64 = 5_000;
/// A request's body must be complete this long after its head arrived, however it trickles
/// (408 `body_timeout`, connection closed). Bodies are at most 1 MiB: a client that cannot
/// send one in this time is not one the service waits for.
pub const REQUEST_DEADLINE_MS: u64 = 10_000;
/// Most `POST /v0/jobs/batch` bodies (up to `BATCH_BODY_BYTES_MAX`, 1 MiB, each) read and
/// held at once; a batch that finds none free is answered 503 `overloaded` before its body is
/// read. Bounds what batches can make the service hold to this many MiB.
pub const BATCHES_READING_MAX: usize = 64;
/// Most batch bodies one peer (IP address) has read and held at once (503 `overloaded` past
/// it), so that one peer sending bodies slowly cannot take every place of
/// [`BATCHES_READING_MAX`].
pub const BATCHES_READING_PER_PEER_MAX: usize = 8;
/// Most connections open at once (the ceiling: the listener stops accepting there), whatever
/// the file-descriptor limit allows.
pub const CONNECTIONS_MAX: usize = 16_384;
/// File descriptors kept for everything but connections (the ledger's files, NATS, the
/// listeners): the ceiling is the descriptor limit less these.
pub const FDS_RESERVED: u64 = 512;
/// Connections under the ceiling kept for `GET /v0/health` (at least: the default cap of
/// served connections is the ceiling less these, `--connections-max` may set it lower). A
/// connection that opens while the cap is reached is answered on `/v0/health` only (503
/// `connections_full` otherwise), so that the service can still say it is alive when clients
/// hold every served slot.
pub const HEALTH_RESERVE_CONNECTIONS: usize = 64;
/// Most connections open at once from one source address (TCP; a Unix socket's peers are
/// local and not counted per peer). Past it: 429 `too_many_connections`.
pub const PEER_CONNECTIONS_MAX: usize = 512;
/// When this many connections closed since memory was last given back to the system, it is
/// given back again (checked every [`TRIM_CHECK_MS`]).
pub const TRIM_AFTER_CONNECTIONS: usize = 256;
/// How often the service checks whether to give memory back.
pub const TRIM_CHECK_MS: u64 = 1_000;
/// On SIGINT/SIGTERM, how long the requests in flight have to be answered before their
/// connections are dropped. Follow streams and half-read bodies end at once; a request
/// waiting for its tick gets its answer within a tick.
pub const SHUTDOWN_GRACE_S: u64 = 3;
