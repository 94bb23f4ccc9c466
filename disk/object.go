package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sync"
)

// Sidecar file obj/<oid>.meta:
//
//	header (64 bytes): magic "SDOBJMD1" | version u64 | reqid u64 | flags u32 |
//	                   crc32c(header[0:28]) u32 | 32 zero bytes
//	slots: at 64+4*i, the CRC32C of chunk i of the data file (u32 LE)
//
// A chunk's checksum covers the whole 4 KiB chunk, zero-padded past the end
// of the file. Slot value 0 also accepts an all-zero chunk, so never-written
// ranges (holes in both files) verify.
const (
	metaSuffix  = ".meta"
	metaHdrSize = 64
	metaMagic   = "SDOBJMD1"
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	zeroChunk  [ChunkSize]byte
	zeroCRC    = crc32.Checksum(zeroChunk[:], castagnoli)
)

// chunkSum is the checksum of b zero-padded to ChunkSize.
func chunkSum(b []byte) uint32 {
	sum := crc32.Checksum(b, castagnoli)
	if len(b) < ChunkSize {
		sum = crc32.Update(sum, castagnoli, zeroChunk[:ChunkSize-len(b)])
	}
	return sum
}

func chunkOK(c []byte, slot uint32) bool {
	sum := crc32.Checksum(c, castagnoli)
	return sum == slot || (slot == 0 && sum == zeroCRC)
}

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), ChunkSize)
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

func encodeMetaHdr(m ObjectMeta) []byte {
	b := make([]byte, metaHdrSize)
	copy(b, metaMagic)
	le := binary.LittleEndian
	le.PutUint64(b[8:], m.Version)
	le.PutUint64(b[16:], m.ReqID)
	if m.Deleted {
		le.PutUint32(b[24:], flagDeleted)
	}
	le.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
	return b
}

func decodeMetaHdr(b []byte) (ObjectMeta, bool) {
	if len(b) < metaHdrSize || string(b[:8]) != metaMagic {
		return ObjectMeta{}, false
	}
	le := binary.LittleEndian
	if le.Uint32(b[28:]) != crc32.Checksum(b[:28], castagnoli) {
		return ObjectMeta{}, false
	}
	return ObjectMeta{
		Version: le.Uint64(b[8:]),
		ReqID:   le.Uint64(b[16:]),
		Deleted: le.Uint32(b[24:])&flagDeleted != 0,
	}, true
}

// publishApplied makes the applied state the latest state (Open only, when
// nothing is pending). Caller holds o.mu exclusively.
func (o *object) publishApplied() {
	if !o.onDisk {
		o.st.Store(absent)
		return
	}
	o.st.Store(&objState{meta: o.ameta, size: o.dsize, exists: true})
}

// objFiles are an object's open data file and, once needed (see
// metaFile), its sidecar.
type objFiles struct {
	data, meta *os.File
}

func (f *objFiles) close() {
	_ = f.data.Close()
	if f.meta != nil {
		_ = f.meta.Close()
	}
}

// files returns o's open files, opening (and with create, creating) the
// data file; the sidecar is opened by metaFile when needed. Caller holds
// o.mu, shared or exclusive; the files stay open until the caller releases
// it.
func (s *Store) files(o *object, create bool) (*objFiles, error) {
	o.ref.Store(true)
	o.fmu.Lock()
	if f := o.f; f != nil {
		o.fmu.Unlock()
		return f, nil
	}
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	d, err := os.OpenFile(s.objPath(o.oid), flag, 0o644)
	if err != nil {
		o.fmu.Unlock()
		return nil, err
	}
	adviseRandom(d)
	f := &objFiles{data: d}
	o.f = f
	o.fmu.Unlock()
	s.cacheAdd(o)
	return f, nil
}

// dropFiles closes o's files (Delete). Caller holds o.mu exclusively.
func (s *Store) dropFiles(o *object) {
	o.fmu.Lock()
	if o.f != nil {
		o.f.close()
		o.f = nil
	}
	o.fmu.Unlock()
}

// cacheAdd registers o as holding descriptors and evicts others (CLOCK)
// when over MaxOpenFiles. Objects in use cannot be evicted: eviction needs
// their lock exclusively and only tries it. Evicted objects also drop their
// checksum table unless it holds changes not yet written to the sidecar.
func (s *Store) cacheAdd(o *object) {
	s.fdmu.Lock()
	defer s.fdmu.Unlock()
	if !o.inCache {
		o.inCache = true
		s.open = append(s.open, o)
	}
	for scanned := 0; len(s.open) > s.opt.MaxOpenFiles && scanned < 2*len(s.open); scanned++ {
		if s.hand >= len(s.open) {
			s.hand = 0
		}
		v := s.open[s.hand]
		if v != o && v.mu.TryLock() {
			if v.f == nil || !v.ref.Swap(false) {
				if v.f != nil {
					v.f.close()
					v.f = nil
				}
				if !v.mdirty {
					v.dropTable()
				}
				v.inCache = false
				last := len(s.open) - 1
				s.open[s.hand] = s.open[last]
				s.open[last] = nil
				s.open = s.open[:last]
				v.mu.Unlock()
				continue
			}
			v.mu.Unlock()
		}
		s.hand++
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func getBuf(n int) ([]byte, *[]byte) {
	if n > 64<<10 {
		return make([]byte, n), nil
	}
	bp := bufPool.Get().(*[]byte)
	return (*bp)[:n], bp
}

func putBuf(bp *[]byte) {
	if bp != nil {
		bufPool.Put(bp)
	}
}

// writePiece bounds one write(2) into a data file. The page cache sizes
// the folio that a write creates by the write's length, and on ext4 with
// large folios (recent kernels; 6.18 here) every later small write into a
// large folio walks all its blocks. Measured on ext4 here: after filling a file with
// 1 MiB writes a random 4 KiB pwrite took 28-34 µs, after 16 KiB writes
// 4.4 µs (4 KiB: 4.0-4.4, 32 KiB: 4.9, 64 KiB: 6.4-6.8); filling a MiB
// in 16 KiB pieces cost 400 µs against 150 µs in one piece. Objects take
// far more small random writes than large ones, so large writes pay.
const writePiece = 16 << 10

// writebackMin is the least new data (past an object's end, or a whole
// object put) whose pages the store has the kernel write out at once
// (startWriteback) rather than at the next checkpoint: the bulk of an
// import or a recovery, whose dirty pages would otherwise pile up. An
// overwrite is left to the checkpoint, since a hot range may be written
// many times before it (1 MiB overwrites of a small set of objects lost
// a fifth of their rate written back at once).
const writebackMin = 256 << 10

// writePieces writes data at off in pieces that do not cross a
// writePiece boundary.
func writePieces(f io.WriterAt, data []byte, off int64) error {
	for len(data) > 0 {
		n := min(int64(len(data)), writePiece-off%writePiece)
		if _, err := f.WriteAt(data[:n], off); err != nil {
			return err
		}
		data, off = data[n:], off+n
	}
	return nil
}

// readFull reads len(b) bytes at off, zero-filling what lies past the end
// of the file.
func readFull(f *os.File, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if err == io.EOF {
		err = nil
	}
	clear(b[n:])
	return err
}

// Read fills p with the object's bytes at off. Never-written ranges read as
// zeros; tombstones read as zeros and return their metadata. A missing
// object returns ErrNotFound; a checksum failure returns an error wrapping
// ErrCorrupt that names the object and offset. On error p is zeroed.
func (s *Store) Read(oid uint64, off int64, p []byte) (ObjectMeta, error) {
	return s.read(oid, off, p, false)
}

// errWouldBlock: TryRead would have to wait for the device or a lock.
var errWouldBlock = errors.New("disk: read would block")

// TryRead is Read for an event loop that must not wait: it reads only if
// it can do so without waiting for the device or for the applier (the
// bytes are in the page cache, the object's files are open and its
// checksums loaded), and reports ok=false otherwise, with p undefined;
// the caller then uses Read from a goroutine that may block. With ok=true
// the results are exactly Read's.
func (s *Store) TryRead(oid uint64, off int64, p []byte) (meta ObjectMeta, ok bool, err error) {
	meta, err = s.read(oid, off, p, true)
	if err == errWouldBlock {
		return ObjectMeta{}, false, nil
	}
	return meta, true, err
}

func (s *Store) read(oid uint64, off int64, p []byte, nowait bool) (ObjectMeta, error) {
	if err := s.enter(); err != nil {
		clear(p)
		return ObjectMeta{}, err
	}
	defer s.life.RUnlock()
	if off < 0 || off > 1<<62-int64(len(p)) {
		clear(p)
		return ObjectMeta{}, fmt.Errorf("disk: read object %016x at %d+%d: %w", oid, off, len(p), ErrInvalid)
	}
	for {
		o := s.lookup(oid)
		if o == nil {
			clear(p)
			return ObjectMeta{}, notFound(oid)
		}
		if nowait {
			if !o.mu.TryRLock() {
				return ObjectMeta{}, errWouldBlock
			}
		} else {
			o.mu.RLock()
		}
		if o.removed {
			o.mu.RUnlock()
			continue
		}
		st := o.st.Load()
		var err error
		switch {
		case !st.exists:
			err = notFound(oid)
			clear(p)
		case st.meta.Deleted:
			clear(p)
		default:
			if err = s.readLocked(o, off, p, nowait); err != nil {
				clear(p)
			}
		}
		o.mu.RUnlock()
		return st.meta, err
	}
}

// readLocked assembles the latest content: the applied file content (or the
// last pending reset) overlaid with the pending writes. Caller holds o.mu.
func (s *Store) readLocked(o *object, off int64, p []byte, nowait bool) error {
	end := off + int64(len(p))
	start, fromFile := 0, o.onDisk
	for i := len(o.pending) - 1; i >= 0; i-- {
		if o.pending[i].kind != opWrite {
			start, fromFile = i, false
			break
		}
	}
	if fromFile {
		for _, op := range o.pending[start:] {
			if op.off <= off && op.off+int64(len(op.data)) >= end {
				fromFile = false // fully overwritten by a pending write
				break
			}
		}
	}
	if fromFile {
		if err := s.readFile(o, off, p, nowait); err != nil {
			return err
		}
	} else {
		clear(p)
	}
	for _, op := range o.pending[start:] {
		switch op.kind {
		case opWrite, opPut:
			overlay(p, off, op.data, op.off)
		default:
			clear(p)
		}
	}
	return nil
}

// overlay copies the part of data (located at doff) that overlaps p
// (located at off) into p.
func overlay(p []byte, off int64, data []byte, doff int64) {
	lo := max(off, doff)
	hi := min(off+int64(len(p)), doff+int64(len(data)))
	if lo < hi {
		copy(p[lo-off:hi-off], data[lo-doff:hi-doff])
	}
}

// readFile reads the applied content, verifying every chunk it touches.
// With nowait it returns errWouldBlock rather than open files, load
// checksums or wait for the device. Caller holds o.mu.
func (s *Store) readFile(o *object, off int64, p []byte, nowait bool) error {
	end := off + int64(len(p))
	if off >= o.dsize || len(p) == 0 {
		clear(p)
		return nil
	}
	dend := min(end, o.dsize)
	c0, c1 := off/ChunkSize, (dend-1)/ChunkSize
	aoff, aend := c0*ChunkSize, (c1+1)*ChunkSize
	var f *objFiles
	if nowait {
		o.ref.Store(true)
		o.fmu.Lock()
		f = o.f
		ready := f != nil
		for p := c0 / pageSlots; ready && p <= c1/pageSlots; p++ {
			ready = p < int64(len(o.pages)) && o.pages[p] != nil
		}
		o.fmu.Unlock()
		if !ready {
			return errWouldBlock
		}
	} else {
		var err error
		if f, err = s.files(o, false); err != nil {
			return ioErr(fmt.Sprintf("open object %016x", o.oid), err)
		}
	}
	var buf []byte
	var bp *[]byte
	direct := aoff == off && aend <= end
	if direct {
		buf = p[:aend-aoff]
	} else {
		buf, bp = getBuf(int(aend - aoff))
		defer putBuf(bp)
	}
	if nowait {
		n, err := readCached(f.data, buf, aoff)
		if err == errWouldBlock || (err == nil && int64(n) < min(aend, o.dsize)-aoff) {
			return errWouldBlock
		}
		if err != nil {
			return ioErr(fmt.Sprintf("read object %016x", o.oid), err)
		}
		clear(buf[n:])
	} else if err := readFull(f.data, buf, aoff); err != nil {
		return ioErr(fmt.Sprintf("read object %016x", o.oid), err)
	}
	nc := int(c1 - c0 + 1)
	var small [16]uint32
	var slots []uint32
	if nc <= len(small) {
		slots = small[:nc]
	} else {
		slots = make([]uint32, nc)
	}
	// Copy the checksums out of the table (loading pages as needed) and
	// verify without holding fmu.
	o.fmu.Lock()
	for i := range nc {
		c := c0 + int64(i)
		pg, err := s.page(o, f, c/pageSlots)
		if err != nil {
			o.fmu.Unlock()
			return err
		}
		slots[i] = pg.s[c%pageSlots]
	}
	o.fmu.Unlock()
	for i := range nc {
		if !chunkOK(buf[i*ChunkSize:(i+1)*ChunkSize], slots[i]) {
			return fmt.Errorf("disk: object %016x offset %d (chunk %d): %w",
				o.oid, (c0+int64(i))*ChunkSize, c0+int64(i), ErrCorrupt)
		}
	}
	if !direct {
		copy(p, buf[off-aoff:])
	}
	if dend < end {
		clear(p[dend-off:])
	}
	return nil
}

// applyOp applies op to o's data file, checksum table and applied state.
// The sidecar is not written: checkpoints write it from the table (see
// writeSidecar). verify checks the old content of partially written chunks
// before merging (off during replay, where files may hold a torn mix of
// states). Caller holds o.mu exclusively.
func (s *Store) applyOp(o *object, op *op, verify bool) error {
	if op.kind == opDelete {
		s.dropFiles(o)
		for _, path := range []string{s.objPath(o.oid), s.metaPath(o.oid)} {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return ioErr("remove object file", err)
			}
		}
		o.onDisk, o.bad, o.dsize, o.ameta = false, false, 0, ObjectMeta{}
		o.dropTable()
		o.sres = 0
		return nil
	}
	f, err := s.files(o, true)
	if err != nil {
		return ioErr(fmt.Sprintf("open object %016x", o.oid), err)
	}
	if !o.onDisk {
		// A new object: its sidecar (if any) is stale.
		o.pages, o.fresh, o.sres = nil, true, 0
	}
	if !o.onDisk || o.bad {
		verify = false
	}
	switch op.kind {
	case opWrite:
		if err := s.applyWrite(o, f, op.off, op.data, op.sums, verify); err != nil {
			return err
		}
	case opPut:
		if err := s.applyPut(o, f, op.data); err != nil {
			return err
		}
	case opTomb:
		if err := s.reserve(o, f, 0); err != nil {
			return err
		}
		if err := f.data.Truncate(0); err != nil {
			return ioErr("truncate object", err)
		}
		o.dsize = 0
		o.pages, o.fresh = nil, true
	}
	o.onDisk, o.bad, o.ameta, o.mdirty = true, false, op.meta, true
	return nil
}

// applyWrite writes data at off and updates the checksums of the chunks it
// touches in the table; partially written chunks are merged with their old
// content.
func (s *Store) applyWrite(o *object, f *objFiles, off int64, data []byte, known []uint32, verify bool) error {
	if len(data) == 0 {
		return s.reserve(o, f, numChunks(o.dsize))
	}
	end := off + int64(len(data))
	c0, c1 := off/ChunkSize, (end-1)/ChunkSize
	if err := s.reserve(o, f, max(c1+1, numChunks(o.dsize))); err != nil {
		return err
	}
	if err := s.loadPages(o, f, c0, c1); err != nil {
		return err
	}
	nc := c1 - c0 + 1
	var small [16]uint32
	var sums []uint32
	if nc <= int64(len(small)) {
		sums = small[:nc]
	} else {
		sums = make([]uint32, nc)
	}
	var chunk []byte
	var bp *[]byte
	defer func() { putBuf(bp) }()
	for c := c0; c <= c1; c++ {
		cs := c * ChunkSize
		var sum uint32
		if known != nil {
			sum = known[c-c0] // whole aligned chunks, summed by newOp
		} else if off <= cs && end >= cs+ChunkSize {
			sum = chunkSum(data[cs-off : cs-off+ChunkSize])
		} else {
			if chunk == nil {
				chunk, bp = getBuf(ChunkSize)
			}
			if cs < o.dsize {
				if err := readFull(f.data, chunk, cs); err != nil {
					return ioErr("read object chunk", err)
				}
			} else {
				clear(chunk)
			}
			poison := false
			if verify && !chunkOK(chunk, o.pages[c/pageSlots].s[c%pageSlots]) {
				// Keep the damage detectable instead of blessing it
				// with a fresh checksum.
				poison = true
				s.log.Error("corrupt chunk under a partial write; it stays marked corrupt",
					"oid", fmt.Sprintf("%016x", o.oid), "offset", cs)
			}
			overlay(chunk, cs, data, off)
			sum = chunkSum(chunk)
			if poison {
				sum = ^sum
			}
		}
		sums[c-c0] = sum
	}
	if err := writePieces(f.data, data, off); err != nil {
		return ioErr("write object", err)
	}
	if fresh := end - max(off, o.dsize); fresh >= writebackMin {
		startWriteback(f.data, end-fresh, fresh)
		s.writtenBack.Add(uint64(fresh))
	}
	for c := c0; c <= c1; c++ {
		s.setSlot(o, c, sums[c-c0])
	}
	o.dsize = max(o.dsize, end)
	return nil
}

// applyPut replaces the content with data, leaving all-zero chunks as holes,
// and gives o a fresh table.
func (s *Store) applyPut(o *object, f *objFiles, data []byte) error {
	n := len(data)
	nc := (n + ChunkSize - 1) / ChunkSize
	if err := s.reserve(o, f, int64(nc)); err != nil {
		return err
	}
	// Checksums and runs of non-zero chunks ([lo, hi) in chunks) first, so
	// that the table is only replaced once the file is.
	pages := make([]*slotPage, (nc+pageSlots-1)/pageSlots)
	var dirtied int64
	var runs [][2]int
	for c := range nc {
		b := data[c*ChunkSize : min((c+1)*ChunkSize, n)]
		if isZero(b) {
			continue
		}
		pg := pages[c/pageSlots]
		if pg == nil {
			pg = &slotPage{dirty: true}
			pages[c/pageSlots] = pg
			dirtied += pageBytes
		}
		pg.s[c%pageSlots] = chunkSum(b)
		if k := len(runs) - 1; k >= 0 && runs[k][1] == c {
			runs[k][1] = c + 1
		} else {
			runs = append(runs, [2]int{c, c + 1})
		}
	}
	if err := f.data.Truncate(0); err != nil {
		return ioErr("truncate object", err)
	}
	for _, r := range runs {
		lo, hi := r[0]*ChunkSize, min(r[1]*ChunkSize, n)
		if err := writePieces(f.data, data[lo:hi], int64(lo)); err != nil {
			return ioErr("write object", err)
		}
	}
	if err := f.data.Truncate(int64(n)); err != nil {
		return ioErr("size object", err)
	}
	if n >= writebackMin {
		startWriteback(f.data, 0, int64(n))
		s.writtenBack.Add(uint64(n))
	}
	o.pages, o.fresh, o.dsize = pages, true, int64(n)
	s.segDirty.Add(dirtied)
	return nil
}
