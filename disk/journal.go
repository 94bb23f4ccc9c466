package disk

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Journal file layout: a 64-byte header followed by records.
//
//	header: magic "SDJRNL02" | seq u64 | base u64 | nonce u64 | 28 zero bytes |
//	        crc32c(header[0:60]) u32
//	record: crc32c(nonce | record[4:]) u32 | len u32 | lsn u64 | oid u64 |
//	        version u64 | reqid u64 | off i64 | kind u8 | flags u8 | 6 zero bytes |
//	        len bytes of data
//
// base is the LSN of the file's first record (0: none is durable yet) and
// nonce is drawn at random whenever the file is (re)initialized: journal
// files are recycled, and the records of a file's earlier lives that lie
// beyond its current end fail their checksums. Files of the first format
// ("SDJRNL01": a 32-byte header of magic, seq and crc32c(header[0:28]) at
// 28, records summed without a nonce) are still replayed.
//
// All integers are little endian.
const (
	journalMagic    = "SDJRNL01" // the first format, read only
	journalHdrSize  = 32
	journalMagic2   = "SDJRNL02"
	journalHdr2Size = 64
	recHdrSize      = 56
	// maxRecordData bounds a record's payload (and so the object size).
	maxRecordData = 1<<31 - recHdrSize
	// journalPrealloc is how much journal space is preallocated at a time
	// at first; each later step preallocates as much as the file has so
	// far, up to journalPreallocMax, so a fast writer (1 MiB records)
	// does not stop for a fallocate every few records. journalReserve of
	// it is kept for records without data (Delete, tombstones), so space
	// can be freed on a full filesystem.
	journalPrealloc    = 8 << 20
	journalPreallocMax = 64 << 20
	lightPrealloc      = 64 << 10 // testHooks.light
	journalReserve     = 1 << 20
	// maxSpares is how many checkpointed journal files are kept for
	// reuse (see recycleJournals).
	maxSpares = 1
)

// spareName is the name of a journal file kept for reuse.
const sparePrefix = "spare-"

type opKind uint8

const (
	opWrite  opKind = 1 // data at off
	opPut    opKind = 2 // replace the object with data
	opTomb   opKind = 3 // tombstone: release data, keep meta
	opDelete opKind = 4 // remove the object
	opMarker opKind = 5 // applier queue only: checkpoint a sealed journal
)

func (k opKind) String() string {
	switch k {
	case opWrite:
		return "write"
	case opPut:
		return "put"
	case opTomb:
		return "tombstone"
	case opDelete:
		return "delete"
	case opMarker:
		return "marker"
	}
	return "op(" + strconv.Itoa(int(k)) + ")"
}

const flagDeleted = 1

// op is one journaled mutation.
type op struct {
	obj    *object
	kind   opKind
	lsn    uint64
	meta   ObjectMeta
	off    int64
	hdr    [recHdrSize]byte // encoded record header
	data   []byte           // the caller's data (a private copy)
	sums   []uint32         // CRC32C of each chunk of data, for a write of whole aligned chunks; else nil
	sum1   [1]uint32        // sums' backing array for one chunk
	pooled bool             // data comes from dataPool
	tried  bool             // an earlier apply attempt failed, possibly midway
	done   bool             // applied (applier bookkeeping)
	sealed string           // opMarker: the sealed journal file
	st     objState         // the object's state after op (published by submit)
}

func (o *op) cost() int64 { return int64(len(o.data)) + recHdrSize }

// dataPool recycles the private copies of write data of more than half a
// chunk and up to a chunk, the common case (smaller copies are allocated,
// so a pooled buffer is at most twice the size that MaxPending accounts
// for). A copy goes back to the pool (recycle) once its operation is
// applied and unlinked from the object's pending list, or was never
// journaled: nothing can reach it then.
var dataPool = sync.Pool{New: func() any { return new([ChunkSize]byte) }}

// newOp makes the operation with a private copy of data, or with data
// itself when the caller hands it over (owned: nobody changes it again).
func newOp(obj *object, kind opKind, meta ObjectMeta, off int64, data []byte, owned bool) *op {
	op := &op{obj: obj, kind: kind, meta: meta, off: off}
	if n := len(data); owned && n > 0 {
		op.data = data[:n:n]
	} else if n > ChunkSize/2 && n <= ChunkSize {
		op.data = append(dataPool.Get().(*[ChunkSize]byte)[:0], data...)
		op.pooled = true
	} else if n > 0 {
		op.data = append(make([]byte, 0, n), data...)
	}
	if kind == opWrite && len(op.data) > 0 && off%ChunkSize == 0 && len(op.data)%ChunkSize == 0 {
		// One pass over the data: the record's CRC and the applier's
		// checksum table both follow from the chunk sums.
		if n := len(op.data) / ChunkSize; n == 1 {
			op.sums = op.sum1[:]
		} else {
			op.sums = make([]uint32, n)
		}
		for i := range op.sums {
			op.sums[i] = crc32.Checksum(op.data[i*ChunkSize:(i+1)*ChunkSize], castagnoli)
		}
	}
	le := binary.LittleEndian
	h := op.hdr[:]
	le.PutUint32(h[4:], uint32(len(data)))
	le.PutUint64(h[16:], obj.oid)
	le.PutUint64(h[24:], meta.Version)
	le.PutUint64(h[32:], meta.ReqID)
	le.PutUint64(h[40:], uint64(off))
	h[48] = byte(kind)
	if meta.Deleted {
		h[49] = flagDeleted
	}
	return op
}

// recycle returns op's data to the pool, or drops it (a buffer handed
// over by the caller). Caller makes sure nothing refers to op.data any
// more. The op itself stays reachable as long as its st is the object's
// published state, so it must not keep the data: an owned 4 MiB write
// per object otherwise stayed in the heap for good (after `vdi write` of
// 256 MiB, 256 MiB on every node, and the collector ran against the
// --memory budget without end).
func (o *op) recycle() {
	if o.pooled {
		dataPool.Put((*[ChunkSize]byte)(o.data[:ChunkSize]))
	}
	o.data, o.sums, o.pooled = nil, nil, false
}

// seal sets the record's LSN and checksum; seed is the checksum of the
// journal file's nonce (0 for the first format, which has none).
func (o *op) seal(lsn uint64, seed uint32) {
	o.lsn = lsn
	binary.LittleEndian.PutUint64(o.hdr[8:], lsn)
	sum := crc32.Update(seed, castagnoli, o.hdr[4:])
	if o.sums != nil {
		for _, c := range o.sums {
			sum = crcAppendChunk(sum, c)
		}
	} else {
		sum = crc32.Update(sum, castagnoli, o.data)
	}
	binary.LittleEndian.PutUint32(o.hdr[0:], sum)
}

// append adds op's record to the journal and queues op for the applier. On
// failure nothing is appended.
//
// Journal space for the record is reserved first (preallocation), which is
// where a full filesystem is reported. The record then goes into an
// in-memory buffer that is written to the file (page cache, no fsync) when
// it reaches JournalBuffer and by every commit. Records at least as large as
// the buffer, and all records in write-through mode, are written at once; if
// such a write fails the partial record is truncated away.
func (s *Store) append(op *op) (uint64, error) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.jerr != nil {
		return 0, s.jerr
	}
	if len(op.data) > 0 {
		// A full store takes no more data, even into journal space it
		// holds: the applier could not write it out (deletes still go).
		if err := s.spaceForData(); err != nil {
			return 0, ioErr("journal", err)
		}
	}
	op.seal(s.lastLSN+1, s.jseed)
	n := op.cost()
	need := s.jend + n
	if len(op.data) > 0 {
		need += journalReserve
	}
	if need > s.jalloc {
		if err := s.growJournal(need); err != nil {
			return 0, err
		}
	}
	limit := s.opt.JournalBuffer
	if s.jdirect {
		limit = 0
	}
	if int64(len(s.jbuf))+n > limit && len(s.jbuf) > 0 {
		if err := s.flushJournal(); err != nil {
			return 0, err
		}
	}
	if n >= limit {
		// Written at once; nothing else is buffered.
		err := s.fault(FaultJournalWrite)
		if err != nil {
			_, _ = s.jf.WriteAt(op.hdr[:recHdrSize/2], s.jend) // a write that stopped midway
		} else if _, err = s.jf.WriteAt(op.hdr[:], s.jend); err == nil && len(op.data) > 0 {
			_, err = s.jf.WriteAt(op.data, s.jend+recHdrSize)
		}
		if err != nil {
			err = ioErr(fmt.Sprintf("append %s of object %016x to journal", op.kind, op.obj.oid), err)
			if terr := s.jf.Truncate(s.jend); terr != nil {
				s.failJournal(ioErr("truncate partial journal record", terr))
			}
			s.jalloc = s.jend // truncation also dropped the preallocation
			return 0, err
		}
		s.jflushed = s.jend + n
	} else {
		s.jbuf = append(s.jbuf, op.hdr[:]...)
		s.jbuf = append(s.jbuf, op.data...)
	}
	s.jend += n
	s.lastLSN = op.lsn
	s.unsynced += n
	s.jq = append(s.jq, op)
	s.pending.Add(op.cost())
	if s.unsynced >= s.opt.FlushBytes {
		s.kickFlush()
	}
	return op.lsn, nil
}

// flushJournal writes the buffered records to the journal file. The records
// were already acknowledged, so a failure makes the journal unusable (the
// space was reserved, so this takes an I/O error, not a full filesystem).
// Caller holds jmu.
func (s *Store) flushJournal() error {
	if len(s.jbuf) == 0 {
		return nil
	}
	err := s.fault(FaultJournalWrite)
	if err == nil {
		err = writeCachedAt(s.jf, s.jbuf, s.jflushed)
	}
	if err != nil {
		s.failJournal(ioErr("write journal", err))
		return s.jerr
	}
	s.jflushed += int64(len(s.jbuf))
	s.jbuf = s.jbuf[:0]
	return nil
}

// preallocStep is the journal's first preallocation step.
func (s *Store) preallocStep() int64 {
	if s.light() {
		return lightPrealloc
	}
	return journalPrealloc
}

// growJournal preallocates journal space up to at least need. Caller holds jmu.
func (s *Store) growJournal(need int64) error {
	if err := s.fault(FaultJournalAlloc); err != nil {
		return ioErr("preallocate journal", err)
	}
	if err := s.spaceForData(); err != nil {
		return ioErr("preallocate journal", err)
	}
	want := max(need, s.jalloc+min(max(s.jalloc, s.preallocStep()), journalPreallocMax))
	err := preallocate(s.jf, s.jalloc, want-s.jalloc)
	if err != nil && want > need {
		want = need
		err = preallocate(s.jf, s.jalloc, want-s.jalloc)
	}
	if errors.Is(err, errNoPrealloc) {
		// Nothing can be reserved: write records through so a full
		// filesystem is reported by the write of the failing record.
		if !s.jdirect {
			s.log.Info("filesystem cannot preallocate; journal writes go straight to the file")
		}
		s.jdirect = true
		s.jalloc = 1 << 62
		return nil
	}
	if err != nil {
		if isNoSpace(err) {
			s.noteFull()
		}
		return ioErr("preallocate journal", err)
	}
	s.jalloc = want
	return nil
}

// syncTo makes every record up to lsn target durable. One caller at a time
// leads a group commit; the others wait for it and are covered by it when
// their records were appended before it started.
func (s *Store) syncTo(target uint64) error {
	s.smu.Lock()
	defer s.smu.Unlock()
	for s.durable < target {
		if s.serr != nil {
			return s.serr
		}
		if s.syncing {
			s.scond.Wait()
			continue
		}
		s.syncing = true
		s.smu.Unlock()
		end, off, err := s.commit()
		s.smu.Lock()
		s.syncing = false
		s.scond.Broadcast()
		if err != nil {
			s.serr = err
			return err
		}
		s.durable = max(s.durable, end)
		s.durOff = off
	}
	return nil
}

// commit is one group commit: fdatasync the journal, rotating it first if it
// passed JournalLimit, then hand the committed operations to the applier.
// It returns the last durable LSN and the durable offset in the current
// journal file.
func (s *Store) commit() (uint64, int64, error) {
	s.jmu.Lock()
	rotate := s.jend >= s.opt.JournalLimit || s.segDirty.Load() >= s.maxDirty
	seq := s.jseq + 1
	s.jmu.Unlock()
	var nj *os.File
	var npath string
	var nalloc int64
	var nonce uint64
	if rotate {
		var err error
		nj, npath, nalloc, nonce, err = s.createJournal(seq, 0)
		if err != nil {
			s.log.Warn("journal rotation failed; continuing with the current journal", "err", err)
		}
	}

	s.jmu.Lock()
	if err := s.flushJournal(); err != nil {
		s.jmu.Unlock()
		if nj != nil {
			_ = nj.Close()
			_ = os.Remove(npath)
		}
		return 0, 0, err
	}
	end, endOff, batch, f := s.lastLSN, s.jend, s.jq, s.jf
	s.jq = nil
	s.unsynced = 0
	var sealed string
	if nj != nil {
		// The new file's first record will be end+1: its header says so
		// (durable with the file's first commit, which the records it
		// covers need anyway; until then replay takes the file for one
		// without durable records).
		hdr := journalHeader2(seq, end+1, nonce)
		err := s.fault(FaultJournalWrite)
		if err == nil {
			err = writeCachedAt(nj, hdr, 0)
		}
		if err != nil {
			s.log.Warn("journal rotation failed; continuing with the current journal", "err", err)
			_ = nj.Close()
			_ = os.Remove(npath)
			nj = nil
		}
	}
	if nj != nil {
		sealed = s.jpath
		s.segDirty.Store(0)
		s.jf, s.jpath, s.jseq, s.jbase = nj, npath, seq, end+1
		s.jend, s.jflushed, s.jalloc = journalHdr2Size, journalHdr2Size, nalloc
		s.jseed = nonceSeed(nonce)
	}
	s.jmu.Unlock()

	err := s.fault(FaultJournalSync)
	if err == nil {
		err = s.fdatasync(f)
	}
	if err != nil {
		// What reached the disk is unknown: refuse further writes.
		err = ioErr("sync journal", err)
		s.jmu.Lock()
		s.failJournal(err)
		s.jmu.Unlock()
		if nj != nil {
			_ = f.Close()
		}
		return 0, 0, err
	}
	durOff := endOff
	if nj != nil {
		_ = f.Close()
		durOff = journalHdr2Size
		batch = append(batch, &op{kind: opMarker, sealed: sealed})
	}
	if len(batch) > 0 {
		s.amu.Lock()
		s.aq = append(s.aq, batch...)
		s.acond.Broadcast()
		s.amu.Unlock()
	}
	return end, durOff, nil
}

func journalName(seq uint64) string { return fmt.Sprintf("%016x", seq) }

// journalHeader2 encodes the header of journal file seq whose first
// record is base (0: not known yet), with the given nonce.
func journalHeader2(seq, base, nonce uint64) []byte {
	hdr := make([]byte, journalHdr2Size)
	copy(hdr, journalMagic2)
	le := binary.LittleEndian
	le.PutUint64(hdr[8:], seq)
	le.PutUint64(hdr[16:], base)
	le.PutUint64(hdr[24:], nonce)
	le.PutUint32(hdr[60:], crc32.Checksum(hdr[:60], castagnoli))
	return hdr
}

// nonceSeed is what a file's records' checksums start from.
func nonceSeed(nonce uint64) uint32 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], nonce)
	return crc32.Checksum(b[:], castagnoli)
}

// newNonce draws a file's nonce (never 0).
func newNonce() uint64 { return rand.Uint64() | 1 }

// createJournal makes journal file seq, with base as its first record's
// LSN (0: the caller writes the header again once it knows it). It reuses
// a spare file when there is one (see recycleJournals): its new header is
// written and fdatasynced before it is renamed into place and the
// directory fsynced, so the records of its former life, which its new
// nonce makes invalid, are never read under its old one. Otherwise the
// file is written as a temporary file with space preallocated, fsynced,
// renamed into place and the directory fsynced. It returns the file, its
// path, the bytes it can hold without growing, and its nonce.
func (s *Store) createJournal(seq, base uint64) (*os.File, string, int64, uint64, error) {
	path := filepath.Join(s.jDir, journalName(seq))
	nonce := newNonce()
	hdr := journalHeader2(seq, base, nonce)
	if f, alloc, ok := s.reuseSpare(path, hdr); ok {
		return f, path, alloc, nonce, nil
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, "", 0, 0, ioErr("create journal", err)
	}
	fail := func(err error) (*os.File, string, int64, uint64, error) {
		_ = f.Close()
		_ = os.Remove(tmp)
		return nil, "", 0, 0, ioErr("create journal", err)
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return fail(err)
	}
	alloc := int64(journalHdr2Size)
	switch err := preallocate(f, alloc, s.preallocStep()); {
	case err == nil:
		alloc += s.preallocStep()
	case errors.Is(err, errNoPrealloc):
		alloc = 1 << 62
	}
	if err := s.fsync(f); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	if err := s.syncDir(s.jDir); err != nil {
		_ = f.Close()
		return nil, "", 0, 0, ioErr("create journal", err)
	}
	return f, path, alloc, nonce, nil
}

// reuseSpare turns a spare file into journal file path with header hdr
// and reports the bytes it holds. A spare that cannot be reused is
// removed.
func (s *Store) reuseSpare(path string, hdr []byte) (*os.File, int64, bool) {
	for {
		s.spmu.Lock()
		if len(s.spares) == 0 {
			s.spmu.Unlock()
			return nil, 0, false
		}
		spare := s.spares[len(s.spares)-1]
		s.spares = s.spares[:len(s.spares)-1]
		s.spmu.Unlock()
		f, alloc, err := s.reinit(spare, path, hdr)
		if err == nil {
			return f, alloc, true
		}
		s.log.Warn("journal spare not reused", "path", spare, "err", err)
		_ = os.Remove(spare)
	}
}

func (s *Store) reinit(spare, path string, hdr []byte) (*os.File, int64, error) {
	if h := s.opt.hooks; h != nil && h.recycled != nil {
		h.recycled(spare, path)
	}
	f, err := os.OpenFile(spare, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() < journalHdr2Size {
		err = errors.New("too short")
	}
	if err == nil {
		_, err = f.WriteAt(hdr, 0)
	}
	if err == nil {
		err = s.fdatasync(f)
	}
	if err == nil {
		err = os.Rename(spare, path)
	}
	if err == nil {
		err = s.syncDir(s.jDir)
	}
	if err != nil {
		_ = f.Close()
		return nil, 0, err
	}
	// Appending past the old size preallocates again (growJournal),
	// which also finds out if the filesystem cannot.
	return f, fi.Size(), nil
}

// listJournals returns the journal files in sequence order, removes
// leftover temporary files and takes note of spare files.
func (s *Store) listJournals() ([]string, uint64, error) {
	ents, err := os.ReadDir(s.jDir)
	if err != nil {
		return nil, 0, ioErr("list journal", err)
	}
	type jf struct {
		seq  uint64
		path string
	}
	var files []jf
	var maxSeq uint64
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(filepath.Join(s.jDir, name))
			continue
		}
		if strings.HasPrefix(name, sparePrefix) {
			s.addSpare(filepath.Join(s.jDir, name))
			continue
		}
		seq, err := strconv.ParseUint(name, 16, 64)
		if err != nil || len(name) != 16 {
			s.log.Warn("ignoring unexpected file in journal directory", "name", name)
			continue
		}
		files = append(files, jf{seq, filepath.Join(s.jDir, name)})
		maxSeq = max(maxSeq, seq)
	}
	slices.SortFunc(files, func(a, b jf) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.path
	}
	return paths, maxSeq, nil
}

// replay applies the valid prefix of the journal files: records must have
// valid checksums and consecutive LSNs across files. Everything from the
// first invalid record on (a torn tail) is discarded. In a file of the
// current format an invalid record may also be the end of a file that was
// recycled (the records of its former life follow, summed under another
// nonce): then the next file goes on only if its header's base is the next
// LSN, so a file that lost records also ends the replay. A file whose
// base is 0 has no durable records, and nothing after it has. It returns
// the last replayed LSN (0 if none) and the number of records replayed.
func (s *Store) replay(paths []string) (uint64, int, error) {
	var expect uint64 // 0: the first record may have any LSN
	var last uint64
	count := 0
	var buf []byte
	for i, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return 0, 0, ioErr("open journal", err)
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			return 0, 0, ioErr("stat journal", err)
		}
		// No bigger than the file: a short journal (a fuzz input, a
		// store closed cleanly) need not clear a whole MiB.
		r := bufio.NewReaderSize(f, int(min(max(fi.Size(), 4096), 1<<20)))
		stop := false
		v2 := false
		var seed uint32
		pos := int64(journalHdrSize)
		var hdr [journalHdr2Size]byte
		_, err = io.ReadFull(r, hdr[:journalHdrSize])
		switch {
		case err == nil && string(hdr[:8]) == journalMagic &&
			binary.LittleEndian.Uint32(hdr[28:]) == crc32.Checksum(hdr[:28], castagnoli):
		case err == nil && string(hdr[:8]) == journalMagic2:
			if _, err := io.ReadFull(r, hdr[journalHdrSize:]); err != nil ||
				binary.LittleEndian.Uint32(hdr[60:]) != crc32.Checksum(hdr[:60], castagnoli) {
				s.log.Warn("journal file has no valid header; discarding it and later files", "path", path)
				stop = true
				break
			}
			v2, pos = true, journalHdr2Size
			base := binary.LittleEndian.Uint64(hdr[16:])
			seed = nonceSeed(binary.LittleEndian.Uint64(hdr[24:]))
			switch {
			case base == 0:
				// Rotated to, but no commit covered it: nothing in it or
				// after it is durable.
				stop = true
			case expect == 0:
				expect = base
			case base != expect:
				s.log.Warn("journal file does not continue the records before it; discarding it and later files",
					"path", path, "base", base, "expect", expect)
				stop = true
			}
		default:
			s.log.Warn("journal file has no valid header; discarding it and later files", "path", path)
			stop = true
		}
		header := !stop
		for !stop {
			var rh [recHdrSize]byte
			n, err := io.ReadFull(r, rh[:])
			if err == io.EOF {
				break // clean end of this file; continue with the next
			}
			if err != nil {
				s.log.Warn("torn journal record discarded", "path", path, "offset", pos, "bytes", n)
				stop = true
				break
			}
			le := binary.LittleEndian
			length := int64(le.Uint32(rh[4:]))
			lsn := le.Uint64(rh[8:])
			kind := opKind(rh[48])
			off := int64(le.Uint64(rh[40:]))
			// No writer makes a write beyond the largest object (and a
			// negative or huge offset would index the checksum table
			// out of range, or size it by the offset).
			badOff := kind == opWrite && (off < 0 || off > maxRecordData-length)
			if length > maxRecordData || lsn == 0 || (expect != 0 && lsn != expect) || kind < opWrite || kind > opDelete || badOff {
				s.log.Warn("invalid journal record; discarding the rest of the journal", "path", path, "offset", pos, "lsn", lsn, "expect", expect)
				stop = true
				break
			}
			if pos+recHdrSize+length > fi.Size() {
				// The record claims more than the file holds: a torn
				// tail, and no reason to allocate what it claims.
				s.log.Warn("torn journal record discarded", "path", path, "offset", pos, "length", length)
				stop = true
				break
			}
			if int64(cap(buf)) < length {
				buf = make([]byte, length)
			}
			data := buf[:length]
			if _, err := io.ReadFull(r, data); err != nil {
				s.log.Warn("torn journal record discarded", "path", path, "offset", pos)
				stop = true
				break
			}
			sum := crc32.Update(seed, castagnoli, rh[4:])
			sum = crc32.Update(sum, castagnoli, data)
			if sum != le.Uint32(rh[0:]) {
				s.log.Warn("journal record checksum mismatch; discarding the rest of the journal", "path", path, "offset", pos, "lsn", lsn)
				stop = true
				break
			}
			o := s.lookupOrCreate(le.Uint64(rh[16:]))
			rop := &op{
				obj:  o,
				kind: kind,
				lsn:  lsn,
				meta: ObjectMeta{Version: le.Uint64(rh[24:]), ReqID: le.Uint64(rh[32:]), Deleted: rh[49]&flagDeleted != 0},
				off:  off,
				data: data,
			}
			if err := s.replayOp(rop); err != nil {
				_ = f.Close()
				return 0, 0, err
			}
			pos += recHdrSize + length
			expect = lsn + 1
			last = lsn
			count++
		}
		_ = f.Close()
		if stop && v2 && header && i+1 < len(paths) {
			// Maybe the end of a recycled file; the next file's header
			// says whether it goes on from here.
			continue
		}
		if stop {
			break
		}
	}
	return last, count, nil
}

// replayOp applies one journal record during Open.
func (s *Store) replayOp(op *op) error {
	o := op.obj
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := s.applyOp(o, op, false); err != nil {
		return fmt.Errorf("disk: replay lsn %d (%s of object %016x): %w", op.lsn, op.kind, o.oid, err)
	}
	o.publishApplied()
	s.markDirty(o.oid)
	s.maybeRemove(o)
	return nil
}

// removeJournals retires the given journal files, whose records are all
// checkpointed, and fsyncs the directory. Up to maxSpares of them are
// kept as spare files for the next journals (createJournal), the others
// deleted. A reused file's blocks are written and within its size, so
// appending to it overwrites pages in place: its group commits are
// fdatasyncs of data alone, with no allocation or size change for the
// filesystem to commit, and its pages are likely in the page cache still.
func (s *Store) removeJournals(paths []string) error {
	for _, p := range paths {
		if s.keepSpare() {
			spare := filepath.Join(s.jDir, fmt.Sprintf("%s%016x", sparePrefix, newNonce()))
			if err := os.Rename(p, spare); err == nil {
				s.addSpare(spare)
				continue
			} else if errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return ioErr("remove journal", err)
		}
	}
	if err := s.syncDir(s.jDir); err != nil {
		return ioErr("sync journal dir", err)
	}
	return nil
}

// keepSpare reports whether a retired journal file should be kept: there
// is room among the spares and the filesystem is not full.
func (s *Store) keepSpare() bool {
	s.spmu.Lock()
	defer s.spmu.Unlock()
	return len(s.spares) < maxSpares && !s.res.full.Load()
}

// addSpare records a spare file, deleting it if there are enough.
func (s *Store) addSpare(path string) {
	s.spmu.Lock()
	keep := len(s.spares) < maxSpares
	if keep {
		s.spares = append(s.spares, path)
	}
	s.spmu.Unlock()
	if !keep {
		_ = os.Remove(path)
	}
}

// dropSpares deletes the spare files (a full filesystem wants their
// space back).
func (s *Store) dropSpares() {
	s.spmu.Lock()
	spares := s.spares
	s.spares = nil
	s.spmu.Unlock()
	for _, p := range spares {
		_ = os.Remove(p)
	}
}
