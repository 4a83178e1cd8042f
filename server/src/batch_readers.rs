//! The batch bodies (`POST /v0/jobs/batch`, up to `BATCH_BODY_BYTES_MAX` each) read and held
//! at once: at most [`BATCHES_READING_MAX`] in all and [`BATCHES_READING_PER_PEER_MAX`] per
//! peer (IP address), so that batches hold little memory and one peer that sends its bodies
//! slowly cannot take every place. A batch that finds no place is answered 503 `overloaded`
//! before its body is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::limits::{BATCHES_READING_MAX, BATCHES_READING_PER_PEER_MAX};

/// Who is reading a batch body now.
#[derive(Debug, Default)]
pub(crate) struct BatchReaders {
    reading: Mutex<Reading>,
}

#[derive(Debug, Default)]
struct Reading {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// A place to read and hold one batch, given back when dropped.
pub(crate) struct BatchPlace<'a> {
    readers: &'a BatchReaders,
    peer: Option<IpAddr>,
}

impl BatchReaders {
    fn reading(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.reading
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place for one more batch of `peer` (none: the Unix socket, counted in all only), or
    /// why there is none.
    pub(crate) fn enter(&self, peer: Option<IpAddr>) -> Result<BatchPlace<'_>, String> {
        let mut reading = self.reading();
        if reading.total >= BATCHES_READING_MAX {
            return Err(format!(
                "{BATCHES_READING_MAX} batches are being read already (BATCHES_READING_MAX); \
                 try again"
            ));
        }
        if let Some(peer) = peer {
            let of_peer = reading.per_peer.entry(peer).or_insert(0);
            if *of_peer >= BATCHES_READING_PER_PEER_MAX {
                return Err(format!(
                    "this address has {BATCHES_READING_PER_PEER_MAX} batches being read already \
                     (BATCHES_READING_PER_PEER_MAX); try again once one is answered"
                ));
            }
            *of_peer += 1;
        }
        reading.total += 1;
        Ok(BatchPlace {
            readers: self,
            peer,
        })
    }
}

impl Drop for BatchPlace<'_> {
    fn drop(&mut self) {
        let mut reading = self.readers.reading();
        reading.total = reading.total.saturating_sub(1);
        if let Some(peer) = self.peer {
            if let Some(of_peer) = reading.per_peer.get_mut(&peer) {
                *of_peer = of_peer.saturating_sub(1);
                if *of_peer == 0 {
                    reading.per_peer.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_of_places_and_gives_them_back() {
        let readers = BatchReaders::default();
        let peer = Some(IpAddr::from([192, 0, 2, 1]));
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        let held: Vec<BatchPlace<'_>> = (0..BATCHES_READING_PER_PEER_MAX)
            .map(|_| readers.enter(peer).expect("a place"))
            .collect();
        assert!(readers.enter(peer).is_err(), "the peer's share is taken");
        let another = readers.enter(other).expect("another peer has places");
        drop(held);
        drop(another);
        assert!(
            readers.reading().per_peer.is_empty(),
            "{:?}",
            readers.reading()
        );
        assert_eq!(readers.reading().total, 0);
        let _again = readers.enter(peer).expect("given back");
    }

    #[test]
    fn no_more_than_the_total_are_read_at_once() {
        let readers = BatchReaders::default();
        let held: Vec<BatchPlace<'_>> = (0..BATCHES_READING_MAX)
            .map(|index| {
                let peer = IpAddr::from([10, 0, (index / 256) as u8, (index % 256) as u8]);
                readers.enter(Some(peer)).expect("a place")
            })
            .collect();
        assert!(
            readers.enter(None).is_err(),
            "the Unix socket counts in all"
        );
        assert_eq!(held.len(), BATCHES_READING_MAX);
    }
}
