package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

var errCrashed = errors.New("disk: crashed (test)")

// ckptReq asks the checkpointer to make the objects in dirty durable and
// then remove the sealed journal file.
type ckptReq struct {
	dirty   map[uint64]struct{}
	journal string
}

// applier applies committed (durable) operations to the object files, each
// object's in LSN order (see applyBatch). On an I/O error it stops, keeps the remaining operations queued (they
// stay visible to reads through the objects' pending lists) and retries when
// asked (admit, the flusher's timer, Close).
func (s *Store) applier() {
	defer close(s.adone)
	for {
		s.amu.Lock()
		for !s.aexit && (len(s.aq) == 0 || (s.applyErr != nil && !s.retryReq)) {
			s.acond.Wait()
		}
		if s.aexit {
			s.amu.Unlock()
			return
		}
		s.retryReq = false
		batch := s.aq
		s.aq = nil
		s.abusy = true
		s.amu.Unlock()

		err := s.applyBatch(batch)

		s.amu.Lock()
		s.abusy = false
		if err != nil {
			// Requeue what is left, in LSN order, ahead of newer batches.
			var rest []*op
			for _, op := range batch {
				if !op.done {
					rest = append(rest, op)
				}
			}
			s.aq = append(rest, s.aq...)
			if !errors.Is(err, errCrashed) {
				if s.applyErr == nil {
					s.log.Error("applying journaled writes failed; will retry", "err", err)
				}
				s.applyErr = err
				s.stuck.Store(true)
			}
		} else if s.applyErr != nil {
			s.log.Info("applying journaled writes recovered")
			s.applyErr = nil
			s.stuck.Store(false)
		}
		s.applyGen++
		s.acond.Broadcast()
		s.amu.Unlock()
	}
}

// applyBatch applies a batch of committed operations. Markers split it into
// segments that are applied in order; within a segment operations are grouped
// by object (the order across objects does not matter for crash safety, only
// that everything applied is durable and that each object's operations keep
// their order), so each object is locked once and adjacent writes are merged.
// Applied operations are marked done; on error the caller requeues the rest.
func (s *Store) applyBatch(batch []*op) error {
	start := 0
	for i := 0; i <= len(batch); i++ {
		if i < len(batch) && batch[i].kind != opMarker {
			continue
		}
		if err := s.applySegment(batch[start:i]); err != nil {
			return err
		}
		if i < len(batch) && !batch[i].done {
			s.dmu.Lock()
			d := s.dirty
			s.dirty = make(map[uint64]struct{})
			s.dmu.Unlock()
			s.ckq <- ckptReq{dirty: d, journal: batch[i].sealed}
			batch[i].done = true
		}
		start = i + 1
	}
	return nil
}

func (s *Store) applySegment(seg []*op) error {
	// The segment's operations of an object are its oldest pending ones
	// (both are in LSN order), so counting them is enough.
	order := s.aorder[:0]
	for _, op := range seg {
		if op.done {
			continue
		}
		if op.obj.acount == 0 {
			order = append(order, op.obj)
		}
		op.obj.acount++
	}
	defer func() {
		for _, o := range order {
			o.acount = 0
		}
		clear(order)
		s.aorder = order[:0]
	}()
	for _, o := range order {
		if s.crashing.Load() {
			return errCrashed
		}
		if err := s.applyGroup(o, o.acount); err != nil {
			return err
		}
	}
	return nil
}

// maxMerge bounds the size of a merged run of adjacent writes.
const maxMerge = 1 << 20

// applyGroup applies the n oldest pending operations of o, in order. Runs
// of exactly adjacent writes are applied as one write. Only the data file
// and the in-memory table change; the sidecar is written by the next
// checkpoint. Applied operations are marked done and unlinked from
// o.pending; their data buffers are recycled.
func (s *Store) applyGroup(o *object, n int) (err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if n > len(o.pending) {
		panic(fmt.Sprintf("disk: object %016x: applying %d operations, %d pending", o.oid, n, len(o.pending)))
	}
	ops := o.pending[:n]
	applied := 0
	defer func() {
		var cost int64
		for _, op := range ops[:applied] {
			op.done = true
			cost += op.cost()
			op.recycle()
		}
		rest := copy(o.pending, o.pending[applied:])
		clear(o.pending[rest:])
		o.pending = o.pending[:rest]
		s.pending.Add(-cost)
		s.markDirty(o.oid)
		if err == nil {
			s.maybeRemove(o)
		}
	}()
	for applied < n {
		first := ops[applied]
		k, size := applied+1, len(first.data)
		verify := !first.tried
		if first.kind == opWrite && size > 0 {
			for k < n && ops[k].kind == opWrite && len(ops[k].data) > 0 &&
				ops[k].off == first.off+int64(size) && size+len(ops[k].data) <= maxMerge {
				size += len(ops[k].data)
				verify = verify && !ops[k].tried
				k++
			}
		}
		run := first
		var merged op
		if k-applied > 1 {
			if cap(s.mbuf) < size {
				s.mbuf = make([]byte, 0, max(size, 64<<10))
			}
			data := s.mbuf[:0]
			if s.msums == nil {
				s.msums = make([]uint32, 0, 64)
			}
			sums := s.msums[:0]
			for _, op := range ops[applied:k] {
				data = append(data, op.data...)
				if sums != nil && op.sums != nil {
					sums = append(sums, op.sums...)
				} else {
					sums = nil // somebody's chunks need summing
				}
			}
			if sums != nil {
				s.msums = sums
			}
			merged = op{obj: o, kind: opWrite, lsn: ops[k-1].lsn, meta: ops[k-1].meta, off: first.off, data: data, sums: sums}
			run = &merged
		}
		err := s.fault(FaultApply)
		if err == nil {
			err = s.applyOp(o, run, verify)
		}
		if err != nil {
			for _, op := range ops[applied:k] {
				op.tried = true
			}
			return ioErr(fmt.Sprintf("apply lsn %d (%s of object %016x)", first.lsn, first.kind, o.oid), err)
		}
		applied = k
	}
	return nil
}

func (s *Store) markDirty(oid uint64) {
	s.dmu.Lock()
	s.dirty[oid] = struct{}{}
	s.dmu.Unlock()
}

// drainApplier waits until every committed operation is applied. If the
// applier is stuck it asks for one retry.
func (s *Store) drainApplier() error {
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
		if len(s.aq) == 0 && !s.abusy {
			return nil
		}
		if s.aexit {
			return ErrClosed
		}
		s.acond.Wait()
	}
}

// checkpointer makes sealed journals redundant: it writes the sidecars of
// the objects modified up to the seal, fsyncs their files and the object
// directory, then removes the sealed journal. Requests are handled in
// order; after a failure the work is carried over to the next request (and
// to Close), so journals are removed only once everything before them is
// durable.
func (s *Store) checkpointer() {
	defer s.wg.Done()
	var carry map[uint64]struct{}
	var journals []string
	for req := range s.ckq {
		if carry == nil {
			carry = req.dirty
		} else {
			for oid := range req.dirty {
				carry[oid] = struct{}{}
			}
		}
		journals = append(journals, req.journal)
		if s.crashing.Load() || s.ckDead {
			continue
		}
		err := s.checkpointObjects(carry)
		if err == nil {
			if err = s.ckptStep(); err == nil {
				err = s.removeJournals(journals)
			}
		}
		if errors.Is(err, errCrashed) {
			s.ckDead = true
			continue
		}
		if err != nil {
			s.log.Error("checkpoint failed; journal kept", "err", err)
			continue
		}
		carry, journals = nil, nil
	}
	s.ckCarry = carry
}

// ckptStep is called between the steps of a checkpoint: it abandons the
// checkpoint (errCrashed) when the store is crashing or a test hook says
// so (tests only).
func (s *Store) ckptStep() error {
	if s.crashing.Load() {
		return errCrashed
	}
	if h := s.opt.hooks; h != nil && h.step != nil {
		if err := h.step(); err != nil {
			return fmt.Errorf("%w: %w", errCrashed, err)
		}
	}
	return nil
}

func (s *Store) synced(path string) {
	if h := s.opt.hooks; h != nil && h.synced != nil {
		h.synced(path)
	}
}

// checkpointObjects makes the applied state of the given objects durable:
// it writes the sidecar of every object whose sidecar is behind (in OID
// order), then fdatasyncs the data files and sidecars (a few at a time, so
// the filesystem can batch them) and finally the object directory. Every
// sidecar write precedes every sync, so when this returns the data, the
// checksums and the meta of each object are durable together.
func (s *Store) checkpointObjects(oids map[uint64]struct{}) error {
	sorted := slices.Sorted(maps.Keys(oids))
	for _, oid := range sorted {
		if err := s.ckptStep(); err != nil {
			return err
		}
		if err := s.flushSidecar(oid); err != nil {
			return err
		}
	}
	if err := s.ckptStep(); err != nil {
		return err
	}
	if len(sorted) > 0 {
		work := make(chan string)
		var mu sync.Mutex
		var first error
		var wg sync.WaitGroup
		for range min(8, 2*len(sorted)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for path := range work {
					if err := s.syncPath(path); err != nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						continue
					}
					s.synced(path)
				}
			}()
		}
		for _, oid := range sorted {
			work <- s.objPath(oid)
			work <- s.metaPath(oid)
		}
		close(work)
		wg.Wait()
		if first != nil {
			return ioErr("checkpoint object", first)
		}
	}
	if err := s.ckptStep(); err != nil {
		return err
	}
	if err := s.syncDir(s.objDir); err != nil {
		return ioErr("sync object dir", err)
	}
	s.synced(s.objDir)
	return nil
}

// flushSidecar writes the sidecar of object oid if it is behind. Tables of
// objects without cached descriptors are dropped once written.
func (s *Store) flushSidecar(oid uint64) error {
	for {
		o := s.lookup(oid)
		if o == nil {
			return nil // deleted or quarantined: nothing to write
		}
		o.mu.Lock()
		if o.removed {
			o.mu.Unlock()
			continue
		}
		var err error
		if o.mdirty && o.onDisk {
			if err = s.fault(FaultCheckpoint); err == nil {
				err = s.writeSidecar(o)
			}
			if err != nil {
				err = ioErr(fmt.Sprintf("checkpoint object %016x", oid), err)
			}
		}
		if err == nil && o.f == nil && !o.mdirty {
			o.dropTable()
		}
		o.mu.Unlock()
		return err
	}
}

// syncPath fdatasyncs the file at path.
func (s *Store) syncPath(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // deleted since; the directory sync covers it
	}
	if err != nil {
		return err
	}
	err = s.fdatasync(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// finalCheckpoint runs in Close once everything is applied: make all
// modified objects durable and remove the journal.
func (s *Store) finalCheckpoint() error {
	dirty := s.dirty
	for oid := range s.ckCarry {
		dirty[oid] = struct{}{}
	}
	if err := s.checkpointObjects(dirty); err != nil {
		return err
	}
	if err := s.ckptStep(); err != nil {
		return err
	}
	paths, _, err := s.listJournals()
	if err != nil {
		return err
	}
	return s.removeJournals(paths)
}

// recover loads the objects, replays the journal, checkpoints the result and
// starts a fresh journal.
func (s *Store) recover() error {
	if err := s.scanObjects(); err != nil {
		return err
	}
	paths, maxSeq, err := s.listJournals()
	if err != nil {
		return err
	}
	last, n, err := s.replay(paths)
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("journal replayed", "records", n, "last_lsn", last)
	}
	for i := range s.shards {
		for _, o := range s.shards[i].m {
			if o.bad {
				s.quarantine(o)
			}
		}
	}
	var used int64
	for i := range s.shards {
		for _, o := range s.shards[i].m {
			used += o.st.Load().size
		}
	}
	s.used.Store(used)
	if err := s.checkpointObjects(s.dirty); err != nil {
		return err
	}
	s.dirty = make(map[uint64]struct{})
	if err := s.ckptStep(); err != nil {
		return err
	}
	if err := s.removeJournals(paths); err != nil {
		return err
	}
	f, path, alloc, nonce, err := s.createJournal(maxSeq+1, last+1)
	if err != nil {
		return err
	}
	s.jf, s.jpath, s.jseq, s.jalloc, s.jseed = f, path, maxSeq+1, alloc, nonceSeed(nonce)
	s.jend, s.jflushed, s.jdirect = journalHdr2Size, journalHdr2Size, s.opt.JournalBuffer < 0 || alloc == 1<<62
	s.lastLSN, s.durable, s.durOff, s.jbase = last, last, journalHdr2Size, last+1
	return nil
}

// scanObjects loads every object's header and size from obj/.
func (s *Store) scanObjects() error {
	ents, err := os.ReadDir(s.objDir)
	if err != nil {
		return ioErr("list objects", err)
	}
	type seen struct{ data, meta bool }
	found := make(map[uint64]*seen)
	for _, e := range ents {
		name := e.Name()
		base, isMeta := strings.CutSuffix(name, metaSuffix)
		oid, err := strconv.ParseUint(base, 16, 64)
		if len(base) != 16 || err != nil || !e.Type().IsRegular() {
			if !strings.HasSuffix(name, ".corrupt") {
				s.log.Warn("ignoring unexpected file in object directory", "name", name)
			}
			continue
		}
		f := found[oid]
		if f == nil {
			f = &seen{}
			found[oid] = f
		}
		if isMeta {
			f.meta = true
		} else {
			f.data = true
		}
	}
	hdr := make([]byte, metaHdrSize)
	for oid, f := range found {
		o := s.lookupOrCreate(oid)
		o.onDisk = true
		o.bad = !f.data || !f.meta
		if f.meta {
			if err := readHeader(s.metaPath(oid), hdr); err != nil {
				return ioErr("read object header", err)
			}
			m, ok := decodeMetaHdr(hdr)
			o.ameta = m
			o.bad = o.bad || !ok
		}
		if f.data {
			fi, err := os.Stat(s.objPath(oid))
			if err != nil {
				return ioErr("stat object", err)
			}
			o.dsize = fi.Size()
		}
		o.publishApplied()
	}
	return nil
}

func readHeader(path string, hdr []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return readFull(f, hdr, 0)
}

// quarantine sets aside an object whose files are unusable (a header that
// fails its checksum, a missing file) and that the journal did not repair:
// its files are renamed to *.corrupt and it is dropped from the store, to be
// recovered from other replicas.
func (s *Store) quarantine(o *object) {
	s.log.Error("object files damaged; moved aside as *.corrupt", "oid", fmt.Sprintf("%016x", o.oid))
	for _, path := range []string{s.objPath(o.oid), s.metaPath(o.oid)} {
		if err := os.Rename(path, path+".corrupt"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("quarantine failed", "path", path, "err", err)
		}
	}
	o.onDisk, o.bad = false, false
	o.st.Store(absent)
	delete(s.shardOf(o.oid).m, o.oid)
	o.removed = true
	s.dirty[o.oid] = struct{}{}
}

// syncDir fsyncs a directory so entries created, renamed or removed in it are
// durable.
func (s *Store) syncDir(dir string) error {
	if s.light() {
		return nil
	}
	return syncDir(dir)
}

// fdatasync is fdatasync(f), skipped under testHooks.light.
func (s *Store) fdatasync(f *os.File) error {
	if s.light() {
		return nil
	}
	return fdatasync(f)
}

// fsync is f.Sync(), skipped under testHooks.light.
func (s *Store) fsync(f *os.File) error {
	if s.light() {
		return nil
	}
	return f.Sync()
}

// light reports testHooks.light.
func (s *Store) light() bool { return s.opt.hooks != nil && s.opt.hooks.light }

// syncDir fsyncs a directory so entries created, renamed or removed in it are
// durable.
func syncDir(dir string) error {
	f, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
