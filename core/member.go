package core

import (
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// joinRequest is a node waiting, at the leader, to become a member.
type joinRequest struct {
	info NodeInfo
	auto bool
	at   int64
}

// tickJoin keeps asking to become a member until this incarnation is one.
func (n *Node) tickJoin() {
	if n.cs.IsMember(n.id, n.self.Incarnation) || n.now-n.lastJoinSent < int64(n.t.JoinTicks) && n.lastJoinSent != 0 {
		return
	}
	n.lastJoinSent = n.now
	info := n.self
	flags := uint32(0)
	if n.cfg.AutoVNodes {
		flags = 1
	}
	if n.isLeader {
		n.pendingJoins[n.id] = joinRequest{info: info, auto: flags == 1, at: n.now}
		return
	}
	if n.lead != 0 && n.addrs[n.lead] != "" {
		n.send(&Message{Type: MsgJoin, To: n.lead, Node: &info, Flags: flags})
		return
	}
	for _, m := range n.cs.Nodes {
		if m.ID != n.id {
			n.send(&Message{Type: MsgJoin, To: m.ID, Node: &info, Flags: flags})
		}
	}
	for _, a := range n.cfg.Seeds {
		if a != n.self.Addr {
			n.send(&Message{Type: MsgJoin, ToAddr: a, Node: &info, Flags: flags})
		}
	}
}

func (n *Node) handleJoin(m *Message) {
	if m.Node == nil || m.Node.ID == 0 || m.Node.Addr == "" {
		return
	}
	info := *m.Node
	if _, known := n.addrs[info.ID]; !known || n.isLeader {
		n.addrs[info.ID] = info.Addr
	}
	// Tell the joiner where everyone is: it needs the leader's address to
	// answer raft before it has the cluster state.
	if info.ID != n.id {
		n.send(&Message{Type: MsgJoinAck, To: info.ID, ToAddr: info.Addr, Nodes: n.joinAckNodes()})
	}
	if n.isLeader {
		n.pendingJoins[info.ID] = joinRequest{info: info, auto: m.Flags&1 != 0, at: n.now}
		return
	}
	if n.lead != 0 && n.lead != m.From && n.lead != n.id {
		n.send(&Message{Type: MsgJoin, To: n.lead, Node: &info, Flags: m.Flags})
	}
}

// joinAckNodes is the node list a join is answered with: the members, and
// this node if it is not one. Every answer of an epoch shares one copy
// (messages are never modified): a restarted cluster's nodes each ask
// every member, and a copy per answer was a fifth of its restart.
func (n *Node) joinAckNodes() []NodeInfo {
	if n.ackNodes == nil || n.ackEpoch != n.cs.Epoch || n.ackCS != n.cs {
		nodes := append(make([]NodeInfo, 0, len(n.cs.Nodes)+1), n.cs.Nodes...)
		if _, ok := n.cs.Member(n.id); !ok {
			nodes = append(nodes, n.self)
		}
		n.ackNodes, n.ackEpoch, n.ackCS = nodes, n.cs.Epoch, n.cs
	}
	return n.ackNodes
}

// reconcile runs on the leader every tick: admit joining nodes, declare
// silent members dead, and keep the raft voter set at its target size.
func (n *Node) reconcile() {
	if n.confPending != 0 && n.now-n.confPending > int64(4*n.t.RetryTicks) {
		n.confPending = 0 // dropped by raft; propose again
	}
	if !n.quorumContact() {
		// A leader that does not hear from a quorum cannot tell a dead
		// member from its own isolation: it decides nothing, and after a
		// while it steps down so that the others can elect a leader
		// (raft's check-quorum, done here because raft's needs its
		// randomized timer).
		if n.now-n.quorumSeen > int64(2*n.t.ElectionTicks) {
			n.stepDown()
		}
		return
	}
	n.quorumSeen = n.now
	n.retrySnapshots()
	n.admitJoins()
	n.detectFailures()
	n.reconcileVoters()
}

// quorumContact reports whether the leader heard from a quorum of voters
// within an election timeout.
func (n *Node) quorumContact() bool {
	heard := 0
	for _, v := range n.conf.Voters {
		id := NodeID(v)
		if id == n.id || n.now-max(n.lastAck[id], n.leaderSince) <= int64(n.t.ElectionTicks) {
			heard++
		}
	}
	return heard > len(n.conf.Voters)/2
}

// stepDown makes the leader a follower by showing its raft a newer term,
// exactly as if it had heard of an election it missed.
func (n *Node) stepDown() {
	st := n.rn.BasicStatus()
	ages := make([]string, 0, len(n.conf.Voters))
	for _, v := range n.conf.Voters {
		ages = append(ages, fmt.Sprintf("%d:%d", v, n.now-max(n.lastAck[NodeID(v)], n.leaderSince)))
	}
	for _, v := range n.conf.Voters {
		if NodeID(v) != n.id {
			n.note(fmt.Sprintf("node %d: no quorum contact, stepping down (voter:ticks since an answer %s)", n.id, strings.Join(ages, " ")))
			_ = n.rn.Step(raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: v, To: uint64(n.id), Term: st.Term + 1})
			return
		}
	}
}

// admitJoins makes the nodes waiting to join members: first learners of
// the cluster log, then members, each step for all of them at once. One
// at a time, a cluster of n nodes forming took n configuration changes
// and n epochs, and every epoch has every member list its objects to
// every other: O(n³) messages to bootstrap.
func (n *Node) admitJoins() {
	ids := make([]NodeID, 0, len(n.pendingJoins))
	for id := range n.pendingJoins {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var learners []NodeInfo // to add to raft
	var join *Cmd           // to make members
	for _, id := range ids {
		j := n.pendingJoins[id]
		if cur, ok := n.cs.Member(id); (ok && cur.Incarnation >= j.info.Incarnation) || n.now-j.at > int64(10*n.t.JoinTicks) {
			delete(n.pendingJoins, id)
			continue
		}
		if n.grayOut(id) {
			continue // taken out for a gray failure: not back yet
		}
		if !n.inRaft(id) {
			learners = append(learners, j.info)
			continue
		}
		if at, ok := n.joinProposed[id]; ok && n.now-at < int64(n.t.RetryTicks) {
			continue
		}
		n.joinProposed[id] = n.now
		if join == nil {
			join = &Cmd{Type: CmdJoin, Node: j.info, AutoVNodes: j.auto, Term: n.term(), Time: n.wall}
		} else {
			join.Joins = append(join.Joins, Joiner{Node: j.info, AutoVNodes: j.auto})
		}
	}
	if len(learners) > 0 && n.confPending == 0 && !n.inJoint() {
		if n.proposeLearners(learners) {
			n.confPending = n.now
		}
	}
	if join != nil {
		n.propose(join, func(Result) {})
	}
}

// proposeLearners adds nodes to the cluster log as learners, in one
// configuration change: a single node as a simple change (each carries
// the node in its context), several as a joint one that raft leaves by
// itself (raft makes any change of more than one node joint; adding
// learners changes no quorum).
func (n *Node) proposeLearners(nodes []NodeInfo) bool {
	if len(nodes) == 1 {
		e := enc{}
		encodeNode(&e, nodes[0])
		return n.rn.ProposeConfChange(raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode, NodeID: uint64(nodes[0].ID), Context: e.b}) == nil
	}
	cc := raftpb.ConfChangeV2{Context: encodeNodes(nodes)}
	for _, info := range nodes {
		cc.Changes = append(cc.Changes, raftpb.ConfChangeSingle{Type: raftpb.ConfChangeAddLearnerNode, NodeID: uint64(info.ID)})
	}
	return n.rn.ProposeConfChange(cc) == nil
}

// inJoint reports whether the cluster log is in a joint configuration:
// raft refuses every other change until it has left it.
func (n *Node) inJoint() bool { return len(n.conf.VotersOutgoing) > 0 }

// encodeNodes and decodeNodes are the context of a configuration change
// that adds several nodes.
func encodeNodes(nodes []NodeInfo) []byte {
	e := enc{}
	e.u32(uint32(len(nodes)))
	for _, info := range nodes {
		encodeNode(&e, info)
	}
	return e.b
}

func decodeNodes(b []byte) ([]NodeInfo, error) {
	d := dec{b: b}
	cnt := d.u32()
	var nodes []NodeInfo
	for i := uint32(0); i < cnt && d.err == nil; i++ { // grows with the bytes there are, not with cnt
		nodes = append(nodes, decodeNode(&d))
	}
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("core: decode the nodes of a configuration change: %w", err)
	}
	return nodes, nil
}

func (n *Node) detectFailures() {
	if n.now-n.leaderSince <= int64(n.t.FailTicks) {
		return
	}
	n.markStable()
	pending := 0 // removals proposed and not applied yet
	for id, at := range n.leaveProposed {
		if _, ok := n.cs.Member(id); ok && n.now-at < int64(n.t.RetryTicks) {
			pending++
		}
	}
	for _, m := range n.cs.Nodes {
		if m.ID == n.id {
			continue
		}
		last := max(n.lastAck[m.ID], n.leaderSince)
		var replaced NodeID
		if n.addrShared(m) {
			replaced = n.replacedBy(m)
		}
		if n.now-last <= int64(n.t.FailTicks) && replaced == 0 {
			continue
		}
		if at, ok := n.leaveProposed[m.ID]; ok && n.now-at < int64(n.t.RetryTicks) {
			continue
		}
		if n.cs.Formatted && n.cs.Missing()+pending+1 >= n.cs.MinCopies() {
			if n.now%int64(n.t.FailTicks) == 0 {
				n.note(fmt.Sprintf("node %d: node %d is silent but %d members are gone since the last full recovery: keeping it (copies %d)",
					n.id, m.ID, n.cs.Missing()+pending, n.cs.MinCopies()))
			}
			continue
		}
		pending++
		n.leaveProposed[m.ID] = n.now
		if replaced != 0 {
			n.note(fmt.Sprintf("node %d: node %d at %s was replaced by node %d: removing it", n.id, m.ID, m.Addr, replaced))
		} else {
			n.note(fmt.Sprintf("node %d: declaring node %d dead after %d silent ticks", n.id, m.ID, n.now-last))
		}
		n.propose(&Cmd{Type: CmdLeave, NodeID: m.ID, Inc: m.Incarnation, Term: n.term(), Time: n.wall}, func(Result) {})
	}
	n.grayRemoval(pending)
}

// replacedBy names the node that took over member m's address (a node
// whose disk was replaced comes back under a new id), 0 if none did. Only
// one process can listen on an address: if the newcomer was heard after
// m last was, m is gone.
func (n *Node) replacedBy(m NodeInfo) NodeID {
	var by NodeID
	check := func(o NodeInfo) {
		if o.ID != m.ID && o.Addr == m.Addr && n.lastHeard[o.ID] > n.lastHeard[m.ID] && (by == 0 || o.ID < by) {
			by = o.ID
		}
	}
	for _, o := range n.cs.Nodes {
		check(o)
	}
	for _, j := range n.pendingJoins {
		check(j.info)
	}
	return by
}

// addrShared reports whether a member or joining node other than m has
// m's address, the only case replacedBy looks further: asking it for
// every member at every tick cost the leader O(members²).
func (n *Node) addrShared(m NodeInfo) bool {
	if n.addrCount == nil || n.addrCountEpoch != n.cs.Epoch || n.addrCountCS != n.cs {
		n.addrCount = make(map[string]int, len(n.cs.Nodes))
		for _, o := range n.cs.Nodes {
			n.addrCount[o.Addr]++
		}
		n.addrCountEpoch, n.addrCountCS = n.cs.Epoch, n.cs
	}
	if n.addrCount[m.Addr] > 1 {
		return true
	}
	for _, j := range n.pendingJoins {
		if j.info.ID != m.ID && j.info.Addr == m.Addr {
			return true
		}
	}
	return false
}

// voterTarget is the size of the raft voter set for a cluster of members
// nodes: an odd number, at most five.
func voterTarget(members int) int {
	switch {
	case members >= 5:
		return 5
	case members >= 3:
		return 3
	}
	return 1
}

func (n *Node) reconcileVoters() {
	if n.confPending != 0 || len(n.cs.Nodes) == 0 || n.inJoint() {
		return
	}
	isMember := func(id uint64) bool { _, ok := n.cs.Member(NodeID(id)); return ok }
	voters := slices.Clone(n.conf.Voters)
	slices.Sort(voters)
	live := 0
	for _, v := range voters {
		if isMember(v) {
			live++
		}
	}
	target := voterTarget(len(n.cs.Nodes))
	propose := func(t raftpb.ConfChangeType, id uint64) {
		if n.rn.ProposeConfChange(raftpb.ConfChange{Type: t, NodeID: id}) == nil {
			n.confPending = n.now
		}
	}
	if live < target {
		learners := slices.Clone(n.conf.Learners)
		slices.Sort(learners)
		st := n.rn.Status()
		for _, l := range learners {
			// Only a learner that has caught up with the log becomes a
			// voter: a lagging one would stall commits.
			if pr, ok := st.Progress[l]; ok && isMember(l) && pr.Match >= st.Commit && n.now-n.lastAck[NodeID(l)] <= int64(n.t.ElectionTicks) {
				propose(raftpb.ConfChangeAddNode, l)
				return
			}
		}
	}
	for _, v := range voters {
		if !isMember(v) && NodeID(v) != n.id && len(voters) > 1 {
			propose(raftpb.ConfChangeAddLearnerNode, v)
			return
		}
	}
	if len(voters) > target {
		for i := len(voters) - 1; i >= 0; i-- {
			if NodeID(voters[i]) != n.id {
				propose(raftpb.ConfChangeAddLearnerNode, voters[i])
				return
			}
		}
	}
}

func (n *Node) term() uint64 { return n.rn.BasicStatus().Term }

// retrySnapshots: a follower that was sent a snapshot stays paused until
// it answers; if the snapshot or the answer was lost, tell raft so that
// it sends another (etcd's transport does this with ReportSnapshot).
func (n *Node) retrySnapshots() {
	if n.now%int64(n.t.RetryTicks) != 0 {
		return
	}
	st := n.rn.Status()
	ids := make([]uint64, 0, len(st.Progress))
	for id, pr := range st.Progress {
		if pr.State == tracker.StateSnapshot {
			ids = append(ids, id)
		} else {
			delete(n.snapSent, NodeID(id))
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		since, ok := n.snapSent[NodeID(id)]
		if !ok {
			n.snapSent[NodeID(id)] = n.now
			continue
		}
		if n.now-since >= int64(2*n.t.RetryTicks) {
			delete(n.snapSent, NodeID(id))
			n.rn.ReportSnapshot(id, raft.SnapshotFailure)
		}
	}
}

// markStable records in the log that every member recovered the current
// epoch, which lets removals start counting afresh; and that a restarted
// member recovered, so that its data counts again.
func (n *Node) markStable() {
	for _, id := range n.cs.Restarted {
		m, ok := n.cs.Member(id)
		if !ok || !n.done[id] {
			continue
		}
		if at, ok := n.recoveredProposed[id]; ok && n.now-at < int64(n.t.RetryTicks) {
			continue
		}
		n.recoveredProposed[id] = n.now
		n.propose(&Cmd{Type: CmdRecovered, NodeID: id, Inc: m.Incarnation, Epoch: n.epoch, Term: n.term()}, func(Result) {})
	}
	if len(n.cs.Removed) == 0 && len(n.cs.Restarted) == 0 || n.rec == nil || !n.rec.finished || !n.allDone() {
		return
	}
	if n.stableProposed == n.epoch && n.now-n.stableAt < int64(n.t.RetryTicks) {
		return
	}
	n.stableProposed, n.stableAt = n.epoch, n.now
	n.propose(&Cmd{Type: CmdStable, Epoch: n.epoch, Term: n.term()}, func(Result) {})
}

// handleJoinAck learns the members' addresses from a node it asked to join.
func (n *Node) handleJoinAck(m *Message) {
	for _, info := range m.Nodes {
		if info.ID != n.id && info.Addr != "" {
			if _, ok := n.addrs[info.ID]; !ok {
				n.addrs[info.ID] = info.Addr
			}
		}
	}
}
