package core

import (
	"fmt"
	"slices"
)

// DiskKind names a disk operation.
type DiskKind uint8

// Disk operations.
const (
	DiskRead   DiskKind = iota + 1 // read Len bytes at Off
	DiskWrite                      // write Data at Off (or zeros over Len when Data is nil) and set Meta
	DiskPut                        // replace the whole object with Data and Meta (recovery)
	DiskDelete                     // remove the object (garbage collection)
	DiskSync                       // make every completed write durable
)

func (k DiskKind) String() string {
	switch k {
	case DiskRead:
		return "read"
	case DiskWrite:
		return "write"
	case DiskPut:
		return "put"
	case DiskDelete:
		return "delete"
	case DiskSync:
		return "sync"
	}
	return fmt.Sprintf("disk(%d)", uint8(k))
}

// DiskOp is a disk operation for the driver. Operations on the same object
// must complete in the order they were issued; the node never issues a
// write to an object while another operation on it is in flight.
type DiskOp struct {
	ID   uint64
	Kind DiskKind
	OID  OID
	Off  uint32
	Len  uint32
	Data []byte
	Meta ObjMeta
	Sync bool // durable before completion (FUA)
	// Verify makes a DiskRead check the range's checksums only: no data
	// comes back (vdi check reads whole objects just to verify them, a
	// window of them at once, and held their bytes meanwhile).
	Verify bool
}

// DiskDone reports a completed disk operation.
type DiskDone struct {
	ID   uint64
	Err  Code    // OK, ErrIO, ErrNoSpace, ErrCorrupt (checksum mismatch), ErrNoObject
	Data []byte  // DiskRead
	Meta ObjMeta // DiskRead: the object's metadata
}

// object is the node's view of one object: what its local store holds
// and the work queued on it.
type object struct {
	meta    ObjMeta
	present bool // the local store has it

	// primary role
	queue   []*primOp // waiting, in arrival order
	active  *primOp   // write being replicated
	reading int       // local reads in flight

	// replica role
	applying    uint64     // version being written locally (0: none)
	replWaits   []*Message // retransmissions waiting for that write
	catchingUp  bool       // fetching the object from its primary
	repairing   bool       // replacing a corrupted local copy
	repairWaits []func(bool)
	replSeen    []replMark // the last replicated write applied, per sender
	fence       uint64     // the newest hand-over seen in requests for this object (direct writes)
	fenceEpoch  uint32

	// any role
	diskBusy bool     // a local write/put/delete is in flight
	assigned uint64   // last version this node assigned as primary (never reused)
	waiting  []func() // work waiting for the disk to be idle
}

func (n *Node) obj(oid OID) *object {
	o := n.objs[oid]
	if o == nil {
		o = &object{}
		n.objs[oid] = o
	}
	return o
}

// idle reports whether o carries no state beyond its stored metadata.
func (o *object) idle() bool {
	return len(o.queue) == 0 && o.active == nil && o.reading == 0 && o.applying == 0 &&
		len(o.replWaits) == 0 && !o.catchingUp && !o.repairing && !o.diskBusy && len(o.waiting) == 0
}

// forget drops the entry of an object that is neither stored nor busy.
func (n *Node) forget(oid OID) {
	if o := n.objs[oid]; o != nil && !o.present && o.idle() {
		delete(n.objs, oid)
	}
}

// diskRetries is how often a disk operation failing with ErrIO is retried
// before the error is reported: the stores report transient errors
// without side effects.
const diskRetries = 4

// disk issues op and runs cb with its result.
func (n *Node) disk(op DiskOp, cb func(DiskDone)) {
	n.diskAttempt(op, cb, 0)
}

func (n *Node) diskAttempt(op DiskOp, cb func(DiskDone), attempt int) {
	op.ID = n.newID()
	n.diskCB[op.ID] = func(d DiskDone) {
		if d.Err == ErrIO && attempt < diskRetries {
			n.after(int64(attempt+1), func() { n.diskAttempt(op, cb, attempt+1) })
			return
		}
		cb(d)
	}
	n.out.Disk = append(n.out.Disk, op)
}

// writeLocal applies a data write to the local store, keeping the object
// index in step. Recovery lists are not answered while writes issued in an
// older epoch are still in flight, so that a list shows final versions.
func (n *Node) writeLocal(op DiskOp, cb func(Code)) {
	o := n.obj(op.OID)
	o.diskBusy = true
	epoch := n.epoch
	n.writesInFlight++
	n.disk(op, func(d DiskDone) {
		o.diskBusy = false
		n.writesInFlight--
		if epoch != n.epoch {
			n.oldWrites--
		}
		if d.Err == OK {
			switch op.Kind {
			case DiskWrite, DiskPut:
				if !o.present {
					n.objGen++
				}
				o.meta, o.present = op.Meta, true
				// A write that landed after this epoch's garbage
				// collection on an object no longer placed here
				// (issued in an older epoch): collect it later.
				if n.gced && !slices.Contains(n.placement(op.OID), n.id) {
					n.gcLeft = true
				}
			case DiskDelete:
				if o.present {
					n.objGen++
				}
				o.meta, o.present = ObjMeta{}, false
			}
		}
		cb(d.Err)
		n.wake(op.OID)
		n.forget(op.OID)
		if n.oldWrites == 0 {
			n.releaseHeld()
		}
	})
}

// whenDiskIdle runs fn once the object's local disk is not busy.
func (n *Node) whenDiskIdle(oid OID, fn func()) {
	o := n.obj(oid)
	if !o.diskBusy {
		fn()
		return
	}
	o.waiting = append(o.waiting, fn)
}

// wake re-runs the work that waited on oid.
func (n *Node) wake(oid OID) {
	o := n.objs[oid]
	if o == nil {
		return
	}
	if len(o.waiting) > 0 && !o.diskBusy && !o.catchingUp && !o.repairing {
		w := o.waiting
		o.waiting = nil
		for _, fn := range w {
			fn()
		}
	}
	n.runPrimary(oid)
}

// localObjects returns the stored objects sorted by id.
func (n *Node) localObjects() []OID {
	out := make([]OID, 0, len(n.objs))
	for oid, o := range n.objs {
		if o.present {
			out = append(out, oid)
		}
	}
	slices.Sort(out)
	return out
}

// Objects returns the local object index sorted by id (for checks and
// status).
func (n *Node) Objects() []ObjectInfo {
	oids := n.localObjects()
	out := make([]ObjectInfo, len(oids))
	for i, oid := range oids {
		out[i] = ObjectInfo{OID: oid, Meta: n.objs[oid].meta}
	}
	return out
}

// copiesOf is the number of replicas of oid; 0 for an object that is
// garbage wherever it is: of a purged VDI, or a table object of a VDI
// that has no table any more (deleted or flattened). A deleted VDI's data
// objects keep their place until reclaim finds nothing references them.
func (n *Node) copiesOf(oid OID) int {
	v := n.cs.VDI(oid.VID())
	if v == nil {
		return 0
	}
	if oid.IsTable() && (v.Deleted || !v.Table) {
		return 0
	}
	return int(v.Copies)
}

// validCopy reports whether a stored copy of oid at meta counts: a copy
// of a sealed snapshot's object older than the seal is the leftover of a
// write that never completed on every replica (see build.go), and is
// treated as no object.
func (n *Node) validCopy(oid OID, meta ObjMeta) bool {
	v := n.cs.VDI(oid.VID())
	return v == nil || meta.Version >= v.SealVersion
}

// placement returns oid's replicas in the current epoch, primary first.
func (n *Node) placement(oid OID) []NodeID {
	c := n.copiesOf(oid)
	if c == 0 {
		return nil
	}
	return n.ring.Place(make([]NodeID, 0, c), oid, c)
}

// dropVDI deletes the local objects of a deleted VDI.
func (n *Node) dropVDI(vid uint32) {
	for _, oid := range n.localObjects() {
		if oid.VID() == vid {
			n.deleteLocal(oid)
		}
	}
}

func (n *Node) deleteLocal(oid OID) {
	n.whenDiskIdle(oid, func() {
		o := n.objs[oid]
		if o == nil || !o.present {
			return
		}
		n.writeLocal(DiskOp{Kind: DiskDelete, OID: oid}, func(Code) {})
	})
}

func versionEpoch(v uint64) uint32 { return uint32(v >> 32) }

// Busy describes the objects with work pending, for problem reports.
func (n *Node) Busy() []string {
	var out []string
	oids := make([]OID, 0)
	for oid, o := range n.objs {
		if !o.idle() {
			oids = append(oids, oid)
		}
	}
	slices.Sort(oids)
	for _, oid := range oids {
		o := n.objs[oid]
		s := fmt.Sprintf("%v v=%x q=%d reading=%d applying=%x catchingUp=%v repairing=%v diskBusy=%v waiting=%d",
			oid, o.meta.Version, len(o.queue), o.reading, o.applying, o.catchingUp, o.repairing, o.diskBusy, len(o.waiting))
		if p := o.active; p != nil {
			s += fmt.Sprintf(" active{op=%v acked=%v conv=%v dedup=%v local=%v}", p.m.Op, p.acked, p.converging, p.dedup, p.localDone)
		}
		if r := n.rec; r != nil {
			s += fmt.Sprintf(" ready=%v", n.objectReady(oid))
		}
		out = append(out, s)
	}
	return append(out, n.gatewayBusy()...)
}

// replMark is the last replicated write (MsgRepl) a replica applied from
// one sender, in one epoch.
type replMark struct {
	from  NodeID
	epoch uint32
	id    uint64
}

// staleRepl reports whether m, a replicated write, is a copy of a
// replication request this replica already acted on, or older. A sender
// sends its next request for an object only once the previous one was
// answered, and message ids grow, so such a copy can only be a duplicate
// or a retransmission that arrived late: applying it again after a
// convergence rolled that write back (it failed) would bring it back on
// this replica only. Callers check it only where they would act: a copy
// of a write still being applied must wait for it, not be answered at
// once.
func (o *object) staleRepl(m *Message) bool {
	id, ok := o.lastApplied(m)
	return ok && m.ID <= id
}

// superseded reports whether m, a convergence or check request, is older
// than a write the same sender replicated here since: a late duplicate.
// The sender runs one operation on an object at a time and sends the next
// one's requests only once the previous one's were answered, so the
// request it duplicates was answered long ago; acting on it now would
// make this copy the sender's current one again, which may not have that
// write yet (it may still be applying it). Unlike staleRepl it does not
// match the request's own id: a retransmission of a convergence or check
// still in progress must wait for it, not be answered at once.
func (o *object) superseded(m *Message) bool {
	id, ok := o.lastApplied(m)
	return ok && m.ID < id
}

// lastApplied returns the id of the last replicated write from m's sender
// this replica applied in m's epoch, if any.
func (o *object) lastApplied(m *Message) (uint64, bool) {
	for _, r := range o.replSeen {
		if r.from == m.From {
			return r.id, r.epoch == m.Epoch
		}
	}
	return 0, false
}

// markRepl records that this replica applies the replicated write m.
func (o *object) markRepl(m *Message) {
	for i := range o.replSeen {
		if o.replSeen[i].from == m.From {
			if o.replSeen[i].epoch != m.Epoch || m.ID > o.replSeen[i].id {
				o.replSeen[i] = replMark{from: m.From, epoch: m.Epoch, id: m.ID}
			}
			return
		}
	}
	o.replSeen = append(o.replSeen, replMark{from: m.From, epoch: m.Epoch, id: m.ID})
}

// fenced reports whether m, a replication or check request, was sent
// under an older hand-over of the object than one this replica has seen
// (a late duplicate of the primary's request from before it handed the
// object over to the attacher, or of the attacher's from before it was
// taken back and handed over again). Its sender got its answer long ago,
// and acting on it could roll back writes made since: a convergence or a
// check makes this copy the primary's current one, which lags the
// attacher's writes in flight. Otherwise it records m's hand-over.
func (o *object) fenced(m *Message) bool {
	if o.fenceEpoch == m.Epoch && m.Fence < o.fence {
		return true
	}
	o.raiseFence(m.Fence, m.Epoch)
	return false
}

// raiseFence records hand-over fence of epoch if it is the newest seen.
func (o *object) raiseFence(fence uint64, epoch uint32) {
	if o.fenceEpoch != epoch || fence > o.fence {
		o.fence, o.fenceEpoch = fence, epoch
	}
}
