package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// Checksum tables.
//
// Each object's chunk checksums are kept in memory, in pages of pageSlots
// slots (4 KiB of slots, covering 4 MiB of data) that are loaded from the
// sidecar on first use. The applier updates only the table; the sidecar
// (header, slots, length) is rewritten from the table and the applied meta
// by checkpoints (writeSidecar), before the journal that covers the changes
// is removed. Reads verify against the table, so they never read the
// sidecar once its page is loaded.
//
// A table is "fresh" after the object was created, replaced by a Put or
// made a tombstone: its missing pages are then all zero and must not be
// loaded (the sidecar still describes older content), and the next
// checkpoint rewrites the sidecar completely. Pages that changed since the
// sidecar was last written are dirty; a table with anything unwritten
// (mdirty) stays in memory until a checkpoint has written it, clean tables
// are dropped with the object's cached descriptors.
const (
	pageSlots = 1024
	pageBytes = 4 * pageSlots
	// maxDirtyTable: when the table pages dirtied since the last journal
	// rotation reach this many bytes, the next commit rotates the journal,
	// so a checkpoint soon writes them out. It bounds the memory held by
	// dirty pages when many small writes touch many different pages.
	maxDirtyTable = 64 << 20
)

// slotPage is one page of a checksum table.
type slotPage struct {
	s     [pageSlots]uint32
	dirty bool // changed since the sidecar was last written
}

// numChunks is the number of chunks of a data file of size n.
func numChunks(n int64) int64 { return (n + ChunkSize - 1) / ChunkSize }

// metaFile returns o's open sidecar, opening (with create, creating) it; f
// is o's open files. Caller holds o.mu exclusively, or shared plus o.fmu.
func (s *Store) metaFile(o *object, f *objFiles, create bool) (*os.File, error) {
	if f.meta != nil {
		return f.meta, nil
	}
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	m, err := os.OpenFile(s.metaPath(o.oid), flag, 0o644)
	if err != nil {
		return nil, ioErr(fmt.Sprintf("open sidecar of object %016x", o.oid), err)
	}
	f.meta = m
	return m, nil
}

// page returns page p of o's table, loading it from the sidecar (or, for a
// fresh table, creating it zeroed) when missing. f is o's open files.
// Caller holds o.mu exclusively, or shared plus o.fmu.
func (s *Store) page(o *object, f *objFiles, p int64) (*slotPage, error) {
	if p < int64(len(o.pages)) && o.pages[p] != nil {
		return o.pages[p], nil
	}
	pg := new(slotPage)
	if !o.fresh {
		m, err := s.metaFile(o, f, false)
		if err != nil {
			return nil, err
		}
		var b [pageBytes]byte
		if err := readFull(m, b[:], metaHdrSize+p*pageBytes); err != nil {
			return nil, ioErr(fmt.Sprintf("read checksums of object %016x", o.oid), err)
		}
		for i := range pg.s {
			pg.s[i] = binary.LittleEndian.Uint32(b[4*i:])
		}
	}
	if p >= int64(len(o.pages)) {
		o.pages = append(o.pages, make([]*slotPage, p+1-int64(len(o.pages)))...)
	}
	o.pages[p] = pg
	return pg, nil
}

// loadPages makes sure the pages holding chunks c0..c1 are loaded. Caller
// holds o.mu exclusively.
func (s *Store) loadPages(o *object, f *objFiles, c0, c1 int64) error {
	for p := c0 / pageSlots; p <= c1/pageSlots; p++ {
		if _, err := s.page(o, f, p); err != nil {
			return err
		}
	}
	return nil
}

// setSlot records sum as the checksum of chunk c, whose page is loaded.
// Caller holds o.mu exclusively.
func (s *Store) setSlot(o *object, c int64, sum uint32) {
	pg := o.pages[c/pageSlots]
	pg.s[c%pageSlots] = sum
	if !pg.dirty {
		pg.dirty = true
		s.segDirty.Add(pageBytes)
	}
}

// dropTable forgets o's table. Caller holds o.mu exclusively.
func (o *object) dropTable() {
	o.pages, o.fresh, o.mdirty = nil, false, false
}

// reserve makes sure the sidecar has blocks for its header and the slots of
// chunks [0, n), so that the checkpoint that writes them does not run out
// of space: a full filesystem is then reported when applying, like for the
// data. It reserves whole pages of slots, so it is a system call only when
// an object grows into a new page (and once per object after Open).
// Filesystems that cannot preallocate (or that copy on write) get no such
// guarantee. Caller holds o.mu exclusively.
func (s *Store) reserve(o *object, f *objFiles, n int64) error {
	need := metaHdrSize + (n+pageSlots-1)/pageSlots*pageBytes
	if need <= o.sres {
		return nil
	}
	m, err := s.metaFile(o, f, true)
	if err != nil {
		return err
	}
	if !s.noPrealloc.Load() {
		err := preallocate(m, o.sres, need-o.sres)
		if errors.Is(err, errNoPrealloc) {
			s.noPrealloc.Store(true)
		} else if err != nil {
			return ioErr(fmt.Sprintf("reserve sidecar space of object %016x", o.oid), err)
		}
	}
	o.sres = need
	return nil
}

// writeSidecar brings o's sidecar up to date with its applied meta and
// table: it writes the header and the dirty pages (for a fresh table, all
// pages, and sets the length). No fsync. Caller holds o.mu exclusively.
func (s *Store) writeSidecar(o *object) error {
	what := fmt.Sprintf("write sidecar of object %016x", o.oid)
	m, err := os.OpenFile(s.metaPath(o.oid), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return ioErr(what, err)
	}
	defer m.Close()
	n := numChunks(o.dsize)
	end := metaHdrSize + 4*n // the sidecar's length
	var old int64            // fresh: current length (pages below it must be overwritten)
	if o.fresh {
		fi, err := m.Stat()
		if err != nil {
			return ioErr(what, err)
		}
		old = fi.Size()
	}
	buf, bp := getBuf(64 << 10)
	defer putBuf(bp)
	// Runs of contiguous pages are written with one pwrite; the header
	// starts the first run.
	copy(buf, encodeMetaHdr(o.ameta))
	run, at := buf[:metaHdrSize], int64(0)
	flush := func() error {
		if len(run) > 0 {
			if _, err := m.WriteAt(run, at); err != nil {
				return ioErr(what, err)
			}
		}
		run = buf[:0]
		return nil
	}
	for p := int64(0); p*pageSlots < n; p++ {
		off := metaHdrSize + p*pageBytes
		size := min(int64(pageBytes), end-off)
		var pg *slotPage
		if p < int64(len(o.pages)) {
			pg = o.pages[p]
		}
		write := pg != nil && (pg.dirty || o.fresh) || pg == nil && o.fresh && off < old
		if !write {
			continue
		}
		if at+int64(len(run)) != off || len(run)+int(size) > len(buf) {
			if err := flush(); err != nil {
				return err
			}
			at = off
		}
		b := buf[len(run) : len(run)+int(size)]
		if pg == nil {
			clear(b)
		} else {
			for i := range size / 4 {
				binary.LittleEndian.PutUint32(b[4*i:], pg.s[i])
			}
		}
		run = buf[:len(run)+int(size)]
	}
	if err := flush(); err != nil {
		return err
	}
	if o.fresh {
		if err := m.Truncate(end); err != nil {
			return ioErr(what, err)
		}
		o.sres = min(o.sres, end) // truncation released what lay beyond
	}
	for _, pg := range o.pages {
		if pg != nil {
			pg.dirty = false
		}
	}
	o.fresh, o.mdirty = false, false
	return nil
}
