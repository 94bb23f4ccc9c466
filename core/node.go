package core

import (
	"container/heap"
	"math/rand/v2"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Timing holds the node's time constants, in ticks. The driver ticks a
// node at a fixed rate (the daemon every 10 ms; the simulator the same in
// virtual time, with per-node drift).
type Timing struct {
	HeartbeatTicks   int     // raft heartbeat interval
	ElectionTicks    int     // election timeout: a random value in [ElectionTicks, 2*ElectionTicks)
	FailTicks        int     // the leader declares a member dead after this much silence
	LeaseTicks       int     // read lease length a co-replica grants
	MaxDrift         float64 // bound on relative tick-rate difference between nodes (0.05 = 5%)
	RetryTicks       int     // peer request timeout before retransmission
	JoinTicks        int     // interval between join attempts
	OpTimeoutTicks   int     // a client operation fails after this long
	RecoveredTicks   int     // interval of "recovered" re-announcements
	SnapshotEntries  uint64  // compact the cluster log after this many entries
	RecoveryParallel int     // concurrent object fetches during recovery
}

// DefaultTiming suits a 10 ms tick.
func DefaultTiming() Timing {
	return Timing{
		HeartbeatTicks:   1,
		ElectionTicks:    10,
		FailTicks:        100,
		LeaseTicks:       40,
		MaxDrift:         0.05,
		RetryTicks:       30,
		JoinTicks:        30,
		OpTimeoutTicks:   6000,
		RecoveredTicks:   100,
		SnapshotEntries:  1000,
		RecoveryParallel: 8,
	}
}

// Bugs are deliberately planted faults. They exist so that tests can prove
// the simulator's checks catch them; production never sets them.
type Bugs struct {
	AckEarly      bool // acknowledge a write once the primary has it, before every replica does
	ReadAny       bool // serve reads from any replica, without lease or recovery
	NoEpochCheck  bool // accept requests and replication from an older epoch as if current
	SkipRecovery  bool // a new replica serves without recovering
	NoRevoke      bool // a primary runs operations on an object it handed over to the attacher without taking it back
	CowInPlace    bool // a write to a shared object modifies it in place (and snapshots take writes)
	ReclaimShared bool // reclaim ignores what clones reference
}

// ObjMeta is what a node stores with each object besides its data.
type ObjMeta struct {
	Version uint64 // epoch<<32 | sequence, assigned by the object's primary
	ReqID   uint64 // id of the last client write applied (retries of it are not re-applied)
	Deleted bool   // tombstone
}

// ObjectInfo describes one object of the local store.
type ObjectInfo struct {
	OID  OID
	Meta ObjMeta
}

// RaftState is the persisted raft state a node restarts from.
type RaftState struct {
	HardState raftpb.HardState
	Snapshot  raftpb.Snapshot
	Entries   []raftpb.Entry
}

// Config creates a Node.
type Config struct {
	Self       NodeInfo // Incarnation must grow at every start of the same node
	AutoVNodes bool     // weight the node by capacity when it joins (Self.VNodes ignored)
	Seeds      []string // peer addresses to join through; empty and no raft state: start a new cluster
	Rand       *rand.Rand
	Timing     Timing
	Bugs       Bugs
	NoDirect   bool         // the attacher always writes through each object's primary (no direct writes)
	Raft       RaftState    // restored cluster log
	Objects    []ObjectInfo // restored local objects
	Rings      *RingCache   // rings shared with the other nodes of this goroutine (the simulator's); nil: the node builds its own
}

// Ready is what the driver must do now, in this order: persist the raft
// records (Snapshot, then Entries, then HardState) durably, then send the
// messages, submit the disk operations and deliver the replies. Then call
// Advance. The slices belong to the node again after Advance.
type Ready struct {
	Snapshot     raftpb.Snapshot
	Entries      []raftpb.Entry
	HardState    raftpb.HardState
	CompactIndex uint64 // persisted raft entries up to here may be dropped
	Messages     []*Message
	Disk         []DiskOp
	Replies      []Reply
	Notes        []string // notable state changes, for logs and traces
}

// Empty reports whether there is nothing to do.
func (r *Ready) Empty() bool {
	return raft.IsEmptySnap(r.Snapshot) && len(r.Entries) == 0 && raft.IsEmptyHardState(r.HardState) &&
		r.CompactIndex == 0 && len(r.Messages) == 0 && len(r.Disk) == 0 && len(r.Replies) == 0 && len(r.Notes) == 0
}

// Event is an input to Step: Tick, *Message, DiskDone or *Request.
type Event interface{ isEvent() }

// Tick advances the node's clock by one tick. Unix, if set, is the
// driver's wall-clock time in seconds, used only to timestamp cluster log
// entries (epoch history, creation times).
type Tick struct{ Unix int64 }

func (Tick) isEvent()     {}
func (*Message) isEvent() {}
func (DiskDone) isEvent() {}
func (*Request) isEvent() {}

// timer is a scheduled callback; ties fire in scheduling order.
type timer struct {
	at  int64
	seq uint64
	fn  func()
}

type timerHeap []timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)   { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// retryKind says what a retry timer does when it comes due.
type retryKind uint8

const (
	retryCall     retryKind = iota + 1 // retransmit call id if it is still unanswered
	retryDispatch                      // re-send the gateway's sub-operation id if it is still in flight
)

// retryTimer is a per-request timer of the one delay RetryTicks. Every
// peer call and every gateway sub-operation arms one, so under load
// thousands wait at a time; all have the same delay, so they come due in
// the order they were armed and a FIFO queue holds them. (In the timer
// heap, with a closure each, popping them cost a tick about half a
// millisecond at 4000 writes/s, during which the node served nothing.)
// They share the heap's sequence numbers, and tick merges the two, so
// timers fire in the same order as if they were all in the heap.
type retryTimer struct {
	at   int64
	seq  uint64
	id   uint64
	kind retryKind
}

// Node is one sheep's deterministic state machine.
type Node struct {
	self   NodeInfo
	id     NodeID
	cfg    Config
	t      Timing
	bugs   Bugs
	rand   *rand.Rand
	now    int64
	wall   int64 // last wall-clock time a tick brought (unix seconds)
	out    Ready
	nextID uint64

	timers   timerHeap
	retries  []retryTimer // in (at, seq) order
	timerSeq uint64

	// cluster log
	rn                *raft.RawNode
	storage           *raft.MemoryStorage
	conf              raftpb.ConfState
	lead              NodeID
	isLeader          bool
	leaderSince       int64
	quorumSeen        int64
	heardLeader       int64
	electionElapsed   int
	electionTimeout   int
	applied           uint64
	snapIndex         uint64
	snapNow           bool
	lastHeard         map[NodeID]int64 // leader: any message from the member
	lastAck           map[NodeID]int64 // leader: the member's last answer (proof it hears the leader)
	reach             reach
	logLost           bool           // the cluster log lost entries it had acknowledged (stepRaft)
	refill            map[OID]NodeID // copies dropped for lack of space, and where to take them back from (refill.go)
	addrs             map[NodeID]string
	props             map[uint64]*proposal
	nextPropID        uint64
	confPending       int64 // tick a conf change was proposed at (0: none)
	pendingJoins      map[NodeID]joinRequest
	leaveProposed     map[NodeID]int64
	joinProposed      map[NodeID]int64
	snapSent          map[NodeID]int64
	recoveredProposed map[NodeID]int64
	stableProposed    uint32
	stableAt          int64
	lastJoinSent      int64
	ackNodes          []NodeInfo // joinAckNodes of epoch ackEpoch of ackCS
	ackEpoch          uint32
	ackCS             *ClusterState
	addrCount         map[string]int // members per address, of epoch addrCountEpoch of addrCountCS (addrShared)
	addrCountEpoch    uint32
	addrCountCS       *ClusterState

	// cluster state and the current epoch
	cs       *ClusterState
	epoch    uint32
	ring     *Ring
	serving  bool
	stopped  bool
	shutdown bool
	held     []*Message

	// local objects
	objs           map[OID]*object
	objGen         uint64  // bumped whenever an object becomes present or absent
	listIdx        listIdx // handleList's index of local objects
	diskCB         map[uint64]func(DiskDone)
	writesInFlight int // local data writes in flight
	oldWrites      int // of which issued in an older epoch

	// leases
	leases          map[NodeID]int64 // co-replica → end of its read lease (current epoch)
	leaseReq        map[NodeID]bool
	leaseUsed       map[NodeID]int64
	grantedUntil    int64
	listBlockedTill int64

	// peer requests awaiting answers
	calls map[uint64]*call

	// direct writes (direct.go)
	grants  map[OID]*direct  // objects this node, their primary, handed over
	fences  map[OID]uint64   // the last hand-over of each object this node made as its primary (this epoch)
	revokes map[OID]*Message // revokes to answer once the object is settled here
	revoked uint64           // objects this node, their primary, took back (Revokes)

	gw         gateway
	barriers   map[uint64]*barrier
	builtWaits map[uint32][]func(Code)
	jobs       jobs // the leader's builds and reclaims
	flattens   map[uint32]*flatten
	rec        *recovery
	listsDue   *recovery       // a recovery whose lists are not asked for yet (sendLists)
	done       map[NodeID]bool // members that announced recovery of the current epoch
	gced       bool
	gcLeft     bool // some objects to collect were busy
}

// NewNode creates a node from its configuration and restored state.
func NewNode(cfg Config) (*Node, error) {
	t := cfg.Timing
	if t.ElectionTicks == 0 {
		t = DefaultTiming()
	}
	r := cfg.Rand
	if r == nil {
		r = rand.New(rand.NewPCG(uint64(cfg.Self.ID), cfg.Self.Incarnation))
	}
	n := &Node{
		self:              cfg.Self,
		id:                cfg.Self.ID,
		cfg:               cfg,
		t:                 t,
		bugs:              cfg.Bugs,
		rand:              r,
		storage:           raft.NewMemoryStorage(),
		lastHeard:         map[NodeID]int64{},
		lastAck:           map[NodeID]int64{},
		addrs:             map[NodeID]string{},
		props:             map[uint64]*proposal{},
		pendingJoins:      map[NodeID]joinRequest{},
		leaveProposed:     map[NodeID]int64{},
		joinProposed:      map[NodeID]int64{},
		snapSent:          map[NodeID]int64{},
		recoveredProposed: map[NodeID]int64{},
		cs:                NewClusterState(),
		ring:              NewRing(nil),
		objs:              map[OID]*object{},
		diskCB:            map[uint64]func(DiskDone){},
		leases:            map[NodeID]int64{},
		leaseReq:          map[NodeID]bool{},
		leaseUsed:         map[NodeID]int64{},
		calls:             map[uint64]*call{},
		done:              map[NodeID]bool{},
		grants:            map[OID]*direct{},
		fences:            map[OID]uint64{},
		revokes:           map[OID]*Message{},
		barriers:          map[uint64]*barrier{},
		builtWaits:        map[uint32][]func(Code){},
		flattens:          map[uint32]*flatten{},
	}
	n.jobs.init()
	n.gw.init()
	n.reach.init()
	n.addrs[n.id] = n.self.Addr
	// A restarted node may have granted leases just before it stopped:
	// it answers no recovery lists until any such lease has ended.
	n.listBlockedTill = int64(t.LeaseTicks)
	for _, o := range cfg.Objects {
		n.objs[o.OID] = &object{meta: o.Meta, present: true}
	}
	if err := n.initRaft(); err != nil {
		return nil, err
	}
	return n, nil
}

// ID is the node's id.
func (n *Node) ID() NodeID { return n.id }

// Now is the node's clock in ticks.
func (n *Node) Now() int64 { return n.now }

// Step feeds one event to the node.
func (n *Node) Step(ev Event) {
	if n.stopped {
		if r, ok := ev.(*Request); ok {
			n.reply(Reply{ID: r.ID, Code: ErrShutdown})
		}
		return
	}
	switch e := ev.(type) {
	case Tick:
		if e.Unix != 0 {
			n.wall = e.Unix
		}
		n.tick()
	case *Message:
		n.recv(e)
	case DiskDone:
		if cb, ok := n.diskCB[e.ID]; ok {
			delete(n.diskCB, e.ID)
			cb(e)
		}
	case *Request:
		n.request(e)
	}
}

// Ready returns what the driver must do now (see Ready).
func (n *Node) Ready() Ready {
	n.drainRaft()
	n.sendLists()
	return n.out
}

// HasReady reports whether Ready has anything to do.
func (n *Node) HasReady() bool {
	return !n.out.Empty() || n.rn.HasReady() || n.listsDue != nil
}

// Advance tells the node the last Ready was done.
func (n *Node) Advance() {
	// The arrays are reused: the messages and disk operations they held
	// (writes with their data) must not stay reachable until a later
	// batch overwrites them. (Replies are left alone: the simulator reads
	// them after Advance.)
	clear(n.out.Messages)
	clear(n.out.Disk)
	n.out = Ready{
		Entries:  n.out.Entries[:0],
		Messages: n.out.Messages[:0],
		Disk:     n.out.Disk[:0],
		Replies:  n.out.Replies[:0],
		Notes:    n.out.Notes[:0],
	}
}

func (n *Node) tick() {
	n.now++
	n.tickRaft()
	n.fireTimers()
	n.gw.expire(n)
	n.tickReach()
	if n.isLeader {
		n.reconcile()
	}
	n.tickJobs()
	n.tickJoin()
	n.tickLeases()
	n.tickRecovery()
	n.tickRefill()
}

// fireTimers runs the timers that are due, from the heap and the retry
// queue merged in (at, seq) order.
func (n *Node) fireTimers() {
	for {
		heapDue := len(n.timers) > 0 && n.timers[0].at <= n.now
		retryDue := len(n.retries) > 0 && n.retries[0].at <= n.now
		switch {
		case heapDue && (!retryDue || n.timers[0].at < n.retries[0].at ||
			n.timers[0].at == n.retries[0].at && n.timers[0].seq < n.retries[0].seq):
			t := heap.Pop(&n.timers).(timer)
			t.fn()
		case retryDue:
			r := n.retries[0]
			n.retries = n.retries[1:]
			n.fireRetry(r)
		default:
			return
		}
	}
}

// afterRetry arms a retry timer RetryTicks from now.
func (n *Node) afterRetry(kind retryKind, id uint64) {
	n.timerSeq++
	n.retries = append(n.retries, retryTimer{at: n.now + int64(max(n.t.RetryTicks, 1)), seq: n.timerSeq, id: id, kind: kind})
}

func (n *Node) fireRetry(r retryTimer) {
	switch r.kind {
	case retryCall:
		c, ok := n.calls[r.id]
		if !ok {
			return
		}
		m := *c.msg
		n.resent(m.To)
		n.send(&m)
		n.armRetry(r.id)
	case retryDispatch:
		if s, ok := n.gw.subs[r.id]; ok {
			n.resent(s.to)
			n.gw.dispatch(n, s)
		}
	}
}

// after runs fn once d ticks from now.
func (n *Node) after(d int64, fn func()) {
	n.timerSeq++
	heap.Push(&n.timers, timer{at: n.now + max(d, 1), seq: n.timerSeq, fn: fn})
}

func (n *Node) newID() uint64 {
	n.nextID++
	return n.nextID
}

func (n *Node) note(s string) { n.out.Notes = append(n.out.Notes, s) }

// send queues m for delivery to m.To.
func (n *Node) send(m *Message) {
	m.From = n.id
	if m.Epoch == 0 {
		m.Epoch = n.epoch
	}
	if m.ToAddr == "" {
		m.ToAddr = n.addrs[m.To]
	}
	if m.To == n.id {
		// Local delivery goes through the driver too, so that every
		// message is an event of its own and traces stay simple.
		m.ToAddr = n.self.Addr
	}
	n.out.Messages = append(n.out.Messages, m)
}

func (n *Node) reply(r Reply) { n.out.Replies = append(n.out.Replies, r) }

// call is a peer request that is retransmitted until answered or cancelled.
type call struct {
	msg    *Message
	sentAt int64 // first transmission
	onResp func(*Message)
}

// rpc sends m and calls onResp with the response; it retransmits the
// same message (same id) every RetryTicks until answered or cancelled.
// Handlers on the other side are idempotent.
func (n *Node) rpc(m *Message, onResp func(*Message)) uint64 {
	m.ID = n.newID()
	c := &call{msg: m, sentAt: n.now, onResp: onResp}
	n.calls[m.ID] = c
	n.send(m)
	n.armRetry(m.ID)
	return m.ID
}

func (n *Node) armRetry(id uint64) { n.afterRetry(retryCall, id) }

// failStaleCalls ends the calls of older epochs with a synthetic
// ErrStaleEpoch answer, so that their owners clean up.
func (n *Node) failStaleCalls() {
	ids := make([]uint64, 0)
	for id, c := range n.calls {
		if c.msg.Epoch < n.epoch {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		c := n.calls[id]
		delete(n.calls, id)
		c.onResp(&Message{Type: c.msg.Type, From: c.msg.To, To: n.id, ID: id, Epoch: n.epoch, Code: ErrStaleEpoch})
	}
}

func (n *Node) cancel(id uint64) { delete(n.calls, id) }

// response delivers a response to its pending call, if any.
func (n *Node) response(m *Message) {
	c, ok := n.calls[m.ID]
	if !ok || c.msg.To != m.From {
		return
	}
	delete(n.calls, m.ID)
	c.onResp(m)
}

// respond answers request req.
func (n *Node) respond(req *Message, t MsgType, code Code) *Message {
	m := &Message{Type: t, To: req.From, ID: req.ID, Code: code, OID: req.OID}
	n.send(m)
	return m
}

// Epoch is the node's current epoch.
func (n *Node) Epoch() uint32 { return n.epoch }

// Serving reports whether this incarnation is a member of a formatted
// cluster, so that it handles I/O.
func (n *Node) Serving() bool { return n.serving }

// Leader is the raft leader this node knows of (0: none).
func (n *Node) Leader() NodeID { return n.lead }

// IsLeader reports whether this node leads the cluster log.
func (n *Node) IsLeader() bool { return n.isLeader }

// LogLost reports that this node's cluster log is missing entries it had
// acknowledged: it must not go on under its identity (the driver stops it).
func (n *Node) LogLost() bool { return n.logLost }

// Cluster returns the replicated cluster state. Callers must not modify it.
func (n *Node) Cluster() *ClusterState { return n.cs }

// Ring returns the current epoch's placement.
func (n *Node) Ring() *Ring { return n.ring }

// ShutdownRequested reports whether the cluster was told to shut down
// while this node was serving.
func (n *Node) ShutdownRequested() bool { return n.shutdown }

// Voters returns the raft voter ids.
func (n *Node) Voters() []uint64 { return slices.Clone(n.conf.Voters) }

// Stats counts the node's in-flight state, to check that nothing leaks.
type Stats struct {
	ClientOps int // client operations not answered yet
	SubOps    int // object operations a gateway has in flight
	Calls     int // peer requests awaiting an answer
	Timers    int
	Held      int // messages held for a newer epoch
	Objects   int // object entries (stored or busy)
	Busy      int // object entries with work pending
	Refill    int // copies dropped for lack of space and not taken back yet
}

// Stats returns the node's in-flight state.
func (n *Node) Stats() Stats {
	st := Stats{ClientOps: len(n.gw.ops), SubOps: len(n.gw.subs), Calls: len(n.calls), Timers: len(n.timers) + len(n.retries),
		Held: len(n.held), Objects: len(n.objs), Refill: len(n.refill)}
	for _, o := range n.objs {
		if !o.idle() {
			st.Busy++
		}
	}
	return st
}
