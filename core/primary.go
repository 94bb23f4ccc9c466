package core

import (
	"fmt"
	"slices"
)

func slicesDelete(q []*primOp, p *primOp) []*primOp {
	return slices.DeleteFunc(q, func(x *primOp) bool { return x == p })
}

// primOp is an object operation at its primary.
type primOp struct {
	m          *Message
	reps       []NodeID
	prev       uint64 // version the replicas must hold before applying
	meta       ObjMeta
	localDone  bool
	acked      []NodeID
	calls      []uint64
	replied    bool
	code       Code
	converging bool
	repaired   int
	dedup      bool // verifying replicas before acknowledging a retry
	verified   bool
	fence      uint64 // the hand-over its replication requests carry (direct writes)
}

func (n *Node) respondIO(p *primOp, code Code, data []byte) {
	n.respondIOData(p, code, data, 0)
}

func (n *Node) respondIOCount(p *primOp, code Code, count uint32) {
	n.respondIOData(p, code, nil, count)
}

func (n *Node) respondIOData(p *primOp, code Code, data []byte, count uint32) {
	n.respondIOGrant(p, code, data, count, 0)
}

// respondIOGrant answers p, handing its object over with token grant
// (see direct writes) when that is not 0.
func (n *Node) respondIOGrant(p *primOp, code Code, data []byte, count uint32, grant uint64) {
	if p.replied {
		return
	}
	p.replied = true
	m := &Message{Type: MsgIOResp, To: p.m.From, ID: p.m.ID, Code: code, OID: p.m.OID, Op: p.m.Op, Data: data, Len: count}
	if o := n.objs[p.m.OID]; code == OK && o != nil && o.present {
		// Every replica of the epoch has this version now: the gateway
		// may read its own replica while it still has exactly this one.
		m.Prev = o.meta.Version
	}
	if grant != 0 {
		m.Flags, m.Version = FlagDirect, grant
	}
	n.send(m)
}

// direct reports whether p is this node's own gateway's operation on an
// object it was handed over.
func (p *primOp) direct() bool { return p.m.Flags&FlagDirect != 0 && p.m.From == p.reps[0] }

func (n *Node) objectSize(oid OID) uint32 {
	if oid.IsTable() {
		return TableChunkSize
	}
	if v := n.cs.VDI(oid.VID()); v != nil {
		return uint32(1) << v.BlockShift
	}
	return 0
}

// handleIO receives an object operation from a gateway.
func (n *Node) handleIO(m *Message) {
	if !n.epochGate(m, MsgIOResp) {
		return
	}
	reps := n.placement(m.OID)
	if len(reps) == 0 {
		n.respond(m, MsgIOResp, n.unknownVDI(m.OID.VID()))
		return
	}
	size := n.objectSize(m.OID)
	if m.Op != OpDiscard && m.Op != OpCheck && (uint64(m.Off)+uint64(m.Len) > uint64(size) || (m.Op == OpWrite && len(m.Data) != int(m.Len))) {
		n.respond(m, MsgIOResp, ErrInvalid)
		return
	}
	if m.Op == OpRead && n.bugs.ReadAny && slices.Contains(reps, n.id) {
		n.readAny(m)
		return
	}
	fence := n.fences[m.OID]
	if m.Flags&FlagDirect != 0 && m.From == n.id {
		// This node's gateway, writing an object it was handed over.
		if !n.gw.ownsDirect(m.OID) || !slices.Contains(reps, n.id) {
			delete(n.gw.direct, m.OID)
			n.respond(m, MsgIOResp, ErrNotReady) // taken back meanwhile: ask the primary
			return
		}
		reps = selfFirst(reps, n.id)
		fence = n.gw.direct[m.OID] // acting as primary under the attacher's grant
		n.gw.directOps++
	} else if reps[0] != n.id {
		if !(n.bugs.NoEpochCheck && m.Epoch < n.epoch && slices.Contains(reps, n.id)) {
			n.respond(m, MsgIOResp, ErrNotReady) // routed with another view of the epoch
			return
		}
		// The planted bug trusts the old epoch's routing: act as primary.
		reps = selfFirst(reps, n.id)
	}
	o := n.obj(m.OID)
	o.queue = append(o.queue, &primOp{m: m, reps: reps, fence: fence})
	n.runPrimary(m.OID)
}

// popQueue takes the head off o's queue. The slot it leaves is cleared
// and an emptied queue lets go of its array: a stored object stays in
// n.objs for good, and the array behind a queue sliced from the front kept
// its last operation reachable, with its data. That is a write's payload
// per object ever written (1 MiB per 4 MiB under sequential 1 MiB
// writes): after 3.5 GiB written into a fresh VDI, a 3-node cluster in one
// process held 1.5 GiB of payloads, twice its heap budget, and its
// collector ran without end, at idle too (30% of a CPU) and at 6 times
// the CPU per written byte.
func (o *object) popQueue() *primOp {
	p := o.queue[0]
	o.queue[0] = nil
	o.queue = o.queue[1:]
	if len(o.queue) == 0 {
		o.queue = nil
	}
	return p
}

// runPrimary starts the queued operations of oid that may run now: reads
// run concurrently with each other, a write runs alone, in arrival order.
func (n *Node) runPrimary(oid OID) {
	o := n.objs[oid]
	if o == nil {
		return
	}
	for len(o.queue) > 0 && o.active == nil {
		if d := n.grants[oid]; d != nil && !n.bugs.NoRevoke {
			n.revokeDirect(oid, d) // handed over: take it back first
			return
		}
		if p := o.queue[0]; p.direct() && !n.gw.ownsDirect(oid) {
			o.popQueue()
			n.respondIO(p, ErrNotReady, nil) // taken back: the gateway asks the primary
			continue
		}
		if !n.objectReady(oid) {
			n.whenReady(oid, func() { n.runPrimary(oid) })
			return
		}
		if o.diskBusy || o.catchingUp || o.repairing {
			return // wake runs us again
		}
		p := o.queue[0]
		if n.owes(oid) {
			// This copy missed writes for lack of space (refill.go): it
			// must not be served, nor written on. Reads are served from
			// the co-replica that has the current copy; writes wait
			// (the gateway retries) until it has that copy again.
			o.popQueue()
			if p.m.Op == OpRead || p.m.Op == OpStat {
				n.proxyRead(oid, p)
			} else {
				n.respondIO(p, ErrNotReady, nil)
			}
			continue
		}
		if p.m.Op == OpRead || p.m.Op == OpStat {
			if n.divergedReads(oid) {
				return // caughtUp runs us again
			}
			if !n.haveLeases(p.reps) {
				return // leaseGranted runs us again
			}
			o.popQueue()
			n.primaryRead(oid, o, p)
			continue
		}
		if o.reading > 0 {
			return
		}
		o.popQueue()
		if p.m.Op == OpCheck {
			n.primaryCheck(oid, o, p)
			continue
		}
		n.primaryWrite(oid, o, p)
	}
	if o.active == nil && len(o.queue) == 0 {
		n.answerRevoke(oid)
	}
	n.forget(oid)
}

func (n *Node) primaryRead(oid OID, o *object, p *primOp) {
	present := o.present && n.validCopy(oid, o.meta)
	if p.m.Op == OpStat {
		var has uint32
		if present && !o.meta.Deleted {
			has = 1
		}
		n.respondIOCount(p, OK, has)
		return
	}
	if p.m.Flags&FlagInherited == 0 && oid.IsData() {
		// A gateway that has not seen the VDI deleted yet must not read
		// the zeros its reclaimed objects leave.
		if v := n.cs.VDI(oid.VID()); (v == nil && n.cs.Retired(oid.VID())) || (v != nil && v.Deleted) {
			n.respondIO(p, ErrNoVDI, nil)
			return
		}
	}
	if !present && p.m.Flags&FlagInherited != 0 {
		n.respondIO(p, ErrNoObject, nil) // reclaimed: the reader's table changed since it looked
		return
	}
	if !present || o.meta.Deleted {
		n.respondIO(p, OK, nil) // never written, or discarded: zeros
		return
	}
	n.readLocal(oid, p.m.Off, p.m.Len, func(d DiskDone) {
		switch d.Err {
		case OK:
			n.respondIO(p, OK, d.Data)
		case ErrCorrupt:
			o := n.obj(oid)
			o.queue = append([]*primOp{p}, o.queue...)
			n.repair(oid, func(ok bool) {
				if !ok {
					o.queue = slicesDelete(o.queue, p)
					n.respondIO(p, ErrCorrupt, nil)
				}
				n.runPrimary(oid)
			})
		default:
			n.respondIO(p, d.Err, nil)
		}
	})
}

// readAny is the planted read-any bug: serve a read from whatever this
// replica has, with no lease and no recovery.
func (n *Node) readAny(m *Message) {
	o := n.objs[m.OID]
	if o == nil || !o.present || o.meta.Deleted {
		n.respond(m, MsgIOResp, OK)
		return
	}
	n.readLocal(m.OID, m.Off, m.Len, func(d DiskDone) {
		r := n.respond(m, MsgIOResp, d.Err)
		r.Data = d.Data
	})
}

// readLocal reads from the local store, counted so that writes wait.
func (n *Node) readLocal(oid OID, off, length uint32, cb func(DiskDone)) {
	n.localRead(DiskOp{Kind: DiskRead, OID: oid, Off: off, Len: length}, cb)
}

// verifyLocal checks the checksums of the whole local copy of oid
// (ErrCorrupt if one fails) without reading its bytes back.
func (n *Node) verifyLocal(oid OID, cb func(Code)) {
	n.localRead(DiskOp{Kind: DiskRead, OID: oid, Len: n.objectSize(oid), Verify: true}, func(d DiskDone) { cb(d.Err) })
}

// localRead runs a read of the local store, counted so that writes wait.
func (n *Node) localRead(op DiskOp, cb func(DiskDone)) {
	o := n.obj(op.OID)
	o.reading++
	n.disk(op, func(d DiskDone) {
		o.reading--
		cb(d)
		n.wake(op.OID)
		n.forget(op.OID)
	})
}

func (n *Node) primaryWrite(oid OID, o *object, p *primOp) {
	m := p.m
	if m.ReqID != 0 && m.ReqID < o.meta.ReqID {
		n.respondIO(p, ErrStale, nil) // superseded by a newer attacher's write
		return
	}
	// The fence comes before the retry check: a write that reached only
	// this copy before a snapshot sealed the object without it (this node
	// was out of the epoch) must not be pushed onto the snapshot's other
	// copies as a retry. Refused, the gateway redoes it on the working
	// VDI, or fails it if its attachment is gone.
	if code := n.writeFence(oid, m.ReqID); code != OK {
		n.respondIO(p, code, nil)
		return
	}
	if m.ReqID != 0 && m.ReqID == o.meta.ReqID {
		// A retry of a write this copy has: never apply it twice, but
		// acknowledge it only once every replica holds this copy too
		// (after a failure it may be the only one that has it).
		if p.verified || len(p.reps) == 1 {
			n.respondIO(p, OK, nil)
			return
		}
		p.dedup, p.converging, p.localDone = true, true, true
		o.active = p
		for _, r := range p.reps[1:] {
			n.converge(oid, p, r)
		}
		return
	}
	seq := uint64(1)
	base := max(o.meta.Version, o.assigned)
	if versionEpoch(base) == n.epoch {
		seq = base&0xffffffff + 1
	}
	v := uint64(n.epoch)<<32 | seq
	o.assigned = v
	p.prev = o.meta.Version
	p.meta = ObjMeta{Version: v, ReqID: m.ReqID, Deleted: m.Op == OpDiscard}
	o.active = p
	n.writeLocal(diskOpFor(m, p.meta), func(c Code) {
		p.localDone = true
		if c != OK && p.code == OK {
			p.code = c
		}
		n.finishWrite(oid, p)
	})
	for _, r := range p.reps[1:] {
		n.replicate(oid, p, r)
	}
}

// diskOpFor is the local disk write of a write-like operation.
func diskOpFor(m *Message, meta ObjMeta) DiskOp {
	op := DiskOp{Kind: DiskWrite, OID: m.OID, Off: m.Off, Len: m.Len, Data: m.Data, Meta: meta, Sync: m.Flags&FlagFUA != 0}
	switch m.Op {
	case OpZero:
		op.Data = nil
	case OpDiscard:
		op = DiskOp{Kind: DiskPut, OID: m.OID, Meta: meta, Sync: op.Sync}
	}
	return op
}

// replicate sends the write to replica r. A replica that is the gateway
// the write came from has its data already: it gets the write without
// the data (FlagStashed) and takes the data from its own queue, which
// saves one of the three times a replicated write crosses the network
// when the gateway is a replica but not the primary.
func (n *Node) replicate(oid OID, p *primOp, r NodeID) {
	n.replicateTo(oid, p, r, r == p.m.From && p.m.Op == OpWrite && len(p.m.Data) > 0 && p.m.ReqID != 0)
}

func (n *Node) replicateTo(oid OID, p *primOp, r NodeID, stash bool) {
	m := p.m
	msg := &Message{Type: MsgRepl, To: r, OID: oid, Op: m.Op, Off: m.Off, Len: m.Len, Data: m.Data,
		Flags: m.Flags, Version: p.meta.Version, Prev: p.prev, ReqID: m.ReqID, Fence: p.fence}
	if stash {
		msg.Data = nil
		msg.Flags |= FlagStashed
	}
	if p.direct() {
		msg.Flags |= FlagDirect
	}
	epoch := n.epoch
	id := n.rpc(msg, func(resp *Message) {
		o := n.objs[oid]
		if o == nil || o.active != p || epoch != n.epoch {
			return
		}
		switch resp.Code {
		case ErrNeedData:
			n.replicateTo(oid, p, r, false)
			return
		case OK:
		case ErrNotReady, ErrStaleEpoch, ErrNotMember:
			// The replica is recovering, or the epochs differ; an epoch
			// change aborts this write if it does not settle, and so does
			// the log entry that leaves the object without a placement
			// (abortUnplaced; checked here too, for a state restored from
			// a raft snapshot).
			n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
				if o := n.objs[oid]; o != nil && o.active == p && epoch == n.epoch {
					if len(n.placement(oid)) == 0 {
						n.abortUnplaced(oid.VID())
						return
					}
					n.replicate(oid, p, r)
				}
			})
			return
		default:
			if p.code == OK {
				p.code = resp.Code
			}
		}
		if !slices.Contains(p.acked, r) {
			p.acked = append(p.acked, r)
		}
		n.finishWrite(oid, p)
	})
	p.calls = append(p.calls, id)
}

func (n *Node) finishWrite(oid OID, p *primOp) {
	o := n.objs[oid]
	if o == nil || o.active != p {
		return
	}
	if n.bugs.AckEarly && p.localDone && !p.replied {
		n.respondIO(p, p.code, nil)
	}
	if !p.localDone || len(p.acked) < len(p.reps)-1 {
		return
	}
	if p.dedup {
		// Replicas verified: decide again whether the write is applied.
		o.active = nil
		p.verified, p.dedup, p.converging, p.acked = true, false, false, nil
		o.queue = append([]*primOp{p}, o.queue...)
		n.runPrimary(oid)
		return
	}
	n.respondIOGrant(p, p.code, nil, 0, n.grantDirect(oid, o, p))
	if p.code == OK {
		n.caughtUp(0, oid) // every replica has a newer copy now
	}
	if p.code != OK && !p.converging {
		// Some copies may have the write and others not: bring every
		// replica to the primary's copy before the next operation.
		p.converging = true
		p.acked = p.acked[:0]
		for _, r := range p.reps[1:] {
			n.converge(oid, p, r)
		}
		if len(p.reps) > 1 {
			return
		}
	}
	o.active = nil
	n.runPrimary(oid)
}

func (n *Node) converge(oid OID, p *primOp, r NodeID) {
	o := n.objs[oid]
	msg := &Message{Type: MsgRepl, To: r, OID: oid, Op: OpConverge, Version: o.meta.Version, Fence: p.fence}
	if p.direct() {
		msg.Flags |= FlagDirect
	}
	epoch := n.epoch
	id := n.rpc(msg, func(resp *Message) {
		o := n.objs[oid]
		if o == nil || o.active != p || epoch != n.epoch {
			return
		}
		if resp.Code != OK {
			n.after(int64(n.t.RetryTicks), func() {
				if o := n.objs[oid]; o != nil && o.active == p && epoch == n.epoch {
					if len(n.placement(oid)) == 0 {
						n.abortUnplaced(oid.VID()) // see replicateTo
						return
					}
					n.converge(oid, p, r)
				}
			})
			return
		}
		if !slices.Contains(p.acked, r) {
			p.acked = append(p.acked, r)
		}
		n.finishWrite(oid, p)
	})
	p.calls = append(p.calls, id)
}

// handleConverge makes the local copy equal to the primary's.
func (n *Node) handleConverge(m *Message) {
	o := n.obj(m.OID)
	if o.diskBusy || o.catchingUp || o.repairing || o.reading > 0 {
		o.waiting = append(o.waiting, func() { n.handleRepl(m) })
		return
	}
	if (o.present && o.meta.Version == m.Version) || (!o.present && m.Version == 0) {
		n.respond(m, MsgReplResp, OK)
		return
	}
	// Take the primary's current copy (or its absence): this message may
	// be an old retransmission, so its version is only a hint.
	n.mirror(m.OID, m.From, func(c Code) {
		if c == ErrNoSpace {
			// No room for the primary's copy. Let the primary go on (else
			// every later operation on the object waits behind this
			// convergence) and take its copy once there is space
			// (refill.go). An older copy stays: it holds every
			// acknowledged write (the ones since failed here, so they
			// failed), worth more than none should the others be lost.
			// A newer one holds a write the primary failed and rolled
			// back: it must never win over the primary's, so it goes.
			n.owe(m.OID, m.From)
			if o := n.obj(m.OID); o.present && o.meta.Version > m.Version {
				n.whenIdle(m.OID, func() {
					n.writeLocal(DiskOp{Kind: DiskDelete, OID: m.OID}, func(c Code) { n.respond(m, MsgReplResp, c) })
				})
				return
			}
			n.respond(m, MsgReplResp, OK)
			return
		}
		n.respond(m, MsgReplResp, c)
	})
}

// mirror makes the local copy of oid whatever from holds now: its copy,
// or no object at all.
func (n *Node) mirror(oid OID, from NodeID, done func(Code)) {
	n.catchUpFrom(oid, from, 0, func(c Code) {
		if c != ErrNoObject {
			done(c)
			return
		}
		o := n.obj(oid)
		if !o.present {
			done(OK)
			return
		}
		n.whenIdle(oid, func() {
			n.writeLocal(DiskOp{Kind: DiskDelete, OID: oid}, done)
		})
	})
}

func (n *Node) handleRepl(m *Message) {
	stale := m.Epoch < n.epoch && n.bugs.NoEpochCheck && n.serving
	if !stale && !n.epochGate(m, MsgReplResp) {
		return
	}
	reps := n.placement(m.OID)
	if len(reps) == 0 && !stale {
		n.respond(m, MsgReplResp, n.unknownVDI(m.OID.VID()))
		return
	}
	if !stale && (!slices.Contains(reps, n.id) || (reps[0] != m.From && !(m.Flags&FlagDirect != 0 && slices.Contains(reps, m.From)))) {
		// Only the epoch's primary of the object replicates to its
		// replicas, or the replica it handed the object over to.
		n.respond(m, MsgReplResp, ErrInvalid)
		return
	}
	if !stale && !n.objectReady(m.OID) {
		n.whenReady(m.OID, func() { n.handleRepl(m) })
		return
	}
	if o := n.obj(m.OID); o.fenced(m) || (m.Op == OpConverge && o.superseded(m)) {
		n.respond(m, MsgReplResp, OK) // from before a later hand-over or write: answered long ago
		return
	}
	if m.Op == OpConverge {
		n.handleConverge(m)
		return
	}
	o := n.obj(m.OID)
	if o.present && o.meta.Version >= m.Version {
		n.respond(m, MsgReplResp, OK) // a retransmission of a write we have
		return
	}
	if o.applying == m.Version {
		o.replWaits = append(o.replWaits, m)
		return
	}
	if o.diskBusy || o.catchingUp || o.repairing || o.reading > 0 {
		o.waiting = append(o.waiting, func() { n.handleRepl(m) })
		return
	}
	if o.staleRepl(m) {
		// Acted on before, then rolled back by a convergence (the write
		// failed): a late copy must not bring it back.
		n.respond(m, MsgReplResp, OK)
		return
	}
	if o.meta.Version != m.Prev {
		// We miss the version the write applies to: take the primary's
		// copy first. With no room for it the write fails here (a retry
		// would find the disk just as full and hold the write for ever).
		n.catchUpFrom(m.OID, m.From, m.Prev, func(c Code) {
			switch c {
			case OK:
				n.handleRepl(m)
			case ErrNoSpace:
				n.owe(m.OID, m.From)
				n.respond(m, MsgReplResp, ErrNoSpace)
			default:
				n.after(int64(n.t.RetryTicks), func() { n.handleRepl(m) })
			}
		})
		return
	}
	if code := n.writeFence(m.OID, m.ReqID); code != OK && !stale {
		n.respond(m, MsgReplResp, code)
		return
	}
	if m.Flags&FlagStashed != 0 && m.Data == nil {
		data := n.gw.stashed(m)
		if data == nil {
			n.respond(m, MsgReplResp, ErrNeedData) // not (any more) our write
			return
		}
		withData := *m
		withData.Data = data
		m = &withData
	}
	o.markRepl(m)
	o.applying = m.Version
	epoch := n.epoch
	meta := ObjMeta{Version: m.Version, ReqID: m.ReqID, Deleted: m.Op == OpDiscard}
	n.writeLocal(diskOpFor(m, meta), func(c Code) {
		o.applying = 0
		waits := o.replWaits
		o.replWaits = nil
		if epoch != n.epoch && !stale {
			return // never acknowledge across an epoch change
		}
		n.respond(m, MsgReplResp, c)
		for _, w := range waits {
			n.respond(w, MsgReplResp, c)
		}
	})
}

// catchUpFrom replaces the local copy of oid with from's copy (at least
// version min) and reports how that went.
func (n *Node) catchUpFrom(oid OID, from NodeID, min uint64, done func(Code)) {
	o := n.obj(oid)
	o.catchingUp = true
	epoch := n.epoch
	n.rpc(&Message{Type: MsgFetchReq, To: from, OID: oid, Version: min}, func(resp *Message) {
		if resp.Code != OK || epoch != n.epoch {
			o.catchingUp = false
			n.wake(oid)
			code := resp.Code
			if code == OK {
				code = ErrStaleEpoch
			}
			done(code)
			return
		}
		meta := ObjMeta{Version: resp.Version, ReqID: resp.ReqID, Deleted: resp.Flags&FlagDeleted != 0}
		n.writeLocal(DiskOp{Kind: DiskPut, OID: oid, Data: resp.Data, Meta: meta, Sync: true}, func(c Code) {
			o.catchingUp = false
			done(c)
		})
	})
}

// repair replaces a corrupted local copy of oid with a co-replica's copy
// of the same version (or, if no co-replica has that version intact, the
// newest intact one — but an older version only once every co-replica
// has recovered the object in this epoch, so that none of them is still
// bringing a newer one). The object takes no other operation meanwhile;
// concurrent callers share one repair.
func (n *Node) repair(oid OID, done func(bool)) {
	o := n.obj(oid)
	o.repairWaits = append(o.repairWaits, done)
	if o.repairing {
		return
	}
	o.repairing = true
	finish := func(ok bool) {
		o.repairing = false
		ws := o.repairWaits
		o.repairWaits = nil
		for _, w := range ws {
			w(ok)
		}
		n.wake(oid)
	}
	want := o.meta.Version
	var others []NodeID
	for _, r := range n.placement(oid) {
		if r != n.id {
			others = append(others, r)
		}
	}
	n.note(fmt.Sprintf("node %d: repairing corrupted object %v", n.id, oid))
	epoch := n.epoch
	put := func(resp *Message) {
		meta := ObjMeta{Version: resp.Version, ReqID: resp.ReqID, Deleted: resp.Flags&FlagDeleted != 0}
		// Not through o.waiting: that queue waits for the repair itself.
		var write func()
		write = func() {
			if o.diskBusy {
				n.after(1, write)
				return
			}
			n.writeLocal(DiskOp{Kind: DiskPut, OID: oid, Data: resp.Data, Meta: meta, Sync: true}, func(c Code) { finish(c == OK) })
		}
		write()
	}
	// Second pass: the newest intact copy any co-replica has.
	fallback := func() {
		var best *Message
		unready := false
		left := len(others)
		if left == 0 {
			finish(false)
			return
		}
		for _, r := range others {
			n.rpc(&Message{Type: MsgFetchReq, To: r, OID: oid, Flags: FlagRecovered}, func(resp *Message) {
				if resp.Code == OK && (best == nil || resp.Version > best.Version) {
					best = resp
				}
				if resp.Code == ErrNotReady {
					unready = true
				}
				left--
				if left > 0 {
					return
				}
				if best == nil || epoch != n.epoch || (unready && best.Version < want) {
					// Not an older version than the corrupted copy's
					// while a co-replica is still recovering the object:
					// that version may have been acknowledged, and the
					// recovery may be bringing it. Until then the object
					// fails its reads (and the next read tries again).
					finish(false)
					return
				}
				put(best)
			})
		}
	}
	var try func(i int)
	try = func(i int) {
		if i >= len(others) {
			fallback()
			return
		}
		n.rpc(&Message{Type: MsgFetchReq, To: others[i], OID: oid, Version: want}, func(resp *Message) {
			if resp.Code != OK || resp.Version != want {
				try(i + 1)
				return
			}
			put(resp)
		})
	}
	try(0)
}

// whenSettled runs fn once no local I/O of oid is in flight and no repair
// of it runs: a re-stamp written during a repair was undone by the copy
// the repair put (of the version before the re-stamp), and that copy,
// below the seal, read as a hole (seed 60595 of shape 3/2).
func (n *Node) whenSettled(oid OID, fn func()) {
	if o := n.obj(oid); o.repairing {
		o.waiting = append(o.waiting, func() { n.whenSettled(oid, fn) })
		return
	}
	n.whenIdle(oid, fn)
}

// whenIdle runs fn once no local read or write of oid is in flight.
func (n *Node) whenIdle(oid OID, fn func()) {
	o := n.obj(oid)
	if !o.diskBusy && o.reading == 0 && !o.catchingUp {
		fn()
		return
	}
	o.waiting = append(o.waiting, fn)
}

// handleFetch sends a copy of a local object (recovery, catch-up, repair).
func (n *Node) handleFetch(m *Message) {
	if m.Flags&FlagRecovered != 0 && (m.Epoch != n.epoch || !n.serving || !n.objectReady(m.OID)) {
		n.respond(m, MsgFetchResp, ErrNotReady) // may be recovering a newer version
		return
	}
	o := n.objs[m.OID]
	if o != nil && o.diskBusy && !o.repairing {
		// Wait for the local write to land, so that the answer (a
		// version, or "no object") is what the disk holds after it,
		// also for a first write still in flight (a catch-up in
		// progress that has not replaced the copy yet is no reason to
		// wait: the current copy is consistent). Not through o.waiting,
		// which also waits for catch-ups and repairs that may be waiting
		// for this answer.
		n.after(1, func() { n.handleFetch(m) })
		return
	}
	if o == nil || !o.present || o.meta.Version < m.Version || !n.validCopy(m.OID, o.meta) {
		n.respond(m, MsgFetchResp, ErrNoObject)
		return
	}
	if o.repairing {
		// Known to be corrupted: say so at once. (Waiting could deadlock:
		// the repair may be fetching from the node that asks.)
		n.respond(m, MsgFetchResp, ErrCorrupt)
		return
	}
	meta := o.meta
	answer := func(code Code, data []byte) {
		if code == OK {
			n.caughtUp(m.From, m.OID)
		}
		r := n.respond(m, MsgFetchResp, code)
		r.Version, r.ReqID, r.Data = meta.Version, meta.ReqID, data
		if meta.Deleted {
			r.Flags |= FlagDeleted
		}
	}
	if meta.Deleted {
		answer(OK, nil)
		return
	}
	n.readLocal(m.OID, 0, n.objectSize(m.OID), func(d DiskDone) {
		answer(d.Err, d.Data)
		if d.Err == ErrCorrupt {
			// Someone needs this copy and it is bad: replace it now,
			// unless a write is under way (that write's own repair path
			// takes over).
			if o := n.objs[m.OID]; o != nil && (o.active == nil || o.active.converging) {
				n.repair(m.OID, func(bool) {})
			}
		}
	})
}

// handleSync makes the listed objects durable here (a gateway's flush).
func (n *Node) handleSync(m *Message) {
	if !n.epochGate(m, MsgSyncResp) {
		return
	}
	for _, oid := range m.OIDs {
		if !n.objectReady(oid) && slices.Contains(n.placement(oid), n.id) {
			n.whenReady(oid, func() { n.handleSync(m) })
			return
		}
	}
	n.disk(DiskOp{Kind: DiskSync}, func(d DiskDone) { n.respond(m, MsgSyncResp, d.Err) })
}

// unknownVDI answers a request for a VDI this node does not know: gone
// (purged), or made by a log entry it has not applied yet, which a
// gateway that has applied it retries shortly.
func (n *Node) unknownVDI(vid uint32) Code {
	if n.cs.Retired(vid) {
		return ErrNoVDI
	}
	return ErrNotReady
}

// writeFence refuses a write to a VDI that is read-only (a snapshot, or
// deleted), or one from an attachment older than the VDI's current one
// (a writer that lost the lock). With a barrier (barrier.go) it makes
// sure that once a snapshot, delete or attach is fenced no older write
// lands anywhere.
func (n *Node) writeFence(oid OID, reqID uint64) Code {
	v := n.cs.VDI(oid.VID())
	if v == nil {
		return n.unknownVDI(oid.VID())
	}
	if v.readOnly() && !n.bugs.CowInPlace {
		return ErrPerm
	}
	if reqID != 0 && reqID>>writeSeqBits < v.AttachGen {
		return ErrStale
	}
	return OK
}
