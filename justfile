# keyloop tasks. Each recipe is a thin wrapper: the scripts work without `just`.

# every worker in one process (starts a child nats-server if none answers)
up:
    cargo run --release -p keyloop-cli -- up

# the self-contained tour
demo:
    scripts/demo

# the whole test suite against real servers
test:
    scripts/test

# time-to-revoke and throughput beside the raw JetStream loop, e.g. `just bench --rate 500`;
# builds the `keyloop` binary it drives first (cargo cannot make one crate depend on another's binary)
bench *ARGS:
    cargo build --release -q -p keyloop-cli
    cargo run --release -q -p keyloop-bench -- {{ARGS}}

# tokens/s through `keyloop ingest serve`'s GitHub partner endpoint, e.g. `just bench-serve --tokens 50000`
bench-serve *ARGS:
    cargo build --release -q -p keyloop-cli
    cargo run --release -q -p keyloop-bench -- ingest-serve {{ARGS}}

# formatting and lints, as CI runs them
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# regenerate schemas/ from the Rust types
schemas:
    cargo run -q -p keyloop-cli -- schemas schemas
