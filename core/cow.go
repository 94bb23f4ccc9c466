package core

import "fmt"

// Copy-on-write. The first write to an object a VDI shares with an
// ancestor (its table entry names that ancestor) makes the object the
// VDI's own: the attacher reads the shared object, applies the write to
// the copy, writes the whole of it as the VDI's object, and then sets the
// table entry to 0 (own). Until the entry is written every reader still
// reads the shared object, which never changes; from then on every
// reader reads the copy, which holds the write. The write is
// acknowledged once the entry is written. A write that covers the whole
// object (or discards it) skips the read.
//
// Later writes to the object go to the copy directly. Writes to one
// object wait in its queue, so a copy-on-write runs alone on it; reads of
// the index by the attacher wait while the entry is being written, so
// that no reader here sees the shared object after one elsewhere saw the
// copy.

type cowPhase uint8

const (
	cowReading cowPhase = iota + 1 // reading the shared object
	cowWriting                     // writing the whole object as the VDI's own
	cowLinking                     // writing the table entry
)

func (p cowPhase) String() string {
	switch p {
	case cowReading:
		return "reading"
	case cowWriting:
		return "writing"
	case cowLinking:
		return "linking"
	}
	return fmt.Sprintf("cow(%d)", uint8(p))
}

// cow is the state of one copy-on-write, kept on the write it serves.
type cow struct {
	from    uint32 // the VDI whose object is shared
	phase   cowPhase
	op      Op // the write's own operation: OpWrite, OpZero or OpDiscard
	off     uint32
	len     uint32
	data    []byte
	misses  int  // reads that found the shared object missing
	fua     bool // the client asked for FUA: the entry too is durable before the reply
	started int64
}

// maxCOWMisses bounds how often a copy-on-write retries a shared object
// it finds missing before it fails the write: a referenced object is
// never reclaimed, so a missing one is lost data, not a race.
const maxCOWMisses = 8

// startCOW begins the copy-on-write of s, the write at the head of its
// object's queue, whose index the table says VDI from owns.
func (n *Node) startCOW(s *subOp, from uint32) {
	size := n.objectSize(s.oid)
	c := &cow{from: from, op: s.op, off: s.off, len: s.len, data: s.data, started: n.now, fua: s.flags&FlagFUA != 0}
	s.cow = c
	if !s.copyOnly && (s.op == OpDiscard || (s.op == OpWrite && s.off == 0 && s.len == size)) {
		n.cowWrite(s, nil)
		return
	}
	n.cowRead(s)
}

func (n *Node) cowRead(s *subOp) {
	c := s.cow
	c.phase = cowReading
	size := n.objectSize(s.oid)
	rd := &subOp{oid: DataOID(c.from, s.idx), op: OpRead, len: size, inherited: true}
	n.gw.internal(n, rd, func(code Code, data []byte) {
		if s.done || s.cow != c {
			return
		}
		switch code {
		case OK:
			n.cowWrite(s, data)
		case ErrNoObject:
			c.misses++
			if c.misses >= maxCOWMisses {
				n.note(fmt.Sprintf("node %d: shared object %v of %v is missing", n.id, rd.oid, s.oid))
				s.cow = nil
				n.gw.complete(n, s, ErrCorrupt, nil)
				return
			}
			n.after(int64(n.t.RetryTicks), func() {
				if !s.done && s.cow == c {
					n.cowRead(s)
				}
			})
		default:
			s.cow = nil
			n.gw.complete(n, s, code, nil)
		}
	})
}

// cowWrite writes the VDI's own copy: the shared object's bytes (base)
// with the write applied. The copy is made durable before the table
// entry is written (FUA): they live on different nodes, and an entry
// that survived a power cut without its copy would lose the object.
func (n *Node) cowWrite(s *subOp, base []byte) {
	c := s.cow
	c.phase = cowWriting
	s.flags |= FlagFUA
	size := n.objectSize(s.oid)
	if size == 0 {
		s.cow = nil
		n.gw.complete(n, s, ErrNoVDI, nil) // deleted meanwhile
		return
	}
	switch {
	case c.op == OpDiscard && !s.copyOnly:
		s.op, s.off, s.len, s.data = OpDiscard, 0, size, nil
	default:
		buf := make([]byte, size)
		copy(buf, base)
		if !s.copyOnly {
			switch c.op {
			case OpWrite:
				copy(buf[c.off:], c.data)
			case OpZero:
				clear(buf[c.off : c.off+c.len])
			}
		}
		s.op, s.off, s.len, s.data = OpWrite, 0, size, buf
		if s.copyOnly && isZeros(buf) {
			s.op, s.data = OpDiscard, nil // flatten: an object of zeros takes no space
		}
	}
	n.gw.dispatch(n, s)
}

// cowLink writes the table entry of the copy's index (0: own); the write
// completes when the entry is written. If that fails, the table object
// holds whatever its primary converged to, so the gateway reads it again
// before it resolves the index next.
func (n *Node) cowLink(s *subOp) {
	c := s.cow
	c.phase = cowLinking
	att := n.gw.vdis[s.oid.VID()]
	if att == nil && n.retarget(s) {
		// The VDI became a snapshot while its copy was written: the copy
		// is an orphan the build deletes, and the write is redone on the
		// new working VDI.
		return
	}
	// An attachment lost and taken again meanwhile has a table cache of
	// its own, which this entry would miss: the write fails instead (its
	// copy stays unlinked, so it took no effect).
	if att == nil || s.tbl == nil || att.gen != s.reqID>>writeSeqBits {
		s.cow = nil
		n.gw.complete(n, s, ErrLocked, nil)
		return
	}
	k := s.idx / TableEntries
	ch := s.tbl.chunk(k)
	if ch.pending == nil {
		ch.pending = map[uint32]int{}
	}
	ch.pending[s.idx]++
	att.seq++
	tw := &subOp{oid: TableOID(s.oid.VID(), k), op: OpWrite, off: 4 * (s.idx % TableEntries), len: 4, data: make([]byte, 4),
		reqID: att.gen<<writeSeqBits | att.seq}
	if c.fua {
		tw.flags |= FlagFUA
	}
	tbl := s.tbl
	n.gw.internal(n, tw, func(code Code, _ []byte) {
		ch := tbl.chunk(k)
		if ch.pending[s.idx]--; ch.pending[s.idx] <= 0 {
			delete(ch.pending, s.idx)
		}
		if code == OK {
			if ch.entries != nil {
				ch.entries[s.idx%TableEntries] = 0
			}
		} else {
			n.invalidateChunk(tbl, k)
			s.uncow() // refused as the VDI became a snapshot: redone as it came
		}
		s.cow = nil
		n.gw.complete(n, s, code, nil)
		if ch := tbl.chunks[k]; ch != nil && ch.entries != nil {
			ch.wake()
		}
	})
}

// uncow gives up s's copy-on-write and makes s the client's write again,
// as it was before the copy: to be redone on another VDI.
func (s *subOp) uncow() {
	c := s.cow
	if c == nil || s.copyOnly {
		return
	}
	s.op, s.off, s.len, s.data = c.op, c.off, c.len, c.data
	if !c.fua {
		s.flags &^= FlagFUA
	}
	s.cow = nil
}

func isZeros(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
