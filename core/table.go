package core

import (
	"encoding/binary"
)

// The inode table. A VDI made from another (a snapshot's new working
// VDI, a clone, a rollback) has a table: for each object index, the VDI
// whose object holds the data, 0 meaning its own object (which may not
// exist: never written, reads as zeros). A VDI without a parent has no
// table at all, so a VDI that was never snapshotted pays nothing for it.
//
// The table lives in table objects (InodeOID(vid) | chunk), replicated
// like data objects, TableEntries entries of 4 bytes each. Only the
// attacher writes them (after a copy-on-write) and the builder that made
// the VDI; both write under attach generations the cluster log fences.
// Entries only ever change from another VDI's id to 0, so the set of
// objects a table references only shrinks: what reclaim relies on.

const (
	// TableEntries is the number of entries in one table object.
	TableEntries = 1024
	// TableChunkSize is the size of a table object.
	TableChunkSize = TableEntries * 4
)

// TableOID is the id of table object chunk of VDI vid.
func TableOID(vid uint32, chunk uint32) OID { return InodeOID(vid) | OID(chunk) }

// IsTable reports whether o is a table object.
func (o OID) IsTable() bool { return o&(VDIBit|VMStateBit|VDIAttrBit|LedgerBit) == VDIBit }

// tableChunks is the number of table objects a VDI of objects objects has.
func tableChunks(objects uint32) uint32 { return (objects + TableEntries - 1) / TableEntries }

// decodeChunk reads a table object's entries (zeros for a missing one).
func decodeChunk(b []byte) []uint32 {
	out := make([]uint32, TableEntries)
	for i := range out {
		if 4*i+4 <= len(b) {
			out[i] = binary.LittleEndian.Uint32(b[4*i:])
		}
	}
	return out
}

func encodeChunk(entries []uint32) []byte {
	b := make([]byte, TableChunkSize)
	for i, e := range entries {
		binary.LittleEndian.PutUint32(b[4*i:], e)
	}
	return b
}

// vdiTable is a gateway's copy of one VDI's table, loaded a table object
// at a time as I/O needs it. The attacher's copy is the truth (it is the
// only writer); a snapshot's never changes once sealed; any other is
// read afresh for each request (transient).
type vdiTable struct {
	vid       uint32
	transient bool
	chunks    map[uint32]*tableChunk
}

type tableChunk struct {
	entries []uint32 // nil until loaded
	loading bool
	waiters []func()
	pending map[uint32]int // index → copy-on-writes whose table write is in flight: reads of it wait
}

func newTable(vid uint32, transient bool) *vdiTable {
	return &vdiTable{vid: vid, transient: transient, chunks: map[uint32]*tableChunk{}}
}

func (t *vdiTable) chunk(k uint32) *tableChunk {
	c := t.chunks[k]
	if c == nil {
		c = &tableChunk{}
		t.chunks[k] = c
	}
	return c
}

// entry returns the table entry of idx if its table object is loaded.
func (t *vdiTable) entry(idx uint32) (uint32, bool) {
	c := t.chunks[idx/TableEntries]
	if c == nil || c.entries == nil {
		return 0, false
	}
	return c.entries[idx%TableEntries], true
}

// withEntry runs fn once the table object holding idx is loaded (and no
// copy-on-write is writing idx's entry), loading it if needed.
func (n *Node) withEntry(t *vdiTable, idx uint32, fn func(owner uint32)) {
	k := idx / TableEntries
	c := t.chunk(k)
	if c.entries != nil && c.pending[idx] == 0 {
		fn(c.entries[idx%TableEntries])
		return
	}
	c.waiters = append(c.waiters, func() { n.withEntry(t, idx, fn) })
	if c.entries == nil {
		n.loadChunk(t, k)
	}
}

// loadChunk reads table object k of t, retrying until it succeeds.
func (n *Node) loadChunk(t *vdiTable, k uint32) {
	c := t.chunk(k)
	if c.loading {
		return
	}
	c.loading = true
	n.gw.internal(n, &subOp{oid: TableOID(t.vid, k), op: OpRead, len: TableChunkSize}, func(code Code, data []byte) {
		if t.chunks[k] != c {
			return // invalidated meanwhile
		}
		c.loading = false
		if code == ErrNoVDI {
			// The VDI has no table any more: flattened (every entry is 0
			// now) or deleted (its readers fail, see startRead).
			c.entries = make([]uint32, TableEntries)
			c.wake()
			return
		}
		if code != OK {
			n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
				if t.chunks[k] == c && c.entries == nil {
					n.loadChunk(t, k)
				}
			})
			return
		}
		c.entries = decodeChunk(data)
		c.wake()
	})
}

func (c *tableChunk) wake() {
	ws := c.waiters
	c.waiters = nil
	for _, w := range ws {
		w()
	}
}

// invalidate forgets table object k: after a table write that failed the
// object holds whatever its primary converged to, which is read again.
func (n *Node) invalidateChunk(t *vdiTable, k uint32) {
	old := t.chunks[k]
	if old == nil {
		return
	}
	c := &tableChunk{pending: old.pending, waiters: old.waiters}
	t.chunks[k] = c
	if len(c.waiters) > 0 {
		n.loadChunk(t, k)
	}
}

// tableOf returns the table this gateway resolves v's objects with: nil
// if v has none, the cached one of an attachment here or of a sealed
// snapshot, or a fresh transient one.
func (n *Node) tableOf(v *VDI) *vdiTable {
	if !v.Table {
		return nil
	}
	cache := false
	if att := n.attachment(v); att != nil {
		cache = true
	} else if v.IsSnapshot() && !n.cs.building(v) {
		cache = true // sealed: its table never changes again
	}
	if t := n.gw.tables[v.ID]; t != nil {
		if cache {
			return t
		}
		// This node lost the attach lock (another took it over): its
		// copy may miss the new attacher's copy-on-writes.
		delete(n.gw.tables, v.ID)
	}
	t := newTable(v.ID, !cache)
	if cache {
		n.gw.tables[v.ID] = t
	}
	return t
}

// dropTable forgets a cached table (detach, delete, snapshot, flatten).
func (g *gateway) dropTable(vid uint32) { delete(g.tables, vid) }

// readTable reads the whole table of v and passes its entries, one per
// object (0: own object); ErrNoVDI if v lost its table meanwhile.
func (n *Node) readTable(v *VDI, done func(Code, []uint32)) {
	objs := v.Objects()
	out := make([]uint32, objs)
	if !v.Table || objs == 0 {
		done(OK, out)
		return
	}
	vid := v.ID
	left := int(tableChunks(objs))
	failed := false
	var read func(k uint32)
	read = func(k uint32) {
		n.gw.internal(n, &subOp{oid: TableOID(vid, k), op: OpRead, len: TableChunkSize}, func(code Code, data []byte) {
			if failed {
				return
			}
			switch code {
			case OK:
			case ErrNoVDI:
				failed = true
				done(ErrNoVDI, nil)
				return
			default:
				n.after(int64(max(n.t.RetryTicks/4, 1)), func() { read(k) })
				return
			}
			copy(out[k*TableEntries:], decodeChunk(data)[:min(TableEntries, objs-k*TableEntries)])
			if left--; left == 0 {
				done(OK, out)
			}
		})
	}
	for k := uint32(0); k < tableChunks(objs); k++ {
		read(k)
	}
}

// dropLocalTable deletes this node's table objects of vid (its VDI was
// deleted or flattened: nothing reads its table again).
func (n *Node) dropLocalTable(vid uint32) {
	for _, oid := range n.localObjects() {
		if oid.IsTable() && oid.VID() == vid {
			n.deleteLocal(oid)
		}
	}
}

// resolveSource is the VDI whose table and objects a read of v uses: v
// itself, or for a VDI still being built its parent, which it equals
// until it is built (nothing writes it before).
func (n *Node) resolveSource(v *VDI) *VDI {
	if v.Building {
		if p := n.cs.VDI(v.Parent); p != nil {
			return p
		}
	}
	return v
}

// ownerOID is the object holding index idx of src given its table entry.
func ownerOID(src uint32, entry uint32, idx uint32) (OID, bool) {
	if entry == 0 {
		return DataOID(src, idx), false
	}
	return DataOID(entry, idx), true
}
