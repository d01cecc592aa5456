//! The programs the bench runs besides itself: the `keyloop` binary whose workers it measures,
//! and nats-server.
//!
//! `keyloop` is looked for in `KEYLOOP_BIN`, then next to this executable (in a checkout that is
//! `target/<profile>/keyloop`, the build of the same profile), then on PATH. The explicit
//! variable comes first, as `KEYLOOP_NATS_SERVER` does for the server: it is how a run drives
//! another build than the one beside it, and a variable that points nowhere is an error, never
//! a silent fall back to another binary.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The variable naming the `keyloop` binary to drive.
const KEYLOOP_BIN: &str = "KEYLOOP_BIN";

/// What to do when `keyloop` is missing.
const BUILD_HINT: &str = "build it with `cargo build -p keyloop-cli` (add `--release` for a release bench; `just bench` does both), or set KEYLOOP_BIN to its path";

/// The `keyloop` binary to start workers from, and its `--version` line.
pub(crate) async fn keyloop() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("where this executable is")?;
    let explicit = std::env::var_os(KEYLOOP_BIN).map(PathBuf::from);
    let path = std::env::var_os("PATH");
    let binary = locate_keyloop(explicit, exe.parent(), path.as_deref())?;
    let out = tokio::process::Command::new(&binary)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("run {} --version; {BUILD_HINT}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): is it the keyloop binary? {BUILD_HINT}",
            binary.display(),
            out.status
        );
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((binary, version))
}

/// `keyloop` from `explicit` (KEYLOOP_BIN), else in `beside` (this executable's directory),
/// else in a directory of `path` (PATH).
fn locate_keyloop(
    explicit: Option<PathBuf>,
    beside: Option<&Path>,
    path: Option<&OsStr>,
) -> Result<PathBuf> {
    let name = format!("keyloop{}", std::env::consts::EXE_SUFFIX);
    if let Some(explicit) = explicit {
        if explicit.is_file() {
            return Ok(explicit);
        }
        bail!(
            "{KEYLOOP_BIN}={} is not a file: point it at a keyloop binary (`cargo build -p keyloop-cli` makes one in target/<profile>/), or unset it to use the one next to this executable or on PATH",
            explicit.display()
        );
    }
    let candidates = beside
        .map(Path::to_path_buf)
        .into_iter()
        .chain(path.map(std::env::split_paths).into_iter().flatten());
    for dir in candidates {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the keyloop binary was not found (not in {KEYLOOP_BIN}, not next to this executable{}, not on PATH): {BUILD_HINT}",
        beside.map_or_else(String::new, |d| format!(" in {}", d.display()))
    )
}

/// The nats-server binary: `KEYLOOP_NATS_SERVER`, then the checkout's `.tools/` install
/// (this executable is `target/<profile>/keyloop-bench`), then PATH; as `keyloop` finds it.
pub(crate) async fn nats_server() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let path = std::env::var("PATH").ok();
    keyloop_nats::server::locate_for(
        std::env::var_os("KEYLOOP_NATS_SERVER").map(PathBuf::from),
        exe.as_deref(),
        path.as_deref(),
    )
    .await
    .map_err(anyhow::Error::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three directories, each a possible home of `keyloop`.
    struct Dirs {
        _root: tempfile::TempDir,
        beside: PathBuf,
        on_path: PathBuf,
        other: PathBuf,
    }

    fn dirs() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let (beside, on_path, other) = (mk("target-debug"), mk("bin"), mk("elsewhere"));
        Dirs {
            _root: root,
            beside,
            on_path,
            other,
        }
    }

    fn put_keyloop(dir: &Path) -> PathBuf {
        let file = dir.join(format!("keyloop{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&file, b"").unwrap();
        file
    }

    fn path_of(dirs: &[&Path]) -> std::ffi::OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn keyloop_bin_wins_over_the_build_beside_and_path() {
        let d = dirs();
        put_keyloop(&d.beside);
        put_keyloop(&d.on_path);
        let chosen = put_keyloop(&d.other);
        let path = path_of(&[&d.on_path]);
        let found = locate_keyloop(Some(chosen.clone()), Some(&d.beside), Some(&path)).unwrap();
        assert_eq!(found, chosen);
    }

    #[test]
    fn the_build_beside_the_bench_wins_over_path() {
        let d = dirs();
        let beside = put_keyloop(&d.beside);
        put_keyloop(&d.on_path);
        let path = path_of(&[&d.other, &d.on_path]);
        assert_eq!(
            locate_keyloop(None, Some(&d.beside), Some(&path)).unwrap(),
            beside
        );
    }

    #[test]
    fn path_is_searched_in_order_when_nothing_is_beside() {
        let d = dirs();
        let first = put_keyloop(&d.on_path);
        put_keyloop(&d.other);
        let path = path_of(&[&d.on_path, &d.other]);
        assert_eq!(
            locate_keyloop(None, Some(&d.beside), Some(&path)).unwrap(),
            first
        );
    }

    #[test]
    fn a_missing_keyloop_says_to_build_it() {
        let d = dirs();
        let path = path_of(&[&d.on_path]);
        let text = locate_keyloop(None, Some(&d.beside), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(text.contains("keyloop binary was not found"), "{text}");
        assert!(text.contains("cargo build -p keyloop-cli"), "{text}");
        assert!(text.contains(&d.beside.display().to_string()), "{text}");
    }

    #[test]
    fn a_keyloop_bin_that_points_nowhere_is_refused_not_passed_over() {
        let d = dirs();
        put_keyloop(&d.beside);
        let nowhere = d.other.join("keyloop");
        let text = locate_keyloop(Some(nowhere.clone()), Some(&d.beside), None)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&format!("KEYLOOP_BIN={} is not a file", nowhere.display())),
            "{text}"
        );
    }
}
