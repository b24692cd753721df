//! The production [`Backend`]: RocksDB (feature `rocksdb`).

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions,
};

use crate::backend::{
    Backend, BackendError, Durability, LeafVisitor, Records, WriteSet, upper_bound,
};

/// Column families: leaves, and session records.
const LEAVES: &str = "leaves";
const SESSIONS: &str = "sessions";

impl From<rocksdb::Error> for BackendError {
    fn from(e: rocksdb::Error) -> Self {
        Self(e.into_string())
    }
}

/// RocksDB: leaves in one column family keyed so that a session is one contiguous sorted
/// range, session records in another.
pub struct RocksBackend {
    db: DB,
    write_opts: WriteOptions,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksBackend({})", self.dir.display())
    }
}

impl RocksBackend {
    /// Opens (or creates) the database in `dir`. `cache_bytes` bounds the block cache.
    pub fn open(
        dir: &Path,
        durability: Durability,
        cache_bytes: usize,
    ) -> Result<Self, BackendError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut leaf_opts = Options::default();
        leaf_opts.set_block_based_table_factory(&table);
        leaf_opts.set_write_buffer_size(64 << 20);
        leaf_opts.set_max_write_buffer_number(2);
        leaf_opts.set_target_file_size_base(64 << 20);
        // Most appended relays are new: a memtable bloom filter answers "absent" without
        // walking the skip list.
        leaf_opts.set_memtable_prefix_bloom_ratio(0.1);
        leaf_opts.set_memtable_whole_key_filtering(true);
        let mut session_opts = Options::default();
        session_opts.set_block_based_table_factory(&table);
        let cfs = [
            ColumnFamilyDescriptor::new(LEAVES, leaf_opts),
            ColumnFamilyDescriptor::new(SESSIONS, session_opts),
        ];
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(durability == Durability::Fsync);
        Ok(Self {
            db,
            write_opts,
            dir: dir.to_path_buf(),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, BackendError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| BackendError(format!("column family {name} is missing")))
    }
}

impl Backend for RocksBackend {
    fn leaves_exist(&self, keys: &[&[u8]]) -> Result<Vec<bool>, BackendError> {
        let cf = self.cf(LEAVES)?;
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(BackendError::from))
            .collect()
    }

    fn write(&self, ws: WriteSet) -> Result<(), BackendError> {
        let (leaves, sessions) = (self.cf(LEAVES)?, self.cf(SESSIONS)?);
        let mut batch = WriteBatch::default();
        // Inserting in key order lets the memtable reuse its search position between
        // consecutive keys.
        let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = ws.leaves.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in sorted {
            batch.put_cf(leaves, k, v);
        }
        for (k, v) in &ws.sessions {
            match v {
                Some(v) => batch.put_cf(sessions, k, v),
                None => batch.delete_cf(sessions, k),
            }
        }
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    fn scan_leaves(&self, prefix: &[u8], f: &mut LeafVisitor<'_>) -> Result<(), BackendError> {
        let cf = self.cf(LEAVES)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper_bound(prefix));
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        it.seek(prefix);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(prefix) {
                break;
            }
            f(k, v)?;
            it.next();
        }
        it.status()?;
        Ok(())
    }

    fn sessions(&self) -> Result<Records, BackendError> {
        let cf = self.cf(SESSIONS)?;
        self.db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(BackendError::from)
            })
            .collect()
    }

    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), BackendError> {
        let (leaves, sessions) = (self.cf(LEAVES)?, self.cf(SESSIONS)?);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(leaves, prefix, upper_bound(prefix).as_slice());
        batch.delete_cf(sessions, prefix);
        self.db.write_opt(batch, &self.write_opts)?;
        Ok(())
    }

    fn compact_range(&self, start: &[u8], end: &[u8]) {
        if let Ok(cf) = self.cf(LEAVES) {
            // Flushing first lets the range tombstones reach the files they cover, and
            // retires the write-ahead log that held the deleted leaves.
            // Both families: a log file is only retired once every family has flushed
            // what it holds.
            for name in [LEAVES, SESSIONS] {
                if let Err(e) = self
                    .cf(name)
                    .and_then(|c| self.db.flush_cf(c).map_err(BackendError::from))
                {
                    tracing::warn!(error = %e, "flush before compaction failed");
                }
            }
            self.db.compact_range_cf(cf, Some(start), Some(end));
        }
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let prop = |name: &str| -> u64 {
            self.cf(LEAVES)
                .ok()
                .and_then(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
                .unwrap_or(0)
        };
        vec![
            ("live_sst_bytes", prop("rocksdb.live-sst-files-size")),
            ("memtable_bytes", prop("rocksdb.cur-size-all-mem-tables")),
            ("estimated_keys", prop("rocksdb.estimate-num-keys")),
            (
                "pending_compaction_bytes",
                prop("rocksdb.estimate-pending-compaction-bytes"),
            ),
        ]
    }
}

/// Total size of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
