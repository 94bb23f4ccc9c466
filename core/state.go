package core

import (
	"fmt"
	"slices"
	"strings"
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
	stale      bool   // set at apply time: a deposed leader's decision
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
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("core: decode cluster log entry: %w", err)
	}
	if c.Type == 0 || c.Type >= cmdTypeEnd {
		return nil, fmt.Errorf("core: unknown cluster log entry type %d", c.Type)
	}
	return c, nil
}

// VDI is a virtual disk image as the cluster log knows it.
type VDI struct {
	ID         uint32
	Name       string
	Size       uint64
	Copies     uint8
	BlockShift uint8
	CTime      int64
	Deleted    bool   // ids of deleted VDIs are never reused, so stale objects cannot resurface
	Owner      NodeID // attach lock holder (0: not attached)
	OwnerInc   uint64
	AttachGen  uint64 // increases at every attach; prefixes the attacher's write ids
}

// ObjectSize is the size of the VDI's data objects.
func (v *VDI) ObjectSize() uint64 { return 1 << v.BlockShift }

// Objects is the number of data objects the VDI spans.
func (v *VDI) Objects() uint32 {
	return uint32((v.Size + v.ObjectSize() - 1) >> v.BlockShift)
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
	vdis       map[uint32]*VDI
	names      map[string]uint32 // live VDIs only
	recent     map[NodeID][]propResult
}

// NewClusterState returns the empty state before the first entry.
func NewClusterState() *ClusterState {
	return &ClusterState{vdis: map[uint32]*VDI{}, names: map[string]uint32{}, recent: map[NodeID][]propResult{}}
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

// VDI returns the VDI with id vid (live or deleted).
func (s *ClusterState) VDI(vid uint32) *VDI { return s.vdis[vid] }

// LookupVDI returns the live VDI called name.
func (s *ClusterState) LookupVDI(name string) *VDI {
	if vid, ok := s.names[name]; ok {
		return s.vdis[vid]
	}
	return nil
}

// VDIs returns copies of the live VDIs sorted by name.
func (s *ClusterState) VDIs() []VDI {
	out := make([]VDI, 0, len(s.names))
	for _, vid := range s.names {
		out = append(out, *s.vdis[vid])
	}
	slices.SortFunc(out, func(a, b VDI) int { return strings.Compare(a.Name, b.Name) })
	return out
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
		if len(s.names) > 0 {
			return Result{Code: ErrInvalid}
		}
		if c.Copies == 0 || c.BlockShift < MinBlockShift || c.BlockShift > MaxBlockShift {
			return Result{Code: ErrInvalid}
		}
		s.Formatted, s.Copies, s.BlockShift, s.CTime = true, c.Copies, c.BlockShift, c.Time
		return Result{}
	case CmdJoin:
		n := c.Node
		if n.ID == 0 {
			return Result{Code: ErrInvalid}
		}
		old, wasMember := s.Member(n.ID)
		if wasMember && old.Incarnation >= n.Incarnation {
			return Result{} // already in, or an older incarnation arriving late
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
		if c.AutoVNodes {
			n.VNodes = s.autoVNodes(n)
		}
		s.removeNode(n.ID)
		s.Nodes = append(s.Nodes, n)
		s.Shutdown = false // nodes coming back after a shutdown
		slices.SortFunc(s.Nodes, func(a, b NodeInfo) int { return cmpU64(uint64(a.ID), uint64(b.ID)) })
		s.newEpoch(c.Time)
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
		v := s.LookupVDI(c.Name)
		if v == nil {
			return Result{Code: ErrNoVDI}
		}
		if v.Owner != 0 && s.IsMember(v.Owner, v.OwnerInc) && !c.Force {
			return Result{Code: ErrLocked, VID: v.ID}
		}
		v.Deleted = true
		v.Owner, v.OwnerInc = 0, 0
		delete(s.names, v.Name)
		return Result{VID: v.ID}
	case CmdVDIResize:
		v := s.LookupVDI(c.Name)
		if v == nil {
			return Result{Code: ErrNoVDI}
		}
		if c.Size < v.Size || c.Size > maxVDISize || c.Size>>v.BlockShift > MaxDataObjs {
			return Result{Code: ErrInvalid, VID: v.ID}
		}
		v.Size = c.Size
		return Result{VID: v.ID}
	case CmdAttach:
		v := s.vdis[c.VID]
		if v == nil || v.Deleted {
			return Result{Code: ErrNoVDI}
		}
		if v.Owner == c.NodeID && v.OwnerInc == c.Inc {
			return Result{VID: v.ID, Gen: v.AttachGen}
		}
		if v.Owner != 0 && s.IsMember(v.Owner, v.OwnerInc) && !c.Force {
			return Result{Code: ErrLocked, VID: v.ID}
		}
		s.AttachGen++
		v.Owner, v.OwnerInc, v.AttachGen = c.NodeID, c.Inc, s.AttachGen
		return Result{VID: v.ID, Gen: v.AttachGen}
	case CmdDetach:
		v := s.vdis[c.VID]
		if v == nil {
			return Result{Code: ErrNoVDI}
		}
		if v.Owner == c.NodeID && v.OwnerInc == c.Inc {
			v.Owner, v.OwnerInc = 0, 0
		}
		return Result{VID: v.ID}
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

func (s *ClusterState) createVDI(c *Cmd) Result {
	if !s.Formatted {
		return Result{Code: ErrNotFormatted}
	}
	if c.Name == "" || len(c.Name) > maxVDINameLen || strings.ContainsAny(c.Name, "@/\x00") {
		return Result{Code: ErrInvalid}
	}
	if s.LookupVDI(c.Name) != nil {
		return Result{Code: ErrVDIExists}
	}
	copies, shift := c.Copies, c.BlockShift
	if copies == 0 {
		copies = s.Copies
	}
	if shift == 0 {
		shift = s.BlockShift
	}
	if shift < MinBlockShift || shift > MaxBlockShift || c.Size == 0 || c.Size > maxVDISize ||
		(c.Size+(1<<shift)-1)>>shift > MaxDataObjs {
		return Result{Code: ErrInvalid}
	}
	vid := HashVDIName(c.Name)
	for i := 0; ; i++ {
		if i == MaxVDIs {
			return Result{Code: ErrFull}
		}
		if vid != 0 && s.vdis[vid] == nil {
			break
		}
		vid = (vid + 1) & (MaxVDIs - 1)
	}
	v := &VDI{ID: vid, Name: c.Name, Size: c.Size, Copies: copies, BlockShift: shift, CTime: c.Time}
	s.vdis[vid] = v
	s.names[v.Name] = vid
	return Result{VID: vid}
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

// MinCopies is the smallest replica count of any live VDI (or the
// cluster's default).
func (s *ClusterState) MinCopies() int {
	c := int(s.Copies)
	for _, vid := range s.names {
		c = min(c, int(s.vdis[vid].Copies))
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
	e := enc{}
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
		v := s.vdis[vid]
		e.u32(v.ID)
		e.str(v.Name)
		e.u64(v.Size)
		e.u8(v.Copies)
		e.u8(v.BlockShift)
		e.i64(v.CTime)
		e.bool(v.Deleted)
		e.u64(uint64(v.Owner))
		e.u64(v.OwnerInc)
		e.u64(v.AttachGen)
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
		}
	}
	return e.b
}

func unmarshalClusterState(b []byte) (*ClusterState, error) {
	s := NewClusterState()
	if len(b) == 0 {
		return s, nil
	}
	d := dec{b: b}
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
		v := &VDI{ID: d.u32(), Name: d.str(), Size: d.u64(), Copies: d.u8(), BlockShift: d.u8(), CTime: d.i64(),
			Deleted: d.bool(), Owner: NodeID(d.u64()), OwnerInc: d.u64(), AttachGen: d.u64()}
		s.vdis[v.ID] = v
		if !v.Deleted {
			s.names[v.Name] = v.ID
		}
	}
	for i, n := 0, d.count(12); i < n; i++ {
		id := NodeID(d.u64())
		var rs []propResult
		for j, m := 0, d.count(21); j < m; j++ {
			rs = append(rs, propResult{id: d.u64(), res: Result{Code: Code(d.u8()), VID: d.u32(), Gen: d.u64()}})
		}
		s.recent[id] = rs
	}
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("core: decode cluster state: %w", err)
	}
	return s, nil
}
