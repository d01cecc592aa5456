//! End-to-end tests across crates: the real `keyloop` binary and worker processes against a
//! real nats-server, PostgreSQL cluster and AWS Secrets Manager emulator (moto) started per test
//! by `keyloop-testkit`.

mod api;
mod approvals;
mod aws;
mod bad_input;
mod broker;
mod chaos;
mod cli;
mod closed_stdout;
mod deploy_files;
mod dlq;
mod durable_dlq;
mod durations;
mod fail_safe;
mod fault_matrix;
mod faults;
mod fleet;
mod harness;
mod health;
mod idle;
mod in_process;
mod incident;
mod ingest_formats;
mod ingest_large;
mod ingest_serve;
mod jit;
mod jit_identity;
mod leak_loop;
mod least_privilege;
mod master_key;
mod no_live_digests;
mod no_plaintext;
mod notify;
mod pipeline;
mod policy;
mod postgres;
mod postgres_tls;
mod rekey;
mod replicas;
mod scanner_rules;
mod schedule;
mod stopping;
mod tls;
mod traces;
