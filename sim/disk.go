package sim

import (
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/sheepdog-go/sheepdog/core"
)

// simObj is one stored object; data is nil for an object that reads as
// zeros.
type simObj struct {
	meta core.ObjMeta
	data []byte
}

// diskRec is one completed write not yet known to be durable.
type diskRec struct {
	seq uint64
	op  core.DiskOp // the core never modifies the data it hands over
}

// simDisk models a node's local store: completed writes are visible at
// once (current) but survive a crash only once synced (durable); a crash
// keeps a prefix of the unsynced writes, as the production store's
// journal does.
type simDisk struct {
	objSize func(core.OID) int
	durable map[core.OID]*simObj
	current map[core.OID]*simObj
	log     []diskRec
	seq     uint64
	corrupt map[core.OID]bool

	hs      raftpb.HardState
	snap    raftpb.Snapshot
	entries []raftpb.Entry
}

func newSimDisk(objSize func(core.OID) int) *simDisk {
	return &simDisk{
		objSize: objSize,
		durable: map[core.OID]*simObj{},
		current: map[core.OID]*simObj{},
		corrupt: map[core.OID]bool{},
	}
}

// persist applies a Ready's raft records (synchronously durable).
func (d *simDisk) persist(rd *core.Ready) {
	if !raft.IsEmptySnap(rd.Snapshot) && rd.Snapshot.Metadata.Index > d.snap.Metadata.Index {
		d.snap = rd.Snapshot
		i := 0
		for i < len(d.entries) && d.entries[i].Index <= d.snap.Metadata.Index {
			i++
		}
		d.entries = append([]raftpb.Entry(nil), d.entries[i:]...)
	}
	if len(rd.Entries) > 0 {
		first := rd.Entries[0].Index
		i := len(d.entries)
		for i > 0 && d.entries[i-1].Index >= first {
			i--
		}
		d.entries = append(d.entries[:i], rd.Entries...)
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		d.hs = rd.HardState
	}
	if rd.CompactIndex > 0 {
		i := 0
		for i < len(d.entries) && d.entries[i].Index <= rd.CompactIndex && d.entries[i].Index <= d.snap.Metadata.Index {
			i++
		}
		d.entries = d.entries[i:]
	}
}

func (d *simDisk) raftState() core.RaftState {
	return core.RaftState{HardState: d.hs, Snapshot: d.snap, Entries: slices.Clone(d.entries)}
}

// read returns len bytes of oid at off.
func (d *simDisk) read(oid core.OID, off, n uint32) ([]byte, core.ObjMeta, core.Code) {
	o := d.current[oid]
	if o == nil {
		return nil, core.ObjMeta{}, core.ErrNoObject
	}
	if d.corrupt[oid] {
		return nil, o.meta, core.ErrCorrupt
	}
	out := make([]byte, n)
	if o.data != nil && int(off) < len(o.data) {
		copy(out, o.data[off:])
	}
	return out, o.meta, core.OK
}

// applyTo executes a write on one of the two views, in place.
func (d *simDisk) applyTo(objs map[core.OID]*simObj, op *core.DiskOp) {
	switch op.Kind {
	case core.DiskWrite:
		o := objs[op.OID]
		if o == nil {
			o = &simObj{}
			objs[op.OID] = o
		}
		if o.data == nil || o.meta.Deleted {
			o.data = make([]byte, d.objSize(op.OID))
		}
		end := min(int(op.Off)+int(op.Len), len(o.data))
		if op.Data != nil {
			copy(o.data[op.Off:end], op.Data)
		} else {
			clear(o.data[op.Off:end])
		}
		o.meta = op.Meta
	case core.DiskPut:
		o := objs[op.OID]
		if o == nil {
			o = &simObj{}
			objs[op.OID] = o
		}
		o.meta = op.Meta
		if len(op.Data) > 0 && !op.Meta.Deleted {
			if o.data == nil {
				o.data = make([]byte, d.objSize(op.OID))
			}
			n := copy(o.data, op.Data)
			clear(o.data[n:])
		} else {
			o.data = nil
		}
	case core.DiskDelete:
		delete(objs, op.OID)
	}
}

// apply executes a completed write and returns its record sequence.
func (d *simDisk) apply(op *core.DiskOp) uint64 {
	d.applyTo(d.current, op)
	if op.Kind == core.DiskPut || op.Kind == core.DiskDelete {
		delete(d.corrupt, op.OID)
	}
	d.seq++
	d.log = append(d.log, diskRec{seq: d.seq, op: *op})
	return d.seq
}

// sync makes every write up to seq durable.
func (d *simDisk) sync(upto uint64) {
	i := 0
	for i < len(d.log) && d.log[i].seq <= upto {
		d.applyTo(d.durable, &d.log[i].op)
		i++
	}
	d.log = d.log[i:]
}

// crash loses the unsynced writes after the first keep of them.
func (d *simDisk) crash(keep int) {
	keep = min(keep, len(d.log))
	if keep > 0 {
		d.sync(d.log[keep-1].seq)
	}
	d.log = nil
	d.current = make(map[core.OID]*simObj, len(d.durable))
	for oid, o := range d.durable {
		c := &simObj{meta: o.meta}
		if o.data != nil {
			c.data = append([]byte(nil), o.data...)
		}
		d.current[oid] = c
	}
}

// objects lists the stored objects for a restarting node.
func (d *simDisk) objects() []core.ObjectInfo {
	out := make([]core.ObjectInfo, 0, len(d.current))
	for oid, o := range d.current {
		out = append(out, core.ObjectInfo{OID: oid, Meta: o.meta})
	}
	slices.SortFunc(out, func(a, b core.ObjectInfo) int {
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

func coreOID(v uint64) core.OID { return core.OID(v) }
