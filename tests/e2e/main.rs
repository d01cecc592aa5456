//! End-to-end tests across crates: the real `keyloop` binary and worker processes against a
//! real nats-server started per test by `keyloop-testkit`.

mod bad_input;
mod cli;
mod harness;
mod jit;
mod leak_loop;
mod least_privilege;
mod no_plaintext;
mod replicas;
mod schedule;
