package core

import (
	"fmt"
	"slices"
)

// The gateway is the node a client (a VM's NBD connection) talks to. It
// splits requests into object operations, sends each to the object's
// primary in the current epoch and retries through failures and epoch
// changes until the operation settles. Writes to one object are sent one
// at a time, in order, each with a write id that grows with every write
// of this attachment (attach generation in the high bits), so that a
// primary can tell a retry from a new write and refuse stale ones.

type gateway struct {
	vdis   map[uint32]*gwVDI
	ops    map[uint64]*clientOp // unanswered client operations, by request id
	subs   map[uint64]*subOp    // sent, by message id
	queues map[OID][]*subOp     // writes per object; the head is in flight
	dirty  map[uint32]map[OID]struct{}
	failed map[OID]struct{} // objects whose last write here failed: replicas may differ until one succeeds
	// committed is, per VDI and object, a version the object's primary
	// reported every replica held (after a read or write of this gateway).
	committed map[uint32]map[OID]uint64

	readsHere uint64 // object reads served from this node's own replica (readHere)
	stashHits uint64 // replica writes that took their data from this gateway's queue (stashed)

	direct      map[OID]uint64 // objects handed over to this node (direct writes), by grant token
	revokedUpTo map[OID]uint64 // highest token revoked per object, this epoch
	directOps   uint64
	wait        []waiting // waiting for a newer epoch

	deadlines []opDeadline // client operations' timeouts, in deadline order

	tables    map[uint32]*vdiTable // cached tables (table.go)
	switching []uint32             // attachments waiting for a live snapshot's old writes to settle
}

// gwVDI is this node's attachment of a VDI. It serves I/O once ready:
// at once for a VDI without a table; for one with a table once every
// member fenced the previous attachers' writes (a barrier), so that the
// table this node caches is the truth; for the new working VDI of a live
// snapshot once it is built and the writes sent to the old one settled.
type gwVDI struct {
	gen    uint64
	seq    uint64
	ready  bool
	from   []uint32  // live snapshots moved the attachment from these VDIs
	built  bool      // (after a live snapshot) the new VDI is built
	held   []heldReq // client requests waiting for ready, in arrival order
	parked []*subOp  // writes refused by the old VDI, to redo here first
}

type heldReq struct {
	r        *Request
	deadline int64
}

type clientOp struct {
	req      *Request
	vid      uint32 // the VDI served (a request for a snapshot may be redirected to its working VDI)
	pending  int
	code     Code
	buf      []byte
	replied  bool
	deadline int64
	checked  uint64
	repaired uint64
}

type subOp struct {
	cop      *clientOp
	oid      OID
	op       Op
	off      uint32
	len      uint32
	data     []byte
	bufOff   uint64
	repaired uint32
	reqID    uint64
	flags    uint32
	msgID    uint64
	to       NodeID // where msgID went
	direct   bool   // msgID went to this node acting as the object's primary (a hand-over)
	done     bool
	remote   bool   // a read that must go to the primary (the local replica failed it)
	onDone   func() // runs after the sub-operation settled

	cb        func(Code, []byte) // internal sub-operation (no client operation): its result
	qkey      OID                // the write queue it waits in (oid unless a planted bug moved it)
	idx       uint32             // object index
	src       uint32             // the VDI whose table resolves it
	tbl       *vdiTable          // that table, nil if it has none
	inherited bool               // reads another VDI's object: missing means reclaimed, not zeros
	cow       *cow               // a copy-on-write in progress (cow.go)
	misses    int                // reads that found the shared object missing
	copyOnly  bool               // flatten: copy the shared object, change nothing
	turn      uint32             // bumped whenever it is sent again or parked: older retries are void (later)
}

// later runs fn for s after d ticks unless s moved on meanwhile: sent
// again by another path, parked for another VDI, or settled. Without it
// two waiting paths could both send s, and a write parked for its VDI's
// successor could be sent again where it was.
func (g *gateway) later(n *Node, s *subOp, d int64, fn func()) {
	turn := s.turn
	n.after(d, func() {
		if s.turn == turn && !s.done {
			fn()
		}
	})
}

func (g *gateway) init() {
	g.vdis = map[uint32]*gwVDI{}
	g.ops = map[uint64]*clientOp{}
	g.subs = map[uint64]*subOp{}
	g.queues = map[OID][]*subOp{}
	g.dirty = map[uint32]map[OID]struct{}{}
	g.failed = map[OID]struct{}{}
	g.committed = map[uint32]map[OID]uint64{}
	g.direct = map[OID]uint64{}
	g.revokedUpTo = map[OID]uint64{}
	g.tables = map[uint32]*vdiTable{}
}

// attach records this node's attachment of vid under generation gen. A
// VDI with a table is fenced first: every member applies the attach and
// finishes the writes of earlier attachers, whose table writes could
// otherwise land after this node read its table.
func (n *Node) attachGW(vid uint32, gen uint64) {
	g := &n.gw
	if old, ok := g.vdis[vid]; ok {
		if old.gen == gen {
			return
		}
		n.failWaiting(old)
	}
	att := &gwVDI{gen: gen}
	g.vdis[vid] = att
	g.dropTable(vid)
	v := n.cs.VDI(vid)
	if v == nil || !v.Table {
		att.ready = true
		return
	}
	n.runBarrier(vid, n.applied, false, func(_, _ []ObjVersion) {
		if g.vdis[vid] == att {
			n.becomeReady(vid, att)
		}
	})
}

func (n *Node) detachGW(vid uint32) {
	g := &n.gw
	if att := g.vdis[vid]; att != nil {
		n.failWaiting(att)
	}
	delete(g.vdis, vid)
	delete(g.committed, vid)
	g.dropTable(vid)
	g.switching = slices.DeleteFunc(g.switching, func(x uint32) bool { return x == vid })
}

// failWaiting fails what waits for an attachment that goes away: the
// requests held until it is ready, and the writes a live snapshot
// refused, parked to be redone on it (out of their queues already).
func (n *Node) failWaiting(att *gwVDI) {
	for _, h := range att.held {
		n.reply(Reply{ID: h.r.ID, Code: ErrLocked})
	}
	for _, s := range att.parked {
		if !s.done {
			s.done = true
			n.gw.finish(n, s, ErrLocked, nil)
		}
	}
	att.held, att.parked = nil, nil
}

// holdRequest keeps a client request until the attachment is ready.
func (n *Node) holdRequest(att *gwVDI, r *Request) {
	att.held = append(att.held, heldReq{r: r, deadline: n.now + int64(n.t.OpTimeoutTicks)})
	n.after(int64(n.t.OpTimeoutTicks), func() {
		for _, vid := range sortedU32Keys(n.gw.vdis) { // the request moves with its attachment
			a := n.gw.vdis[vid]
			for i, h := range a.held {
				if h.r == r {
					a.held = slices.Delete(a.held, i, i+1)
					n.reply(Reply{ID: r.ID, Code: ErrTimeout})
					return
				}
			}
		}
	})
}

// becomeReady lets an attachment serve: first the writes a live snapshot
// refused on the old VDI, then the requests that waited, in order.
func (n *Node) becomeReady(vid uint32, att *gwVDI) {
	n.note(fmt.Sprintf("node %d: attachment %06x ready (%d parked, %d held)", n.id, vid, len(att.parked), len(att.held)))
	att.ready = true
	parked, held := att.parked, att.held
	att.parked, att.held = nil, nil
	tbl := n.tableOf(n.cs.VDI(vid))
	for _, s := range parked {
		att.seq++
		s.reqID = att.gen<<writeSeqBits | att.seq
		s.oid, s.qkey, s.src, s.tbl = DataOID(vid, s.idx), DataOID(vid, s.idx), vid, tbl
		n.gw.enqueue(n, s)
	}
	for _, h := range held {
		if h.r.Type == ReqFlatten {
			n.clientFlatten(h.r)
			continue
		}
		n.clientIO(h.r)
	}
}

// moveAttachment follows a live snapshot: this node's attachment of the
// old working VDI becomes one of the new, ready once that is built and
// the writes sent to the old one have settled (those it refuses are
// redone on the new one, before anything that came after them).
func (n *Node) moveAttachment(from, to uint32) {
	g := &n.gw
	old := g.vdis[from]
	if old == nil {
		return
	}
	delete(g.vdis, from)
	g.dropTable(from)
	delete(g.committed, from)
	// A second snapshot may come before the first one's move finished:
	// the new attachment waits for the writes to every VDI it moved from.
	moved := append(slices.Clone(old.from), from)
	g.vdis[to] = &gwVDI{from: moved, held: old.held, parked: old.parked}
	g.switching = slices.DeleteFunc(g.switching, func(x uint32) bool { return x == from })
	g.switching = append(g.switching, to)
	n.note(fmt.Sprintf("node %d: attachment %06x moves to %06x", n.id, from, to))
	// Writes to the old VDI that complete from now on belong to the new
	// VDI's flushes too (markDirty), and so do those not flushed yet.
	if d := g.dirty[from]; d != nil {
		if g.dirty[to] == nil {
			g.dirty[to] = map[OID]struct{}{}
		}
		for oid := range d {
			g.dirty[to][oid] = struct{}{}
		}
		delete(g.dirty, from)
	}
}

// builtAttachment: the VDI this node's attachment moved to is built.
func (n *Node) builtAttachment(vid uint32, gen uint64) {
	att := n.gw.vdis[vid]
	if att == nil || att.ready {
		return
	}
	att.gen, att.seq, att.built = gen, 0, true
	n.maybeSwitched(vid)
}

// maybeSwitched makes a moved attachment ready once no write to the old
// VDI is queued here any more.
func (n *Node) maybeSwitched(vid uint32) {
	att := n.gw.vdis[vid]
	if att == nil || att.ready || !att.built {
		return
	}
	for oid := range n.gw.queues {
		if slices.Contains(att.from, oid.VID()) {
			return
		}
	}
	n.gw.switching = slices.DeleteFunc(n.gw.switching, func(x uint32) bool { return x == vid })
	n.becomeReady(vid, att)
}

// retarget takes a write the old VDI of a moved attachment refused (it
// became a snapshot first) and parks it for the new one.
func (n *Node) retarget(s *subOp) bool {
	if s.cop == nil || s.op == OpRead || s.op == OpStat || s.op == OpCheck || len(n.gw.switching) == 0 {
		return false
	}
	for _, vid := range n.gw.switching {
		if att := n.gw.vdis[vid]; att != nil && slices.Contains(att.from, s.oid.VID()) {
			// Parked before the queue moves on: the next write of the
			// object may be parked (or redone) at once, and must come after.
			s.uncow()
			s.msgID = 0
			s.turn++ // a retry still waiting must not send it where it was
			att.parked = append(att.parked, s)
			n.gw.dequeue(n, s)
			n.maybeSwitched(vid)
			return true
		}
	}
	return false
}

// ReadsHere counts the object reads this node, as the attacher, served
// from its own replica instead of asking the object's primary.
func (n *Node) ReadsHere() uint64 { return n.gw.readsHere }

// StashedWrites counts the replica writes this node received without
// their data because, as the writing gateway, it had the data already.
func (n *Node) StashedWrites() uint64 { return n.gw.stashHits }

// attachment is this node's attachment of v if, as far as it knows, it
// holds v's attach lock (this incarnation, this attach generation, or an
// attachment not ready yet); else nil.
func (n *Node) attachment(v *VDI) *gwVDI {
	att := n.gw.vdis[v.ID]
	if att == nil || v.Owner != n.id || v.OwnerInc != n.self.Incarnation || (att.ready && v.AttachGen != att.gen) {
		return nil
	}
	return att
}

// Attached reports whether this node holds vid's attach lock.
func (n *Node) Attached(vid uint32) bool { _, ok := n.gw.vdis[vid]; return ok }

const writeSeqBits = 40

// requestVDI returns the live VDI a client request addresses, or answers
// the request with the reason there is none. A request for a snapshot
// that is not Exact goes to the working VDI the snapshot's name has now,
// if that descends from it: a client that attached the VDI before a
// snapshot goes on writing to the VDI, not the snapshot.
func (n *Node) requestVDI(r *Request) *VDI {
	if !n.serving {
		n.reply(Reply{ID: r.ID, Code: ErrNotReady})
		return nil
	}
	v := n.cs.VDI(r.VID)
	if v != nil && !v.Deleted && v.IsSnapshot() && !r.Exact {
		v = n.cs.Successor(v)
	}
	if v == nil || v.Deleted {
		n.reply(Reply{ID: r.ID, Code: ErrNoVDI})
		return nil
	}
	return v
}

func (n *Node) clientIO(r *Request) {
	fail := func(c Code) { n.reply(Reply{ID: r.ID, Code: c}) }
	v := n.requestVDI(r)
	if v == nil {
		return
	}
	if r.Len == 0 && r.Type == ReqWrite {
		r.Len = uint64(len(r.Data))
	}
	if r.Off+r.Len > v.Size || r.Off+r.Len < r.Off || (r.Type == ReqWrite && uint64(len(r.Data)) != r.Len) {
		fail(ErrInvalid)
		return
	}
	att := n.attachment(v)
	if r.Type != ReqRead && r.Type != ReqMap {
		if v.readOnly() {
			fail(ErrPerm)
			return
		}
		if att == nil {
			fail(ErrLocked)
			return
		}
	}
	if att != nil && !att.ready {
		n.holdRequest(att, r)
		return
	}
	if att == nil && v.Building {
		// Another node may have applied the build's end already and its
		// attacher written the VDI: reading the parent in its place is
		// safe only until then, so wait to see the end here too.
		n.whenBuilt(v.ID, n.now+int64(n.t.OpTimeoutTicks), func(c Code) {
			if c != OK {
				fail(c)
				return
			}
			n.clientIO(r)
		})
		return
	}
	if r.Type == ReqMap {
		n.clientMap(r, v)
		return
	}
	cop := &clientOp{req: r, vid: v.ID, deadline: n.now + int64(n.t.OpTimeoutTicks)}
	if r.Type == ReqRead {
		cop.buf = make([]byte, r.Len)
	}
	if r.Len == 0 {
		n.reply(Reply{ID: r.ID, Code: OK, Data: cop.buf, VID: v.ID})
		return
	}
	src := v
	if r.Type == ReqRead {
		src = n.resolveSource(v)
	}
	tbl := n.tableOf(src)
	shift := v.BlockShift
	objSize := uint64(1) << shift
	var subs []*subOp
	for off := r.Off; off < r.Off+r.Len; {
		idx := off >> shift
		inObj := off & (objSize - 1)
		l := min(objSize-inObj, r.Off+r.Len-off)
		s := &subOp{cop: cop, oid: DataOID(src.ID, uint32(idx)), idx: uint32(idx), src: src.ID, tbl: tbl,
			off: uint32(inObj), len: uint32(l), bufOff: off - r.Off}
		switch r.Type {
		case ReqRead:
			s.op = OpRead
		case ReqWrite:
			s.op = OpWrite
			s.data = r.Data[off-r.Off : off-r.Off+l]
		case ReqTrim:
			s.op = OpZero
			if l == objSize {
				s.op = OpDiscard
			}
		case ReqZero:
			s.op = OpZero
			if l == objSize && !r.NoHole {
				s.op = OpDiscard
			}
		}
		if r.FUA {
			s.flags |= FlagFUA
		}
		if s.op != OpRead {
			att.seq++
			s.reqID = att.gen<<writeSeqBits | att.seq
		}
		subs = append(subs, s)
		off += l
	}
	cop.pending = len(subs)
	n.gw.watch(n, cop)
	for _, s := range subs {
		if s.op == OpRead {
			n.gw.startRead(n, s)
			continue
		}
		n.gw.enqueue(n, s)
	}
}

// enqueue puts a write at the end of its object's queue, starting it if
// it is the only one.
func (g *gateway) enqueue(n *Node, s *subOp) {
	if s.qkey == 0 {
		s.qkey = s.oid
	}
	q := append(g.queues[s.qkey], s)
	g.queues[s.qkey] = q
	if len(q) == 1 {
		g.startWrite(n, s)
	}
}

// dequeue takes the head write s off its queue and starts the next one.
func (g *gateway) dequeue(n *Node, s *subOp) {
	q := g.queues[s.qkey]
	if len(q) > 0 && q[0] == s {
		q[0] = nil // the array outlives the pop: let go of s and its data
		q = q[1:]
	}
	if len(q) == 0 {
		delete(g.queues, s.qkey)
	} else {
		g.queues[s.qkey] = q
		g.startWrite(n, q[0])
	}
}

// startRead resolves which object a read of s.idx reads (through the
// table, if its VDI has one), then sends it.
func (g *gateway) startRead(n *Node, s *subOp) {
	if s.tbl == nil {
		g.dispatch(n, s)
		return
	}
	t := s.tbl
	n.withEntry(t, s.idx, func(entry uint32) {
		v := n.cs.VDI(s.src)
		if v == nil || v.Deleted {
			g.complete(n, s, ErrNoVDI, nil)
			return
		}
		if entry != 0 && !t.transient && !(v.IsSnapshot() && !n.cs.building(v)) &&
			!n.haveLeases(n.placement(TableOID(t.vid, s.idx/TableEntries))) {
			// An attacher's cached entry naming an ancestor is the truth
			// only while no other attacher can have copied the object
			// since: that needs the table object's co-replicas' leases,
			// as a primary's read does. Cut off from them (a partition
			// may have given the attach lock to another node in a newer
			// epoch), it reads the entry afresh through the table
			// object's primary; the ancestor's object never changes, so
			// nothing else would catch the stale entry.
			s.tbl = newTable(t.vid, true)
			g.startRead(n, s)
			return
		}
		s.oid, s.inherited = ownerOID(s.src, entry, s.idx)
		g.dispatch(n, s)
	})
}

// startWrite sends the write at the head of its queue: as it is to an
// object the VDI owns (or never wrote), or as a copy-on-write of an
// object it shares (cow.go). A write to a VDI that became a snapshot
// meanwhile is redone on its successor if this node attached that.
func (g *gateway) startWrite(n *Node, s *subOp) {
	if s.cop != nil {
		if v := n.cs.VDI(s.oid.VID()); v != nil && v.readOnly() && s.cow == nil && n.retarget(s) {
			return
		}
	}
	if s.tbl == nil || s.cow != nil || !s.oid.IsData() {
		g.dispatch(n, s)
		return
	}
	n.withEntry(s.tbl, s.idx, func(entry uint32) {
		if g.queues[s.qkey] == nil || g.queues[s.qkey][0] != s || s.done {
			return
		}
		switch {
		case entry == 0 && s.copyOnly:
			g.complete(n, s, OK, nil) // a client's write copied it meanwhile
		case entry == 0:
			g.dispatch(n, s)
		case n.bugs.CowInPlace:
			s.oid = DataOID(entry, s.idx) // the planted bug: write the shared object itself
			g.dispatch(n, s)
		default:
			n.startCOW(s, entry)
		}
	})
}

// clientMap asks the primary of every object r touches whether it holds
// data. Like a read it needs no attach lock; an allocation that changes
// while the map runs may be reported either way.
func (n *Node) clientMap(r *Request, v *VDI) {
	if r.Len == 0 {
		n.reply(Reply{ID: r.ID, Code: OK})
		return
	}
	shift := v.BlockShift
	first, last := r.Off>>shift, (r.Off+r.Len-1)>>shift
	cop := &clientOp{req: r, vid: v.ID, deadline: n.now + int64(n.t.OpTimeoutTicks), buf: make([]byte, last-first+1)}
	cop.pending = len(cop.buf)
	n.gw.watch(n, cop)
	src := n.resolveSource(v)
	tbl := n.tableOf(src)
	for idx := first; idx <= last; idx++ {
		s := &subOp{cop: cop, oid: DataOID(src.ID, uint32(idx)), op: OpStat, bufOff: idx - first, idx: uint32(idx), src: src.ID, tbl: tbl}
		if tbl == nil {
			n.gw.dispatch(n, s)
			continue
		}
		n.withEntry(tbl, s.idx, func(entry uint32) {
			if entry != 0 {
				s.repaired = 1 // inherited data is data: never a hole
				n.gw.complete(n, s, OK, nil)
				return
			}
			n.gw.dispatch(n, s)
		})
	}
}

// internal runs an object operation for the node's own work (a table
// read, the steps of a copy-on-write, a builder's table writes): like a
// client's sub-operation it is retried through failures and epoch
// changes, and writes wait in their object's queue; cb gets the result.
func (g *gateway) internal(n *Node, s *subOp, cb func(Code, []byte)) {
	s.cb = cb
	if s.op == OpRead || s.op == OpStat {
		g.dispatch(n, s)
		return
	}
	g.enqueue(n, s)
}

// readHere serves a read from this node's own replica when that is as
// good as asking the primary: this node holds the VDI's attach lock, so
// every new write to the object comes through it, and none is queued or
// in flight here, so every write it issued has completed, and a write
// completes only once every replica of the epoch has it; the replica
// holds a version the primary reported complete (after this gateway's
// last read or write of the object), so it is not a write of a previous
// attacher still in flight, which may yet fail; the object is recovered
// here in the current epoch and idle; and every co-replica has granted a
// read lease, so no newer epoch can have written the object elsewhere
// meanwhile (the argument that lets a primary serve reads). A read that
// finds its replica unreadable asks the primary after all. It reports
// whether it took the read.
func (g *gateway) readHere(n *Node, s *subOp, reps []NodeID) bool {
	if n.bugs.ReadAny || reps[0] == n.id || !slices.Contains(reps, n.id) || len(g.queues[s.oid]) > 0 {
		return false
	}
	if _, ok := g.failed[s.oid]; ok {
		return false // a failed write may have reached some replicas only
	}
	if n.owes(s.oid) {
		return false // the replica here missed writes for want of space (refill.go)
	}
	if v := n.cs.VDI(s.oid.VID()); v == nil || n.attachment(v) == nil || !n.attachment(v).ready {
		return false
	}
	if !n.objectReady(s.oid) {
		return false
	}
	o := n.objs[s.oid]
	if o != nil && (o.diskBusy || o.catchingUp || o.repairing || o.applying != 0 || o.active != nil) {
		return false
	}
	if o != nil && o.present && g.committed[s.oid.VID()][s.oid] != o.meta.Version {
		// Not a version known to be on every replica: right after the
		// attach lock changed hands, the previous attacher's last write
		// may still be in flight here, and may yet fail.
		return false
	}
	if !n.haveLeases(reps) {
		return false
	}
	g.readsHere++
	if (o == nil || !o.present) && g.committed[s.oid.VID()][s.oid] != 0 {
		return false // written, but this replica has no copy (it dropped one it could not update)
	}
	if o == nil || !o.present || o.meta.Deleted {
		g.complete(n, s, OK, nil) // never written, or discarded: zeros
		return true
	}
	n.readLocal(s.oid, s.off, s.len, func(d DiskDone) {
		if d.Err != OK {
			s.remote = true
			g.dispatch(n, s)
			return
		}
		g.complete(n, s, OK, d.Data)
	})
	return true
}

// stashed returns the data of the write that m, a MsgRepl sent without
// data, replicates, if that is a write of this gateway still queued here;
// else nil.
func (g *gateway) stashed(m *Message) []byte {
	for _, s := range g.queues[m.OID] {
		if s.op == OpWrite && s.reqID == m.ReqID && s.off == m.Off && s.len == m.Len && len(s.data) == int(m.Len) {
			g.stashHits++
			return s.data
		}
	}
	return nil
}

// waiting is a sub-operation that waits for a newer epoch, as of its turn.
type waiting struct {
	s    *subOp
	turn uint32
}

// dispatch sends s to its object's primary in the current epoch.
func (g *gateway) dispatch(n *Node, s *subOp) {
	if s.done {
		return
	}
	s.turn++
	if (s.op == OpRead || s.op == OpStat) && s.cop != nil && s.cop.replied {
		s.done = true // the client gave up; reads have no effect to settle
		delete(g.subs, s.msgID)
		return
	}
	if !n.serving {
		g.later(n, s, int64(n.t.RetryTicks), func() { g.dispatch(n, s) })
		return
	}
	reps := n.placement(s.oid)
	if len(reps) == 0 {
		g.complete(n, s, ErrNoVDI, nil)
		return
	}
	if s.op == OpRead && !s.remote && g.readHere(n, s, reps) {
		return
	}
	direct := s.op != OpCheck && g.ownsDirect(s.oid)
	to, flags := reps[0], s.flags
	if s.inherited {
		flags |= FlagInherited
	}
	switch {
	case s.op == OpRead && n.bugs.ReadAny:
		to = reps[n.rand.IntN(len(reps))]
	case direct:
		to, flags = n.id, flags|FlagDirect // this node acts as the object's primary
	case s.reqID != 0 && reps[0] != n.id && !n.cfg.NoDirect && slices.Contains(reps, n.id):
		flags |= FlagAskDirect
	}
	if s.msgID != 0 {
		delete(g.subs, s.msgID)
	}
	s.msgID, s.to, s.direct = n.newID(), to, to == n.id && flags&FlagDirect != 0
	g.subs[s.msgID] = s
	n.send(&Message{Type: MsgIO, To: to, ID: s.msgID, OID: s.oid, Op: s.op, Off: s.off, Len: s.len,
		Data: s.data, ReqID: s.reqID, Flags: flags})
	// The timer holds the id only: a timer must not keep a write's data
	// alive after the write completed.
	n.afterRetry(retryDispatch, s.msgID)
}

func (g *gateway) ioResp(n *Node, m *Message) {
	s, ok := g.subs[m.ID]
	if !ok {
		return
	}
	switch m.Code {
	case OK:
		g.takeGrant(n, m)
		if m.Prev != 0 && m.Epoch == n.epoch {
			vid := s.oid.VID()
			if g.committed[vid] == nil {
				g.committed[vid] = map[OID]uint64{}
			}
			g.committed[vid][s.oid] = m.Prev
		}
		s.repaired = m.Len
		g.complete(n, s, OK, m.Data)
	case ErrStaleEpoch, ErrNotMember, ErrNotReady:
		// The primary is in another epoch, or routing raced an epoch
		// change: retry once this node has caught up, or shortly.
		delete(g.subs, m.ID)
		s.msgID = 0
		if m.Epoch > n.epoch {
			g.wait = append(g.wait, waiting{s, s.turn})
			return
		}
		if s.direct && m.Code == ErrNotReady && !g.ownsDirect(s.oid) {
			g.dispatch(n, s) // a direct write whose object was taken back: ask the primary now
			return
		}
		g.later(n, s, int64(max(n.t.RetryTicks/4, 1)), func() { g.dispatch(n, s) })
	case ErrNoObject:
		if s.inherited && s.tbl != nil && (s.op == OpRead || s.op == OpStat) && s.misses < maxCOWMisses {
			// The shared object is gone: this VDI copied it since (the
			// entry changed) and it was reclaimed. Resolve it again. (If
			// it stays gone, a referenced object was lost: the read fails.)
			s.misses++
			delete(g.subs, m.ID)
			s.msgID = 0
			if s.tbl.transient {
				n.invalidateChunk(s.tbl, s.idx/TableEntries)
			}
			g.later(n, s, int64(max(n.t.RetryTicks/4, 1)), func() { g.startRead(n, s) })
			return
		}
		if s.inherited {
			n.note(fmt.Sprintf("node %d: shared object %v is missing", n.id, s.oid))
			g.complete(n, s, ErrCorrupt, nil)
			return
		}
		g.complete(n, s, m.Code, nil)
	default:
		g.complete(n, s, m.Code, nil)
	}
}

// epochChanged re-sends everything in flight to the new primaries.
func (g *gateway) epochChanged(n *Node) {
	ids := make([]uint64, 0, len(g.subs))
	for id := range g.subs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	wait := g.wait
	g.wait = nil
	for _, id := range ids {
		g.dispatch(n, g.subs[id])
	}
	for _, w := range wait {
		if w.s.turn == w.turn {
			g.dispatch(n, w.s)
		}
	}
}

func (g *gateway) complete(n *Node, s *subOp, code Code, data []byte) {
	if s.done {
		return
	}
	delete(g.subs, s.msgID)
	if s.cow != nil && s.cow.phase == cowWriting && code == OK {
		g.markDirty(s)
		n.cowLink(s) // the object is this VDI's now: point the table at it
		return
	}
	if code == ErrPerm && s.cop != nil && s.op != OpRead && s.op != OpStat && s.op != OpCheck {
		if v := n.cs.VDI(s.oid.VID()); v != nil && !v.readOnly() {
			// The primary has applied a snapshot (or delete) of the VDI
			// that this node has not yet: decide once it has. Until then
			// the write is started again as it came, resolved through the
			// table: a copy-on-write whose table entry was refused gave its
			// copy up (uncow), and that copy, unlinked, holds the write
			// under the write's own ReqID, so the write sent as it is to
			// the copy's object would be acknowledged as a retry of the
			// copy by its primary and lost with the orphan.
			s.msgID = 0
			g.later(n, s, int64(max(n.t.RetryTicks/4, 1)), func() {
				if s.msgID != 0 {
					return
				}
				if v := n.cs.VDI(s.oid.VID()); v != nil && !v.readOnly() {
					// Through the table again, not straight to the
					// object: a copy-on-write whose entry was refused
					// (cowLink) is the client's write once more, and its
					// object is an unlinked copy that holds a write of
					// the same id. Sent there, the copy's primary would
					// take it for a retry of a write it has and
					// acknowledge it, and the write would be lost with
					// the copy; the copy-on-write must be done again.
					g.startWrite(n, s)
					return
				}
				g.complete(n, s, ErrPerm, nil)
			})
			return
		}
	}
	if code == ErrPerm && n.retarget(s) {
		return // the VDI became a snapshot first: redone on its successor
	}
	s.done = true
	if s.op != OpRead && s.op != OpStat && s.op != OpCheck {
		if code == OK {
			delete(g.failed, s.oid)
			g.markDirty(s)
		} else {
			g.failed[s.oid] = struct{}{}
		}
		g.dequeue(n, s)
		if len(g.switching) > 0 {
			n.settledOn(s.oid.VID())
		}
	}
	g.finish(n, s, code, data)
}

// finish hands a sub-operation's outcome to its caller or client op.
func (g *gateway) finish(n *Node, s *subOp, code Code, data []byte) {
	if s.cb != nil {
		s.cb(code, data)
		return
	}
	cop := s.cop
	switch s.op {
	case OpCheck:
		cop.checked++
		cop.repaired += uint64(s.repaired)
	case OpRead:
		if code == OK {
			copy(cop.buf[s.bufOff:s.bufOff+uint64(s.len)], data)
		}
	case OpStat:
		if code == OK && s.repaired > 0 {
			cop.buf[s.bufOff] = 1
		}
	}
	if code == ErrStale {
		code = ErrLocked
	}
	if code != OK && cop.code == OK {
		cop.code = code
	}
	cop.pending--
	if cop.pending == 0 && !cop.replied {
		cop.replied = true
		delete(g.ops, cop.req.ID)
		r := Reply{ID: cop.req.ID, Code: cop.code, Checked: cop.checked, Repaired: cop.repaired, VID: cop.vid}
		if cop.code == OK {
			r.Data = cop.buf
		}
		n.reply(r)
	}
	if s.onDone != nil {
		s.onDone()
	}
}

// markDirty records a completed write for the VDI's next flush.
func (g *gateway) markDirty(s *subOp) {
	if s.flags&FlagFUA != 0 {
		return
	}
	vid := s.oid.VID()
	for _, to := range g.switching {
		if att := g.vdis[to]; att != nil && slices.Contains(att.from, vid) {
			vid = to
		}
	}
	if g.dirty[vid] == nil {
		g.dirty[vid] = map[OID]struct{}{}
	}
	g.dirty[vid][s.oid] = struct{}{}
}

// settledOn: a write to vid settled; an attachment a live snapshot moved
// off vid may be ready now.
func (n *Node) settledOn(vid uint32) {
	for _, to := range slices.Clone(n.gw.switching) {
		if att := n.gw.vdis[to]; att != nil && slices.Contains(att.from, vid) {
			n.maybeSwitched(to)
		}
	}
}

// watch arms the client operation's timeout. Every client operation gets
// the same timeout, so deadlines come in watch order and a queue of ids
// replaces a timer per operation (which, at 60 s, kept about a million
// timers and closures alive under load): expire pops finished
// operations from its front at once and fails the expired ones.
func (g *gateway) watch(n *Node, cop *clientOp) {
	id := cop.req.ID
	g.ops[id] = cop
	g.deadlines = append(g.deadlines, opDeadline{at: cop.deadline, id: id})
}

// opDeadline is when the client operation id times out.
type opDeadline struct {
	at int64
	id uint64
}

// expire runs every tick: it drops the finished operations at the front
// of the deadline queue and fails those whose time is up.
func (g *gateway) expire(n *Node) {
	for len(g.deadlines) > 0 {
		d := g.deadlines[0]
		cop, live := g.ops[d.id]
		if live && d.at > n.now {
			break
		}
		g.deadlines = g.deadlines[1:]
		if live {
			g.timeout(n, cop)
		}
	}
}

// timeout fails a client operation that did not settle in time. Its
// writes stay queued and keep being retried, so that a later write to the
// same object can never be overtaken by an earlier one.
func (g *gateway) timeout(n *Node, cop *clientOp) {
	if cop.replied {
		return
	}
	cop.replied = true
	delete(g.ops, cop.req.ID)
	n.reply(Reply{ID: cop.req.ID, Code: ErrTimeout})
}

// clientFlush makes every write this gateway completed for the VDI
// before the flush durable on all the object's replicas.
func (n *Node) clientFlush(r *Request) {
	if v := n.cs.VDI(r.VID); v != nil && v.IsSnapshot() && !r.Exact {
		if w := n.cs.Successor(v); w != nil {
			r.VID = w.ID // an attacher that does not know of the snapshot yet
		}
	}
	set := n.gw.dirty[r.VID]
	delete(n.gw.dirty, r.VID)
	oids := make([]OID, 0, len(set))
	for oid := range set {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	deadline := n.now + int64(n.t.OpTimeoutTicks)
	n.flushRound(r, oids, deadline)
}

func (n *Node) flushRound(r *Request, oids []OID, deadline int64) {
	if len(oids) == 0 {
		n.reply(Reply{ID: r.ID, Code: OK})
		return
	}
	fail := func(c Code) {
		d := n.gw.dirty[r.VID]
		if d == nil {
			d = map[OID]struct{}{}
			n.gw.dirty[r.VID] = d
		}
		for _, oid := range oids {
			d[oid] = struct{}{}
		}
		n.reply(Reply{ID: r.ID, Code: c})
	}
	if n.now >= deadline {
		fail(ErrTimeout)
		return
	}
	if !n.serving {
		n.after(int64(n.t.RetryTicks), func() { n.flushRound(r, oids, deadline) })
		return
	}
	byNode := map[NodeID][]OID{}
	var nodes []NodeID
	for _, oid := range oids {
		for _, id := range n.placement(oid) {
			if _, ok := byNode[id]; !ok {
				nodes = append(nodes, id)
			}
			byNode[id] = append(byNode[id], oid)
		}
	}
	slices.Sort(nodes)
	left := len(nodes)
	failed := false
	epoch := n.epoch
	for _, id := range nodes {
		n.rpc(&Message{Type: MsgSync, To: id, OIDs: byNode[id]}, func(resp *Message) {
			if failed {
				return
			}
			switch {
			case resp.Code == OK && epoch == n.epoch:
				left--
				if left == 0 {
					n.reply(Reply{ID: r.ID, Code: OK})
				}
			case resp.Code == ErrIO || resp.Code == ErrNoSpace:
				failed = true
				fail(resp.Code)
			default:
				// Epoch change or a member that is not ready: start over
				// with the current placement.
				failed = true
				n.after(int64(max(n.t.RetryTicks/4, 1)), func() { n.flushRound(r, oids, deadline) })
			}
		})
	}
	if left == 0 {
		n.reply(Reply{ID: r.ID, Code: OK})
	}
}

// gatewayBusy describes the gateway's unfinished state, for problem
// reports: attachments not ready, queued writes, copy-on-writes.
func (n *Node) gatewayBusy() []string {
	var out []string
	g := &n.gw
	for _, vid := range sortedU32Keys(g.vdis) {
		att := g.vdis[vid]
		if !att.ready || len(att.held) > 0 || len(att.parked) > 0 {
			out = append(out, fmt.Sprintf("attachment %06x ready=%v built=%v from=%x held=%d parked=%d gen=%d", vid, att.ready, att.built, att.from, len(att.held), len(att.parked), att.gen))
		}
	}
	oids := make([]OID, 0, len(g.queues))
	for oid := range g.queues {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	for _, oid := range oids {
		q := g.queues[oid]
		s := q[0]
		d := fmt.Sprintf("queue %v: %d writes, head %v oid=%v msg=%d", oid, len(q), s.op, s.oid, s.msgID)
		if s.cow != nil {
			d += fmt.Sprintf(" cow %v from %06x", s.cow.phase, s.cow.from)
		}
		out = append(out, d)
	}
	for _, id := range sortedU64Keys(g.ops) {
		cop := g.ops[id]
		out = append(out, fmt.Sprintf("client op %d %v vid=%06x pending=%d replied=%v", id, cop.req.Type, cop.vid, cop.pending, cop.replied))
	}
	return out
}

func sortedU64Keys[V any](m map[uint64]V) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
