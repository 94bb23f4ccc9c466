package sim

import (
	"fmt"
	"slices"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// The VDI lifecycle in the workload: while clients write, a lifecycle
// loop takes snapshots (live), clones snapshots into new volumes with
// writers of their own, rolls volumes back, flattens clones and deletes
// snapshots and clones, one action at a time, through random nodes.
//
// How the checks see it:
//   - A snapshot is a read of every block of its volume, linearized
//     between the snapshot's call and return; its value is what the
//     snapshot holds, read once right after it returned ("captured").
//     Every later read of the snapshot must return exactly that, and so
//     must the final read after the power loss (checkSnapshots).
//   - A clone is a new volume whose blocks are first written, between the
//     clone's call and return, with the snapshot's values; a rollback
//     writes every block of its volume with them. Porcupine then checks
//     each volume per block as before, so clone and parent must diverge
//     independently.
//   - No object a table references is ever missing (checkReferences), and
//     once every VDI is deleted and reclaim ran, no object and no VDI
//     record is left anywhere (checkEmpty).

// snapshot is a snapshot the workload took.
type snapshot struct {
	vol       *volume
	vid       uint32
	call      int64
	ret       int64
	values    []uint64 // per block, once captured
	deleted   bool
	maybeGone bool // a delete of it got no reply: it may have taken effect
	clones    int
}

const (
	maxVolumes   = 5 // live volumes (clones included)
	maxSnapshots = 6 // live snapshots
)

// lifecycleLoop starts one lifecycle action now and then.
func (s *Sim) lifecycleLoop() {
	if s.checking || s.opsStarted >= s.cfg.Ops || s.lulled(s.lifecycleLoop) {
		return
	}
	if !s.lifeBusy {
		var acts []func()
		live := s.liveVolumes()
		snaps := s.liveSnapshots()
		if v := s.pickVolume(live); v != nil && len(snaps) < maxSnapshots {
			acts = append(acts, func() { s.takeSnapshot(v) }, func() { s.takeSnapshot(v) })
		}
		if sn := s.pickSnapshot(snaps); sn != nil && len(live) < maxVolumes {
			acts = append(acts, func() { s.cloneSnapshot(sn) })
		}
		if sn := s.pickSnapshot(snaps); sn != nil && !sn.vol.deleted {
			acts = append(acts, func() { s.rollback(sn) })
		}
		if v := s.pickVolume(live); v != nil && v.clone {
			acts = append(acts, func() { s.flatten(v) })
		}
		if sn := s.pickSnapshot(snaps); sn != nil && len(snaps) > 1 {
			acts = append(acts, func() { s.deleteSnapshot(sn) })
		}
		// Deleting a snapshot that clones were made from leaves objects
		// that only the clones use: what reclaim must keep.
		var cloned []*snapshot
		for _, sn := range snaps {
			if sn.clones > 0 {
				cloned = append(cloned, sn)
			}
		}
		if sn := s.pickSnapshot(cloned); sn != nil {
			acts = append(acts, func() { s.deleteSnapshot(sn) })
		}
		if v := s.pickVolume(live); v != nil && v.clone && len(live) > 2 {
			acts = append(acts, func() { s.deleteVolume(v) })
		}
		if len(acts) > 0 {
			s.lifeBusy = true
			acts[s.rng.IntN(len(acts))]()
		}
	}
	s.at(int64(50+s.rng.IntN(200))*ms, s.lifecycleLoop)
}

func (s *Sim) lifeDone() { s.lifeBusy = false }

func (s *Sim) liveVolumes() []*volume {
	var out []*volume
	for _, v := range s.vdis {
		if !v.deleted {
			out = append(out, v)
		}
	}
	return out
}

func (s *Sim) liveSnapshots() []*snapshot {
	var out []*snapshot
	for _, sn := range s.snaps {
		if !sn.deleted && sn.values != nil {
			out = append(out, sn)
		}
	}
	return out
}

func (s *Sim) pickVolume(vs []*volume) *volume {
	if len(vs) == 0 {
		return nil
	}
	return vs[s.rng.IntN(len(vs))]
}

func (s *Sim) pickSnapshot(ss []*snapshot) *snapshot {
	if len(ss) == 0 {
		return nil
	}
	return ss[s.rng.IntN(len(ss))]
}

// lifeRequest sends an admin request through a random serving node; then
// gets the reply, or ok=false if none came within the wait (the outcome is
// then unknown).
func (s *Sim) lifeRequest(what string, r *core.Request, then func(rep core.Reply, ok bool)) {
	var cands []*node
	for _, nd := range s.liveNodes() {
		if nd.n.Serving() {
			cands = append(cands, nd)
		}
	}
	nd := s.pick(cands)
	if nd == nil {
		then(core.Reply{}, false)
		return
	}
	settled := false
	s.request(nd, r, func(rep core.Reply) {
		if settled {
			return
		}
		settled = true
		s.tracef("lifecycle %s through node %d: %v", what, nd.info.ID, rep.Code)
		then(rep, true)
	})
	// No reply in time (a crash, or a build that waits for a member that
	// is down): give up; whatever happened, happened.
	s.at(8000*ms, func() {
		if !settled {
			settled = true
			s.tracef("lifecycle %s through node %d: no reply", what, nd.info.ID)
			then(core.Reply{}, false)
		}
	})
}

// takeSnapshot snapshots v while its clients go on writing.
func (s *Sim) takeSnapshot(v *volume) {
	call := s.now
	s.lifeRequest("snapshot "+v.name, &core.Request{Type: core.ReqSnapshot, Name: v.name}, func(rep core.Reply, ok bool) {
		if !ok || rep.Code != core.OK {
			s.lifeDone()
			return
		}
		v.vid = rep.VID
		sn := &snapshot{vol: v, vid: rep.Snap, call: call, ret: s.now}
		s.snaps = append(s.snaps, sn)
		s.captureSnapshot(sn, s.lifeDone)
	})
}

// captureSnapshot reads the whole snapshot once: its values from now on,
// and a read of its volume at the snapshot's linearization point.
func (s *Sim) captureSnapshot(sn *snapshot, then func()) {
	size := uint64(sn.vol.blocks * s.cfg.BlockSize)
	s.adminUntilOK("capture snapshot", func() *core.Request {
		return &core.Request{Type: core.ReqRead, VID: sn.vid, Len: size, Exact: true}
	}, func(rep core.Reply) {
		bs := s.cfg.BlockSize
		sn.values = make([]uint64, sn.vol.blocks)
		for b := range sn.values {
			val, ok := decode(rep.Data[b*bs : (b+1)*bs])
			if !ok {
				s.problem("snapshot %06x of volume %d: block %d is torn", sn.vid, sn.vol.idx, b)
			}
			sn.values[b] = val
			id := s.hist.Invoke(snapClient, s.blockKey(sn.vol, b), linearizability.Read, 0, sn.call, fmt.Sprintf("snapshot %06x", sn.vid))
			s.hist.Complete(id, val, sn.ret)
		}
		then()
	})
}

// snapClient is the visualisation row of snapshots, clones and rollbacks.
const snapClient = 1000

// snapReader reads a random block of a random live snapshot now and then:
// it must hold what the snapshot held when it was captured.
func (s *Sim) snapReader() {
	if s.checking || s.opsStarted >= s.cfg.Ops || s.lulled(s.snapReader) {
		return
	}
	defer s.at(int64(20+s.rng.IntN(60))*ms, s.snapReader)
	sn := s.pickSnapshot(s.liveSnapshots())
	if sn == nil {
		return
	}
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
	b := s.rng.IntN(sn.vol.blocks)
	bs := s.cfg.BlockSize
	s.request(nd, &core.Request{Type: core.ReqRead, VID: sn.vid, Off: uint64(b * bs), Len: uint64(bs), Exact: true}, func(rep core.Reply) {
		if rep.Code != core.OK {
			return // a read may fail; it must not lie
		}
		if val, _ := decode(rep.Data); val != sn.values[b] {
			s.problem("snapshot %06x of volume %d block %d read %#x through node %d at %dµs, captured %#x", sn.vid, sn.vol.idx, b, val,
				nd.info.ID, s.now, sn.values[b])
		}
	})
}

// pauseVolume stops v's clients from starting operations and runs then
// once none is pending.
func (s *Sim) pauseVolume(v *volume, then func()) {
	v.paused = true
	s.waitFor("the clients of "+v.name+" to pause", convergeTimeout, func() bool {
		for _, c := range v.clients {
			if c.pending != nil {
				return false
			}
		}
		return v.attaching == nil
	}, then)
}

func (s *Sim) resumeVolume(v *volume) {
	v.paused = false
	v.gw, v.force = nil, true // attach again (the old attacher may be gone)
	for _, c := range v.clients {
		s.at(int64(s.rng.IntN(3*ms)), func() { s.clientNext(c) })
	}
}

// cloneSnapshot makes a new volume from sn, with writers of its own.
func (s *Sim) cloneSnapshot(sn *snapshot) {
	name := fmt.Sprintf("vdi%d", len(s.vdis))
	call := s.now
	s.lifeRequest("clone "+name, &core.Request{Type: core.ReqClone, VID: sn.vid, Name: name}, func(rep core.Reply, ok bool) {
		defer s.lifeDone()
		if !ok || rep.Code != core.OK {
			return // a clone whose outcome is unknown is deleted at the end with the rest
		}
		v := s.addVolume(name, rep.VID, sn.vol.blockShift)
		v.clone = true
		sn.clones++
		for b, val := range sn.values {
			s.initialWrite(v, b, val, call, s.now, "clone of "+fmt.Sprintf("%06x", sn.vid))
		}
		s.startClients(v)
	})
}

// initialWrite records that block b of v holds val from [call, ret]: the
// data a clone or rollback starts from, durable from then on.
func (s *Sim) initialWrite(v *volume, b int, val uint64, call, ret int64, note string) {
	id := s.hist.Invoke(snapClient, s.blockKey(v, b), linearizability.Write, val, call, note)
	s.hist.Complete(id, 0, ret)
	v.writes[b] = append(v.writes[b], &writeRec{value: val, call: call, ret: ret, ok: true})
	if b == 0 {
		v.flushes = append(v.flushes, flushRec{call: ret + 1, ret: ret + 1})
	}
}

// rollback makes sn's volume read as sn again: its clients pause and
// detach first (a rollback is refused while the VDI is attached).
func (s *Sim) rollback(sn *snapshot) {
	v := sn.vol
	s.pauseVolume(v, func() {
		detach := func(then func()) {
			// Detach where the lock is, as far as the cluster knows (a
			// client that gave up on its gateway left the lock there).
			var gw *node
			if w := s.latest().LookupVDI(v.name); w != nil && w.Owner != 0 {
				if nd := s.byID[w.Owner]; nd != nil && nd.up && nd.info.Incarnation == w.OwnerInc {
					gw = nd
				}
			}
			if gw == nil {
				then()
				return
			}
			vid := s.latest().LookupVDI(v.name).ID
			s.request(gw, &core.Request{Type: core.ReqDetach, VID: vid}, func(core.Reply) { then() })
			gen := gw.gen
			s.at(2000*ms, func() {
				if gw.gen != gen {
					then() // crashed meanwhile: its lock ends with it
				}
			})
		}
		done := false
		detach(func() {
			if done {
				return
			}
			done = true
			s.tryRollback(sn, 0)
		})
	})
}

func (s *Sim) tryRollback(sn *snapshot, attempt int) {
	v := sn.vol
	call := s.now
	var ids []linearizability.OpID
	for b := range sn.values {
		ids = append(ids, s.hist.Invoke(snapClient, s.blockKey(v, b), linearizability.Write, sn.values[b], call, fmt.Sprintf("rollback to %06x", sn.vid)))
	}
	s.lifeRequest("rollback "+v.name, &core.Request{Type: core.ReqRollback, Name: v.name, VID: sn.vid}, func(rep core.Reply, ok bool) {
		switch {
		case ok && rep.Code == core.OK:
			v.vid = rep.VID
			for b, id := range ids {
				s.hist.Complete(id, 0, s.now)
				v.writes[b] = append(v.writes[b], &writeRec{value: sn.values[b], call: call, ret: s.now, ok: true})
			}
			v.flushes = append(v.flushes, flushRec{call: s.now + 1, ret: s.now + 1})
		case ok && (rep.Code == core.ErrLocked || rep.Code == core.ErrBusy || rep.Code == core.ErrNotReady) && attempt < 5:
			for _, id := range ids {
				s.hist.Fail(id)
			}
			s.at(500*ms, func() { s.tryRollback(sn, attempt+1) })
			return
		case ok && rep.Code != core.ErrTimeout:
			for _, id := range ids {
				s.hist.Fail(id) // refused: no effect
			}
		default:
			// No answer, or the gateway gave up waiting: the rollback is
			// in the cluster log or not, and may take effect later.
			for b, id := range ids {
				s.hist.Unknown(id)
				v.writes[b] = append(v.writes[b], &writeRec{value: sn.values[b], call: call, ret: linearizability.Pending})
			}
			if w := s.latest().LookupVDI(v.name); w != nil {
				v.vid = w.ID
			}
		}
		s.resumeVolume(v)
		s.lifeDone()
	})
}

// flatten copies everything a clone shares, through its attacher.
func (s *Sim) flatten(v *volume) {
	gw := v.gw
	if gw == nil || !gw.up || gw.gen != v.gwGen {
		s.lifeDone()
		return
	}
	settled := false
	s.request(gw, &core.Request{Type: core.ReqFlatten, VID: v.vid}, func(rep core.Reply) {
		if !settled {
			settled = true
			s.tracef("lifecycle flatten %s through node %d: %v", v.name, gw.info.ID, rep.Code)
			s.lifeDone()
		}
	})
	s.at(8000*ms, func() {
		if !settled {
			settled = true
			s.lifeDone()
		}
	})
}

func (s *Sim) deleteSnapshot(sn *snapshot) {
	s.lifeRequest(fmt.Sprintf("delete snapshot %06x", sn.vid), &core.Request{Type: core.ReqDeleteVDI, VID: sn.vid}, func(rep core.Reply, ok bool) {
		if ok && (rep.Code == core.OK || rep.Code == core.ErrNoVDI) {
			sn.deleted = true
		}
		sn.maybeGone = sn.maybeGone || !ok
		s.lifeDone()
	})
}

// deleteVolume deletes a clone volume for good, attached or not.
func (s *Sim) deleteVolume(v *volume) {
	s.pauseVolume(v, func() {
		s.lifeRequest("delete "+v.name, &core.Request{Type: core.ReqDeleteVDI, Name: v.name, Force: true}, func(rep core.Reply, ok bool) {
			if ok && rep.Code == core.OK {
				v.deleted = true
				for _, c := range v.clients {
					c.stopped = true
				}
				s.lifeDone()
				s.maybeWorkloadDone()
				return
			}
			v.maybeGone = v.maybeGone || !ok
			s.resumeVolume(v)
			s.lifeDone()
		})
	})
}

// vdiGone reports whether the cluster has no live VDI vid: what decides a
// delete that got no reply (its node crashed after it was committed, or
// before).
func (s *Sim) vdiGone(vid uint32) bool {
	v := s.latest().VDI(vid)
	return v == nil || v.Deleted
}

// checkSnapshots reads every live snapshot whole: it must hold what it
// held when captured (after healing, and again after the power loss).
func (s *Sim) checkSnapshots(what string, then func()) {
	snaps := s.liveSnapshots()
	var run func(i int)
	run = func(i int) {
		if i == len(snaps) {
			then()
			return
		}
		sn := snaps[i]
		if sn.maybeGone && s.vdiGone(sn.vid) {
			// The delete that got no reply was committed after all.
			sn.deleted = true
			run(i + 1)
			return
		}
		size := uint64(sn.vol.blocks * s.cfg.BlockSize)
		s.adminUntilOK("read snapshot", func() *core.Request {
			return &core.Request{Type: core.ReqRead, VID: sn.vid, Len: size, Exact: true}
		}, func(rep core.Reply) {
			bs := s.cfg.BlockSize
			bad := 0
			for b, want := range sn.values {
				if got, _ := decode(rep.Data[b*bs : (b+1)*bs]); got != want {
					if bad++; bad <= 3 {
						s.problem("%s: snapshot %06x of volume %d block %d holds %#x, captured %#x", what, sn.vid, sn.vol.idx, b, got, want)
					}
				}
			}
			if bad > 3 {
				s.problem("%s: snapshot %06x: %d more blocks differ", what, sn.vid, bad-3)
			}
			run(i + 1)
		})
	}
	run(0)
}

// checkReferences: every object a live VDI's table names exists on its
// replicas.
func (s *Sim) checkReferences(then func()) {
	cs := s.latest()
	s.referenced = map[core.OID]bool{}
	var tabled []core.VDI
	for _, v := range cs.VDIs() {
		if v.Table && !v.Building {
			tabled = append(tabled, v)
		}
	}
	var run func(i int)
	run = func(i int) {
		if i == len(tabled) {
			then()
			return
		}
		v := tabled[i]
		s.adminUntilOK("table", func() *core.Request {
			return &core.Request{Type: core.ReqTable, VID: v.ID, Exact: true}
		}, func(rep core.Reply) {
			cs := s.latest()
			ring := core.NewRing(cs.Nodes)
			for idx := 0; 4*idx+4 <= len(rep.Data); idx++ {
				owner := uint32(rep.Data[4*idx]) | uint32(rep.Data[4*idx+1])<<8 | uint32(rep.Data[4*idx+2])<<16 | uint32(rep.Data[4*idx+3])<<24
				if owner == 0 {
					continue
				}
				oid := core.DataOID(owner, uint32(idx))
				s.referenced[oid] = true
				o := cs.VDI(owner)
				if o == nil {
					s.problem("VDI %06x index %d refers to VDI %06x, which is purged", v.ID, idx, owner)
					continue
				}
				for _, id := range ring.Place(nil, oid, int(o.Copies)) {
					if nd := s.byID[id]; nd.disk.current[oid] == nil {
						s.problem("VDI %06x index %d refers to object %v, missing on replica node %d", v.ID, idx, oid, id)
					}
				}
			}
			run(i + 1)
		})
	}
	run(0)
}

// deleteEverything deletes every VDI the cluster has, then checks that
// once reclaim is done nothing is left: no VDI record and no object on
// any running node.
func (s *Sim) deleteEverything(then func()) {
	deadline := s.now + convergeTimeout
	var run func()
	run = func() {
		vs := s.latest().VDIs()
		if len(vs) == 0 {
			s.waitFor("reclaim to finish", convergeTimeout, func() bool {
				if !s.converged() {
					return false
				}
				for _, nd := range s.liveNodes() {
					if nd.n.IsLeader() && len(nd.n.Jobs()) > 0 {
						return false
					}
				}
				return len(s.latest().Records()) == 0
			}, func() {
				s.at(1000*ms, func() {
					s.checkEmpty()
					then()
				})
			})
			return
		}
		if s.now > deadline {
			s.problem("could not delete every VDI: %d left", len(vs))
			then()
			return
		}
		v := vs[0]
		s.lifeRequest(fmt.Sprintf("delete %06x", v.ID), &core.Request{Type: core.ReqDeleteVDI, VID: v.ID, Force: true}, func(rep core.Reply, ok bool) {
			if !ok || rep.Code != core.OK {
				s.at(50*ms, run)
				return
			}
			run()
		})
	}
	run()
}

func (s *Sim) checkEmpty() {
	if rs := s.latest().Records(); len(rs) > 0 {
		s.problem("after deleting everything %d VDI records are left (first %06x)", len(rs), rs[0].ID)
	}
	for _, nd := range s.liveNodes() {
		if len(nd.disk.current) == 0 {
			continue
		}
		oids := make([]core.OID, 0, len(nd.disk.current))
		for oid := range nd.disk.current {
			oids = append(oids, oid)
		}
		slices.Sort(oids)
		s.problem("after deleting everything node %d still stores %d objects (first %v)", nd.info.ID, len(oids), oids[0])
	}
}
