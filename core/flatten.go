package core

import "fmt"

// Flatten copies into a VDI every object it still shares with its
// ancestors, so that it depends on none of them: each copy is a
// copy-on-write that changes nothing, queued with the client's writes to
// the object (a client's write that copies the object first makes the
// flatten's copy unnecessary). It runs at the attacher, while clients
// go on writing, with at most flattenWindow copies in flight so that it
// takes only part of the VDI's bandwidth. When every entry is 0 the
// cluster log records that the VDI left its family (CmdFlattened) and
// its table objects are dropped.

const flattenWindow = 4

type flatten struct {
	vid      uint32
	next     uint32 // next index to look at
	total    uint32
	inflight int
	copied   uint32
	failed   Code
	waiting  []uint64 // requests to answer at the end
	proposed bool
}

// FlattenStatus is a flatten's progress.
type FlattenStatus struct {
	VID     uint32
	Scanned uint32 // indices looked at (and copied, if shared)
	Total   uint32
	Copied  uint32
}

// Flattens returns the flattens running at this node, by VDI id.
func (n *Node) Flattens() []FlattenStatus {
	var out []FlattenStatus
	for _, vid := range sortedU32Keys(n.flattens) {
		f := n.flattens[vid]
		out = append(out, FlattenStatus{VID: vid, Scanned: f.next - uint32(f.inflight), Total: f.total, Copied: f.copied})
	}
	return out
}

func (f *flatten) String() string {
	return fmt.Sprintf("flatten %06x: %d/%d, %d copied", f.vid, f.next, f.total, f.copied)
}

func (n *Node) clientFlatten(r *Request) {
	v := n.requestVDI(r)
	if v == nil {
		return
	}
	att := n.attachment(v)
	switch {
	case v.readOnly():
		n.reply(Reply{ID: r.ID, Code: ErrPerm, VID: v.ID})
		return
	case att == nil:
		n.reply(Reply{ID: r.ID, Code: ErrLocked, VID: v.ID})
		return
	case !att.ready:
		n.holdRequest(att, r)
		return
	case !v.Table:
		n.reply(Reply{ID: r.ID, VID: v.ID}) // nothing shared
		return
	}
	if f := n.flattens[v.ID]; f != nil {
		f.waiting = append(f.waiting, r.ID)
		return
	}
	f := &flatten{vid: v.ID, total: v.Objects(), waiting: []uint64{r.ID}}
	n.flattens[v.ID] = f
	n.pumpFlatten(f)
}

func (n *Node) pumpFlatten(f *flatten) {
	if n.flattens[f.vid] != f {
		return
	}
	v := n.cs.VDI(f.vid)
	att := (*gwVDI)(nil)
	if v != nil {
		att = n.attachment(v)
	}
	if v == nil || v.readOnly() || att == nil || !att.ready {
		n.endFlatten(f, ErrLocked)
		return
	}
	tbl := n.tableOf(v)
	for f.inflight < flattenWindow && f.next < f.total && f.failed == OK {
		idx := f.next
		if e, ok := tbl.entry(idx); ok && e == 0 {
			f.next++ // own already: nothing to copy
			continue
		}
		f.next++
		f.inflight++
		n.withEntry(tbl, idx, func(entry uint32) {
			if entry == 0 {
				f.inflight--
				n.pumpFlatten(f)
				return
			}
			n.flattenCopy(f, v.ID, idx)
		})
	}
	if f.inflight == 0 && (f.next == f.total || f.failed != OK) {
		n.finishFlatten(f)
	}
}

func (n *Node) flattenCopy(f *flatten, vid, idx uint32) {
	v := n.cs.VDI(vid)
	att := n.attachment(v)
	if att == nil || n.flattens[vid] != f {
		f.inflight--
		n.pumpFlatten(f)
		return
	}
	att.seq++
	s := &subOp{oid: DataOID(vid, idx), op: OpWrite, copyOnly: true, idx: idx, src: vid, tbl: n.tableOf(v),
		len: uint32(v.ObjectSize()), reqID: att.gen<<writeSeqBits | att.seq}
	n.gw.internal(n, s, func(code Code, _ []byte) {
		f.inflight--
		switch code {
		case OK:
			f.copied++
		case ErrIO, ErrNoSpace, ErrTimeout, ErrNotReady:
			f.next = min(f.next, idx) // try it again
		default:
			if f.failed == OK {
				f.failed = code
			}
		}
		n.pumpFlatten(f)
	})
}

// finishFlatten records the end in the cluster log, once every entry of
// the table is 0.
func (n *Node) finishFlatten(f *flatten) {
	if f.proposed {
		return
	}
	if f.failed != OK {
		n.endFlatten(f, f.failed)
		return
	}
	f.proposed = true
	n.propose(&Cmd{Type: CmdFlattened, VID: f.vid}, func(res Result) { n.endFlatten(f, res.Code) })
}

func (n *Node) endFlatten(f *flatten, code Code) {
	if n.flattens[f.vid] != f {
		return
	}
	delete(n.flattens, f.vid)
	for _, id := range f.waiting {
		n.reply(Reply{ID: id, Code: code, VID: f.vid})
	}
}
