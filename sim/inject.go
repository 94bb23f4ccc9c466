package sim

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sheepdog-go/sheepdog/core"
)

// impaired counts the nodes that may hold less than their share of the
// data right now: members that are down or cut off, nodes that are not
// serving or have not finished recovery, and the members missing to
// place every copy (fewer members than copies). Faults are only injected
// while fewer than Copies-1 are impaired, the condition under which no
// acknowledged write may be lost.
func (s *Sim) impaired() int {
	cs := s.latest()
	if cs == nil {
		return 0
	}
	bad := map[core.NodeID]bool{}
	for _, nd := range s.nodes {
		if !nd.started {
			continue
		}
		member := cs.IsMember(nd.info.ID, nd.info.Incarnation)
		switch {
		case !nd.up:
			if _, ok := cs.Member(nd.info.ID); ok && !nd.left || member {
				bad[nd.info.ID] = true
			}
		case s.isolated(nd) || !nd.n.Serving() || !nd.n.Recovery().Finished || len(nd.disk.corrupt) > 0 ||
			nd.full || nd.n.Stats().Refill > 0:
			// (a full disk may drop copies it cannot update: it counts
			// until it has taken them back)
			// (a node holding a corrupted replica counts until it is repaired)
			bad[nd.info.ID] = true
		}
	}
	// Nodes whose data the cluster has not re-replicated yet: removed
	// since the last full recovery, or restarted and not recovered.
	for _, id := range cs.Removed {
		if _, ok := cs.Member(id); !ok {
			bad[id] = true
		}
	}
	for _, id := range cs.Restarted {
		bad[id] = true
	}
	// Identities lost with a wiped disk, until the cluster removes them.
	for _, id := range s.wipedIDs {
		if _, ok := cs.Member(id); ok {
			bad[id] = true
		}
	}
	// With fewer members than copies every object lacks that many
	// replicas: as if that many members were down.
	short := max(s.cfg.Copies-len(cs.Nodes), 0)
	return len(bad) + short
}

func (s *Sim) isolated(nd *node) bool {
	for k := range s.net.blocked {
		if k[0] == nd.idx || k[1] == nd.idx {
			return true
		}
	}
	return false
}

type faultAction struct {
	kind Faults
	fn   func()
}

// faultLoop injects one fault at a time during the safety phase.
func (s *Sim) faultLoop() {
	if s.healed || s.checking {
		return
	}
	if s.opsStarted >= s.cfg.Ops*7/10 || s.now-s.workloadStart > faultPhaseLimit {
		s.heal()
		return
	}
	budget := s.cfg.Copies - 1 - s.impaired()
	var acts []faultAction
	add := func(k Faults, fn func()) {
		if s.cfg.Faults.Has(k) {
			acts = append(acts, faultAction{k, fn})
		}
	}
	if budget > 0 {
		// Crashes and partitions test the most; they come more often.
		for i := 0; i < 3; i++ {
			add(FaultCrash, s.faultCrash)
		}
		for i := 0; i < 2; i++ {
			add(FaultPartition, func() { s.faultPartition(budget, false) })
			add(FaultOneWay, func() { s.faultPartition(budget, true) })
		}
		if s.leaves == 0 && s.memberCount() > s.cfg.Copies+1 {
			add(FaultLeave, s.faultLeave)
		}
		if s.joins < s.cfg.Spares {
			add(FaultJoin, s.faultJoin)
		}
		add(FaultCorrupt, s.faultCorrupt)
		add(FaultWipe, s.faultWipe)
		add(FaultDiskFull, func() {
			if nd := s.pick(s.upMembers()); nd != nil && !nd.full {
				nd.full = true
				gen := nd.gen
				s.tracef("node %d disk full", nd.info.ID)
				s.at(int64(100+s.rng.IntN(700))*ms, func() {
					if nd.gen == gen {
						nd.full = false
					}
				})
			}
		})
	}
	add(FaultLoss, func() { s.netWindow(func() { s.net.loss = 0.05 + 0.15*s.rng.Float64() }, func() { s.net.loss = 0 }) })
	add(FaultDup, func() { s.netWindow(func() { s.net.dup = 0.05 + 0.1*s.rng.Float64() }, func() { s.net.dup = 0 }) })
	add(FaultDelay, func() {
		s.netWindow(func() { s.net.delay, s.net.maxLong = 0.2, 30*ms }, func() { s.net.delay = 0 })
	})
	add(FaultReorder, func() {
		s.netWindow(func() { s.net.delay, s.net.maxLong = 0.5, 3*ms }, func() { s.net.delay = 0 })
	})
	add(FaultDiskLatency, func() {
		if nd := s.pick(s.liveNodes()); nd != nil {
			nd.slow = int64(2+s.rng.IntN(18)) * ms
			gen := nd.gen
			s.tracef("node %d disk slow", nd.info.ID)
			s.at(int64(100+s.rng.IntN(700))*ms, func() {
				if nd.gen == gen {
					nd.slow = 0
				}
			})
		}
	})
	add(FaultDiskError, func() {
		if nd := s.pick(s.liveNodes()); nd != nil {
			nd.errP = 0.02 + 0.08*s.rng.Float64()
			gen := nd.gen
			s.tracef("node %d disk failing", nd.info.ID)
			s.at(int64(100+s.rng.IntN(400))*ms, func() {
				if nd.gen == gen {
					nd.errP = 0
				}
			})
		}
	})
	if len(acts) > 0 {
		a := acts[s.rng.IntN(len(acts))]
		s.mix(9, uint64(s.now), uint64(a.kind))
		a.fn()
	}
	s.at(int64(30+s.rng.IntN(170))*ms, s.faultLoop)
}

func (s *Sim) memberCount() int {
	if cs := s.latest(); cs != nil {
		return len(cs.Nodes)
	}
	return 0
}

func (s *Sim) netWindow(on, off func()) {
	on()
	s.at(int64(100+s.rng.IntN(400))*ms, off)
}

func (s *Sim) upMembers() []*node {
	cs := s.latest()
	var out []*node
	for _, nd := range s.liveNodes() {
		if cs.IsMember(nd.info.ID, nd.info.Incarnation) && !s.isolated(nd) {
			out = append(out, nd)
		}
	}
	return out
}

// voters is the raft voter set as the leader has it (nil without one).
func (s *Sim) voters() []uint64 {
	for _, nd := range s.liveNodes() {
		if nd.n.IsLeader() {
			return nd.n.Voters()
		}
	}
	return nil
}

func (s *Sim) faultCrash() {
	nd := s.pick(s.upMembers())
	if nd == nil {
		return
	}
	if s.rng.IntN(2) == 0 {
		nd.crashAfterAck = true // crash at its next write acknowledgement
		return
	}
	s.crashAndRestart(nd)
}

// crashAndRestart crashes a node and restarts it a little later.
func (s *Sim) crashAndRestart(nd *node) {
	if s.healed || s.impaired() >= s.cfg.Copies-1 {
		return
	}
	s.crashNode(nd)
	gen := nd.gen
	s.at(int64(50+s.rng.IntN(1000))*ms, func() {
		if !nd.up && nd.gen == gen && !nd.left {
			s.startNode(nd)
		}
	})
}

// faultWipe crashes a node and replaces its disk with an empty one. The
// node comes back at the same address (or a new one) under a new id, as a
// production node does when its data directory is gone: the old member,
// raft voter or not, is never impersonated by a node without its log. One
// at a time, only while every object has all its replicas, and never a
// raft voter whose loss leaves the others short of a quorum (the cluster
// log of a two-node cluster lives on its one voter: losing that disk loses
// the cluster, as it would in production).
func (s *Sim) faultWipe() {
	if s.healed || s.impaired() > 0 {
		return
	}
	voters := s.voters()
	if voters == nil {
		return // no leader to tell the voters
	}
	var cands []*node
	for _, nd := range s.upMembers() {
		if len(voters) >= 3 || !slices.Contains(voters, uint64(nd.info.ID)) {
			cands = append(cands, nd)
		}
	}
	nd := s.pick(cands)
	if nd == nil {
		return
	}
	s.crashNode(nd)
	s.wipes++
	old := nd.info.ID
	s.wipedIDs = append(s.wipedIDs, old)
	nd.disk = newSimDisk(s.objSize)
	delete(s.byID, old)
	nd.info.ID = core.NodeID(uint64(nd.idx+1) + uint64(s.wipes)<<16)
	nd.info.Incarnation = 0
	s.byID[nd.info.ID] = nd
	if s.rng.IntN(2) == 0 {
		delete(s.byAddr, nd.info.Addr)
		nd.info.Addr = fmt.Sprintf("10.0.%d.%d:7000", s.wipes, nd.idx+1)
		s.byAddr[nd.info.Addr] = nd
	}
	s.tracef("node %d loses its disk: back as node %d at %s", old, nd.info.ID, nd.info.Addr)
	gen := nd.gen
	s.at(int64(50+s.rng.IntN(1000))*ms, func() {
		if !nd.up && nd.gen == gen && !nd.left {
			s.startNode(nd)
		}
	})
}

func (s *Sim) faultLeave() {
	nd := s.pick(s.upMembers())
	if nd == nil {
		return
	}
	s.leaves++
	nd.left = true
	s.tracef("node %d leaves for good", nd.info.ID)
	s.crashNode(nd)
}

func (s *Sim) faultJoin() {
	for _, nd := range s.nodes {
		if !nd.started {
			s.joins++
			s.tracef("node %d joins", nd.info.ID)
			s.startNode(nd)
			return
		}
	}
}

func (s *Sim) faultPartition(budget int, oneWay bool) {
	up := s.upMembers()
	if len(up) < 2 {
		return
	}
	k := 1 + s.rng.IntN(budget)
	if k >= len(up) {
		k = len(up) - 1
	}
	if oneWay && s.rng.IntN(3) == 0 {
		s.faultGray(up)
		return
	}
	perm := s.rng.Perm(len(up))
	cut := map[int]bool{}
	for _, i := range perm[:k] {
		cut[up[i].idx] = true
	}
	if s.net.blocked == nil {
		s.net.blocked = map[[2]int]bool{}
	}
	// Either the cut-off nodes lose every link to the rest, or only the
	// links to some of the others (a node that still reaches its
	// replicas and clients, but not the leader, say).
	partial := s.rng.IntN(2) == 0
	dir := s.rng.IntN(2)
	var links [][2]int
	if lead := s.leader(); lead != nil && !cut[lead.idx] && s.rng.IntN(3) == 0 {
		// Cut the nodes off from the leader only: they stop learning
		// new epochs but keep talking to everyone else.
		for idx := range cut {
			links = append(links, [2]int{idx, lead.idx}, [2]int{lead.idx, idx})
		}
		partial = true
		oneWay = false
		goto apply
	}
	links = s.cutLinks(cut, partial, oneWay, dir)
	if lead := s.leader(); lead != nil && cut[lead.idx] && partial && s.leaderVictims(lead, up, links) > budget {
		// A leader cut off from some of the others declares each of them
		// dead: that impairs them all, beyond the budget. Cut it off
		// from every other instead, so that only it is replaced.
		links = s.cutLinks(cut, false, oneWay, dir)
	}
apply:
	var names []string
	for _, l := range links {
		names = append(names, fmt.Sprintf("%d→%d", s.nodes[l[0]].info.ID, s.nodes[l[1]].info.ID))
	}
	s.tracef("partition: %d nodes cut off (one-way=%v, %d links: %s)", k, oneWay, len(links), strings.Join(names, " "))
	for _, l := range links {
		s.net.blocked[l] = true
	}
	s.at(int64(100+s.rng.IntN(1400))*ms, func() {
		for _, l := range links {
			delete(s.net.blocked, l)
		}
		s.tracef("partition of %d links ends", len(links))
	})
}

// cutLinks lists the links between the nodes of cut and the others: every
// one, or with partial a random half of them; with oneWay only those in
// direction dir (0: from the cut-off nodes).
func (s *Sim) cutLinks(cut map[int]bool, partial, oneWay bool, dir int) [][2]int {
	var links [][2]int
	for _, a := range s.nodes {
		for _, b := range s.nodes {
			if !cut[a.idx] || cut[b.idx] || (partial && s.rng.IntN(2) == 0) {
				continue
			}
			if !oneWay || dir == 0 {
				links = append(links, [2]int{a.idx, b.idx})
			}
			if !oneWay || dir == 1 {
				links = append(links, [2]int{b.idx, a.idx})
			}
		}
	}
	return links
}

// leaderVictims counts the members of up, other than the leader, that
// links cut off from the leader in either direction.
func (s *Sim) leaderVictims(lead *node, up []*node, links [][2]int) int {
	n := 0
	for _, nd := range up {
		if nd == lead {
			continue
		}
		for _, l := range links {
			if l == [2]int{lead.idx, nd.idx} || l == [2]int{nd.idx, lead.idx} {
				n++
				break
			}
		}
	}
	return n
}

// faultGray cuts one direction of the link between two members that are
// not the leader, for several failure timeouts: the leader hears both, so
// only the members' reports of unreachable peers can end the stall.
func (s *Sim) faultGray(up []*node) {
	lead := s.leader()
	var cands []*node
	for _, nd := range up {
		if nd != lead {
			cands = append(cands, nd)
		}
	}
	if len(cands) < 2 {
		return
	}
	perm := s.rng.Perm(len(cands))
	a, b := cands[perm[0]], cands[perm[1]]
	if s.net.blocked == nil {
		s.net.blocked = map[[2]int]bool{}
	}
	l := [2]int{a.idx, b.idx}
	s.tracef("gray failure: node %d cannot send to node %d", a.info.ID, b.info.ID)
	s.net.blocked[l] = true
	s.at(int64(2000+s.rng.IntN(4000))*ms, func() { delete(s.net.blocked, l) })
}

// faultCorrupt flips a stored replica of an object on one node; the
// object's other replicas stay intact.
func (s *Sim) faultCorrupt() {
	nd := s.pick(s.upMembers())
	if nd == nil || len(nd.disk.current) == 0 {
		return
	}
	oids := make([]uint64, 0, len(nd.disk.current))
	for oid, o := range nd.disk.current {
		if o.data != nil && !nd.disk.corrupt[oid] {
			oids = append(oids, uint64(oid))
		}
	}
	if len(oids) == 0 {
		return
	}
	slices.Sort(oids)
	oid := oids[s.rng.IntN(len(oids))]
	o := nd.disk.current[coreOID(oid)]
	intact := false
	for _, other := range s.nodes {
		if other.disk.corrupt[coreOID(oid)] {
			return // keep at most one bad replica per object
		}
		if oc := other.disk.current[coreOID(oid)]; other != nd && other.up && oc != nil && oc.meta == o.meta {
			intact = true
		}
	}
	if !intact {
		return // the only copy of this version: corrupting it is data loss, not a test
	}
	s.tracef("node %d: object %016x corrupted", nd.info.ID, oid)
	nd.disk.corrupt[coreOID(oid)] = true
}

// heal ends every fault: the liveness phase.
func (s *Sim) heal() {
	if s.healed {
		return
	}
	s.healed = true
	s.tracef("healing all faults")
	s.net = netState{}
	for _, nd := range s.nodes {
		nd.slow, nd.errP, nd.full = 0, 0, false
		if nd.started && !nd.up && !nd.left {
			s.startNode(nd)
		}
	}
}

// leader is the running node that leads the cluster log, if any.
func (s *Sim) leader() *node {
	for _, nd := range s.liveNodes() {
		if nd.n.IsLeader() && !s.isolated(nd) {
			return nd
		}
	}
	return nil
}
