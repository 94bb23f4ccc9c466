package sim

import (
	"fmt"
	"slices"

	"github.com/sheepdog-go/sheepdog/core"
)

// Harness drives a simulated cluster one step at a time, for scenario
// tests: requests to chosen nodes, crashes, restarts and partitions, and
// runs of virtual time until a condition holds. It uses the simulator's
// network, disks and nodes without its workload or fault loop.
type Harness struct {
	s *Sim
}

// NewHarness starts cfg.Nodes nodes, waits for them to join and formats
// the cluster with cfg.Copies and cfg.BlockShift.
func NewHarness(cfg Config) (*Harness, error) {
	cfg.Faults &^= FaultDrift
	s := newSim(cfg)
	h := &Harness{s: s}
	for i := 0; i < cfg.Nodes; i++ {
		s.startNode(s.nodes[i])
	}
	if !h.RunUntil(func() bool { cs := s.latest(); return cs != nil && len(cs.Nodes) == cfg.Nodes }, setupTimeout) {
		return nil, fmt.Errorf("sim: the %d nodes did not join", cfg.Nodes)
	}
	rep, ok := h.Request(0, &core.Request{Type: core.ReqFormat, Copies: uint8(cfg.Copies), BlockShift: cfg.BlockShift})
	if !ok || rep.Code != core.OK {
		return nil, fmt.Errorf("sim: format: %v", rep.Code)
	}
	return h, nil
}

// Now is the virtual time in microseconds.
func (h *Harness) Now() int64 { return h.s.now }

// Nodes is the number of nodes (started or not).
func (h *Harness) Nodes() int { return len(h.s.nodes) }

// Node returns node i's state machine (nil if it never started).
func (h *Harness) Node(i int) *core.Node { return h.s.nodes[i].n }

// Up reports whether node i runs.
func (h *Harness) Up(i int) bool { return h.s.nodes[i].up }

// RunUntil runs events until cond holds or limit microseconds of virtual
// time passed; it reports whether cond holds.
func (h *Harness) RunUntil(cond func() bool, limit int64) bool {
	deadline := h.s.now + limit
	for !cond() {
		if h.s.now > deadline || !h.s.step() {
			return cond()
		}
	}
	return true
}

// Run runs d microseconds of virtual time.
func (h *Harness) Run(d int64) {
	end := h.s.now + d
	h.RunUntil(func() bool { return h.s.now >= end }, d+1)
}

// Submit sends r to node i; done gets the reply (never, if the node
// crashes first).
func (h *Harness) Submit(i int, r *core.Request, done func(core.Reply)) {
	nd := h.s.nodes[i]
	if !nd.up {
		done(core.Reply{Code: core.ErrShutdown})
		return
	}
	h.s.request(nd, r, done)
}

// Request sends r to node i and runs until it is answered (at most a
// minute of virtual time).
func (h *Harness) Request(i int, r *core.Request) (core.Reply, bool) {
	var rep core.Reply
	done := false
	h.Submit(i, r, func(x core.Reply) { rep, done = x, true })
	h.RunUntil(func() bool { return done }, 60_000*ms)
	return rep, done
}

// Crash stops node i; unsynced writes are lost as in a power cut.
func (h *Harness) Crash(i int) { h.s.crashNode(h.s.nodes[i]) }

// Restart starts node i again from its disk.
func (h *Harness) Restart(i int) { h.s.startNode(h.s.nodes[i]) }

// Cut drops every message between nodes a and b, both ways.
func (h *Harness) Cut(a, b int) {
	if h.s.net.blocked == nil {
		h.s.net.blocked = map[[2]int]bool{}
	}
	h.s.net.blocked[[2]int{a, b}] = true
	h.s.net.blocked[[2]int{b, a}] = true
}

// CutOneWay drops every message from node a to node b; b to a still
// flows (a gray failure: each hears the other on some links only).
func (h *Harness) CutOneWay(a, b int) {
	if h.s.net.blocked == nil {
		h.s.net.blocked = map[[2]int]bool{}
	}
	h.s.net.blocked[[2]int{a, b}] = true
}

// DiskFull makes node i's disk refuse every write that stores data with
// ErrNoSpace (deletes still work), or work again.
func (h *Harness) DiskFull(i int, full bool) { h.s.nodes[i].full = full }

// Leader is the index of the running node that leads, -1 if none does.
func (h *Harness) Leader() int {
	if nd := h.s.leader(); nd != nil {
		return nd.idx
	}
	return -1
}

// Member reports whether node i, as it runs now, is a member of the
// newest epoch.
func (h *Harness) Member(i int) bool {
	nd := h.s.nodes[i]
	cs := h.s.latest()
	return nd.up && cs != nil && cs.IsMember(nd.info.ID, nd.info.Incarnation)
}

// Heal ends every partition.
func (h *Harness) Heal() { h.s.net.blocked = nil }

// Cluster is the cluster state of the running node with the newest epoch.
func (h *Harness) Cluster() *core.ClusterState { return h.s.latest() }

// Converged reports whether the running nodes agree on an epoch they
// all recovered, and the leader has no job left.
func (h *Harness) Converged() bool {
	if !h.s.converged() {
		return false
	}
	for _, nd := range h.s.liveNodes() {
		if nd.n.IsLeader() && len(nd.n.Jobs()) > 0 {
			return false
		}
	}
	return true
}

// Stabilize runs until the cluster converged and stays so for a second
// (garbage collection and reclaim passes finish), at most two minutes.
func (h *Harness) Stabilize() bool {
	for tries := 0; tries < 120; tries++ {
		if !h.RunUntil(h.Converged, convergeTimeout) {
			return false
		}
		h.Run(1000 * ms)
		if h.Converged() {
			return true
		}
	}
	return false
}

// StoredObjects returns, for each running node, the objects its disk
// holds now (sorted).
func (h *Harness) StoredObjects() [][]core.OID {
	out := make([][]core.OID, len(h.s.nodes))
	for i, nd := range h.s.nodes {
		if !nd.up {
			continue
		}
		for oid := range nd.disk.current {
			out[i] = append(out[i], oid)
		}
		slices.Sort(out[i])
	}
	return out
}

// Problems runs the end-of-run checks that apply to any cluster state
// (every object on exactly its replicas, identical; no work left over)
// and returns what they found.
func (h *Harness) Problems() []string {
	h.s.problems = nil
	h.s.checkRedundancy()
	h.s.checkQuiescent()
	return h.s.problems
}

// TraceObject logs, to the Config's Trace, every message and disk write
// about oid from now on (for debugging a scenario).
func (h *Harness) TraceObject(oid core.OID) { h.s.cfg.TraceOID = oid }
