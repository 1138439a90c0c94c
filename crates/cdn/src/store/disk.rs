//! The disk tier: one file per object under a byte bound, evicted with
//! S3-FIFO like the memory tier, with an index that survives a restart.
//!
//! An object is written to `tmp/`, synced, then renamed into `objects/`
//! (the rename is atomic: a reader sees the whole file or none). Each file
//! carries its key, metadata and head, and checksums of them and of the
//! body (see `format`), so the index is rebuilt at open from the files
//! themselves: a file whose length disagrees with its header or whose
//! checksum fails is deleted, never served, and the body checksum is
//! checked again on every read. Leftovers in `tmp/` (a crash mid-write)
//! are deleted at open. File names are fresh numbers, never reused, so a
//! reader never confuses an object with the one that replaced it.
//!
//! The index (keys, variants, URLs, tags, sizes) lives in memory; it is
//! not counted in the byte bound, which bounds the bytes on disk. One
//! process per directory. Every method does blocking file I/O; the index
//! lock is never held across it.

mod format;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use super::index::{Index, Indexed};
use super::object::{CacheKey, Object};
use super::{Counters, Purge, PurgeMode, TierStats};

use format::{Header, FLAGS_AT, FLAG_SOFT_PURGED, HEADER_LEN};

/// Where and how large the disk tier is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The tier's directory (created if missing; it holds `objects/` and
    /// `tmp/`). No default: the edge's data directory names it.
    pub dir: PathBuf,
    /// Byte bound of the object files. Default 1 GiB.
    pub capacity_bytes: u64,
    /// Object files larger than this are refused. Default 64 MiB; never
    /// more than the capacity.
    pub max_object_bytes: u64,
    /// Variants (`Vary`) kept per primary key. Default 16.
    pub max_variants: usize,
    /// Whether each object file (and the directory after its rename) is
    /// synced before it becomes visible, so a power loss cannot leave a
    /// renamed file whose content never reached the disk. Default true.
    pub sync: bool,
}

impl DiskConfig {
    /// The defaults above, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskConfig {
            dir: dir.into(),
            capacity_bytes: 1 << 30,
            max_object_bytes: 64 << 20,
            max_variants: 16,
            sync: true,
        }
    }
}

/// Why the disk tier failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory could not be prepared or read at open.
    #[error("cannot open the disk tier at {path}: {source}")]
    Open {
        /// The directory or file concerned.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The object's file would be larger than the per-object limit.
    #[error("object file of {size} bytes over the disk tier's limit of {limit}")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Writing the object failed (nothing was stored).
    #[error("disk tier write failed: {0}")]
    Write(#[from] io::Error),
}

/// What the index keeps of an object on disk.
#[derive(Debug)]
struct DiskEntry {
    key: CacheKey,
    variant: Bytes,
    url: Bytes,
    tags: Vec<Bytes>,
    size: u64,
}

impl Indexed for DiskEntry {
    fn key(&self) -> &CacheKey {
        &self.key
    }
    fn variant(&self) -> &[u8] {
        &self.variant
    }
    fn url(&self) -> &[u8] {
        &self.url
    }
    fn tags(&self) -> &[Bytes] {
        &self.tags
    }
    fn charge(&self) -> u64 {
        self.size
    }
}

#[derive(Debug)]
struct State {
    index: Index<DiskEntry>,
    next_id: u64,
}

/// The disk tier; shareable between threads.
#[derive(Debug)]
pub struct DiskStore {
    objects: PathBuf,
    tmp: PathBuf,
    state: Mutex<State>,
    max_object: u64,
    sync: bool,
    counters: Counters,
}

fn object_name(id: u64) -> String {
    format!("{id:016x}.obj")
}

fn open_error(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Open {
        path: path.to_owned(),
        source,
    }
}

/// Deletes a file that may already be gone.
fn remove_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete cache file"),
    }
}

/// Reads the header and meta of an object file: its index entry, or why
/// it is not a valid object.
fn read_entry(path: &Path) -> io::Result<Result<DiskEntry, format::Invalid>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    if len < HEADER_LEN as u64 {
        return Ok(Err(format::Invalid::Length));
    }
    file.read_exact(&mut header)?;
    let header = match Header::parse(&header) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if header.file_len() != len {
        return Ok(Err(format::Invalid::Length));
    }
    let mut meta = vec![0u8; header.meta_len as usize];
    file.read_exact(&mut meta)?;
    if let Err(e) = header.check_meta(&meta) {
        return Ok(Err(e));
    }
    Ok(format::decode_meta(&meta).map(|m| DiskEntry {
        key: m.key,
        variant: m.meta.variant,
        url: m.meta.url,
        tags: m.meta.tags,
        size: len,
    }))
}

impl DiskStore {
    /// Opens (or creates) the tier in `config.dir`: deletes leftovers of
    /// unfinished writes, rebuilds the index from the object files
    /// (dropping invalid ones and, if the capacity shrank, evicting down to
    /// it).
    pub fn open(config: DiskConfig) -> Result<Self, DiskError> {
        let objects = config.dir.join("objects");
        let tmp = config.dir.join("tmp");
        fs::create_dir_all(&objects).map_err(open_error(&objects))?;
        fs::create_dir_all(&tmp).map_err(open_error(&tmp))?;
        for entry in fs::read_dir(&tmp).map_err(open_error(&tmp))? {
            let entry = entry.map_err(open_error(&tmp))?;
            remove_file(&entry.path());
        }
        let counters = Counters::default();
        let mut found = Vec::new();
        for entry in fs::read_dir(&objects).map_err(open_error(&objects))? {
            let path = entry.map_err(open_error(&objects))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".obj"))
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            let Some(id) = id else {
                // Not ours (or a name we never write): leave it alone.
                continue;
            };
            match read_entry(&path).map_err(open_error(&path))? {
                Ok(entry) => found.push((id, entry)),
                Err(invalid) => {
                    tracing::warn!(path = %path.display(), ?invalid, "dropping invalid cache file");
                    counters.corrupt();
                    remove_file(&path);
                }
            }
        }
        // Oldest first, so that of two files for one key and variant (a
        // crash between a replacement's rename and the old file's delete)
        // the newer wins.
        found.sort_by_key(|(id, _)| *id);
        let capacity = config.capacity_bytes;
        let max_object = config.max_object_bytes.min(capacity);
        let mut index = Index::new(capacity, config.max_variants);
        let next_id = found.last().map_or(0, |(id, _)| id + 1);
        for (id, entry) in found {
            if entry.size > max_object {
                remove_file(&objects.join(object_name(id)));
                continue;
            }
            let removed = index.insert(id, entry, true);
            for (gone, _) in removed.replaced.into_iter().chain(removed.evicted) {
                remove_file(&objects.join(object_name(gone)));
            }
        }
        Ok(DiskStore {
            objects,
            tmp,
            state: Mutex::new(State { index, next_id }),
            max_object,
            sync: config.sync,
            counters,
        })
    }

    /// The largest object file accepted.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object
    }

    fn path(&self, id: u64) -> PathBuf {
        self.objects.join(object_name(id))
    }

    /// Writes `object` (replacing the one with the same key and variant,
    /// evicting others for room). Visible only once completely written.
    pub fn insert(&self, object: &Object) -> Result<(), DiskError> {
        let flags = if object.is_soft_purged() {
            FLAG_SOFT_PURGED
        } else {
            0
        };
        let head = format::encode(object, flags);
        let size = head.len() as u64 + object.body().len() as u64;
        if size > self.max_object {
            self.counters.refused();
            return Err(DiskError::TooLarge {
                size,
                limit: self.max_object,
            });
        }
        let id = {
            let mut state = self.state.lock().expect("disk index lock");
            state.next_id += 1;
            state.next_id - 1
        };
        let tmp = self.tmp.join(format!("{id:016x}.tmp"));
        let path = self.path(id);
        let written = self.write_file(&tmp, &head, object.body(), &path);
        if let Err(e) = written {
            remove_file(&tmp);
            self.counters.write_error();
            return Err(DiskError::Write(e));
        }
        let entry = DiskEntry {
            key: object.key().clone(),
            variant: object.meta().variant.clone(),
            url: object.meta().url.clone(),
            tags: object.meta().tags.clone(),
            size,
        };
        let (replaced, evicted) = {
            let mut state = self.state.lock().expect("disk index lock");
            let removed = state.index.insert(id, entry, false);
            (removed.replaced, removed.evicted)
        };
        self.counters.inserted(replaced.is_some(), evicted.len());
        // The index no longer names them: delete their files.
        for (gone, _) in replaced.into_iter().chain(evicted) {
            remove_file(&self.path(gone));
        }
        Ok(())
    }

    fn write_file(&self, tmp: &Path, head: &[u8], body: &[u8], path: &Path) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        file.write_all(head)?;
        file.write_all(body)?;
        if self.sync {
            file.sync_data()?;
        }
        drop(file);
        fs::rename(tmp, path)?;
        if self.sync {
            File::open(&self.objects)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads entry `id`'s file: the object, or `None` when the file is gone
    /// (evicted meanwhile) or invalid (then dropped).
    fn read(&self, id: u64, key: &CacheKey) -> Option<Object> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read cache file");
                }
                return None;
            }
        };
        match format::decode(&bytes) {
            Ok((object, flags)) if object.key() == key => {
                if flags & FLAG_SOFT_PURGED != 0 {
                    object.mark_soft_purged();
                }
                Some(object)
            }
            result => {
                tracing::warn!(path = %path.display(), invalid = ?result.err(), "dropping invalid cache file");
                self.counters.corrupt();
                self.state.lock().expect("disk index lock").index.remove(id);
                remove_file(&path);
                None
            }
        }
    }

    /// The object under `key` with exactly `variant`. Counts a hit or a
    /// miss.
    /// Only that variant's file is read.
    pub fn get(&self, key: &CacheKey, variant: &[u8]) -> Option<Object> {
        let id = {
            let state = self.state.lock().expect("disk index lock");
            state.index.find(key, |e| e.variant == variant).map(|(id, _)| id)
        };
        let found = id.and_then(|id| {
            let object = self.read(id, key)?;
            self.state.lock().expect("disk index lock").index.touch(id);
            Some(object)
        });
        self.counters.looked_up(found.is_some());
        found
    }

    /// The first object under `key` that `matches` accepts (each candidate
    /// variant's file is read whole and verified: with many large variants
    /// prefer [`DiskStore::get`]). Counts a hit or a miss.
    pub fn lookup(&self, key: &CacheKey, mut matches: impl FnMut(&Object) -> bool) -> Option<Object> {
        let candidates = self.state.lock().expect("disk index lock").index.ids_of(key);
        let found = candidates.into_iter().find_map(|id| {
            let object = self.read(id, key)?;
            matches(&object).then(|| {
                self.state.lock().expect("disk index lock").index.touch(id);
                object
            })
        });
        self.counters.looked_up(found.is_some());
        found
    }

    /// Purges what `purge` names: hard deletes the files, soft rewrites
    /// their flags byte in place (the mark survives a restart). Returns how
    /// many objects it matched.
    pub fn purge(&self, purge: &Purge, mode: PurgeMode) -> usize {
        let count = match mode {
            PurgeMode::Hard => {
                let ids: Vec<u64> = {
                    let mut state = self.state.lock().expect("disk index lock");
                    let ids = state.index.matching(purge);
                    ids.into_iter()
                        .filter(|id| state.index.remove(*id).is_some())
                        .collect()
                };
                for id in &ids {
                    remove_file(&self.path(*id));
                }
                ids.len()
            }
            PurgeMode::Soft => {
                let ids = self.state.lock().expect("disk index lock").index.matching(purge);
                let mut marked = HashSet::new();
                for id in ids {
                    match self.mark_soft_purged(id) {
                        Ok(()) => {
                            marked.insert(id);
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            // A mark that cannot be written must not leave
                            // the object fresh: drop it instead.
                            tracing::warn!(error = %e, "cannot mark cache file stale; deleting it");
                            self.state.lock().expect("disk index lock").index.remove(id);
                            remove_file(&self.path(id));
                            marked.insert(id);
                        }
                    }
                }
                marked.len()
            }
        };
        self.counters.purged(mode, count);
        count
    }

    fn mark_soft_purged(&self, id: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path(id))?;
        file.write_all_at(&[FLAG_SOFT_PURGED], FLAGS_AT)?;
        if self.sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Counters and gauges of this tier.
    pub fn stats(&self) -> TierStats {
        let state = self.state.lock().expect("disk index lock");
        let (objects, bytes, capacity) = (
            state.index.len() as u64,
            state.index.bytes(),
            state.index.capacity(),
        );
        drop(state);
        self.counters.snapshot(objects, bytes, capacity)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::object::ObjectMeta;
    use super::*;

    fn config(dir: &Path, capacity: u64) -> DiskConfig {
        DiskConfig {
            capacity_bytes: capacity,
            max_object_bytes: capacity,
            max_variants: 4,
            sync: true,
            ..DiskConfig::new(dir)
        }
    }

    fn object(key: &str, body: &[u8], tags: &[&str]) -> Object {
        let mut meta = ObjectMeta::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
            .with_url(format!("h{key}"))
            .with_fresh_for(Duration::from_secs(300));
        for t in tags {
            meta = meta.with_tag(t.to_string());
        }
        Object::new(
            key.into(),
            meta,
            Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"),
            Bytes::copy_from_slice(body),
        )
    }

    fn files(dir: &Path, sub: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn objects_are_stored_read_back_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
            disk.insert(&object("/a", b"aaaa", &["t"])).unwrap();
            disk.insert(&object("/b", b"bbbb", &[])).unwrap();
            let a = disk.get(&"/a".into(), b"").unwrap();
            assert_eq!(a.body(), "aaaa");
            assert_eq!(a.meta().fresh_for, Duration::from_secs(300));
            assert!(files(dir.path(), "tmp").is_empty());
        }
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(disk.stats().objects, 2);
        let a = disk.get(&"/a".into(), b"").unwrap();
        assert_eq!(a.body(), "aaaa");
        assert_eq!(a.meta().tags, vec![Bytes::from("t")]);
        assert_eq!(disk.get(&"/b".into(), b"").unwrap().body(), "bbbb");
        // New names after a restart never reuse an old one.
        disk.insert(&object("/c", b"cccc", &[])).unwrap();
        assert_eq!(files(dir.path(), "objects").len(), 3);
        assert_eq!(disk.get(&"/a".into(), b"").unwrap().body(), "aaaa");
        // The tag index was rebuilt too.
        assert_eq!(disk.purge(&Purge::Tag("t".into()), PurgeMode::Hard), 1);
        assert!(disk.get(&"/a".into(), b"").is_none());
    }

    #[test]
    fn a_truncated_file_is_dropped_at_open_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
            disk.insert(&object("/whole", b"whole body", &[])).unwrap();
            disk.insert(&object("/torn", b"torn body!", &[])).unwrap();
        }
        let torn = files(dir.path(), "objects")
            .into_iter()
            .find(|p| fs::read(p).unwrap().windows(5).any(|w| w == b"/torn"))
            .unwrap();
        let len = fs::metadata(&torn).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        assert!(disk.get(&"/torn".into(), b"").is_none());
        assert_eq!(disk.get(&"/whole".into(), b"").unwrap().body(), "whole body");
        assert!(!torn.exists(), "the torn file is deleted");
        let stats = disk.stats();
        assert_eq!((stats.objects, stats.corrupt), (1, 1));
    }

    #[test]
    fn a_body_corrupted_after_open_is_detected_on_read_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        disk.insert(&object("/rot", b"precious bytes", &[])).unwrap();
        let path = files(dir.path(), "objects").pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(disk.get(&"/rot".into(), b"").is_none());
        assert!(!path.exists());
        let stats = disk.stats();
        assert_eq!((stats.objects, stats.bytes, stats.corrupt), (0, 0, 1));
    }

    #[test]
    fn leftovers_of_unfinished_writes_are_deleted_at_open_and_foreign_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStore::open(config(dir.path(), 1 << 20)).unwrap());
        fs::write(dir.path().join("tmp/0000000000000007.tmp"), b"half an obj").unwrap();
        fs::write(dir.path().join("objects/README"), b"not ours").unwrap();
        // A file with our name but garbage content.
        fs::write(dir.path().join("objects/0000000000000009.obj"), b"garbage").unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        assert!(files(dir.path(), "tmp").is_empty());
        assert_eq!(
            files(dir.path(), "objects"),
            vec![dir.path().join("objects/README")]
        );
        assert_eq!(disk.stats().corrupt, 1);
    }

    #[test]
    fn the_byte_bound_holds_and_evicted_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let size = {
            let o = object("/k000", &[0; 1000], &[]);
            format::encode(&o, 0).len() as u64 + 1000
        };
        let capacity = size * 20;
        let disk = DiskStore::open(config(dir.path(), capacity)).unwrap();
        for i in 0..100 {
            disk.insert(&object(&format!("/k{i:03}"), &[0; 1000], &[]))
                .unwrap();
            let on_disk: u64 = files(dir.path(), "objects")
                .iter()
                .map(|p| fs::metadata(p).unwrap().len())
                .sum();
            let stats = disk.stats();
            assert_eq!(on_disk, stats.bytes, "the gauge is the files' size");
            assert!(on_disk <= capacity);
        }
        let stats = disk.stats();
        assert_eq!(stats.objects, 20);
        assert_eq!(stats.evictions, 80);
        assert!(disk.get(&"/k099".into(), b"").is_some());
        assert!(disk.get(&"/k000".into(), b"").is_none());
        // Reopened with half the capacity, it evicts down to it.
        drop(disk);
        let disk = DiskStore::open(config(dir.path(), capacity / 2)).unwrap();
        assert_eq!(disk.stats().objects, 10);
        assert_eq!(files(dir.path(), "objects").len(), 10);
    }

    #[test]
    fn a_replacement_deletes_the_old_file_and_variants_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        let variant = |v: &str, body: &[u8]| {
            let o = object("/v", body, &[]);
            let meta = o.meta().clone().with_variant(v.to_owned());
            Object::new(o.key().clone(), meta, o.head().clone(), o.body().clone())
        };
        disk.insert(&variant("gzip", b"z1")).unwrap();
        disk.insert(&variant("br", b"b1")).unwrap();
        disk.insert(&variant("gzip", b"z2")).unwrap();
        assert_eq!(files(dir.path(), "objects").len(), 2);
        assert_eq!(disk.get(&"/v".into(), b"gzip").unwrap().body(), "z2");
        assert_eq!(disk.get(&"/v".into(), b"br").unwrap().body(), "b1");
        let found = disk.lookup(&"/v".into(), |o| o.body() == "b1").unwrap();
        assert_eq!(found.meta().variant, "br");
        assert_eq!(disk.stats().replaced, 1);
        drop(disk);
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(disk.get(&"/v".into(), b"gzip").unwrap().body(), "z2");
    }

    #[test]
    fn purges_by_key_tag_and_prefix_hard_and_soft_and_soft_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        disk.insert(&object("/photos/1/s", b"1s", &["photo-1"])).unwrap();
        disk.insert(&object("/photos/1/l", b"1l", &["photo-1"])).unwrap();
        disk.insert(&object("/photos/2/s", b"2s", &["photo-2"])).unwrap();
        disk.insert(&object("/app.js", b"js", &[])).unwrap();
        assert_eq!(disk.purge(&Purge::Tag("photo-1".into()), PurgeMode::Soft), 2);
        assert!(disk.get(&"/photos/1/s".into(), b"").unwrap().is_soft_purged());
        assert!(!disk.get(&"/photos/2/s".into(), b"").unwrap().is_soft_purged());
        drop(disk);
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(disk.stats().corrupt, 0, "the flag is outside the checksums");
        assert!(disk.get(&"/photos/1/l".into(), b"").unwrap().is_soft_purged());
        assert_eq!(disk.purge(&Purge::Prefix("h/photos/".into()), PurgeMode::Hard), 3);
        assert_eq!(disk.purge(&Purge::Key("/app.js".into()), PurgeMode::Hard), 1);
        assert!(files(dir.path(), "objects").is_empty());
        let stats = disk.stats();
        assert_eq!((stats.objects, stats.bytes, stats.purged_hard), (0, 0, 4));
    }

    #[test]
    fn an_exact_variant_read_opens_only_that_variant() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(config(dir.path(), 1 << 20)).unwrap();
        let variant = |v: &str| {
            let o = object("/v", v.as_bytes(), &[]);
            let meta = o.meta().clone().with_variant(v.to_owned());
            Object::new(o.key().clone(), meta, o.head().clone(), o.body().clone())
        };
        disk.insert(&variant("br")).unwrap();
        disk.insert(&variant("gzip")).unwrap();
        // Corrupt the first variant's file: reading the second must not
        // notice (its file alone is read).
        let first = files(dir.path(), "objects").remove(0);
        let mut bytes = fs::read(&first).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&first, bytes).unwrap();
        assert_eq!(disk.get(&"/v".into(), b"gzip").unwrap().body(), "gzip");
        assert_eq!(disk.stats().corrupt, 0);
        assert!(disk.get(&"/v".into(), b"br").is_none());
        assert_eq!(disk.stats().corrupt, 1);
    }

    #[test]
    fn objects_over_the_limit_are_refused_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(DiskConfig {
            max_object_bytes: 500,
            ..config(dir.path(), 1 << 20)
        })
        .unwrap();
        assert_eq!(disk.max_object_bytes(), 500);
        let err = disk.insert(&object("/big", &[0; 500], &[])).unwrap_err();
        assert!(matches!(err, DiskError::TooLarge { limit: 500, .. }));
        assert!(files(dir.path(), "objects").is_empty());
        assert!(files(dir.path(), "tmp").is_empty());
        assert_eq!(disk.stats().refused, 1);
    }

    #[test]
    fn threads_write_and_read_concurrently_without_a_bad_read() {
        let dir = tempfile::tempdir().unwrap();
        let disk = std::sync::Arc::new(
            DiskStore::open(DiskConfig {
                sync: false,
                ..config(dir.path(), 64 * 1024)
            })
            .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let disk = disk.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let key = format!("/{}", i % 40);
                        let body = format!("{t}:{key}").repeat(50);
                        disk.insert(&object(&key, body.as_bytes(), &[])).unwrap();
                        if let Some(o) = disk.get(&key.as_str().into(), b"") {
                            // Whatever version is read is a whole one.
                            let text = std::str::from_utf8(o.body()).unwrap();
                            let unit = &text[..text.find('/').unwrap() + key.len()];
                            assert_eq!(text, unit.repeat(50));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = disk.stats();
        assert_eq!(stats.corrupt, 0);
        assert!(stats.bytes <= 64 * 1024);
        assert_eq!(files(dir.path(), "objects").len() as u64, stats.objects);
    }
}
