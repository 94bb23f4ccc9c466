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
//	                             one CRC32C per 4 KiB chunk of the data file;
//	                             written only by checkpoints (see below)
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
// release all data blocks while keeping the version, and checksums can be
// written back in whole pages of a file of 4 bytes per 4 KiB. Per-object
// files also keep the metadata next to the data for whole-object tools
// (copy, delete) and make Open's scan a directory listing plus one 64-byte
// read per object.
//
// # Checksum tables
//
// Between checkpoints the authoritative checksums and metadata of an
// object's applied state are in memory, not in its sidecar: each object has
// a checksum table in pages of 1024 slots (4 KiB, covering 4 MiB of data),
// loaded from the sidecar on first use, and its applied meta. Reads verify
// against the table. The applier updates the table and marks the pages it
// changes dirty; Put, tombstones and creation replace the table ("fresh":
// missing pages are zero and are not loaded from the stale sidecar). A
// checkpoint writes an object's sidecar from its table: the header and the
// runs of dirty pages (one pwrite per run; the header and page 0 are one
// run), and for a fresh table every page below the old length and then the
// new length. Tables with unwritten changes stay in memory until a
// checkpoint has written them; clean tables are dropped with the object's
// cached descriptors (MaxOpenFiles), or right after the checkpoint for
// objects without cached descriptors. When the pages dirtied since the last
// journal rotation reach 64 MiB, the next commit rotates the journal, which
// bounds that memory when many small writes touch many pages.
//
// Applying an operation that needs more sidecar space than reserved so far
// reserves it (fallocate, keeping the size; whole pages, so once per 4 MiB
// of growth and once per object after Open), so a full filesystem is
// reported when applying, as for the data, and a checkpoint's sidecar writes
// need no new blocks (filesystems without fallocate, or that copy on write,
// get no such guarantee; a failed checkpoint is retried, see below).
//
// # Journal
//
// Every mutation (Write, Put, tombstone, Delete) is one journal record:
//
//	crc32c | len | lsn | oid | version | reqid | off | kind | flags | data
//
// where the CRC32C covers everything after itself and LSNs are consecutive.
// A journal file starts with a 64-byte header (magic, sequence number,
// the LSN of its first record or 0 while none is durable, a random nonce,
// CRC32C), and each record's CRC32C also covers the file's nonce. Journal
// files are recycled: a checkpointed file is kept as a spare (journal/
// spare-*, at most one, dropped when the filesystem fills up) and becomes
// the next journal file, its new header fdatasynced before it is renamed
// into place. Its blocks are then written and within its size, so a group
// commit's fdatasync writes data alone: no extent conversion or size
// change for the filesystem to commit, which would otherwise wait for the
// metadata of everything else in flight (new object files above all). The
// records of a file's former life that lie past its end fail their
// checksums under the new nonce, and replay goes on from a file into the
// next only if the next one's header names the next LSN.
//
// Journal space is preallocated in steps that start at 8 MiB and double
// with the file up to 64 MiB (a step that does not fit shrinks to
// what the record needs, so a full filesystem is reported only when that
// does not fit), keeping 1 MiB in reserve that only data-less records
// (Delete, tombstones) may use, so space can be freed on a full filesystem.
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
// durable is it handed to the applier goroutine, which applies operations:
// one pwrite of the data into the data file, the new checksums and meta
// into the object's table (no sidecar write, no fsync). Each batch is
// grouped by object: each object is locked once, its operations keep their
// order and runs of adjacent writes become one pwrite. Until an operation
// is applied, reads assemble the object from the files plus its pending
// operations, so reads always see the latest write. A 4 KiB write thus
// costs a memcpy into the journal buffer (a write(2) per 128 KiB), a share
// of a group commit's fdatasync and one pwrite; data copies of 2-4 KiB are
// pooled and recycled once applied. WriteOwned and PutOwned skip the copy:
// the caller hands its buffer over and the pending operation keeps it (the
// daemon does so for every write, whose buffers nothing changes once read
// from the client or a peer).
//
// When the journal passes JournalLimit (or the dirty table pages pass their
// bound) the commit leader rotates it: a new journal file is created
// (temporary file, fsync, rename, directory fsync) and the old one is
// fdatasynced and sealed, and a marker goes into the applier's queue after
// the sealed file's operations. When the applier reaches the marker it has
// applied everything in the sealed file, and it hands the set of objects it
// modified since the previous marker to the checkpointer, which:
//
//  1. writes the sidecar of each of these objects whose sidecar is behind its
//     table (under the object's lock, in OID order);
//  2. fdatasyncs their data files and sidecars, then fsyncs the object
//     directory;
//  3. only then removes the sealed journal file, or keeps it as a spare
//     (and fsyncs the journal directory).
//
// If a step fails the journal is kept and the objects are carried over to
// the next checkpoint (and to Close), so a journal is removed only once
// everything before it is durable. Close commits, applies and checkpoints
// everything the same way and removes the journal. Open replays the
// journal, checkpoints the result the same way and starts a new journal
// file.
//
// # Crash safety
//
// Two rules order all writes to object files:
//
//   - (R1) Data files change only by applying durable records, never before
//     the record's fdatasync has returned; tables change only by applying
//     durable records (or by loading pages from the sidecar); sidecars
//     change only by checkpoints, which write the table and applied meta
//     of the moment, so they too reflect only durable records.
//   - (R2) A journal file is removed only after steps 1 and 2 above have
//     completed for every object its records modified.
//
// Call an object's "base" its data file and sidecar as synced by the last
// completed checkpoint that covered it (all its records up to some journal
// seal). By (R2) every record applied to the object since its base is in a
// journal file that still exists. By (R1), at any crash point, whatever
// subset of unsynced writes reached the disk (any subset, at page
// granularity), an object's files differ from its base only where a record
// in the surviving journal applies (a record that creates, replaces,
// tombstones or deletes the object counts as touching all of it): a data
// byte only if such a record touched it; a checksum slot only if such a
// record touched its chunk (a sidecar page is written whole, but every slot
// no such record touched holds its base value in the table, so writing it,
// torn or not, writes the base value again); the header, the sidecar's
// length and the data file's size only if such a record concerns the object.
// In particular a sidecar may be older than its data (the checkpoint's write
// did not happen or not reach the disk) or newer (a checkpoint wrote it, but
// the data pages did not reach the disk), both only within chunks that
// surviving records touched.
//
// Replay redoes every valid record in LSN order, unconditionally: a write
// stores its data, then recomputes each touched chunk's checksum from the
// resulting full chunk (table pages are loaded from whatever sidecar is on
// disk); Put and tombstones truncate and rewrite the data and start a fresh
// table (never reading the stale sidecar); Delete unlinks both files; each
// record sets the meta. Each data byte, checksum and header therefore ends
// up with the value of the last record that touched it, or its base value
// if none did, whatever subset of effects had reached the disk: the result
// is exactly "base + journal prefix", with checksums that match the data,
// so nothing is misread as corrupt and no stale meta survives. A sidecar
// whose header a torn write made unreadable belongs to an object with
// surviving records, which repair it. Open then writes the sidecars of all
// replayed objects and syncs them (steps 1 and 2) before removing the
// journal; if that is interrupted, the next Open replays the same records
// again. Replay stops at the first record that is short, fails its CRC or
// breaks the LSN sequence, discarding it and everything after it (also in
// later journal files): the torn tail.
//
// From this:
//
//   - (a) A write that completed before a successful Sync or with sync=true
//     is in the durable prefix, which the torn tail cannot cut.
//   - (b) The surviving writes are a prefix of the write order: replay never
//     skips a record, and no effect of a record beyond the prefix can be in
//     the object files, since such a record was never durable and therefore
//     never applied, nor in a table or sidecar. An object's content always
//     matches its recorded version (a write's data and meta are one record),
//     also across objects.
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
// failed operation leaves no trace. If applying a durable record fails later
// (the filesystem filled up under the object files, including the sidecar
// space reservation), the record stays in the journal and in memory (reads
// still see it), the applier retries, and new mutations fail with the error
// (ErrNoSpace) until a retry succeeds. A failed write of the journal buffer
// (its space was reserved, so an I/O error) or a failed journal fdatasync
// leaves the journal contents unknown: the store then refuses writes and
// syncs until it is reopened, and keeps serving reads. A failed checkpoint
// (sidecar write or sync) is logged and keeps its journal; the next
// checkpoint retries its objects, and Close reports the error if its own
// checkpoint fails (the next Open replays the journal).
//
// # Concurrency
//
// Objects live in a sharded map. Each object has a RWMutex: mutations, the
// applier and checkpoints hold it exclusively, reads shared; reads that
// load a table page also take the object's small descriptor mutex. The
// journal append lock is held for a memcpy into the buffer, and for the
// write(2) when the buffer fills. Stat and List read an atomically
// published per-object state without locks. File descriptors are cached
// (CLOCK eviction, MaxOpenFiles); the sidecar is opened only when a table
// page is loaded or space is reserved. The caller must not issue two
// mutations of the same object concurrently; reads may run concurrently
// with anything.
//
// TryRead serves an event loop that must never wait: it reads only when
// nothing can block (the object lock is free, its files are open, its
// checksum pages are loaded, and preadv2 with RWF_NOWAIT finds every byte
// in the page cache) and otherwise declines, leaving the read to a
// goroutine that may block. A cached 4 KiB read then costs one system
// call on the loop instead of two goroutine hand-offs.
package disk
