package sim

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// checkTimeout bounds porcupine per block; a block it cannot decide in
// time counts as a failure.
const checkTimeout = 30 * time.Second

func checkLinearizable(h *linearizability.History) linearizability.Result {
	return linearizability.Check(h, checkTimeout)
}

// checkRedundancy: after healing, every object is on exactly its replicas
// of the current epoch, all with the same version and the same bytes.
func (s *Sim) checkRedundancy() {
	live := s.liveNodes()
	cs := live[0].n.Cluster()
	ring := core.NewRing(cs.Nodes)
	holders := map[core.OID][]*node{}
	for _, nd := range live {
		for oid := range nd.disk.current {
			holders[oid] = append(holders[oid], nd)
		}
	}
	oids := make([]core.OID, 0, len(holders))
	for oid := range holders {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	problems := 0
	report := func(format string, args ...any) {
		problems++
		if problems <= 10 {
			s.problem(format, args...)
		}
	}
	for _, oid := range oids {
		v := cs.VDI(oid.VID())
		if v == nil {
			report("object %v of a purged VDI is still stored on %d nodes", oid, len(holders[oid]))
			continue
		}
		if oid.IsTable() && (v.Deleted || !v.Table) {
			report("table object %v of a VDI without a table (deleted or flattened) is still stored on %d nodes", oid, len(holders[oid]))
			continue
		}
		if v.Deleted && oid.IsData() && s.referenced != nil && !s.referenced[oid] {
			// Garbage of a deleted VDI that no table names any more,
			// waiting for reclaim: no check repairs it, and nothing
			// reads it. Reclaim must still remove it (checkEmpty).
			continue
		}
		want := ring.Place(nil, oid, int(v.Copies))
		var ref *simObj
		var refNode *node
		for _, id := range want {
			nd := s.byID[id]
			o := nd.disk.current[oid]
			if o == nil {
				report("object %v missing on replica node %d", oid, id)
				continue
			}
			if nd.disk.corrupt[oid] {
				report("object %v corrupted on node %d and never repaired", oid, id)
			}
			if ref == nil {
				ref, refNode = o, nd
				continue
			}
			if o.meta != ref.meta || !sameData(o.data, ref.data) {
				report("object %v differs: node %d has %+v, node %d has %+v", oid, refNode.info.ID, ref.meta, id, o.meta)
			}
		}
		for _, nd := range holders[oid] {
			if !slices.Contains(want, nd.info.ID) {
				report("object %v has an extra copy on node %d (replicas %v)", oid, nd.info.ID, want)
			}
		}
	}
	if problems > 10 {
		s.problem("... and %d more redundancy problems", problems-10)
	}
}

func sameData(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return allZero(a) && allZero(b)
	}
	return bytes.Equal(a, b)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// powerLoss cuts power to every node at once, restarts them and checks
// that every write completed before a completed flush survived.
func (s *Sim) powerLoss(then func()) {
	s.tracef("power loss")
	for _, nd := range s.liveNodes() {
		s.crashNode(nd)
	}
	s.at(100*ms, func() {
		for _, nd := range s.nodes {
			if nd.started && !nd.left {
				s.startNode(nd)
			}
		}
		s.waitConverged(func() { s.readBack(then) })
	})
}

// eachVolume runs step on every volume in turn, then then; step calls
// next when it is done with its volume.
func (s *Sim) eachVolume(then func(), step func(v *volume, next func())) {
	var run func(i int)
	run = func(i int) {
		if i == len(s.vdis) {
			then()
			return
		}
		v := s.vdis[i]
		if v.maybeGone && !v.deleted && s.vdiGone(v.vid) {
			// The delete that got no reply was committed after all.
			v.deleted = true
			for _, c := range v.clients {
				c.stopped = true
			}
		}
		if v.deleted {
			run(i + 1)
			return
		}
		step(s.vdis[i], func() { run(i + 1) })
	}
	run(0)
}

// readVolume reads v in full, retrying until it succeeds.
func (s *Sim) readVolume(v *volume, what string, then func(data []byte)) {
	size := uint64(v.blocks * s.cfg.BlockSize)
	s.adminUntilOK(fmt.Sprintf("%s of %s (%06x)", what, v.name, v.vid), func() *core.Request {
		return &core.Request{Type: core.ReqRead, VID: v.vid, Len: size}
	}, func(rep core.Reply) { then(rep.Data) })
}

// readBack reads every volume in full and checks durability.
func (s *Sim) readBack(then func()) {
	s.eachVolume(then, func(v *volume, next func()) {
		s.readVolume(v, "read back", func(data []byte) {
			s.checkDurable(v, data)
			next()
		})
	})
}

// checkMaps reads every volume in full and then asks for its allocation
// map: an object that holds a non-zero byte must be reported allocated
// (sparse-aware copies such as qemu-img convert skip what is reported as
// a hole). With the clients stopped nothing changes in between.
func (s *Sim) checkMaps(then func()) {
	s.eachVolume(then, func(v *volume, next func()) {
		size := uint64(v.blocks * s.cfg.BlockSize)
		s.readVolume(v, "read "+v.name, func(data []byte) {
			s.adminUntilOK("map "+v.name, func() *core.Request {
				return &core.Request{Type: core.ReqMap, VID: v.vid, Len: size}
			}, func(mp core.Reply) {
				obj := uint64(1) << v.blockShift
				if want := (size + obj - 1) / obj; uint64(len(mp.Data)) != want {
					s.problem("volume %d: map has %d entries for %d objects", v.idx, len(mp.Data), want)
				} else {
					for o := range mp.Data {
						part := data[uint64(o)*obj : min(uint64(o+1)*obj, size)]
						if mp.Data[o] == 0 && !isZeros(part) {
							s.problem("volume %d: object %d holds data but is mapped as a hole", v.idx, o)
						}
					}
				}
				next()
			})
		})
	})
}

func isZeros(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checkDurable: the value a block holds after power loss must come from a
// write that no flushed write strictly follows.
func (s *Sim) checkDurable(v *volume, data []byte) {
	var flushedBefore int64 = -1 // writes that returned before this were flushed
	for _, f := range v.flushes {
		flushedBefore = max(flushedBefore, f.call)
	}
	bs := s.cfg.BlockSize
	for b := 0; b < v.blocks; b++ {
		val, ok := decode(data[b*bs : (b+1)*bs])
		if !ok {
			s.problem("after power loss volume %d block %d is torn", v.idx, b)
			continue
		}
		var latestFlushedCall int64 = -1
		for _, w := range v.writes[b] {
			if w.ok && w.ret < flushedBefore {
				latestFlushedCall = max(latestFlushedCall, w.call)
			}
		}
		// Candidates for the value: the writes of it, and the initial zeros.
		good := false
		if val == 0 && latestFlushedCall < 0 {
			good = true
		}
		for _, w := range v.writes[b] {
			if w.value == val && w.ret >= latestFlushedCall && w.ret != -1 {
				good = true
			}
		}
		if !good {
			s.problem("after power loss volume %d block %d holds %#x, older than a flushed write", v.idx, b, val)
		}
	}
}
