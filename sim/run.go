package sim

import (
	"fmt"
	"path/filepath"
	"slices"

	"github.com/sheepdog-go/sheepdog/core"
)

const (
	setupTimeout    = 30_000 * ms
	convergeTimeout = 120_000 * ms
	runTimeLimit    = 1_800_000 * ms
	faultPhaseLimit = 60_000 * ms // faults stop after this even if the workload is slow
)

func (s *Sim) run() Result {
	for i := 0; i < s.cfg.Nodes; i++ {
		s.startNode(s.nodes[i])
	}
	done := false
	s.at(10*ms, func() { s.setup(func() { done = true }) })
	for !done && s.step() {
		if s.now > runTimeLimit {
			s.problem("run did not finish within %d s of simulated time", runTimeLimit/1_000_000)
			break
		}
	}
	res := Result{Seed: s.cfg.Seed, Ops: s.opsDone, Failed: s.opsFailed, SimTime: s.now, Events: s.events, TraceHash: s.hash}
	res.Problems = s.problems
	res.HTML = s.html
	res.ReadsHere, res.Stashed, res.Direct, res.Revokes, res.Bursts = s.readsHere, s.stashed, s.direct, s.revokes, s.bursts
	for _, nd := range s.nodes {
		if nd.n != nil {
			res.ReadsHere += nd.n.ReadsHere()
			res.Stashed += nd.n.StashedWrites()
			res.Direct += nd.n.DirectOps()
			res.Revokes += nd.n.Revokes()
		}
	}
	if len(s.problems) == 0 && !done {
		res.Problems = append(res.Problems, "simulation stopped early")
	}
	return res
}

// waitFor polls cond every 10 ms; then runs when it holds, or a problem
// is recorded after timeout.
func (s *Sim) waitFor(what string, timeout int64, cond func() bool, then func()) {
	deadline := s.now + timeout
	var poll func()
	poll = func() {
		if cond() {
			then()
			return
		}
		if s.now >= deadline {
			s.problem("timed out waiting for %s (%s)", what, s.describe())
			then = nil
			s.queue = s.queue[:0]
			return
		}
		s.at(10*ms, poll)
	}
	poll()
}

// describe summarises the cluster for problem reports.
func (s *Sim) describe() string {
	out := ""
	for _, nd := range s.nodes {
		if !nd.started {
			continue
		}
		if !nd.up {
			out += fmt.Sprintf("[n%d down] ", nd.info.ID)
			continue
		}
		r := nd.n.Recovery()
		out += fmt.Sprintf("[n%d e%d serving=%v leader=%d members=%d rec=%d/%d fin=%v all=%v] ", nd.info.ID, nd.n.Epoch(),
			nd.n.Serving(), nd.n.Leader(), len(nd.n.Cluster().Nodes), r.Remaining, r.Total, r.Finished, r.AllDone)
		if nd.n.IsLeader() {
			for _, j := range nd.n.Jobs() {
				out += "{" + j + "} "
			}
			for _, v := range nd.n.Cluster().Records() {
				out += fmt.Sprintf("{%06x %s deleted=%v building=%v root=%06x} ", v.ID, v.Name, v.Deleted, v.Building, v.Root)
			}
		}
	}
	return out
}

// latest is the cluster state of the running node with the newest epoch.
func (s *Sim) latest() *core.ClusterState {
	var best *core.ClusterState
	for _, nd := range s.liveNodes() {
		if cs := nd.n.Cluster(); best == nil || cs.Epoch > best.Epoch {
			best = cs
		}
	}
	return best
}

// setup forms the cluster, formats it, creates the volumes and starts the
// workload and the faults.
func (s *Sim) setup(finish func()) {
	members := func() bool {
		cs := s.latest()
		return cs != nil && len(cs.Nodes) == s.cfg.Nodes
	}
	s.waitFor("the initial nodes to join", setupTimeout, members, func() {
		s.adminUntilOK("format", func() *core.Request {
			return &core.Request{Type: core.ReqFormat, Copies: uint8(s.cfg.Copies), BlockShift: s.cfg.BlockShift}
		}, func(core.Reply) { s.createVolumes(0, finish) })
	})
}

// adminUntilOK sends an admin request to a random live node until it
// succeeds.
func (s *Sim) adminUntilOK(what string, mk func() *core.Request, then func(core.Reply)) {
	deadline := s.now + setupTimeout
	var try func()
	try = func() {
		if s.now > deadline {
			s.problem("admin request %s never succeeded", what)
			s.queue = s.queue[:0]
			return
		}
		nd := s.pick(s.liveNodes())
		gen := nd.gen
		answered := false
		s.request(nd, mk(), func(rep core.Reply) {
			answered = true
			if rep.Code == core.OK || rep.Code == core.ErrVDIExists && what != "format" {
				then(rep)
				return
			}
			s.tracef("admin %s: %v", what, rep.Code)
			s.at(20*ms, try)
		})
		// A crash loses the reply: try elsewhere. A live node must answer.
		s.at(setupTimeout/10, func() {
			if !answered && (!nd.up || nd.gen != gen) {
				try()
			}
		})
		s.at(setupTimeout, func() {
			if !answered && nd.up && nd.gen == gen {
				s.problem("admin request %s to node %d never answered", what, nd.info.ID)
				s.queue = s.queue[:0]
			}
		})
	}
	try()
}

func (s *Sim) createVolumes(i int, finish func()) {
	if i == s.cfg.VDIs {
		s.startWorkload(finish)
		return
	}
	name := fmt.Sprintf("vdi%d", i)
	s.adminUntilOK("create "+name, func() *core.Request {
		return &core.Request{Type: core.ReqCreateVDI, Name: name, Size: s.cfg.VDISize}
	}, func(core.Reply) {
		v := s.latest().LookupVDI(name)
		if v == nil {
			s.problem("volume %s missing after create", name)
			return
		}
		s.addVolume(name, v.ID, v.BlockShift)
		s.createVolumes(i+1, finish)
	})
}

// addVolume adds a volume to the workload (its clients start later).
func (s *Sim) addVolume(name string, vid uint32, shift uint8) *volume {
	vol := &volume{idx: len(s.vdis), name: name, vid: vid, blocks: int(s.cfg.VDISize) / s.cfg.BlockSize,
		writes: map[int][]*writeRec{}, blockShift: shift}
	for len(vol.hot) < s.cfg.HotBlocks {
		if b := s.rng.IntN(vol.blocks); !slices.Contains(vol.hot, b) {
			vol.hot = append(vol.hot, b)
		}
	}
	s.vdis = append(s.vdis, vol)
	return vol
}

// startClients starts a volume's clients: Clients writers and readers
// through its attacher, and an observer reading through random nodes.
func (s *Sim) startClients(v *volume) {
	for j := 0; j <= s.cfg.Clients; j++ {
		c := &client{id: s.nextClient, vol: v, observer: j == s.cfg.Clients}
		s.nextClient++
		v.clients = append(v.clients, c)
		s.at(int64(s.rng.IntN(5*ms)), func() { s.clientNext(c) })
	}
}

func (s *Sim) startWorkload(finish func()) {
	s.tracef("workload starts")
	s.workloadStart = s.now
	s.finish = finish
	for _, v := range s.vdis {
		s.startClients(v)
	}
	if s.cfg.Lifecycle {
		s.at(100*ms, s.lifecycleLoop)
		s.at(150*ms, s.snapReader)
	}
	if s.cfg.Faults&^(FaultDrift|FaultPowerLoss) != 0 {
		s.at(50*ms, s.faultLoop)
	}
	if s.cfg.Faults.Has(FaultCorrupt) {
		s.at(200*ms, s.scrubLoop)
	}
	if s.cfg.Quiet {
		s.at(int64(100+s.rng.IntN(300))*ms, s.lullLoop)
	}
}

// scrubLoop runs `vdi check` on a random volume through a random node now
// and then during the workload, as an operator's periodic scrub would: it
// repairs corrupted replicas while the faults go on.
func (s *Sim) scrubLoop() {
	if s.checking || len(s.vdis) == 0 {
		return
	}
	var cands []*node
	for _, nd := range s.liveNodes() {
		if nd.n.Serving() {
			cands = append(cands, nd)
		}
	}
	if nd := s.pick(cands); nd != nil {
		v := s.vdis[s.rng.IntN(len(s.vdis))]
		s.request(nd, &core.Request{Type: core.ReqCheck, VID: v.vid}, func(rep core.Reply) {
			s.tracef("scrub of volume %d through node %d: %v, %d repaired", v.idx, nd.info.ID, rep.Code, rep.Repaired)
			if rep.Code == core.OK {
				s.repaired += int(rep.Repaired)
			}
		})
	}
	s.at(int64(300+s.rng.IntN(500))*ms, s.scrubLoop)
}

// maybeWorkloadDone moves on to the checks once every client stopped.
func (s *Sim) maybeWorkloadDone() {
	if s.checking {
		return
	}
	for _, v := range s.vdis {
		for _, c := range v.clients {
			if !c.stopped || c.pending != nil {
				return
			}
		}
	}
	if s.lifeBusy {
		s.at(20*ms, s.maybeWorkloadDone)
		return
	}
	s.checking = true
	s.heal()
	s.waitConverged(func() {
		s.checkReferences(func() {
			s.checkVolumes(func() { s.checkMaps(s.afterCheck) })
		})
	})
}

// afterCheck runs the end-of-run checks once every volume was verified.
func (s *Sim) afterCheck() {
	s.waitConverged(func() {
		s.checkRedundancy()
		s.checkHistory()
		s.checkQuiescent()
		s.checkSnapshots("after healing", func() {
			end := func() {
				if !s.cfg.Lifecycle {
					s.finish()
					return
				}
				s.deleteEverything(s.finish)
			}
			if s.cfg.Faults.Has(FaultPowerLoss) {
				s.powerLoss(func() { s.checkSnapshots("after the power loss", end) })
				return
			}
			end()
		})
	})
}

// checkVolumes runs `vdi check` on every volume: it repairs silently
// corrupted replicas, which the redundancy check then verifies.
// Every live VDI is checked, snapshots and clones too: a check covers
// what the VDI reads, shared objects and table objects included.
func (s *Sim) checkVolumes(then func()) {
	vs := s.latest().VDIs()
	var run func(i int)
	run = func(i int) {
		if i == len(vs) {
			then()
			return
		}
		v := vs[i]
		s.adminUntilOK(fmt.Sprintf("check %06x", v.ID), func() *core.Request {
			return &core.Request{Type: core.ReqCheck, VID: v.ID, Exact: true}
		}, func(rep core.Reply) {
			s.tracef("VDI %06x checked: %d objects, %d replicas repaired", v.ID, rep.Checked, rep.Repaired)
			s.repaired += int(rep.Repaired)
			run(i + 1)
		})
	}
	run(0)
}

// converged: every running node serves the same epoch, the members are
// exactly the running nodes, and every member finished recovery.
func (s *Sim) converged() bool {
	live := s.liveNodes()
	if len(live) == 0 {
		return false
	}
	epoch := live[0].n.Epoch()
	for _, nd := range live {
		if !nd.n.Serving() || nd.n.Epoch() != epoch || !nd.n.Recovery().AllDone {
			return false
		}
	}
	cs := live[0].n.Cluster()
	if len(cs.Nodes) != len(live) {
		return false
	}
	for _, nd := range live {
		if !cs.IsMember(nd.info.ID, nd.info.Incarnation) {
			return false
		}
	}
	return true
}

func (s *Sim) waitConverged(then func()) {
	s.waitFor("the cluster to converge", convergeTimeout, s.converged, func() {
		// Let garbage collection finish, then check.
		s.at(500*ms, func() {
			if !s.converged() {
				s.waitConverged(then)
				return
			}
			then()
		})
	})
}

func (s *Sim) checkHistory() {
	res := checkLinearizable(s.hist)
	if res.OK {
		return
	}
	s.problem("history not linearizable: %v", res)
	if s.cfg.OutDir != "" {
		path := filepath.Join(s.cfg.OutDir, fmt.Sprintf("seed-%d.html", s.cfg.Seed))
		if err := res.WriteHTML(path); err != nil {
			s.problem("write visualisation: %v", err)
		} else {
			s.html = path
		}
	}
}

// checkQuiescent: once the cluster converged and the clients stopped, no
// node holds client operations, requests or object work: anything left is
// a leak (state that would keep a write's data alive forever).
func (s *Sim) checkQuiescent() {
	for _, nd := range s.liveNodes() {
		st := nd.n.Stats()
		if st.ClientOps > 0 || st.SubOps > 0 || st.Busy > 0 || st.Held > 0 || st.Refill > 0 || st.Calls > 2*len(s.nodes) {
			s.problem("node %d is not quiescent after the run: %+v %v", nd.info.ID, st, nd.n.Busy())
		}
	}
}
