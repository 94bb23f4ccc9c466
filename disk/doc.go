// Package disk is a storage node's data directory: object replicas with
// per-object metadata, the raft log and node metadata.
//
// # Layout
//
//	<dir>/meta.db                bbolt: buckets "meta" (node metadata), "raft"
//	                             (hard state, snapshot) and "raftlog" (entries
//	                             keyed by big-endian index)
//	<dir>/obj/<oid>              object data: raw bytes at offset 0, sparse
//	                             where never written (oid = 16 lowercase hex
//	                             digits, as in Sheepdog)
//	<dir>/obj/<oid>.meta         sidecar: 64-byte header (magic, Version, ReqID,
//	                             Deleted flag, CRC32C of the header) followed by
//	                             one CRC32C per 4 KiB chunk of the data file
//	<dir>/obj/*.corrupt          objects set aside by Open (unusable header or
//	                             missing file); ignored by the store
//	<dir>/journal/<seq>          write-ahead journal files (seq = 16 hex digits)
//
// A chunk's checksum covers the whole 4 KiB chunk, zero-padded past the end
// of the file; a zero slot also accepts an all-zero chunk, so holes need no
// checksum. An object's logical size is the length of its data file.
//
// Metadata and checksums live in a sidecar rather than a header or trailer
// so that the data file stays a plain Sheepdog object (offset 0 is byte 0;
// it can be copied or inspected with ordinary tools), chunk-aligned writes
// stay block-aligned in the data file, the size of an object need not be
// known in advance (a trailer would need a fixed position), tombstones can
// release all data blocks while keeping the version, and a checksum update
// is a small pwrite into a file of 4 bytes per 4 KiB. Per-object files also
// keep the metadata next to the data for whole-object tools (copy, delete)
// and make Open's scan a directory listing plus one 64-byte read per object.
//
// # Journal
//
// Every mutation (Write, Put, tombstone, Delete) is one journal record:
//
//	crc32c | len | lsn | oid | version | reqid | off | kind | flags | data
//
// where the CRC32C covers everything after itself and LSNs are consecutive.
// A journal file starts with a 32-byte header (magic, sequence number,
// CRC32C). Journal space is preallocated in 8 MiB steps, keeping 1 MiB in
// reserve that only data-less records (Delete, tombstones) may use, so space
// can be freed on a full filesystem.
//
// A mutation reserves journal space for its record (this is where a full
// filesystem is reported), copies the record into an in-memory journal
// buffer under the journal lock, adds the operation to the object's
// in-memory pending list and returns. The buffer is written to the journal
// file (page cache, no fsync) when it reaches JournalBuffer (128 KiB) and by
// every commit; larger records, and every record in write-through mode
// (JournalBuffer < 0, or a filesystem without fallocate), are written at once
// and truncated away if the write fails. Durability comes from group commit:
// Sync, a sync=true write, the background flusher (every FlushInterval, or
// after FlushBytes) or backpressure (MaxPending) make one caller the leader,
// which writes out the buffer and fdatasyncs the journal once for everything
// appended so far while the others wait for it. Only after a record is
// durable is it handed to the applier goroutine, which applies operations to
// the object files (pwrite of the data, of the touched chunks' checksums
// and of the header; no fsync). Each batch is grouped by object: each object
// is locked once, its operations keep their order, runs of adjacent writes
// become one pwrite and the header is written once. Until an operation is
// applied, reads assemble the object from the files plus its pending
// operations, so reads always see the latest write.
//
// When the journal passes JournalLimit the commit leader rotates it: a new
// journal file is created (temporary file, fsync, rename, directory fsync)
// and the old one is fdatasynced and sealed. When the applier has applied
// everything in the sealed file, the checkpointer fsyncs the objects
// modified since the previous seal and the object directory, and then
// removes the sealed file. Close commits, applies and checkpoints everything
// and removes the journal. Open replays the journal, checkpoints the result
// and starts a new journal file.
//
// # Crash safety
//
// Object files change only by applying durable records: never before the
// record's fdatasync has returned. Therefore at any crash point the object
// files equal the last checkpoint plus some subset (any subset, at page
// granularity, since nothing was fsynced) of the effects of records that are
// in the durable journal. Replay redoes every valid record in LSN order,
// unconditionally: writes are deterministic functions of the record (the
// data, then each touched chunk's checksum recomputed from the resulting full
// chunk), Put and tombstones truncate and rewrite, Delete unlinks. Each byte
// and each checksum therefore ends up with the value of the last record that
// touched it, whatever subset of effects had reached the disk, and the result
// is exactly "checkpoint + journal prefix". Replay stops at the first record
// that is short, fails its CRC or breaks the LSN sequence, discarding it and
// everything after it (also in later journal files): the torn tail.
//
// From this:
//
//   - (a) A write that completed before a successful Sync or with sync=true
//     is in the durable prefix, which the torn tail cannot cut.
//   - (b) The surviving writes are a prefix of the write order: replay never
//     skips a record, and no effect of a record beyond the prefix can be in
//     the object files, since such a record was never durable and therefore
//     never applied. An object's content always matches its recorded version
//     (a write's data and meta are one record), also across objects.
//   - (c) A torn tail fails the CRC or the LSN sequence. A failed append
//     (for example ENOSPC midway) is truncated away before anything later is
//     appended. Records are written in LSN order, so a process crash loses
//     at most a suffix (what was still buffered), which was never synced.
//
// The design deliberately delays the pwrite to the object file until the
// record is durable. Writing the object file immediately would let kernel
// writeback persist object data whose journal record is lost in a power
// failure, which no replay can undo and which would break (b).
//
// Files that are replaced wholesale (journal files) are written as a
// temporary file, fsynced, renamed and the directory fsynced. Objects are
// updated in place because the journal record holds the complete operation.
//
// # Errors and full filesystems
//
// Reads verify the CRC32C of every chunk they touch and return ErrCorrupt
// (naming the object and offset, never the bad data). A partial write into a
// corrupt chunk keeps it marked corrupt instead of computing a fresh checksum
// over damaged bytes. Open moves objects with unusable headers aside.
//
// ENOSPC and EDQUOT are reported synchronously by the journal preallocation
// (or, in write-through mode, by the record's write) as ErrNoSpace; the
// failed operation leaves no trace. If
// applying a durable record fails later (the filesystem filled up under the
// object files), the record stays in the journal and in memory (reads still
// see it), the applier retries, and new mutations fail with the error
// (ErrNoSpace) until a retry succeeds. A failed write of the journal buffer
// (its space was reserved, so an I/O error) or a failed journal fdatasync
// leaves the journal contents unknown: the store then refuses writes and
// syncs until it is reopened, and keeps serving reads.
//
// # Concurrency
//
// Objects live in a sharded map. Each object has a RWMutex: mutations and the
// applier hold it exclusively, reads shared; the journal append lock is held
// for a memcpy into the buffer, and for the write(2) when the buffer fills.
// Stat and List read an atomically published per-object state without locks.
// File descriptors are cached (CLOCK eviction, MaxOpenFiles). The caller must
// not issue two mutations of the same object concurrently; reads may run
// concurrently with anything.
package disk
