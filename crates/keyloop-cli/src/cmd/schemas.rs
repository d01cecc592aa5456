//! `keyloop schemas DIR`: write the JSON Schema of every event (generated from the Rust types),
//! and the AsyncAPI document of every subject (`asyncapi.yaml`).

use crate::output;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;

pub(crate) fn run(dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, schema) in keyloop_core::schema::all() {
        let path = dir.join(name);
        std::fs::write(&path, schema)
            .with_context(|| format!("cannot write {}", path.display()))?;
        output::line(format_args!("wrote {}", path.display()))?;
    }
    let path = dir.join("asyncapi.yaml");
    std::fs::write(&path, keyloop_nats::asyncapi::yaml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    output::line(format_args!("wrote {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}
