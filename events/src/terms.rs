//! The terms of a shard (budgets, spillover rules, treaty) and of a node (capacity, latency,
//! price, reputation), declared once for every struct that carries them: the registration
//! events ([`ShardRegistered`](crate::ShardRegistered), [`NodeRegistered`](crate::NodeRegistered))
//! and the world a run is configured with (`fabric_config::world`).
//!
//! Each macro takes a struct with its leading fields and appends the terms after them, flat
//! and in a fixed order. Flat fields keep the canonical bytes (bincode writes the fields in
//! order) and the JSON of the export lines exactly as they were; the order of the terms is
//! part of the wire format (`docs/FORMAT.md`), so terms are only ever appended.

/// Declares a struct whose fields are the given ones followed by a shard's terms, in this
/// order: `queue_budget` (u32), `latency_budget_ms` (u32), `spillover` (`Vec<String>`),
/// `specialties` (`Vec<String>`) and the treaty, `reputation_floor_ppm` (u32),
/// `regions_served` (`Vec<String>`), `node_quota_jobs` (u32), `quota_window_ticks` (u32).
///
/// ```
/// fabric_events::with_shard_terms! {
///     /// A shard by name.
///     pub struct Shard {
///         /// Its name.
///         pub name: String,
///     }
/// }
/// ```
#[macro_export]
macro_rules! with_shard_terms {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty,)*
            /// Jobs it may hold queued before it spills.
            pub queue_budget: u32,
            /// Largest node latency it accepts.
            pub latency_budget_ms: u32,
            /// Shards it spills to, first preferred.
            pub spillover: ::std::vec::Vec<::std::string::String>,
            /// What it is known for (informational).
            pub specialties: ::std::vec::Vec<::std::string::String>,
            /// Treaty: nodes under this reputation score zero.
            pub reputation_floor_ppm: u32,
            /// Treaty: the origin regions whose jobs its nodes serve.
            pub regions_served: ::std::vec::Vec<::std::string::String>,
            /// Treaty: jobs one node may take per quota window.
            pub node_quota_jobs: u32,
            /// Treaty: length of a quota window.
            pub quota_window_ticks: u32,
        }
    };
}

/// Declares a struct whose fields are the given ones followed by a node's terms, in this
/// order: `capacity` (u32), `max_concurrency` (u32), `heartbeat_interval_ticks` (u32),
/// `capabilities` (`Vec<String>`), `latency_ms` (u32), `price_micros_per_hour` (u64),
/// `reputation_ppm` (u32).
///
/// ```
/// fabric_events::with_node_terms! {
///     /// A node by name.
///     pub struct Node {
///         /// Its name.
///         pub name: String,
///     }
/// }
/// ```
#[macro_export]
macro_rules! with_node_terms {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty,)*
            /// Units of work it can hold.
            pub capacity: u32,
            /// Jobs it runs at once.
            pub max_concurrency: u32,
            /// Ticks between heartbeats (one tick is one simulated second in a run).
            pub heartbeat_interval_ticks: u32,
            /// Skills it offers, e.g. `gpu`, `finance`.
            pub capabilities: ::std::vec::Vec<::std::string::String>,
            /// Its round-trip latency.
            pub latency_ms: u32,
            /// Its price, in millionths of a credit per hour.
            pub price_micros_per_hour: u64,
            /// Its reputation, in parts per million (1_000_000 = perfect); a configured
            /// node's starting reputation.
            pub reputation_ppm: u32,
        }
    };
}
