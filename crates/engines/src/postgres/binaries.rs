//! Finding the PostgreSQL server programs. Debian keeps them outside `PATH`,
//! in `/usr/lib/postgresql/<major>/bin`.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Environment variable naming the directory of the server programs
/// (`postgres`, `initdb`, `pg_basebackup`, `pg_isready`, `psql`, ...).
pub const PG_BIN_ENV: &str = "SCALESTACK_PG_BIN";
/// Where Debian installs one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// `pg_promote()`, `standby.signal` and recovery settings in
/// `postgresql.conf` arrived in PostgreSQL 12.
const OLDEST_MAJOR: u32 = 12;

/// The installed PostgreSQL server programs of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Directory holding `postgres`, `initdb`, `pg_basebackup`, `psql`, ...
    pub bin_dir: PathBuf,
    /// Major version, e.g. 15.
    pub major: u32,
}

impl PgBinaries {
    /// Finds the server programs: the directory in `SCALESTACK_PG_BIN` if
    /// set, else the highest major under `/usr/lib/postgresql/<major>/bin`
    /// (Debian), else the directory of `postgres` on `PATH`.
    pub fn locate() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
            return Self::at(Path::new(&dir)).with_context(|| format!("{PG_BIN_ENV} is set"));
        }
        if let Some(dir) = highest_debian_major(Path::new(DEBIAN_ROOT)) {
            return Self::at(&dir);
        }
        if let Some(dir) = crate::on_path("postgres").as_deref().and_then(Path::parent) {
            return Self::at(dir);
        }
        bail!(
            "no PostgreSQL server found (looked in {PG_BIN_ENV}, {DEBIAN_ROOT}/<major>/bin and PATH); \
             install it with scripts/setup.sh"
        )
    }

    /// The server programs in `bin_dir`, whose major version is read from
    /// `postgres --version`.
    pub fn at(bin_dir: &Path) -> anyhow::Result<Self> {
        let postgres = bin_dir.join("postgres");
        let out = std::process::Command::new(&postgres)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", postgres.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major =
            parse_major(&text).with_context(|| format!("unexpected `postgres --version` output {text:?}"))?;
        if major < OLDEST_MAJOR {
            bail!(
                "PostgreSQL {major} in {} is too old (need {OLDEST_MAJOR} or later)",
                bin_dir.display()
            );
        }
        Ok(PgBinaries {
            bin_dir: bin_dir.to_owned(),
            major,
        })
    }

    /// The path of the program `name` (`initdb`, `psql`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The major version in `postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`.
fn parse_major(version: &str) -> Option<u32> {
    let rest = version.split_once(") ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn highest_debian_major(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_major_version() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1\n"), Some(17));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn picks_the_highest_major_with_a_server() {
        let root = tempfile::tempdir().unwrap();
        for (major, with_server) in [("9", true), ("13", true), ("16", true), ("17", false)] {
            let bin = root.path().join(major).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            if with_server {
                std::fs::write(bin.join("postgres"), "").unwrap();
            }
        }
        std::fs::create_dir_all(root.path().join("common/bin")).unwrap();
        assert_eq!(
            highest_debian_major(root.path()),
            Some(root.path().join("16/bin"))
        );
        assert_eq!(highest_debian_major(&root.path().join("absent")), None);
    }
}
