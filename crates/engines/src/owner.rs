//! Who runs PostgreSQL's programs. PostgreSQL refuses to run as root, so
//! when we are root its programs run as the `postgres` user and the
//! directories they use are handed to that user; otherwise they run as
//! ourselves.

use anyhow::Context;
use nix::unistd::{geteuid, User};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::process::Command;

/// The unprivileged user PostgreSQL's programs run as when we are root.
pub(crate) const POSTGRES_USER: &str = "postgres";

/// A user to run a program as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when we are not root (the programs run as ourselves), the
    /// `postgres` user when we are.
    pub(crate) fn for_postgres() -> anyhow::Result<Option<RunAs>> {
        if !geteuid().is_root() {
            return Ok(None);
        }
        let user = User::from_name(POSTGRES_USER)
            .context("looking up the postgres user")?
            .with_context(|| {
                format!(
                    "PostgreSQL refuses to run as root and there is no `{POSTGRES_USER}` user \
                     to run it as (install the postgresql package: scripts/setup.sh)"
                )
            })?;
        Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Makes `cmd` run as this user (with no supplementary groups).
    pub(crate) fn apply(self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Hands `path` to this user.
    pub(crate) fn give(self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {POSTGRES_USER}", path.display()))
    }
}

/// Creates `dir` (an absolute path) if needed as a private directory (mode
/// 0700) of `owner`. When `owner` is another user, every ancestor it cannot
/// traverse gets the execute bit for group and others (0700 becomes 0711:
/// traversal only, no listing), which a root-owned temporary directory needs.
pub(crate) fn prepare_private_dir(dir: &Path, owner: Option<RunAs>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(owner) = owner {
        for ancestor in dir.ancestors().skip(1) {
            make_traversable(ancestor)?;
        }
        owner.give(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

fn make_traversable(dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o001 == 0 {
        let new = (mode | 0o011) & 0o7777;
        tracing::info!(dir = %dir.display(), "chmod {new:o} so that the postgres user can reach its data directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new))
            .with_context(|| format!("chmod {new:o} {}", dir.display()))?;
    }
    Ok(())
}
