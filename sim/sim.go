package sim

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// Config describes one simulated run.
type Config struct {
	Seed       uint64
	Nodes      int       // initial nodes
	Spares     int       // extra nodes that may join (FaultJoin)
	Copies     int       // replicas per object
	VDIs       int       // volumes
	Clients    int       // concurrent clients per volume
	Ops        int       // client operations in the run
	Faults     Faults    // fault kinds to inject
	Bugs       core.Bugs // planted bugs
	BlockShift uint8     // object size is 1<<BlockShift
	VDISize    uint64    // bytes per volume
	BlockSize  int       // register granularity of the checker
	HotBlocks  int       // blocks per volume most operations go to
	Codec      bool      // round-trip every message through its wire encoding
	Lifecycle  bool      // snapshots, clones, rollbacks, flattens and deletes while clients write
	// HeartbeatTicks overrides the raft heartbeat interval (0: the
	// daemon's). Other timings give other interleavings: some bugs show
	// under one only.
	HeartbeatTicks int
	// Quiet ticks a node as the daemon does: while core.Node.Quiet holds,
	// in bursts of core.QuietTicks ticks, each burst delivered just before
	// the next event the node handles.
	Quiet    bool
	OutDir   string    // where to write the visualisation of a failing history
	Trace    io.Writer // optional human-readable event log
	TraceOID core.OID  // with Trace: also log every disk write and message about this object
}

// DefaultConfig is the configuration `sheepdog sim` starts from.
func DefaultConfig() Config {
	return Config{
		Seed:       1,
		Nodes:      5,
		Spares:     2,
		Copies:     3,
		VDIs:       2,
		Clients:    3,
		Ops:        2000,
		Faults:     AllFaults,
		BlockShift: 12,
		VDISize:    64 << 10,
		BlockSize:  512,
		HotBlocks:  6,
		Lifecycle:  true,
	}
}

// Result is the outcome of one run.
type Result struct {
	Seed      uint64
	Ops       int   // client operations completed successfully
	Failed    int   // client operations that returned an error
	SimTime   int64 // virtual microseconds
	Events    int
	TraceHash uint64
	ReadsHere uint64 // object reads attachers served from their own replica
	Stashed   uint64 // replica writes that took their data from the writing gateway (sent without it)
	Direct    uint64 // operations attachers ran as primary of objects handed over to them
	Revokes   uint64 // objects primaries took back from attachers
	Bursts    uint64 // Quiet: tick deliveries of more than one tick
	Problems  []string
	HTML      string // visualisation written for a failing history
}

// OK reports whether every check passed.
func (r *Result) OK() bool { return len(r.Problems) == 0 }

// simTiming is the nodes' timing in the simulator (10 ms ticks).
func simTiming(cfg Config) core.Timing {
	t := core.DefaultTiming()
	if cfg.HeartbeatTicks > 0 {
		t.HeartbeatTicks = cfg.HeartbeatTicks
	}
	t.FailTicks = 30
	t.LeaseTicks = 20
	t.RetryTicks = 5
	t.JoinTicks = 10
	t.OpTimeoutTicks = 500
	t.RecoveredTicks = 20
	t.SnapshotEntries = 200
	return t
}

const (
	maxSeeds   = 8      // join addresses a node is given
	tickPeriod = 10_000 // µs
	ms         = 1000
	simEpoch   = 1_767_225_600 // the wall clock simulated runs start at (2026-01-01)
)

type evKind uint8

const (
	evTick evKind = iota
	evDeliver
	evDisk
	evFunc
)

type event struct {
	at   int64
	seq  uint64
	kind evKind
	node *node
	gen  int
	from *node // evDeliver: the sender, and its generation when it sent
	fgen int
	msg  *core.Message
	op   core.DiskOp
	sync uint64 // DiskSync: the last write it covers
	fn   func()
}

// eventQueue is a 4-ary min-heap of events by (at, seq). The keys sit
// next to the pointers, so sifting compares without loading the events:
// at 100 nodes the queue holds tens of thousands of messages, and popping
// through container/heap's interface was a sixth of the run. (at, seq) is
// unique, so the order is the one any correct heap gives.
type eventQueue []queued

type queued struct {
	at  int64
	seq uint64
	e   *event
}

func (a *queued) before(b *queued) bool {
	return a.at < b.at || a.at == b.at && a.seq < b.seq
}

func (q *eventQueue) push(e *event) {
	h := append(*q, queued{at: e.at, seq: e.seq, e: e})
	i := len(h) - 1
	x := h[i]
	for i > 0 {
		p := (i - 1) / 4
		if !x.before(&h[p]) {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = x
	*q = h
}

func (q *eventQueue) pop() *event {
	h := *q
	top := h[0].e
	n := len(h) - 1
	x := h[n]
	h[n] = queued{}
	h = h[:n]
	i := 0
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		for k := c + 1; k < c+4 && k < n; k++ {
			if h[k].before(&h[m]) {
				m = k
			}
		}
		if !h[m].before(&x) {
			break
		}
		h[i] = h[m]
		i = m
	}
	if n > 0 {
		h[i] = x
	}
	*q = h
	return top
}

type node struct {
	idx           int
	info          core.NodeInfo
	n             *core.Node
	disk          *simDisk
	up            bool
	left          bool
	started       bool
	gen           int
	period        int64
	ticked        int64   // Quiet: when the node's last tick was due
	nextTick      int64   // Quiet: when its tick event is due (older ones are void)
	slow          int64   // extra disk latency, µs
	errP          float64 // probability a disk operation fails
	crashAfterAck bool    // crash right after acknowledging a write (a targeted crash)
	full          bool    // the disk is full: writes that store data fail with ErrNoSpace
}

// Sim is one simulated run.
type Sim struct {
	readsHere uint64 // ReadsHere of node incarnations that ended
	stashed   uint64 // StashedWrites of node incarnations that ended
	bursts    uint64 // Quiet: bursts of ticks delivered (catchUp)
	lullUntil int64  // Quiet: the workload waits until then (lullLoop)
	direct    uint64 // DirectOps of node incarnations that ended
	revokes   uint64 // Revokes of node incarnations that ended
	cfg       Config
	rng       *rand.Rand
	now       int64
	seq       uint64
	queue     eventQueue
	nodes     []*node
	rings     *core.RingCache // shared by the nodes: they build the same ring for the same epoch
	byID      map[core.NodeID]*node
	byAddr    map[string]*node
	seeds     []string
	hash      uint64
	events    int
	// referenced holds the objects of other VDIs that some table names,
	// as checkReferences found them once the workload stopped.
	referenced map[core.OID]bool

	net   netState
	vdis  []*volume
	hist  *linearizability.History
	reqs  map[uint64]func(core.Reply)
	reqID uint64

	opsStarted, opsDone, opsFailed int
	nextValue                      uint64
	healed                         bool
	checking                       bool
	finish                         func()
	html                           string
	leaves, joins                  int
	wipes                          int
	wipedIDs                       []core.NodeID // ids lost with their disks (faultWipe)
	repaired                       int
	workloadStart                  int64
	problems                       []string
	objSizes                       map[uint32]int
	snaps                          []*snapshot
	lifeBusy                       bool
	nextClient                     int
}

// Run executes one simulated run.
func Run(cfg Config) Result {
	s := newSim(cfg)
	return s.run()
}

func newSim(cfg Config) *Sim {
	s := &Sim{
		cfg:      cfg,
		rng:      rand.New(rand.NewPCG(cfg.Seed, 0x5eed)),
		byID:     map[core.NodeID]*node{},
		byAddr:   map[string]*node{},
		hist:     linearizability.NewHistory(),
		reqs:     map[uint64]func(core.Reply){},
		hash:     14695981039346656037,
		objSizes: map[uint32]int{},
		rings:    core.NewRingCache(),
	}
	for i := 0; i < cfg.Nodes+cfg.Spares; i++ {
		info := core.NodeInfo{
			ID:       core.NodeID(i + 1),
			Addr:     fmt.Sprintf("10.0.0.%d:7000", i+1),
			Zone:     uint32(i + 1),
			VNodes:   64,
			Capacity: 1 << 30,
		}
		nd := &node{idx: i, info: info, period: tickPeriod}
		if cfg.Faults.Has(FaultDrift) {
			// ±5% tick-rate drift, within core's MaxDrift bound.
			nd.period = tickPeriod + int64(s.rng.IntN(1001)) - 500
		}
		nd.disk = newSimDisk(s.objSize)
		s.nodes = append(s.nodes, nd)
		s.byID[info.ID] = nd
		s.byAddr[info.Addr] = nd
	}
	// Nodes join through the first few initial nodes, as an operator
	// gives a node a few --join addresses: a node that knows no leader
	// asks every seed, and every seed answers and forwards the request,
	// so with every node a seed a cluster of n nodes formed with n² join
	// messages per round (two thirds of the setup of 100 nodes).
	for _, nd := range s.nodes[:min(cfg.Nodes, maxSeeds)] {
		s.seeds = append(s.seeds, nd.info.Addr)
	}
	return s
}

// joinAddrs is the --join list of a starting node: the seed nodes'
// addresses as they are now, as an operator would give them (a wiped
// node may have come back at another address).
func (s *Sim) joinAddrs() []string {
	out := slices.Clone(s.seeds)
	for i := range out {
		out[i] = s.nodes[i].info.Addr
	}
	// When no seed is a running member any more (they left, or were
	// wiped and have not joined again), the operator starting a node
	// gives it one that is: with only dead seeds it could never join.
	cs := s.latest()
	if cs == nil {
		return out
	}
	running := func(nd *node) bool { return nd.up && cs.IsMember(nd.info.ID, nd.info.Incarnation) }
	for i := range out {
		if running(s.nodes[i]) {
			return out
		}
	}
	for _, nd := range s.nodes {
		if running(nd) {
			out = append(out, nd.info.Addr)
		}
	}
	return out
}

func (s *Sim) objSize(oid core.OID) int {
	if oid.IsTable() {
		return core.TableChunkSize
	}
	if sz, ok := s.objSizes[oid.VID()]; ok {
		return sz
	}
	return 1 << s.cfg.BlockShift
}

// mix folds values into the trace hash (FNV-1a over 8-byte words).
func (s *Sim) mix(vs ...uint64) {
	h := s.hash
	for _, v := range vs {
		for i := 0; i < 8; i++ {
			h ^= (v >> (8 * i)) & 0xff
			h *= 1099511628211
		}
	}
	s.hash = h
}

func (s *Sim) tracef(format string, args ...any) {
	if s.cfg.Trace != nil {
		fmt.Fprintf(s.cfg.Trace, "%10.3fms ", float64(s.now)/1000)
		fmt.Fprintf(s.cfg.Trace, format, args...)
		fmt.Fprintln(s.cfg.Trace)
	}
}

func (s *Sim) push(e *event) {
	s.seq++
	e.seq = s.seq
	s.queue.push(e)
}

func (s *Sim) at(d int64, fn func()) { s.push(&event{at: s.now + max(d, 0), kind: evFunc, fn: fn}) }

// step processes one event; false when the queue is empty.
func (s *Sim) step() bool {
	if len(s.queue) == 0 {
		return false
	}
	e := s.queue.pop()
	s.now = e.at
	s.events++
	switch e.kind {
	case evTick:
		nd := e.node
		if !nd.up || nd.gen != e.gen {
			return true
		}
		if s.cfg.Quiet {
			if e.at == nd.nextTick {
				s.catchUp(nd)
				s.flush(nd)
				s.scheduleTick(nd)
			}
			return true
		}
		s.mix(1, uint64(s.now), uint64(nd.idx))
		nd.n.Step(core.Tick{Unix: simEpoch + s.now/1_000_000})
		s.flush(nd)
		s.push(&event{at: s.now + nd.period, kind: evTick, node: nd, gen: nd.gen})
	case evDeliver:
		s.deliver(e)
	case evDisk:
		s.diskDone(e)
	case evFunc:
		e.fn()
	}
	return true
}

// flush carries out everything a node has ready.
func (s *Sim) flush(nd *node) {
	for nd.up && nd.n.HasReady() {
		rd := nd.n.Ready()
		nd.disk.persist(&rd)
		for _, note := range rd.Notes {
			s.tracef("%s", note)
		}
		for _, m := range rd.Messages {
			s.send(nd, m)
		}
		for _, op := range rd.Disk {
			s.submitDisk(nd, op)
		}
		replies := rd.Replies
		nd.n.Advance()
		for _, r := range replies {
			s.mix(5, uint64(s.now), r.ID, uint64(r.Code))
			if cb, ok := s.reqs[r.ID]; ok {
				delete(s.reqs, r.ID)
				cb(r)
			}
		}
	}
}

// request submits a request to a node; cb gets the reply (or is dropped
// if the node crashes first: the caller watches for that itself).
func (s *Sim) request(nd *node, r *core.Request, cb func(core.Reply)) {
	s.reqID++
	r.ID = s.reqID
	s.reqs[r.ID] = cb
	s.mix(4, uint64(s.now), uint64(nd.idx), r.ID, uint64(r.Type))
	s.catchUp(nd)
	nd.n.Step(r)
	s.flush(nd)
	s.busied(nd)
}

func (s *Sim) submitDisk(nd *node, op core.DiskOp) {
	lat := int64(20 + s.rng.IntN(180))
	if nd.slow > 0 {
		lat += nd.slow/2 + s.rng.Int64N(nd.slow)
	}
	if op.Kind == core.DiskSync || op.Sync {
		lat += 100 + int64(s.rng.IntN(400))
	}
	e := &event{at: s.now + lat, kind: evDisk, node: nd, gen: nd.gen, op: op}
	if op.Kind == core.DiskSync {
		e.sync = nd.disk.seq
	}
	s.push(e)
}

func (s *Sim) diskDone(e *event) {
	nd, op := e.node, e.op
	if !nd.up || nd.gen != e.gen {
		return
	}
	d := core.DiskDone{ID: op.ID}
	if nd.errP > 0 && s.rng.Float64() < nd.errP {
		d.Err = core.ErrIO
	} else if nd.full && (op.Kind == core.DiskWrite || op.Kind == core.DiskPut) && len(op.Data) > 0 {
		d.Err = core.ErrNoSpace
	} else {
		switch op.Kind {
		case core.DiskRead:
			d.Data, d.Meta, d.Err = nd.disk.read(op.OID, op.Off, op.Len)
			if op.Verify {
				d.Data = nil
			}
		case core.DiskWrite, core.DiskPut, core.DiskDelete:
			seq := nd.disk.apply(&op)
			if op.Sync {
				nd.disk.sync(seq)
			}
		case core.DiskSync:
			nd.disk.sync(e.sync)
		}
	}
	s.mix(3, uint64(s.now), uint64(nd.idx), op.ID, uint64(op.Kind), uint64(d.Err))
	if s.cfg.TraceOID != 0 && op.OID == s.cfg.TraceOID && op.Kind != core.DiskRead {
		s.tracef("node %d disk %v %v off=%d len=%d meta=%+v data0=%x err=%v", nd.info.ID, op.Kind, op.OID, op.Off, op.Len, op.Meta, first8(op.Data), d.Err)
	}
	s.catchUp(nd)
	nd.n.Step(d)
	s.flush(nd)
	s.busied(nd)
}

// startNode boots (or reboots) a node from its disk.
func (s *Sim) startNode(nd *node) {
	nd.gen++
	nd.info.Incarnation++
	cfg := core.Config{
		Self:    nd.info,
		Rand:    rand.New(rand.NewPCG(s.cfg.Seed^uint64(nd.info.ID)<<20, nd.info.Incarnation)),
		Timing:  simTiming(s.cfg),
		Bugs:    s.cfg.Bugs,
		Raft:    nd.disk.raftState(),
		Objects: nd.disk.objects(),
		Rings:   s.rings,
	}
	if nd.idx != 0 || nd.started {
		cfg.Seeds = s.joinAddrs()
	}
	n, err := core.NewNode(cfg)
	if err != nil {
		s.problem("node %d failed to start: %v", nd.info.ID, err)
		return
	}
	if nd.n != nil { // the previous incarnation's counts
		s.readsHere += nd.n.ReadsHere()
		s.stashed += nd.n.StashedWrites()
		s.direct += nd.n.DirectOps()
		s.revokes += nd.n.Revokes()
	}
	nd.n = n
	nd.up = true
	nd.started = true
	s.tracef("node %d starts (incarnation %d)", nd.info.ID, nd.info.Incarnation)
	s.mix(6, uint64(s.now), uint64(nd.idx), nd.info.Incarnation)
	s.flush(nd)
	first := s.now + 1 + int64(s.rng.IntN(int(nd.period)))
	nd.ticked, nd.nextTick = first-nd.period, first
	s.push(&event{at: first, kind: evTick, node: nd, gen: nd.gen})
}

// crashNode stops a node; its unsynced writes may be lost.
func (s *Sim) crashNode(nd *node) {
	nd.up = false
	nd.gen++
	keep := 0
	if len(nd.disk.log) > 0 {
		keep = s.rng.IntN(len(nd.disk.log) + 1)
	}
	s.tracef("node %d crashes (keeps %d of %d unsynced writes)", nd.info.ID, keep, len(nd.disk.log))
	s.mix(7, uint64(s.now), uint64(nd.idx), uint64(keep))
	nd.disk.crash(keep)
	nd.slow, nd.errP, nd.full = 0, 0, false
	s.nodeLost(nd)
}

func (s *Sim) problem(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	s.tracef("PROBLEM: %s", p)
	s.problems = append(s.problems, p)
}

// liveNodes are the started, running nodes in index order.
func (s *Sim) liveNodes() []*node {
	var out []*node
	for _, nd := range s.nodes {
		if nd.up {
			out = append(out, nd)
		}
	}
	return out
}

func (s *Sim) pick(nodes []*node) *node {
	if len(nodes) == 0 {
		return nil
	}
	return nodes[s.rng.IntN(len(nodes))]
}

func first8(b []byte) []byte {
	if len(b) > 8 {
		return b[:8]
	}
	return b
}
