//! keyloop on NATS JetStream: the layout (streams, consumers, KV buckets) and `init`, typed
//! publishing with dedup ids, the inventory with compare-and-set, the consume runtime shared by
//! every worker, and the launcher for a child `nats-server`.

pub mod approvals;
pub mod asyncapi;
pub mod bus;
pub mod dlq;
pub mod due;
pub mod error;
pub mod health;
pub mod inventory;
pub mod metrics;
pub mod pipeline;
pub mod runtime;
pub mod server;
pub mod topology;
pub mod trace;

pub use bus::Bus;
pub use due::{DueIndex, DueItem};
pub use error::{Error, ErrorKind};
pub use inventory::{Change, FingerprintIndex, FingerprintRef, Inventory};
pub use runtime::{ConsumeConfig, Delivery, Handler, HandlerError};
pub use topology::{Role, Topology};
