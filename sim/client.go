package sim

import (
	"encoding/binary"
	"fmt"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// volume is a simulated VDI with its clients: one attachment (one VM) and
// several concurrent requests from it.
type volume struct {
	idx        int
	name       string
	vid        uint32
	gw         *node
	gwGen      int
	attaching  *node
	nextAttach int64
	force      bool // take the attach lock over from a live holder
	clients    []*client
	blocks     int
	hot        []int
	writes     map[int][]*writeRec // every write per block (ret is pending until it completes), for the durability check
	flushes    []flushRec
	blockShift uint8
	clone      bool // made by cloning a snapshot
	paused     bool // a lifecycle action waits for the clients to stand still
	deleted    bool
	maybeGone  bool // a delete of it got no reply: it may have taken effect
}

type writeRec struct {
	value     uint64
	call, ret int64
	ok        bool
}

type flushRec struct{ call, ret int64 }

type client struct {
	id       int
	vol      *volume
	pending  *pendingOp
	stopped  bool
	observer bool // reads only, each time through a random node (a backup tool reading the live volume)
}

type pendingOp struct {
	abandoned bool // the client gave up waiting; a late reply still settles a write
	kind      core.ReqType
	first     int
	blocks    int
	values    []uint64
	hids      []linearizability.OpID
	recs      []*writeRec
	gw        *node
	gwGen     int
	call      int64
}

// tornBit marks the value of a read whose block mixed two writes: no
// write ever has it, so the checker rejects the history.
const tornBit = 1 << 63

// fill writes value into every 8-byte word of a block.
func fill(b []byte, value uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], value)
	}
}

// decode reads a block's value; a block whose words differ is torn.
func decode(b []byte) (uint64, bool) {
	v := binary.LittleEndian.Uint64(b)
	for i := 8; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != v {
			return v | tornBit, false
		}
	}
	return v, true
}

func (s *Sim) blockKey(v *volume, b int) uint64 { return uint64(v.idx)<<32 | uint64(b) }

// clientNext starts the client's next operation.
func (s *Sim) clientNext(c *client) {
	if c.pending != nil || c.stopped || s.lulled(func() { s.clientNext(c) }) {
		return
	}
	if c.vol.paused {
		s.at(20*ms, func() { s.clientNext(c) })
		return
	}
	if s.opsStarted >= s.cfg.Ops {
		c.stopped = true
		s.maybeWorkloadDone()
		return
	}
	v := c.vol
	gw := v.gw
	if c.observer {
		var cands []*node
		for _, nd := range s.liveNodes() {
			if nd.n.Serving() {
				cands = append(cands, nd)
			}
		}
		if gw = s.pick(cands); gw == nil {
			s.at(5*ms, func() { s.clientNext(c) })
			return
		}
	} else if gw == nil || !gw.up || gw.gen != v.gwGen {
		s.attach(v)
		s.at(5*ms, func() { s.clientNext(c) })
		return
	}
	bs := s.cfg.BlockSize
	perObj := (1 << v.blockShift) / bs
	op := &pendingOp{gw: gw, gwGen: gw.gen, call: s.now}
	first := v.hot[s.rng.IntN(len(v.hot))]
	if s.rng.IntN(100) < 20 {
		first = s.rng.IntN(v.blocks)
	}
	count := 1
	if s.rng.IntN(100) < 15 && first+1 < v.blocks {
		count = 2
	}
	req := &core.Request{VID: v.vid}
	if c.observer {
		req.VID = s.readVID(v) // a reader that looked the VDI up by name just now
	}
	r := s.rng.IntN(100)
	if c.observer {
		r = 50
	}
	switch {
	case r < 45:
		op.kind = core.ReqWrite
		req.FUA = s.rng.IntN(10) == 0
	case r < 85:
		op.kind = core.ReqRead
	case r < 92:
		op.kind = core.ReqFlush
		count = 0
	case r < 97:
		op.kind = core.ReqZero
		req.NoHole = s.rng.IntN(2) == 0
	default:
		op.kind = core.ReqTrim
		first = first / perObj * perObj
		count = perObj
	}
	req.Type = op.kind
	op.first, op.blocks = first, count
	req.Off = uint64(first * bs)
	req.Len = uint64(count * bs)
	s.opsStarted++
	note := fmt.Sprintf("c%d %v gw=%d", c.id, op.kind, gw.info.ID)
	switch op.kind {
	case core.ReqWrite:
		req.Data = make([]byte, req.Len)
		for i := 0; i < count; i++ {
			s.nextValue++
			val := s.nextValue
			fill(req.Data[i*bs:(i+1)*bs], val)
			op.values = append(op.values, val)
			op.hids = append(op.hids, s.hist.Invoke(c.id, s.blockKey(v, first+i), linearizability.Write, val, s.now, note))
		}
	case core.ReqZero, core.ReqTrim:
		for i := 0; i < count; i++ {
			op.values = append(op.values, 0)
			op.hids = append(op.hids, s.hist.Invoke(c.id, s.blockKey(v, first+i), linearizability.Write, 0, s.now, note))
		}
	}
	for i, val := range op.values {
		w := &writeRec{value: val, call: s.now, ret: linearizability.Pending}
		op.recs = append(op.recs, w)
		v.writes[first+i] = append(v.writes[first+i], w)
	}
	switch op.kind {
	case core.ReqRead:
		for i := 0; i < count; i++ {
			op.hids = append(op.hids, s.hist.Invoke(c.id, s.blockKey(v, first+i), linearizability.Read, 0, s.now, note))
		}
	}
	c.pending = op
	s.request(gw, req, func(rep core.Reply) { s.clientDone(c, op, rep) })
	if c.pending == op {
		// A client whose gateway stops answering gives up on it and
		// moves the volume to another node, taking the attach lock over
		// (as a VM restarted elsewhere would): its later reads then see
		// the cluster through another gateway.
		wait := int64(300+s.rng.IntN(700)) * ms
		if c.observer {
			wait = int64(30+s.rng.IntN(70)) * ms // a reader just tries elsewhere
		}
		s.at(wait, func() {
			if c.pending != op {
				return
			}
			c.pending = nil
			s.opsFailed++
			op.abandoned = true
			if op.kind == core.ReqRead {
				s.resolveLost(op)
			} // a write stays open: its late reply, if any, tells when it took effect
			if !c.observer && v.gw == op.gw && v.gwGen == op.gwGen {
				s.tracef("volume %d: client %d gives up on gateway %d", v.idx, c.id, op.gw.info.ID)
				v.gw = nil
				v.force = true
			}
			s.at(int64(s.rng.IntN(3*ms)), func() { s.clientNext(c) })
		})
	}
}

// readVID is the VDI id of v by its name, as the cluster state of some
// running node has it (the observer's view may lag the volume's).
func (s *Sim) readVID(v *volume) uint32 {
	if cs := s.latest(); cs != nil {
		if w := cs.LookupVDI(v.name); w != nil {
			return w.ID
		}
	}
	return v.vid
}

func (s *Sim) clientDone(c *client, op *pendingOp, rep core.Reply) {
	if op.abandoned {
		if op.kind != core.ReqRead {
			if rep.Code == core.OK {
				// The write took effect by now, but the client never saw
				// it complete: no flush of the client covers it.
				for i, id := range op.hids {
					s.hist.Complete(id, 0, s.now)
					op.recs[i].ret = s.now
				}
			} else {
				s.resolveLost(op)
			}
		}
		return
	}
	if c.pending != op {
		return
	}
	c.pending = nil
	v := c.vol
	bs := s.cfg.BlockSize
	if rep.Code == core.ErrNotReady && op.kind != core.ReqRead {
		// Refused before anything was sent: no effect.
		s.opsFailed++
		for _, id := range op.hids {
			s.hist.Fail(id)
		}
		for _, w := range op.recs {
			w.ret = -1
		}
	} else if rep.Code != core.OK {
		s.opsFailed++
		s.resolveLost(op)
	} else {
		s.opsDone++
		switch op.kind {
		case core.ReqRead:
			for i, id := range op.hids {
				val, ok := decode(rep.Data[i*bs : (i+1)*bs])
				if !ok {
					s.problem("torn read of volume %d block %d at %dµs", v.idx, op.first+i, s.now)
				}
				s.hist.Complete(id, val, s.now)
			}
		case core.ReqWrite, core.ReqZero, core.ReqTrim:
			for i, id := range op.hids {
				s.hist.Complete(id, 0, s.now)
				op.recs[i].ret, op.recs[i].ok = s.now, true
			}
		case core.ReqFlush:
			v.flushes = append(v.flushes, flushRec{call: op.call, ret: s.now})
		}
	}
	s.at(int64(s.rng.IntN(3*ms)), func() { s.clientNext(c) })
}

// resolveLost records an operation whose outcome is unknown: a write may
// or may not have taken effect; a read had no effect.
func (s *Sim) resolveLost(op *pendingOp) {
	for _, id := range op.hids {
		if op.kind == core.ReqRead {
			s.hist.Fail(id)
		} else {
			s.hist.Unknown(id)
		}
	}
}

// nodeLost fails the client operations of a node that crashed: their
// replies will never come.
func (s *Sim) nodeLost(nd *node) {
	for _, v := range s.vdis {
		if v.attaching == nd {
			v.attaching = nil
		}
		for _, c := range v.clients {
			if op := c.pending; op != nil && op.gw == nd {
				c.pending = nil
				s.opsFailed++
				s.resolveLost(op)
				s.at(int64(s.rng.IntN(3*ms)), func() { s.clientNext(c) })
			}
		}
	}
}

// attach finds a gateway for a volume whose gateway is gone.
func (s *Sim) attach(v *volume) {
	if v.attaching != nil || s.now < v.nextAttach || v.paused || v.deleted {
		return
	}
	v.nextAttach = s.now + 30*ms
	var cands []*node
	for _, nd := range s.liveNodes() {
		if nd.n.Serving() {
			cands = append(cands, nd)
		}
	}
	nd := s.pick(cands)
	if nd == nil {
		return
	}
	v.attaching = nd
	gen := nd.gen
	s.request(nd, &core.Request{Type: core.ReqAttach, VID: v.vid, Force: v.force}, func(rep core.Reply) {
		if v.attaching != nd {
			return
		}
		v.attaching = nil
		if rep.Code == core.OK && nd.up && nd.gen == gen && !v.paused {
			v.gw, v.gwGen, v.force = nd, gen, false
			s.tracef("volume %d attached at node %d", v.idx, nd.info.ID)
		}
	})
}
