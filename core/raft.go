package core

import (
	"fmt"
	"io"
	"log"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// raft never elects on its own: its election timeout is effectively
// infinite, because raft draws it from crypto randomness and the simulator
// must replay runs exactly. The node keeps its own election timer with its
// seeded randomness and calls Campaign.
const raftElectionTick = 1 << 30

var quietRaftLogger = &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)}

// raftWarnings turns raft's warnings (a campaign refused for unapplied
// configuration changes, say) into the node's notes, so that a cluster
// without a leader says why in its logs; raft's chatter stays quiet.
type raftWarnings struct {
	*raft.DefaultLogger
	n *Node
}

func (l raftWarnings) Warning(v ...any) { l.n.note("raft: " + fmt.Sprint(v...)) }

// Info and Infof do nothing: raft formats its chatter before the
// discarding logger drops it, and every membership change printed the
// whole configuration on every node ("switched to configuration ...",
// O(members)), 7% of the simulator's time with a few hundred nodes.
func (raftWarnings) Info(...any)          {}
func (raftWarnings) Infof(string, ...any) {}

func (l raftWarnings) Warningf(format string, v ...any) {
	l.n.note("raft: " + fmt.Sprintf(format, v...))
}

func (n *Node) initRaft() error {
	rs := n.cfg.Raft
	bootstrap := raft.IsEmptySnap(rs.Snapshot) && len(rs.Entries) == 0 && raft.IsEmptyHardState(rs.HardState)
	if bootstrap && len(n.cfg.Seeds) == 0 {
		// A new cluster: a snapshot at index 1 with this node as the only
		// voter. It is persisted with the first Ready.
		st := NewClusterState()
		rs.Snapshot = raftpb.Snapshot{
			Data: st.marshal(),
			Metadata: raftpb.SnapshotMetadata{
				Index: 1, Term: 1,
				ConfState: raftpb.ConfState{Voters: []uint64{uint64(n.id)}},
			},
		}
		n.out.Snapshot = rs.Snapshot
	}
	if !raft.IsEmptySnap(rs.Snapshot) {
		if err := n.storage.ApplySnapshot(rs.Snapshot); err != nil {
			return fmt.Errorf("core: restore raft snapshot: %w", err)
		}
		if err := n.restoreSnapshot(rs.Snapshot); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(rs.HardState) {
		if err := n.storage.SetHardState(rs.HardState); err != nil {
			return fmt.Errorf("core: restore raft hard state: %w", err)
		}
	}
	if len(rs.Entries) > 0 {
		if err := n.storage.Append(rs.Entries); err != nil {
			return fmt.Errorf("core: restore raft log: %w", err)
		}
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:              uint64(n.id),
		ElectionTick:    raftElectionTick,
		HeartbeatTick:   n.t.HeartbeatTicks,
		Storage:         n.storage,
		Applied:         n.applied,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		PreVote:         true,
		CheckQuorum:     false,
		Logger:          raftWarnings{quietRaftLogger, n},
	})
	if err != nil {
		return fmt.Errorf("core: start raft: %w", err)
	}
	n.rn = rn
	n.resetElection()
	return nil
}

func (n *Node) restoreSnapshot(s raftpb.Snapshot) error {
	cs, err := unmarshalClusterState(s.Data)
	if err != nil {
		return err
	}
	n.cs = cs
	n.conf = s.Metadata.ConfState
	n.applied = s.Metadata.Index
	n.snapIndex = s.Metadata.Index
	n.clusterChanged()
	return nil
}

func (n *Node) resetElection() {
	n.electionElapsed = 0
	n.electionTimeout = n.t.ElectionTicks + n.rand.IntN(n.t.ElectionTicks)
}

func (n *Node) isVoter(id NodeID) bool {
	return slices.Contains(n.conf.Voters, uint64(id))
}

func (n *Node) inRaft(id NodeID) bool {
	return n.isVoter(id) || slices.Contains(n.conf.Learners, uint64(id))
}

func (n *Node) tickRaft() {
	n.rn.Tick()
	if n.isLeader || !n.isVoter(n.id) {
		return
	}
	n.electionElapsed++
	if n.electionElapsed >= n.electionTimeout {
		n.resetElection()
		_ = n.rn.Campaign()
	}
}

func (n *Node) stepRaft(m *Message) {
	rm := m.Raft
	if rm == nil || rm.To != uint64(n.id) || n.logLost {
		return
	}
	switch rm.Type {
	case raftpb.MsgPreVote, raftpb.MsgVote:
		// Leader stickiness (raft's check-quorum lease, done here because
		// raft's own needs its randomized timer): while we hear from a
		// leader, we do not help anyone depose it.
		if n.lead != 0 && NodeID(rm.From) != n.lead &&
			(n.isLeader || n.now-n.heardLeader < int64(n.t.ElectionTicks)) {
			return
		}
	case raftpb.MsgHeartbeat:
		// A leader sends a commit index no higher than what this node
		// acknowledged having. One beyond the end of our log means the
		// log lost entries it had made durable (a replaced disk under a
		// reused identity, a lying fsync): raft would panic. Refuse it,
		// and stop serving under this identity: only a new one rejoins
		// safely.
		n.drainRaft() // entries stepped since the last Ready are in storage now
		if last, err := n.storage.LastIndex(); err == nil && rm.Commit > last {
			if !n.logLost {
				n.logLost = true
				n.note(fmt.Sprintf("node %d: the leader commits index %d but this node's cluster log ends at %d: it lost state it had acknowledged; start it with an empty data directory to rejoin as a new node",
					n.id, rm.Commit, last))
			}
			return
		}
	}
	switch rm.Type {
	case raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap:
		if NodeID(rm.From) == n.lead || n.lead == 0 {
			n.heardLeader = n.now
			n.electionElapsed = 0
		}
	}
	_ = n.rn.Step(*rm)
}

// drainRaft moves everything raft has ready into the node's Ready.
func (n *Node) drainRaft() {
	for n.rn.HasReady() {
		rd := n.rn.Ready()
		if rd.SoftState != nil {
			n.softState(rd.SoftState)
		}
		if !raft.IsEmptySnap(rd.Snapshot) {
			if err := n.storage.ApplySnapshot(rd.Snapshot); err == nil {
				n.out.Snapshot = rd.Snapshot
				n.out.Entries = n.out.Entries[:0]
				if err := n.restoreSnapshot(rd.Snapshot); err != nil {
					n.note(err.Error())
				}
			}
		}
		if len(rd.Entries) > 0 {
			_ = n.storage.Append(rd.Entries)
			n.out.Entries = appendEntries(n.out.Entries, rd.Entries)
		}
		if !raft.IsEmptyHardState(rd.HardState) {
			_ = n.storage.SetHardState(rd.HardState)
			n.out.HardState = rd.HardState
		}
		msgs := coalesceHeartbeats(rd.Messages)
		for i := range msgs {
			rm := msgs[i]
			n.send(&Message{Type: MsgRaft, To: NodeID(rm.To), Raft: &rm})
		}
		for _, e := range rd.CommittedEntries {
			n.applyEntry(e)
		}
		n.rn.Advance(rd)
		n.maybeSnapshot()
	}
}

// appendEntries merges newly appended entries into those not yet
// persisted, with raft's rule that a later append replaces the tail.
func appendEntries(have, add []raftpb.Entry) []raftpb.Entry {
	if len(have) > 0 && len(add) > 0 {
		first := add[0].Index
		i := len(have)
		for i > 0 && have[i-1].Index >= first {
			i--
		}
		have = have[:i]
	}
	return append(have, add...)
}

func (n *Node) softState(ss *raft.SoftState) {
	lead := NodeID(ss.Lead)
	wasLeader := n.isLeader
	n.isLeader = ss.RaftState == raft.StateLeader
	if lead != n.lead {
		n.lead = lead
		n.heardLeader = n.now
		n.resetElection()
	}
	if n.isLeader && !wasLeader {
		n.leaderSince = n.now
		n.quorumSeen = n.now
		clear(n.lastHeard)
		clear(n.lastAck)
		clear(n.leaveProposed)
		clear(n.joinProposed)
		n.confPending = 0
		n.snapNow = true // its snapshot must name every member it may have to send one to
		n.note(fmt.Sprintf("node %d: leader of term %d", n.id, n.rn.BasicStatus().Term))
	}
}

func (n *Node) applyEntry(e raftpb.Entry) {
	if e.Index <= n.applied {
		return
	}
	n.applied = e.Index
	switch e.Type {
	case raftpb.EntryNormal:
		if len(e.Data) == 0 {
			return
		}
		c, err := unmarshalCmd(e.Data)
		if err != nil {
			n.note(err.Error())
			return
		}
		if c.Term != 0 && c.Term != e.Term {
			// A membership decision of a leader that was deposed before
			// its entry made it into the log: it was taken on stale
			// information, so it does not apply.
			c = &Cmd{Type: c.Type, Proposer: c.Proposer, PropID: c.PropID, stale: true}
		}
		n.applyCmd(c)
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := cc.Unmarshal(e.Data); err != nil {
			return
		}
		if len(cc.Context) > 0 {
			d := dec{b: cc.Context}
			if info := decodeNode(&d); d.err == nil && info.ID == NodeID(cc.NodeID) {
				n.addrs[info.ID] = info.Addr
			}
		}
		n.confChanged(cc)
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := cc.Unmarshal(e.Data); err != nil {
			return
		}
		if len(cc.Context) > 0 {
			if nodes, err := decodeNodes(cc.Context); err == nil {
				for _, info := range nodes {
					if slices.ContainsFunc(cc.Changes, func(c raftpb.ConfChangeSingle) bool { return NodeID(c.NodeID) == info.ID }) {
						n.addrs[info.ID] = info.Addr
					}
				}
			}
		}
		n.confChanged(cc)
	}
}

// confChanged applies a committed configuration change to raft.
func (n *Node) confChanged(cc raftpb.ConfChangeI) {
	n.conf = *n.rn.ApplyConfChange(cc)
	n.confPending = 0
	// A node that is added catches up from a snapshot; raft refuses
	// one whose configuration does not name it, so the leader, which
	// sends them, takes a fresh one (and a new leader one at once:
	// softState). Followers do not: each encoded the whole cluster
	// state at every membership change, O(members²) per join in all,
	// a quarter of the time of a 100-node cluster forming.
	n.snapNow = n.isLeader
}

func (n *Node) applyCmd(c *Cmd) {
	before := n.cs.Epoch
	wasFormatted := n.cs.Formatted
	var replaced *VDI // the working VDI a rollback deletes
	if c.Type == CmdRollback {
		replaced = n.cs.LookupVDI(c.Name)
	}
	// A retried proposal can be in the log twice: the second copy
	// answers with the first one's result and must not redo its effects
	// here (a rollback would drop the table of the VDI it made).
	repeat := n.cs.applied(c)
	res := n.cs.apply(c)
	if c.Proposer == n.id {
		if p, ok := n.props[c.PropID]; ok {
			delete(n.props, c.PropID)
			p.done(res)
		}
	}
	if res.Code == OK && !repeat {
		n.vdiApplied(c, res, replaced)
	}
	switch c.Type {
	case CmdShutdown:
		// Only the nodes serving when the order is applied stop: a node
		// replaying its log after the restart must not stop again.
		if n.serving {
			n.shutdown = true
			n.note(fmt.Sprintf("node %d: cluster shutdown", n.id))
		}
	}
	if n.cs.Epoch != before || n.cs.Formatted != wasFormatted {
		n.clusterChanged()
	}
}

func (n *Node) maybeSnapshot() {
	if !n.snapNow && (n.t.SnapshotEntries == 0 || n.applied < n.snapIndex+n.t.SnapshotEntries) {
		return
	}
	n.snapNow = false
	if n.applied <= n.snapIndex {
		return
	}
	snap, err := n.storage.CreateSnapshot(n.applied, &n.conf, n.cs.marshal())
	if err != nil {
		return
	}
	n.snapIndex = n.applied
	// Keep a tail of the log so slightly lagging followers catch up
	// without a snapshot.
	keep := n.t.SnapshotEntries / 4
	if n.applied > keep {
		compact := n.applied - keep
		if err := n.storage.Compact(compact); err == nil {
			n.out.CompactIndex = compact
		}
	}
	n.out.Snapshot = snap
	// Unpersisted entries the snapshot covers are not needed any more.
	n.out.Entries = slices.DeleteFunc(n.out.Entries, func(e raftpb.Entry) bool { return e.Index <= snap.Metadata.Index })
}

// proposal is a cluster log entry this node proposed and waits for.
type proposal struct {
	cmd      *Cmd
	data     []byte
	deadline int64
	done     func(Result)
}

// propose submits c to the cluster log; done runs when it is applied, or
// with ErrTimeout. Proposals are retried until then: raft may drop them
// while there is no leader, and the cluster state applies each PropID once.
func (n *Node) propose(c *Cmd, done func(Result)) {
	n.nextPropID++
	c.Proposer = n.id
	c.PropID = n.self.Incarnation<<32 | n.nextPropID
	p := &proposal{cmd: c, data: c.marshal(), deadline: n.now + int64(n.t.OpTimeoutTicks), done: done}
	n.props[c.PropID] = p
	n.submitProposal(c.PropID)
}

func (n *Node) submitProposal(id uint64) {
	p, ok := n.props[id]
	if !ok {
		return
	}
	if n.now >= p.deadline {
		delete(n.props, id)
		p.done(Result{Code: ErrTimeout})
		return
	}
	_ = n.rn.Propose(p.data)
	n.after(int64(n.t.RetryTicks), func() { n.submitProposal(id) })
}

// vdiApplied brings this node in line with a VDI entry that succeeded.
func (n *Node) vdiApplied(c *Cmd, res Result, replaced *VDI) {
	g := &n.gw
	switch c.Type {
	case CmdSnapshot, CmdClone, CmdRollback:
		// The leader builds the new VDI at its next tick rather than at
		// its next periodic scan: a snapshot waits for its build.
		n.jobs.scanned = n.now - jobScanTicks
	}
	switch c.Type {
	case CmdVDIDelete:
		n.detachGW(res.VID)
		n.abortUnplaced(res.VID)
		n.dropLocalTable(res.VID)
		n.builtChanged(res.VID)
	case CmdRollback:
		if replaced != nil {
			n.detachGW(replaced.ID)
			n.abortUnplaced(replaced.ID)
			n.dropLocalTable(replaced.ID)
		}
	case CmdSnapshot:
		g.dropTable(res.Snap) // the snapshot's table is final only once sealed
		if w := n.cs.VDI(res.VID); w != nil && w.Owner == n.id && w.OwnerInc == n.self.Incarnation {
			n.moveAttachment(res.Snap, res.VID)
		}
	case CmdBuilt:
		if v := n.cs.VDI(res.VID); v != nil && v.Owner == n.id && v.OwnerInc == n.self.Incarnation {
			n.builtAttachment(res.VID, res.Gen)
		}
		n.builtChanged(res.VID)
	case CmdFlattened:
		g.dropTable(res.VID)
		n.abortUnplaced(res.VID)
		n.dropLocalTable(res.VID)
	case CmdPurge:
		g.dropTable(res.VID)
		n.abortUnplaced(res.VID)
		n.dropVDI(res.VID)
		n.builtChanged(res.VID)
	}
}
