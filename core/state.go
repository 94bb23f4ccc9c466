package core

import (
	"fmt"
	"slices"
)

// CmdType names an entry of the cluster log.
type CmdType uint8

// Cluster log entries. Applying one is deterministic: every node that
// applies the same log reaches the same ClusterState.
const (
	CmdFormat    CmdType = iota + 1 // set copies and object size; the cluster starts serving
	CmdJoin                         // a node (re)joins: new epoch
	CmdLeave                        // a node leaves or is declared dead: new epoch
	CmdVDICreate                    //
	CmdVDIDelete                    //
	CmdVDIResize                    //
	CmdAttach                       // take a VDI's attach lock
	CmdDetach                       // release it
	CmdShutdown                     // stop every node cleanly
	CmdStable                       // every member recovered epoch Epoch: removals start counting afresh
	CmdRecovered                    // a restarted member (NodeID, Inc) recovered: its data is whole again
	CmdSnapshot                     // Name, Tag: the working VDI becomes a snapshot; a new working VDI takes the name
	CmdClone                        // VID (a snapshot), Dst: a new VDI made from it
	CmdRollback                     // Name, VID (a snapshot of it): a new working VDI made from the snapshot
	CmdBuilt                        // VID: its table is built; it serves I/O
	CmdFlattened                    // VID: it shares no object any more
	CmdReclaim                      // VID (a family root), Gen: succeeds if the family did not change since Gen
	CmdPurge                        // VID (deleted, referenced by nothing), Gen: its record goes
	cmdTypeEnd
)

// Cmd is one entry of the cluster log.
type Cmd struct {
	Type       CmdType
	Proposer   NodeID
	PropID     uint64 // with Proposer, identifies a proposal so retries apply once
	Node       NodeInfo
	AutoVNodes bool
	NodeID     NodeID
	Inc        uint64
	Name       string
	Size       uint64
	Copies     uint8
	BlockShift uint8
	Time       int64 // wall-clock time supplied by the proposer's driver (unix seconds)
	VID        uint32
	Force      bool
	Term       uint64 // leader decisions (join, leave): the term they were made in
	Epoch      uint32 // CmdStable
	Tag        string // snapshot tag (CmdSnapshot, CmdVDIDelete)
	Dst        string // CmdClone: the new VDI's name
	Snap       uint32 // CmdVDIDelete: a snapshot id of Name
	Gen        uint64 // CmdReclaim, CmdPurge: the family generation
	// CmdJoin: more nodes joining in the same epoch change, after Node.
	// The leader admits every node waiting to join at once: one epoch
	// (and one round of recovery listings among all members) per batch,
	// not per node, as the original's join queue did.
	Joins []Joiner
	stale bool // set at apply time: a deposed leader's decision
}

// Joiner is one more node of a CmdJoin.
type Joiner struct {
	Node       NodeInfo
	AutoVNodes bool
}

func (c *Cmd) marshal() []byte {
	e := enc{}
	e.u8(uint8(c.Type))
	e.u64(uint64(c.Proposer))
	e.u64(c.PropID)
	encodeNode(&e, c.Node)
	e.bool(c.AutoVNodes)
	e.u64(uint64(c.NodeID))
	e.u64(c.Inc)
	e.str(c.Name)
	e.u64(c.Size)
	e.u8(c.Copies)
	e.u8(c.BlockShift)
	e.i64(c.Time)
	e.u32(c.VID)
	e.bool(c.Force)
	e.u64(c.Term)
	e.u32(c.Epoch)
	e.str(c.Tag)
	e.str(c.Dst)
	e.u32(c.Snap)
	e.u64(c.Gen)
	if len(c.Joins) > 0 { // absent from entries of single joins, and of older logs
		e.u32(uint32(len(c.Joins)))
		for _, j := range c.Joins {
			encodeNode(&e, j.Node)
			e.bool(j.AutoVNodes)
		}
	}
	return e.b
}

func unmarshalCmd(b []byte) (*Cmd, error) {
	d := dec{b: b}
	c := &Cmd{
		Type:       CmdType(d.u8()),
		Proposer:   NodeID(d.u64()),
		PropID:     d.u64(),
		Node:       decodeNode(&d),
		AutoVNodes: d.bool(),
		NodeID:     NodeID(d.u64()),
		Inc:        d.u64(),
		Name:       d.str(),
		Size:       d.u64(),
		Copies:     d.u8(),
		BlockShift: d.u8(),
		Time:       d.i64(),
		VID:        d.u32(),
		Force:      d.bool(),
		Term:       d.u64(),
		Epoch:      d.u32(),
	}
	if len(d.b) > 0 { // entries written before the VDI lifecycle end here
		c.Tag, c.Dst, c.Snap, c.Gen = d.str(), d.str(), d.u32(), d.u64()
	}
	if len(d.b) > 0 {
		cnt := d.u32()
		if cnt == 0 {
			return nil, fmt.Errorf("core: decode cluster log entry: an empty join batch")
		}
		for i := uint32(0); i < cnt && d.err == nil; i++ { // grows with the bytes there are, not with cnt
			c.Joins = append(c.Joins, Joiner{Node: decodeNode(&d), AutoVNodes: d.bool()})
		}
	}
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("core: decode cluster log entry: %w", err)
	}
	if c.Type == 0 || c.Type >= cmdTypeEnd {
		return nil, fmt.Errorf("core: unknown cluster log entry type %d", c.Type)
	}
	return c, nil
}

// EpochRecord is one entry of the epoch history.
type EpochRecord struct {
	Epoch uint32
	Time  int64
	Nodes []NodeID
}

// Result is the outcome of applying a Cmd.
type Result struct {
	Code Code
	VID  uint32
	Gen  uint64
	Snap uint32 // CmdSnapshot: the snapshot's id (the old working VDI's); CmdClone, CmdRollback: the source snapshot
}

type propResult struct {
	id  uint64
	res Result
}

const (
	recentPerProposer = 64
	epochHistoryLen   = 64
	maxVDISize        = uint64(MaxDataObjs) << MaxBlockShift
	maxVDINameLen     = 256
	// DefaultVNodes is the ring weight of a node of average capacity.
	// Sheepdog's own default of 128 leaves the fullest of 100 nodes 35%
	// above the mean (copies=1); 1024 keeps every size from 10 to 100 nodes
	// within 10% with the same hash functions (see TestRingBalance).
	DefaultVNodes = 1024
)

// ClusterState is the state the cluster log replicates.
type ClusterState struct {
	Formatted  bool
	Copies     uint8
	BlockShift uint8
	CTime      int64
	Epoch      uint32
	Nodes      []NodeInfo // sorted by ID
	History    []EpochRecord
	AttachGen  uint64
	Shutdown   bool
	// Removed lists the members removed since every member last finished
	// recovery, and Restarted the members that restarted (and may have lost
	// unsynced writes) and have not recovered since. Fewer than the
	// smallest copy count of nodes may be missing their data at once:
	// removing more could drop every replica of an object, and the cluster
	// would then serve zeros for it. Past that, a silent node stays a
	// member and I/O that needs it waits for it to come back.
	Removed    []NodeID
	RemovedInc []uint64 // the incarnation each Removed node had
	Restarted  []NodeID
	vdis       map[uint32]*VDI   // live and deleted (until purged)
	names      map[string]uint32 // live working VDIs only
	families   map[uint32]uint64 // family root → generation (FamilyGen)
	retired    map[uint32]struct{}
	recent     map[NodeID][]propResult
}

// NewClusterState returns the empty state before the first entry.
func NewClusterState() *ClusterState {
	return &ClusterState{vdis: map[uint32]*VDI{}, names: map[string]uint32{}, families: map[uint32]uint64{},
		retired: map[uint32]struct{}{}, recent: map[NodeID][]propResult{}}
}

// Member returns the member with id, if any.
func (s *ClusterState) Member(id NodeID) (NodeInfo, bool) {
	i, ok := slices.BinarySearchFunc(s.Nodes, id, func(n NodeInfo, id NodeID) int { return cmpU64(uint64(n.ID), uint64(id)) })
	if !ok {
		return NodeInfo{}, false
	}
	return s.Nodes[i], true
}

// IsMember reports whether id with incarnation inc is a member.
func (s *ClusterState) IsMember(id NodeID, inc uint64) bool {
	n, ok := s.Member(id)
	return ok && n.Incarnation == inc
}

// applied reports whether c's proposal was applied already (a retry of
// it reached the log twice).
func (s *ClusterState) applied(c *Cmd) bool {
	if c.Proposer != 0 {
		for _, r := range s.recent[c.Proposer] {
			if r.id == c.PropID {
				return true
			}
		}
	}
	return false
}

// apply executes one entry. It must stay deterministic.
func (s *ClusterState) apply(c *Cmd) Result {
	if c.Proposer != 0 {
		for _, r := range s.recent[c.Proposer] {
			if r.id == c.PropID {
				return r.res
			}
		}
	}
	res := Result{Code: ErrStale}
	if !c.stale {
		res = s.exec(c)
	}
	if c.Proposer != 0 {
		rs := append(s.recent[c.Proposer], propResult{c.PropID, res})
		if len(rs) > recentPerProposer {
			rs = rs[len(rs)-recentPerProposer:]
		}
		s.recent[c.Proposer] = rs
	}
	return res
}

func (s *ClusterState) exec(c *Cmd) Result {
	switch c.Type {
	case CmdFormat:
		if len(s.VDIs()) > 0 {
			return Result{Code: ErrInvalid}
		}
		if c.Copies == 0 || c.BlockShift < MinBlockShift || c.BlockShift > MaxBlockShift {
			return Result{Code: ErrInvalid}
		}
		s.Formatted, s.Copies, s.BlockShift, s.CTime = true, c.Copies, c.BlockShift, c.Time
		return Result{}
	case CmdJoin:
		if c.Node.ID == 0 {
			return Result{Code: ErrInvalid}
		}
		for _, j := range c.Joins {
			if j.Node.ID == 0 {
				return Result{Code: ErrInvalid}
			}
		}
		changed := s.join(c.Node, c.AutoVNodes)
		for _, j := range c.Joins {
			changed = s.join(j.Node, j.AutoVNodes) || changed
		}
		if changed {
			s.Shutdown = false // nodes coming back after a shutdown
			s.newEpoch(c.Time)
		}
		return Result{}
	case CmdLeave:
		if !s.IsMember(c.NodeID, c.Inc) {
			return Result{}
		}
		if !s.CanRemove() {
			return Result{Code: ErrBusy}
		}
		s.removeNode(c.NodeID)
		if i := slices.Index(s.Removed, c.NodeID); s.Formatted && i < 0 {
			s.Removed = append(s.Removed, c.NodeID)
			s.RemovedInc = append(s.RemovedInc, c.Inc)
		} else if i >= 0 {
			s.RemovedInc[i] = c.Inc
		}
		s.newEpoch(c.Time)
		return Result{}
	case CmdVDICreate:
		return s.createVDI(c)
	case CmdVDIDelete:
		return s.deleteVDI(c)
	case CmdVDIResize:
		return s.resize(c)
	case CmdAttach:
		return s.attach(c)
	case CmdDetach:
		return s.detach(c)
	case CmdSnapshot:
		return s.snapshot(c)
	case CmdClone:
		return s.clone(c)
	case CmdRollback:
		return s.rollback(c)
	case CmdBuilt:
		return s.built(c)
	case CmdFlattened:
		return s.flattened(c)
	case CmdReclaim:
		return s.reclaimCheck(c)
	case CmdPurge:
		return s.purge(c)
	case CmdShutdown:
		s.Shutdown = true
		return Result{}
	case CmdStable:
		if c.Epoch == s.Epoch {
			s.Removed, s.RemovedInc, s.Restarted = nil, nil, nil
		}
		return Result{}
	case CmdRecovered:
		// Any recovery this incarnation finished brought back what the
		// restart may have lost (later epochs are other recoveries).
		if s.IsMember(c.NodeID, c.Inc) {
			s.Restarted = slices.DeleteFunc(s.Restarted, func(id NodeID) bool { return id == c.NodeID })
		}
		return Result{}
	}
	return Result{Code: ErrInvalid}
}

// join makes n a member (or its new incarnation the member), reporting
// whether the node list changed.
func (s *ClusterState) join(n NodeInfo, auto bool) bool {
	old, wasMember := s.Member(n.ID)
	if wasMember && old.Incarnation >= n.Incarnation {
		return false // already in, or an older incarnation arriving late
	}
	// A node that restarted, or that comes back after it was removed,
	// may miss writes until it has recovered.
	restarted := wasMember // a member with a new incarnation
	if i := slices.Index(s.Removed, n.ID); i >= 0 && s.RemovedInc[i] < n.Incarnation {
		restarted = true // removed, then restarted before it came back
	}
	if restarted && s.Formatted && !slices.Contains(s.Restarted, n.ID) {
		s.Restarted = append(s.Restarted, n.ID)
	}
	if auto {
		n.VNodes = s.autoVNodes(n)
	}
	if wasMember {
		s.removeNode(n.ID)
	}
	i, _ := slices.BinarySearchFunc(s.Nodes, n.ID, func(a NodeInfo, id NodeID) int { return cmpU64(uint64(a.ID), uint64(id)) })
	s.Nodes = slices.Insert(s.Nodes, i, n)
	return true
}

// autoVNodes weights a joining node by its capacity relative to the
// average of the current data nodes.
func (s *ClusterState) autoVNodes(n NodeInfo) uint16 {
	var sum uint64
	cnt := 0
	for _, m := range s.Nodes {
		if m.VNodes > 0 && m.Capacity > 0 && m.ID != n.ID {
			sum += m.Capacity
			cnt++
		}
	}
	if cnt == 0 || n.Capacity == 0 {
		return DefaultVNodes
	}
	v := float64(DefaultVNodes) * float64(n.Capacity) * float64(cnt) / float64(sum)
	return uint16(min(max(v+0.5, 1), 65535))
}

// MinCopies is the smallest replica count of any VDI that has objects
// (snapshots and deleted VDIs not yet reclaimed too), or the cluster's
// default.
func (s *ClusterState) MinCopies() int {
	c := int(s.Copies)
	for _, v := range s.vdis {
		c = min(c, int(v.Copies))
	}
	return c
}

// Missing counts the nodes that may miss data: those removed since the
// last full recovery that have not come back (a node that rejoined
// without restarting brought its data back), and restarted members that
// have not recovered yet.
func (s *ClusterState) Missing() int {
	cnt := 0
	for _, id := range s.Removed {
		if _, ok := s.Member(id); !ok && !slices.Contains(s.Restarted, id) {
			cnt++
		}
	}
	for _, id := range s.Restarted {
		if _, ok := s.Member(id); ok || slices.Contains(s.Removed, id) {
			cnt++
		}
	}
	return cnt
}

// CanRemove reports whether one more member may be removed now.
func (s *ClusterState) CanRemove() bool {
	return !s.Formatted || s.Missing()+1 < s.MinCopies()
}

func (s *ClusterState) removeNode(id NodeID) {
	s.Nodes = slices.DeleteFunc(s.Nodes, func(n NodeInfo) bool { return n.ID == id })
}

func (s *ClusterState) newEpoch(t int64) {
	s.Epoch++
	ids := make([]NodeID, len(s.Nodes))
	for i, n := range s.Nodes {
		ids[i] = n.ID
	}
	s.History = append(s.History, EpochRecord{Epoch: s.Epoch, Time: t, Nodes: ids})
	if len(s.History) > epochHistoryLen {
		s.History = s.History[len(s.History)-epochHistoryLen:]
	}
}

// marshal encodes the whole state deterministically (raft snapshots).
func (s *ClusterState) marshal() []byte {
	e := enc{b: make([]byte, 0, s.sizeHint())}
	e.u8(stateMagic)
	e.bool(s.Formatted)
	e.u8(s.Copies)
	e.u8(s.BlockShift)
	e.i64(s.CTime)
	e.u32(s.Epoch)
	e.u64(s.AttachGen)
	e.bool(s.Shutdown)
	e.u32(uint32(len(s.Removed)))
	for i, id := range s.Removed {
		e.u64(uint64(id))
		e.u64(s.RemovedInc[i])
	}
	e.u32(uint32(len(s.Restarted)))
	for _, id := range s.Restarted {
		e.u64(uint64(id))
	}
	e.u32(uint32(len(s.Nodes)))
	for _, n := range s.Nodes {
		encodeNode(&e, n)
	}
	e.u32(uint32(len(s.History)))
	for _, h := range s.History {
		e.u32(h.Epoch)
		e.i64(h.Time)
		e.u32(uint32(len(h.Nodes)))
		for _, id := range h.Nodes {
			e.u64(uint64(id))
		}
	}
	vids := make([]uint32, 0, len(s.vdis))
	for vid := range s.vdis {
		vids = append(vids, vid)
	}
	slices.Sort(vids)
	e.u32(uint32(len(vids)))
	for _, vid := range vids {
		encodeVDI(&e, s.vdis[vid])
	}
	props := make([]NodeID, 0, len(s.recent))
	for id := range s.recent {
		props = append(props, id)
	}
	slices.Sort(props)
	e.u32(uint32(len(props)))
	for _, id := range props {
		e.u64(uint64(id))
		rs := s.recent[id]
		e.u32(uint32(len(rs)))
		for _, r := range rs {
			e.u64(r.id)
			e.u8(uint8(r.res.Code))
			e.u32(r.res.VID)
			e.u64(r.res.Gen)
			e.u32(r.res.Snap)
		}
	}
	roots := make([]uint32, 0, len(s.families))
	for root := range s.families {
		roots = append(roots, root)
	}
	slices.Sort(roots)
	e.u32(uint32(len(roots)))
	for _, root := range roots {
		e.u32(root)
		e.u64(s.families[root])
	}
	retired := make([]uint32, 0, len(s.retired))
	for vid := range s.retired {
		retired = append(retired, vid)
	}
	slices.Sort(retired)
	e.u32(uint32(len(retired)))
	for _, vid := range retired {
		e.u32(vid)
	}
	return e.b
}

// sizeHint is about the size of the state's encoding, so that marshal
// allocates once: every node encodes the whole state at each raft
// snapshot (one per membership change), and with 100 members the epoch
// history alone is 50 KB, which appending grew a dozen times.
func (s *ClusterState) sizeHint() int {
	n := 64 + 16*len(s.Removed) + 8*len(s.Restarted) + 16*len(s.History) + 16*len(s.retired) + 12*len(s.families)
	for _, m := range s.Nodes {
		n += 42 + len(m.Addr) + len(m.NBDAddr)
	}
	for _, h := range s.History {
		n += 8 * len(h.Nodes)
	}
	for _, v := range s.vdis {
		n += 128 + len(v.Name) + len(v.Tag)
	}
	for _, rs := range s.recent {
		n += 12 + 25*len(rs)
	}
	return n
}

// stateMagic starts an encoded ClusterState; encodings from before the
// VDI lifecycle start with the Formatted flag (0 or 1) instead.
const stateMagic = 0xC5

func unmarshalClusterState(b []byte) (*ClusterState, error) {
	s := NewClusterState()
	if len(b) == 0 {
		return s, nil
	}
	d := dec{b: b}
	legacy := b[0] != stateMagic
	if !legacy {
		d.u8()
	}
	s.Formatted = d.bool()
	s.Copies = d.u8()
	s.BlockShift = d.u8()
	s.CTime = d.i64()
	s.Epoch = d.u32()
	s.AttachGen = d.u64()
	s.Shutdown = d.bool()
	for i, n := 0, d.count(16); i < n; i++ {
		s.Removed = append(s.Removed, NodeID(d.u64()))
		s.RemovedInc = append(s.RemovedInc, d.u64())
	}
	for i, n := 0, d.count(8); i < n; i++ {
		s.Restarted = append(s.Restarted, NodeID(d.u64()))
	}
	for i, n := 0, d.count(38); i < n; i++ {
		s.Nodes = append(s.Nodes, decodeNode(&d))
	}
	for i, n := 0, d.count(16); i < n; i++ {
		h := EpochRecord{Epoch: d.u32(), Time: d.i64()}
		for j, m := 0, d.count(8); j < m; j++ {
			h.Nodes = append(h.Nodes, NodeID(d.u64()))
		}
		s.History = append(s.History, h)
	}
	for i, n := 0, d.count(40); i < n; i++ {
		v := decodeVDI(&d, legacy)
		s.vdis[v.ID] = v
		if !v.Deleted && !v.IsSnapshot() {
			s.names[v.Name] = v.ID
		}
	}
	for i, n := 0, d.count(12); i < n; i++ {
		id := NodeID(d.u64())
		var rs []propResult
		for j, m := 0, d.count(21); j < m; j++ {
			r := propResult{id: d.u64(), res: Result{Code: Code(d.u8()), VID: d.u32(), Gen: d.u64()}}
			if !legacy {
				r.res.Snap = d.u32()
			}
			rs = append(rs, r)
		}
		s.recent[id] = rs
	}
	if !legacy {
		for i, n := 0, d.count(12); i < n; i++ {
			root := d.u32()
			s.families[root] = d.u64()
		}
		for i, n := 0, d.count(4); i < n; i++ {
			s.retired[d.u32()] = struct{}{}
		}
	}
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("core: decode cluster state: %w", err)
	}
	return s, nil
}
