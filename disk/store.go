package disk

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors returned by the store. Errors are wrapped with context; test them
// with errors.Is.
var (
	// ErrNotFound: the object (or metadata key) does not exist.
	ErrNotFound = errors.New("disk: not found")
	// ErrCorrupt: stored data failed its checksum. Never returned together
	// with the bad data: the read buffer is zeroed.
	ErrCorrupt = errors.New("disk: checksum mismatch")
	// ErrNoSpace: the filesystem is full (ENOSPC) or the quota is exhausted
	// (EDQUOT). The failed operation had no effect.
	ErrNoSpace = errors.New("disk: no space left on device")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("disk: store closed")
	// ErrInvalid: an argument is out of range (negative offset, object
	// larger than Options.MaxObjectSize, malformed raft entries, ...).
	ErrInvalid = errors.New("disk: invalid argument")
)

// ChunkSize is the checksum granularity: every aligned 4 KiB chunk of an
// object has its own CRC32C.
const ChunkSize = 4096

// Defaults for Options fields left zero.
const (
	DefaultJournalLimit  = 256 << 20
	DefaultMaxObjectSize = 1 << 31
	DefaultFlushBytes    = 4 << 20
	DefaultFlushInterval = 250 * time.Millisecond
	DefaultMaxPending    = 64 << 20
	DefaultJournalBuffer = 128 << 10
	DefaultMaxOpenFiles  = 1024
)

// ObjectMeta is the caller's per-object metadata, persisted atomically with
// the data of every write.
type ObjectMeta struct {
	Version uint64 // opaque; the caller's per-object version, higher is newer
	ReqID   uint64 // opaque; id of the last client write applied (for de-duplication)
	Deleted bool   // tombstone: the object reads as zeros and its data blocks are released
}

// ObjectInfo describes one object in List.
type ObjectInfo struct {
	OID  uint64
	Meta ObjectMeta
	// Size is the object's logical size: one past the highest byte written
	// since the object was created or last replaced by Put (holes
	// included); 0 for tombstones. It equals the length of the data file
	// once the object's pending writes have been applied.
	Size int64
}

// Fault names an I/O step at which Options.Fault may inject an error.
type Fault uint8

const (
	// FaultJournalAlloc: growing the journal's preallocated space.
	FaultJournalAlloc Fault = iota + 1
	// FaultJournalWrite: appending a record to the journal. Half of the
	// record is written before the injected error is returned, so the store
	// has to remove a partial record.
	FaultJournalWrite
	// FaultJournalSync: the fdatasync of the journal in a group commit.
	FaultJournalSync
	// FaultApply: applying a journaled operation to the object files.
	FaultApply
	// FaultCheckpoint: writing an object's sidecar at a checkpoint.
	FaultCheckpoint
)

func (f Fault) String() string {
	switch f {
	case FaultJournalAlloc:
		return "journal-alloc"
	case FaultJournalWrite:
		return "journal-write"
	case FaultJournalSync:
		return "journal-sync"
	case FaultApply:
		return "apply"
	case FaultCheckpoint:
		return "checkpoint"
	}
	return fmt.Sprintf("fault(%d)", uint8(f))
}

// Options configures a Store. The zero value is usable.
type Options struct {
	Logger *slog.Logger // default slog.Default()

	// JournalLimit: when the journal grows beyond this many bytes it is
	// rotated and the old file is checkpointed in the background (also
	// when 64 MiB of checksum table pages were dirtied since the last
	// rotation, see the package documentation).
	JournalLimit int64
	// MaxObjectSize bounds off+len of writes and the size of Puts.
	MaxObjectSize int64
	// FlushBytes: unsynced journal bytes that make the background flusher
	// start a group commit.
	FlushBytes int64
	// FlushInterval: how often the background flusher commits the journal
	// when something is unsynced. Negative disables the timer (writes are
	// then committed only by Sync, sync=true, FlushBytes, MaxPending
	// backpressure and Close). The default bounds what a power failure
	// can take of writes nobody asked to be durable (the kernel's own
	// writeback waits seconds); each commit is an fdatasync, whose cost
	// lands on the writes around it: at 50 ms, 3-node 4K write latency at
	// QD1 had a mean 10-25% higher and a p99 30% higher than at 250 ms
	// (three alternating pairs of runs on the 2-vCPU guest of the README).
	FlushInterval time.Duration
	// JournalBuffer: records are collected in memory and written to the
	// journal file in pieces of about this size (and at every commit).
	// Negative: write every record through at once.
	JournalBuffer int64
	// MaxPending bounds the bytes that are journaled but not yet applied to
	// the object files (and therefore held in memory); writers wait above it.
	MaxPending int64
	// MaxOpenFiles bounds the number of objects whose file descriptors are
	// cached (up to two descriptors each); their checksum tables stay in
	// memory with them (4 KiB per 4 MiB of object read or written).
	MaxOpenFiles int

	// Fault, if set, is called before the I/O step it names; a non-nil
	// result is used as that step's error (for example syscall.ENOSPC).
	// It may be called concurrently. Tests only.
	Fault func(Fault) error

	hooks *testHooks // tests only
}

// testHooks let tests observe and interrupt checkpoints.
type testHooks struct {
	// synced is called after a file of obj/, or obj/ itself, was synced
	// by a checkpoint.
	synced func(path string)
	// step is called before each step of a checkpoint (each sidecar
	// write, the object syncs, the directory sync, the journal removal),
	// Open's included. An error abandons the checkpoint, and all later
	// ones (Open fails), as a crash at that point would.
	step func() error
	// recycled is called when the spare file spare is about to become
	// journal file path, before anything in it changes.
	recycled func(spare, path string)
	// light makes a store for the fuzz targets, which test replay, not
	// durability, and were bound by the disk: no fsync or fdatasync, and
	// 64 KiB journal preallocation steps and reserve (unlinking megabytes
	// of preallocated extents waits for discards).
	light bool
}

// journalLimitFor is the default journal limit on a filesystem of total
// bytes: DefaultJournalLimit, but at most a sixteenth of a small one. The
// journal, its next file preallocated and a spare kept for reuse can
// together hold about three limits' worth of space, which on a 256 MiB
// disk left too little for the objects (the faults harness's tmpfs filled
// up at the end of a run, seed 20).
func journalLimitFor(total uint64) int64 {
	return max(min(DefaultJournalLimit, int64(total/16)), journalPrealloc)
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.JournalLimit <= 0 {
		o.JournalLimit = DefaultJournalLimit
	}
	if o.MaxObjectSize <= 0 {
		o.MaxObjectSize = DefaultMaxObjectSize
	}
	if o.MaxObjectSize > maxRecordData {
		o.MaxObjectSize = maxRecordData
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = DefaultFlushBytes
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.JournalBuffer == 0 {
		o.JournalBuffer = DefaultJournalBuffer
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.MaxOpenFiles <= 0 {
		o.MaxOpenFiles = DefaultMaxOpenFiles
	}
}

const nShards = 64

type shard struct {
	mu sync.RWMutex
	m  map[uint64]*object
}

// Store is a node's data directory. It is safe for concurrent use; the
// caller must not issue two mutations (Write, Put, Delete) of the same
// object concurrently.
type Store struct {
	dir, objDir, jDir string
	opt               Options
	log               *slog.Logger
	db                *bolt.DB
	res               reserve // space kept for meta.db on a full filesystem (reserve.go)

	// life is held shared by every public operation and exclusively by
	// Close, so Close waits for operations in flight.
	life   sync.RWMutex
	closed bool

	shards      [nShards]shard
	used        atomic.Int64  // sum of the logical sizes of all objects
	writtenBack atomic.Uint64 // bytes of applied new data whose writeback started at once (startWriteback)

	// Journal append state, guarded by jmu.
	jmu      sync.Mutex
	jf       *os.File
	jpath    string
	jseq     uint64
	jbase    uint64 // LSN of the first record in jf
	jend     int64  // end of the journal, including buffered records
	jflushed int64  // bytes written to jf
	jbuf     []byte
	jdirect  bool   // write-through: the filesystem cannot preallocate
	jalloc   int64  // bytes preallocated in jf
	jseed    uint32 // checksum of jf's nonce: its records' checksums start from it
	lastLSN  uint64
	unsynced int64
	jq       []*op                 // appended, not yet handed to the applier (LSN order)
	jerr     error                 // sticky: the journal is unusable
	broken   atomic.Pointer[error] // jerr, readable without jmu

	// Group commit, guarded by smu.
	smu     sync.Mutex
	scond   *sync.Cond
	syncing bool
	durable uint64 // highest LSN known durable
	durOff  int64  // journal offset up to which jf is durable
	serr    error  // sticky fsync failure

	// Applier, guarded by amu.
	amu      sync.Mutex
	acond    *sync.Cond
	aq       []*op
	abusy    bool
	aexit    bool
	applyErr error
	retryReq bool
	applyGen uint64
	stuck    atomic.Bool  // applyErr != nil, readable without amu
	pending  atomic.Int64 // bytes journaled and not yet applied
	crashing atomic.Bool  // test hook: abandon without draining
	mbuf     []byte       // applier only: buffer for merged writes
	msums    []uint32     // applier only: chunk sums of merged writes
	aorder   []*object    // applier only: objects of the segment being applied

	// Checksum tables (see slots.go).
	segDirty   atomic.Int64 // bytes of table pages dirtied since the last rotation
	maxDirty   int64        // segDirty that makes the next commit rotate
	noPrealloc atomic.Bool  // the filesystem cannot reserve sidecar space

	// Objects modified since the last checkpoint marker, guarded by dmu.
	dmu   sync.Mutex
	dirty map[uint64]struct{}

	ckq     chan ckptReq
	ckCarry map[uint64]struct{} // checkpoint work left by the checkpointer at exit
	ckDead  bool                // checkpointer only: a test hook abandoned a checkpoint
	adone   chan struct{}       // closed when the applier exits

	// Journal files kept for reuse (removeJournals), guarded by spmu.
	spmu   sync.Mutex
	spares []string

	// Descriptor cache (CLOCK), guarded by fdmu.
	fdmu sync.Mutex
	open []*object
	hand int

	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// object is the in-memory state of one object.
type object struct {
	oid uint64

	// mu serializes mutations, application and reads of the files: writers
	// and the applier hold it exclusively, readers shared.
	mu      sync.RWMutex
	pending []*op // journaled, not yet applied (LSN order)
	removed bool  // dropped from the shard map; look it up again
	acount  int   // applier only: operations of o in the segment being applied
	// Applied state, changed only by the applier under mu. The data file
	// holds it; the sidecar may lag behind until the next checkpoint.
	onDisk bool
	bad    bool // Open: header unreadable or a file missing
	dsize  int64
	ameta  ObjectMeta

	// Checksum table of the applied state (see slots.go): changed under mu
	// exclusively, or under mu shared plus fmu (loading pages for reads).
	pages  []*slotPage // page i covers chunks [i*pageSlots, (i+1)*pageSlots); nil: not loaded
	fresh  bool        // replaced (Put, tombstone, creation) since the sidecar was written: missing pages are zero, never loaded
	mdirty bool        // the sidecar is behind the applied state (header, pages or length)
	sres   int64       // sidecar bytes known to have blocks reserved

	// st is the latest state, including pending operations. Replaced (never
	// mutated) under mu; loaded without locks by Stat and List.
	st atomic.Pointer[objState]

	// Descriptor cache: f is opened under mu (shared) + fmu and closed
	// under mu (exclusive).
	fmu     sync.Mutex
	f       *objFiles
	ref     atomic.Bool
	inCache bool // guarded by Store.fdmu
}

type objState struct {
	meta   ObjectMeta
	size   int64
	exists bool
}

var absent = &objState{}

func (s *Store) shardOf(oid uint64) *shard {
	return &s.shards[(oid*0x9e3779b97f4a7c15)>>(64-bits.Len(nShards-1))]
}

func (s *Store) lookup(oid uint64) *object {
	sh := s.shardOf(oid)
	sh.mu.RLock()
	o := sh.m[oid]
	sh.mu.RUnlock()
	return o
}

func (s *Store) lookupOrCreate(oid uint64) *object {
	if o := s.lookup(oid); o != nil {
		return o
	}
	sh := s.shardOf(oid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if o := sh.m[oid]; o != nil {
		return o
	}
	o := &object{oid: oid}
	o.st.Store(absent)
	sh.m[oid] = o
	return o
}

// maybeRemove drops o from the map when nothing refers to it any more.
// Caller holds o.mu exclusively.
func (s *Store) maybeRemove(o *object) {
	if o.removed || o.st.Load().exists || len(o.pending) > 0 || o.onDisk {
		return
	}
	sh := s.shardOf(o.oid)
	sh.mu.Lock()
	if sh.m[o.oid] == o {
		delete(sh.m, o.oid)
	}
	sh.mu.Unlock()
	o.removed = true
}

func (s *Store) objPath(oid uint64) string {
	return filepath.Join(s.objDir, fmt.Sprintf("%016x", oid))
}

func (s *Store) metaPath(oid uint64) string {
	return s.objPath(oid) + metaSuffix
}

func (s *Store) fault(f Fault) error {
	if s.opt.Fault == nil {
		return nil
	}
	return s.opt.Fault(f)
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// ioErr wraps an I/O error, adding ErrNoSpace when the filesystem is full.
func ioErr(what string, err error) error {
	if errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("disk: %s: %w", what, err)
	}
	if isNoSpace(err) {
		return fmt.Errorf("disk: %s: %w: %w", what, ErrNoSpace, err)
	}
	return fmt.Errorf("disk: %s: %w", what, err)
}

func notFound(oid uint64) error {
	return fmt.Errorf("disk: object %016x: %w", oid, ErrNotFound)
}

// enter admits a public operation; the caller must call s.life.RUnlock.
func (s *Store) enter() error {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return ErrClosed
	}
	return nil
}

// Open opens the store in dir, creating the layout if missing, and recovers
// from a crash by replaying the journal's valid prefix.
func Open(dir string, opt Options) (*Store, error) {
	if opt.JournalLimit <= 0 {
		if total, err := fsTotal(dir); err == nil {
			opt.JournalLimit = journalLimitFor(total)
		}
	}
	opt.setDefaults()
	s := &Store{
		dir:      dir,
		objDir:   filepath.Join(dir, "obj"),
		jDir:     filepath.Join(dir, "journal"),
		opt:      opt,
		log:      opt.Logger.With("component", "disk", "dir", dir),
		dirty:    make(map[uint64]struct{}),
		ckq:      make(chan ckptReq, 64),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		adone:    make(chan struct{}),
		maxDirty: maxDirtyTable,
	}
	s.scond = sync.NewCond(&s.smu)
	s.acond = sync.NewCond(&s.amu)
	for i := range s.shards {
		s.shards[i].m = make(map[uint64]*object)
	}
	for _, d := range []string{dir, s.objDir, s.jDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, ioErr("create layout", err)
		}
	}
	if err := s.syncDir(dir); err != nil {
		return nil, ioErr("sync dir", err)
	}
	db, err := openMetaDB(filepath.Join(dir, "meta.db"), s.light())
	if err != nil {
		return nil, err
	}
	s.db = db
	s.openReserve()
	if err := s.recover(); err != nil {
		s.closeFiles()
		_ = s.db.Close()
		return nil, err
	}
	s.wg.Add(2)
	go s.flusher()
	go s.checkpointer()
	go s.applier()
	return s, nil
}

// Close commits the journal, applies and checkpoints everything (fsync of
// the object files and directories), removes the journal and closes all
// files. Operations after Close return ErrClosed.
func (s *Store) Close() error {
	s.life.Lock()
	if s.closed {
		s.life.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.life.Unlock()

	close(s.stop)
	var errs []error
	s.jmu.Lock()
	last := s.lastLSN
	s.jmu.Unlock()
	if err := s.syncTo(last); err != nil {
		errs = append(errs, err)
	}
	applied := true
	if err := s.drainApplier(); err != nil {
		applied = false
		errs = append(errs, err)
	}
	s.stopApplier()

	if applied && len(errs) == 0 {
		if err := s.finalCheckpoint(); err != nil {
			errs = append(errs, err)
		}
	}
	s.closeFiles()
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("disk: close meta.db: %w", err))
	}
	return errors.Join(errs...)
}

// crashInfo is what crash reports to tests.
type crashInfo struct {
	journal string // path of the current journal file
	durable int64  // offset up to which it was fsynced
	end     int64  // bytes written to it (buffered records are lost)
	base    uint64 // LSN of its first record
}

// crash abandons the store as a process crash would: background work stops
// at an operation boundary, nothing more is synced, applied or
// checkpointed, and all files are closed. Tests only.
func (s *Store) crash() crashInfo {
	s.life.Lock()
	s.closed = true
	s.life.Unlock()
	s.crashing.Store(true)
	close(s.stop)
	s.stopApplier()
	s.smu.Lock()
	info := crashInfo{durable: s.durOff}
	s.smu.Unlock()
	s.jmu.Lock()
	info.journal = s.jpath
	info.end = s.jflushed // buffered records die with the process
	info.base = s.jbase
	s.jmu.Unlock()
	s.closeFiles()
	_ = s.db.Close()
	return info
}

// stopApplier stops the applier (at once, or after draining if the caller
// drained it) and then the checkpointer and flusher.
func (s *Store) stopApplier() {
	s.amu.Lock()
	s.aexit = true
	s.acond.Broadcast()
	s.amu.Unlock()
	<-s.adone
	close(s.ckq)
	s.wg.Wait()
}

// quiesce commits the journal and waits until every operation is applied
// to the object files. Tests only.
func (s *Store) quiesce() error {
	if err := s.Sync(); err != nil {
		return err
	}
	return s.drainApplier()
}

func (s *Store) closeFiles() {
	s.jmu.Lock()
	if s.jf != nil {
		_ = s.jf.Close()
	}
	s.jmu.Unlock()
	s.fdmu.Lock()
	for _, o := range s.open {
		if o.f != nil {
			o.f.close()
			o.f = nil
		}
		o.inCache = false
	}
	s.open = nil
	s.fdmu.Unlock()
}

// Stat returns the object's metadata and whether it exists (tombstones
// exist).
func (s *Store) Stat(oid uint64) (ObjectMeta, bool) {
	if err := s.enter(); err != nil {
		return ObjectMeta{}, false
	}
	defer s.life.RUnlock()
	o := s.lookup(oid)
	if o == nil {
		return ObjectMeta{}, false
	}
	st := o.st.Load()
	return st.meta, st.exists
}

// List returns every object, tombstones included, sorted by OID.
func (s *Store) List() []ObjectInfo {
	if err := s.enter(); err != nil {
		return nil
	}
	defer s.life.RUnlock()
	var out []ObjectInfo
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for oid, o := range sh.m {
			if st := o.st.Load(); st.exists {
				out = append(out, ObjectInfo{OID: oid, Meta: st.meta, Size: st.size})
			}
		}
		sh.mu.RUnlock()
	}
	slices.SortFunc(out, func(a, b ObjectInfo) int {
		switch {
		case a.OID < b.OID:
			return -1
		case a.OID > b.OID:
			return 1
		}
		return 0
	})
	return out
}

// Usage returns the sum of the objects' logical sizes (see ObjectInfo.Size)
// and the bytes available to unprivileged users on the filesystem.
func (s *Store) Usage() (used, free uint64, err error) {
	if err := s.enter(); err != nil {
		return 0, 0, err
	}
	defer s.life.RUnlock()
	free, err = fsFree(s.dir)
	if err != nil {
		return 0, 0, ioErr("statfs", err)
	}
	u := s.used.Load()
	if u < 0 {
		u = 0
	}
	return uint64(u), free, nil
}

// Sync makes every operation that returned before the call durable. Concurrent
// callers share journal fsyncs (group commit).
func (s *Store) Sync() error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	s.jmu.Lock()
	last := s.lastLSN
	s.jmu.Unlock()
	return s.syncTo(last)
}

// Write applies p at offset off of the object and sets its metadata, as one
// atomic operation across crashes. Writing to a missing object creates it.
// If meta.Deleted is set the object becomes a tombstone and off and p are
// ignored. With sync the write is durable when Write returns; otherwise it
// becomes durable at the next group commit (Sync, a sync write, or the
// background flusher).
func (s *Store) Write(oid uint64, meta ObjectMeta, off int64, p []byte, sync bool) error {
	return s.write(oid, meta, off, p, sync, false)
}

// WriteOwned is Write for a caller that hands p over: the store keeps p
// itself until the write is applied instead of copying it, so the caller
// must never change p again. A 1 MiB write then costs no copy in user
// space between the client's socket and the data file.
func (s *Store) WriteOwned(oid uint64, meta ObjectMeta, off int64, p []byte, sync bool) error {
	return s.write(oid, meta, off, p, sync, true)
}

func (s *Store) write(oid uint64, meta ObjectMeta, off int64, p []byte, sync, owned bool) error {
	if meta.Deleted {
		return s.submit(oid, opTomb, meta, 0, nil, sync, false)
	}
	if off < 0 || int64(len(p)) > s.opt.MaxObjectSize || off > s.opt.MaxObjectSize-int64(len(p)) {
		return fmt.Errorf("disk: write object %016x at %d+%d beyond max object size %d: %w",
			oid, off, len(p), s.opt.MaxObjectSize, ErrInvalid)
	}
	return s.submit(oid, opWrite, meta, off, p, sync, owned)
}

// Put replaces the whole object: afterwards it holds data, and bytes beyond
// len(data) read as zeros. Chunks of data that are all zeros are stored as
// holes. If meta.Deleted is set the object becomes a tombstone.
func (s *Store) Put(oid uint64, meta ObjectMeta, data []byte, sync bool) error {
	return s.put(oid, meta, data, sync, false)
}

// PutOwned is Put for a caller that hands data over, as WriteOwned.
func (s *Store) PutOwned(oid uint64, meta ObjectMeta, data []byte, sync bool) error {
	return s.put(oid, meta, data, sync, true)
}

func (s *Store) put(oid uint64, meta ObjectMeta, data []byte, sync, owned bool) error {
	if meta.Deleted {
		return s.submit(oid, opTomb, meta, 0, nil, sync, false)
	}
	if int64(len(data)) > s.opt.MaxObjectSize {
		return fmt.Errorf("disk: put object %016x of %d bytes beyond max object size %d: %w",
			oid, len(data), s.opt.MaxObjectSize, ErrInvalid)
	}
	return s.submit(oid, opPut, meta, 0, data, sync, owned)
}

// Delete removes the object, data and metadata (garbage collection; use a
// tombstone to keep the version). It is durable after the next Sync.
func (s *Store) Delete(oid uint64) error {
	return s.submit(oid, opDelete, ObjectMeta{}, 0, nil, false, false)
}

// submit journals one mutation and adds it to the object's pending list.
func (s *Store) submit(oid uint64, kind opKind, meta ObjectMeta, off int64, data []byte, sync, owned bool) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	if err := s.admit(int64(len(data))); err != nil {
		return err
	}
	var o *object
	for {
		if kind == opDelete {
			o = s.lookup(oid)
			if o == nil {
				return notFound(oid)
			}
		} else {
			o = s.lookupOrCreate(oid)
		}
		o.mu.Lock()
		if !o.removed {
			break
		}
		o.mu.Unlock()
	}
	old := o.st.Load()
	if kind == opDelete && !old.exists {
		o.mu.Unlock()
		return notFound(oid)
	}
	op := newOp(o, kind, meta, off, data, owned)
	lsn, err := s.append(op)
	if err != nil {
		op.recycle()
		s.maybeRemove(o)
		o.mu.Unlock()
		return err
	}
	o.pending = append(o.pending, op)
	op.st = objState{meta: meta, exists: true}
	st := &op.st
	switch kind {
	case opWrite:
		st.size = old.size // 0 for missing objects and tombstones
		if len(data) > 0 {
			st.size = max(st.size, off+int64(len(data)))
		}
	case opPut:
		st.size = int64(len(data))
	case opDelete:
		st = absent
	}
	o.st.Store(st)
	s.used.Add(st.size - old.size)
	o.mu.Unlock()
	if sync {
		return s.syncTo(lsn)
	}
	return nil
}

// WouldWait reports whether a mutation carrying n bytes of data, submitted
// now, would wait for backpressure (too many bytes journaled but not yet
// applied, or an applier retrying after an error). An event loop that must
// never block hands such a mutation to a goroutine that may.
func (s *Store) WouldWait(n int64) bool {
	return s.stuck.Load() || s.pending.Load()+n > s.opt.MaxPending
}

// admit applies backpressure: it waits while too many bytes are journaled
// but not applied, and fails while the applier is stuck on an I/O error
// after asking it to retry once.
func (s *Store) admit(n int64) error {
	if errp := s.broken.Load(); errp != nil {
		return *errp
	}
	if !s.stuck.Load() && s.pending.Load()+n <= s.opt.MaxPending {
		return nil
	}
	s.amu.Lock()
	defer s.amu.Unlock()
	retried := false
	for {
		if s.applyErr != nil {
			if retried {
				return s.applyErr
			}
			retried = true
			g := s.applyGen
			s.retryReq = true
			s.acond.Broadcast()
			for s.applyGen == g && !s.aexit {
				s.acond.Wait()
			}
			continue
		}
		if errp := s.broken.Load(); errp != nil {
			return *errp
		}
		p := s.pending.Load()
		if p == 0 || p+n <= s.opt.MaxPending || s.aexit {
			return nil
		}
		s.kickFlush()
		s.acond.Wait()
	}
}

// failJournal makes the journal unusable. Caller holds jmu.
func (s *Store) failJournal(err error) {
	if s.jerr == nil {
		s.jerr = err
		s.broken.Store(&err)
		s.log.Error("journal unusable; store refuses writes until reopened", "err", err)
	}
}

func (s *Store) kickFlush() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// flusher commits the journal in the background: when kicked (FlushBytes
// reached, backpressure) and every FlushInterval. It also retries a stuck
// applier.
func (s *Store) flusher() {
	defer s.wg.Done()
	var tick <-chan time.Time
	if s.opt.FlushInterval > 0 {
		t := time.NewTicker(s.opt.FlushInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-tick:
			if s.stuck.Load() {
				s.amu.Lock()
				s.retryReq = true
				s.acond.Broadcast()
				s.amu.Unlock()
			}
		}
		s.jmu.Lock()
		last := s.lastLSN
		s.jmu.Unlock()
		if err := s.syncTo(last); err != nil {
			s.log.Error("background journal commit failed", "err", err)
			// Wake writers waiting in admit so they see the failure.
			s.amu.Lock()
			s.acond.Broadcast()
			s.amu.Unlock()
		}
	}
}
