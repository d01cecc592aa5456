//! End-to-end tests across crates: the real `keyloop` binary and worker processes against a
//! real nats-server started per test by `keyloop-testkit`.

mod cli;
mod harness;
mod inventory;
mod leak_loop;
mod no_plaintext;
mod replicas;
