package core

import (
	"encoding/binary"
	"fmt"
)

// ReqType names a client or admin request.
type ReqType uint8

// Requests a driver submits with Step. I/O requests address a VDI by id
// and need the VDI attached at this node for writes.
const (
	ReqRead      ReqType = iota + 1
	ReqWrite             // Data at Off; FUA makes it durable before the reply
	ReqFlush             // every write replied to before this request is durable
	ReqTrim              // discard [Off, Off+Len): whole objects are freed, partial ranges zeroed
	ReqZero              // write zeros over [Off, Off+Len); NoHole keeps space allocated
	ReqFormat            // Copies, BlockShift
	ReqCreateVDI         // Name, Size, Copies, BlockShift
	ReqDeleteVDI         // Name
	ReqResizeVDI         // Name, Size
	ReqAttach            // VID: take the attach lock for this node; Force takes it over
	ReqDetach            // VID
	ReqShutdown          // stop every node of the cluster
	ReqCheck             // VID: verify every object's replicas and repair those that differ or are corrupted
	ReqMap               // which objects of [Off, Off+Len) hold data: Reply.Data has a byte per object, 1 if allocated
	ReqSnapshot          // Name, Tag: snapshot the working VDI; Reply.VID is the new working VDI, Reply.Snap the snapshot
	ReqClone             // VID (a snapshot), Name: a new VDI from it
	ReqRollback          // Name, VID (one of its snapshots): the working VDI reads as the snapshot again
	ReqFlatten           // VID, attached here: copy every shared object, so that it depends on no other VDI
	ReqTable             // VID: Reply.Data has the table, 4 bytes per object (0: the VDI's own object)
	reqTypeEnd
)

var reqNames = [...]string{
	ReqRead: "read", ReqWrite: "write", ReqFlush: "flush", ReqTrim: "trim", ReqZero: "zero",
	ReqFormat: "format", ReqCreateVDI: "create", ReqDeleteVDI: "delete", ReqResizeVDI: "resize",
	ReqAttach: "attach", ReqDetach: "detach", ReqShutdown: "shutdown", ReqCheck: "check", ReqMap: "map",
	ReqSnapshot: "snapshot", ReqClone: "clone", ReqRollback: "rollback", ReqFlatten: "flatten", ReqTable: "table",
}

func (t ReqType) String() string {
	if t > 0 && t < reqTypeEnd {
		return reqNames[t]
	}
	return fmt.Sprintf("req(%d)", uint8(t))
}

// Request is a client or admin request. ID is the driver's and comes back
// in the Reply.
type Request struct {
	ID         uint64
	Type       ReqType
	VID        uint32
	Name       string
	Off        uint64
	Len        uint64
	Data       []byte
	FUA        bool
	NoHole     bool
	Size       uint64
	Copies     uint8
	BlockShift uint8
	Time       int64 // wall clock (unix seconds) for creation times
	Force      bool
	Tag        string // ReqSnapshot, ReqDeleteVDI: a snapshot tag
	Snap       uint32 // ReqDeleteVDI: a snapshot id of Name
	Exact      bool   // I/O: address exactly VID, even a snapshot (else a snapshot means its working VDI)
}

// Reply answers a Request.
type Reply struct {
	ID   uint64
	Code Code
	Data []byte // ReqRead; ReqMap: one byte per object, 1 if it holds data
	VID  uint32 // the VDI served, created or deleted
	Snap uint32 // ReqSnapshot: the snapshot; ReqClone, ReqRollback: the source snapshot
	Gen  uint64 // ReqAttach: attach generation

	Checked  uint64 // ReqCheck: objects verified
	Repaired uint64 // ReqCheck: replicas repaired
}

func (n *Node) request(r *Request) {
	if r.Time == 0 {
		r.Time = n.wall
	}
	switch r.Type {
	case ReqRead, ReqWrite, ReqTrim, ReqZero, ReqMap:
		n.clientIO(r)
	case ReqCheck:
		n.clientCheck(r)
	case ReqFlush:
		n.clientFlush(r)
	case ReqFormat:
		n.adminPropose(r, &Cmd{Type: CmdFormat, Copies: r.Copies, BlockShift: r.BlockShift, Time: r.Time})
	case ReqCreateVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDICreate, Name: r.Name, Size: r.Size, Copies: r.Copies, BlockShift: r.BlockShift, Time: r.Time})
	case ReqDeleteVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDIDelete, Name: r.Name, Tag: r.Tag, Snap: r.Snap, VID: r.VID, Force: r.Force, Time: r.Time})
	case ReqSnapshot:
		n.deriveVDI(r, &Cmd{Type: CmdSnapshot, Name: r.Name, Tag: r.Tag, Time: r.Time})
	case ReqClone:
		n.deriveVDI(r, &Cmd{Type: CmdClone, VID: r.VID, Dst: r.Name, Time: r.Time})
	case ReqRollback:
		n.deriveVDI(r, &Cmd{Type: CmdRollback, VID: r.VID, Name: r.Name, Time: r.Time})
	case ReqFlatten:
		n.clientFlatten(r)
	case ReqTable:
		n.clientTable(r)
	case ReqResizeVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDIResize, Name: r.Name, Size: r.Size, Time: r.Time})
	case ReqAttach:
		n.propose(&Cmd{Type: CmdAttach, VID: r.VID, NodeID: n.id, Inc: n.self.Incarnation, Force: r.Force, Time: r.Time}, func(res Result) {
			if res.Code == OK {
				n.attachGW(res.VID, res.Gen)
			}
			n.reply(Reply{ID: r.ID, Code: res.Code, VID: res.VID, Gen: res.Gen})
		})
	case ReqDetach:
		n.detachGW(r.VID)
		n.adminPropose(r, &Cmd{Type: CmdDetach, VID: r.VID, NodeID: n.id, Inc: n.self.Incarnation, Time: r.Time})
	case ReqShutdown:
		n.adminPropose(r, &Cmd{Type: CmdShutdown, Time: r.Time})
	default:
		n.reply(Reply{ID: r.ID, Code: ErrInvalid})
	}
}

func (n *Node) adminPropose(r *Request, c *Cmd) {
	n.propose(c, func(res Result) {
		n.reply(Reply{ID: r.ID, Code: res.Code, VID: res.VID, Gen: res.Gen})
	})
}

// deriveVDI proposes an entry that makes a VDI from another (snapshot,
// clone, rollback) and replies once the new VDI is built. One that finds
// another being made from the same VDI (two snapshots at once) waits for
// that and tries again.
func (n *Node) deriveVDI(r *Request, c *Cmd) {
	n.deriveUntil(r, c, n.now+int64(n.t.OpTimeoutTicks))
}

func (n *Node) deriveUntil(r *Request, c *Cmd, deadline int64) {
	try := *c
	n.propose(&try, func(res Result) {
		if res.Code == ErrBusy && n.now+int64(n.t.RetryTicks) < deadline {
			n.after(int64(n.t.RetryTicks), func() { n.deriveUntil(r, c, deadline) })
			return
		}
		if res.Code != OK {
			n.reply(Reply{ID: r.ID, Code: res.Code, VID: res.VID, Snap: res.Snap})
			return
		}
		n.whenBuilt(res.VID, deadline, func(code Code) {
			n.reply(Reply{ID: r.ID, Code: code, VID: res.VID, Snap: res.Snap})
		})
	})
}

// whenBuilt runs fn once vid is built (OK), gone (ErrNoVDI) or the
// deadline passed (ErrTimeout).
func (n *Node) whenBuilt(vid uint32, deadline int64, fn func(Code)) {
	v := n.cs.VDI(vid)
	switch {
	case v == nil || v.Deleted:
		fn(ErrNoVDI)
		return
	case !v.Building:
		fn(OK)
		return
	}
	fired := false
	once := func(c Code) {
		if !fired {
			fired = true
			fn(c)
		}
	}
	n.builtWaits[vid] = append(n.builtWaits[vid], once)
	n.after(max(deadline-n.now, 1), func() { once(ErrTimeout) })
}

// builtChanged runs the waiters of vid if it is built or gone.
func (n *Node) builtChanged(vid uint32) {
	ws := n.builtWaits[vid]
	if len(ws) == 0 {
		return
	}
	v := n.cs.VDI(vid)
	code := OK
	switch {
	case v == nil || v.Deleted:
		code = ErrNoVDI
	case v.Building:
		return
	}
	delete(n.builtWaits, vid)
	for _, w := range ws {
		w(code)
	}
}

// clientTable answers ReqTable with the VDI's table.
func (n *Node) clientTable(r *Request) {
	v := n.requestVDI(r)
	if v == nil {
		return
	}
	if v.Building {
		// Built already, as far as the node that answered the snapshot
		// knows; this one has not applied it yet.
		n.whenBuilt(v.ID, n.now+int64(n.t.OpTimeoutTicks), func(code Code) {
			if code != OK {
				n.reply(Reply{ID: r.ID, Code: code, VID: v.ID})
				return
			}
			n.clientTable(r)
		})
		return
	}
	n.readTable(v, func(code Code, entries []uint32) {
		out := make([]byte, 4*len(entries))
		for i, e := range entries {
			binary.LittleEndian.PutUint32(out[4*i:], e)
		}
		n.reply(Reply{ID: r.ID, Code: code, Data: out, VID: v.ID})
	})
}
