package core

import (
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
)

// Gray failures. The leader's failure detector (detectFailures) sees only
// its own links: a member that answers the leader but that other members
// cannot reach (a one-way link, a half-broken route, a firewall rule on
// one address) would stay in the epoch for ever, and every write that
// needs it would wait for ever. So members watch the peers they wait on:
// a peer that a request had to be resent to, and that has answered
// nothing since, is suspect; suspects are pinged, and one that stays
// silent for RetryTicks is reported to the leader, again every
// reportTicks while it lasts. The leader takes out of the epoch a member
// reported unreachable for longer than FailTicks, one at a time, and keeps
// it out for a while (doubling each time), so that a link that stays
// broken costs a bounded stall now and then instead of a permanent one.

const (
	pingTicks   = 5               // interval of pings to a suspect peer, and of reports
	reportTicks = 5               // interval of reports while a peer stays unreachable
	reportFresh = 2 * reportTicks // the leader forgets a report older than this: the link works again, or the reporter is gone
	grayBackoff = 5               // doublings of the readmission delay, at most
)

// reach is what a node knows of its links to the peers it waits on and,
// on the leader, what members reported of theirs.
type reach struct {
	suspect  map[NodeID]int64 // peer → tick of the first resend to it that nothing answered since
	pinged   int64            // last round of pings
	reported int64            // last report to the leader

	reports map[NodeID]map[NodeID]grayReport // leader: peer → reporter → latest report
	outAt   map[NodeID]int64                 // leader: no readmission of a gray-removed node before this tick
	outs    map[NodeID]int                   // leader: gray removals of the node so far
}

// grayReport is one member's latest word on a peer it cannot reach.
type grayReport struct {
	age int64 // ticks the reporter had found the peer unreachable, when it reported
	at  int64 // the leader's tick when the report arrived
}

func (r *reach) init() {
	r.suspect = map[NodeID]int64{}
	r.reports = map[NodeID]map[NodeID]grayReport{}
	r.outAt = map[NodeID]int64{}
	r.outs = map[NodeID]int{}
}

// resent notes that a request to peer had to be sent again.
func (n *Node) resent(peer NodeID) {
	if peer == n.id || peer == 0 {
		return
	}
	if _, ok := n.reach.suspect[peer]; !ok {
		n.reach.suspect[peer] = n.now
	}
}

// isAnswer reports whether m proves that its sender receives what this
// node sends: a response to a request, or raft's answer to the leader.
func isAnswer(m *Message) bool {
	switch m.Type {
	case MsgIOResp, MsgLeaseGrant, MsgReplResp, MsgSyncResp, MsgListResp, MsgFetchResp, MsgCheckResp,
		MsgRevokeResp, MsgBarrierResp, MsgReclaimResp, MsgRestampResp, MsgJoinAck, MsgPong:
		return true
	case MsgRaft:
		return m.Raft != nil && raft.IsResponseMsg(m.Raft.Type)
	}
	return false
}

// tickReach pings suspect peers and reports the ones that stay silent.
func (n *Node) tickReach() {
	r := &n.reach
	if len(r.suspect) == 0 {
		return
	}
	peers := make([]NodeID, 0, len(r.suspect))
	for p := range r.suspect {
		if _, ok := n.cs.Member(p); !ok {
			delete(r.suspect, p) // gone from the epoch: nothing waits on it any more
			continue
		}
		peers = append(peers, p)
	}
	slices.Sort(peers)
	if n.now-r.pinged >= pingTicks {
		r.pinged = n.now
		for _, p := range peers {
			n.send(&Message{Type: MsgPing, To: p})
		}
	}
	if n.now-r.reported < reportTicks {
		return
	}
	var out []ObjVersion
	for _, p := range peers {
		if age := n.now - r.suspect[p]; age >= int64(n.t.RetryTicks) {
			out = append(out, ObjVersion{OID: OID(p), Version: uint64(age)})
		}
	}
	if len(out) == 0 {
		return
	}
	r.reported = n.now
	if n.isLeader {
		n.handleUnreachable(&Message{From: n.id, Objects: out})
	} else if n.lead != 0 {
		n.send(&Message{Type: MsgUnreachable, To: n.lead, Objects: out})
	}
}

// handleUnreachable records, on the leader, a member's report of the
// peers it cannot reach.
func (n *Node) handleUnreachable(m *Message) {
	if !n.isLeader {
		return
	}
	for _, o := range m.Objects {
		peer := NodeID(o.OID)
		if peer == m.From {
			continue
		}
		if n.reach.reports[peer] == nil {
			n.reach.reports[peer] = map[NodeID]grayReport{}
		}
		n.reach.reports[peer][m.From] = grayReport{age: int64(o.Version), at: n.now}
	}
}

// grayVictim chooses the member to take out of the epoch for being
// unreachable from others for longer than FailTicks, 0 for none. Only
// reports from members the leader itself hears count. The peer most
// members report goes first; when each is reported by one member only and
// one reporter reports several of them, the reporter is the one whose
// links are broken.
func (n *Node) grayVictim() (victim, reporter NodeID, age int64) {
	votes := map[NodeID]int{}
	reports := map[NodeID]int{} // reporter → peers it reports
	ages := map[NodeID]int64{}
	by := map[NodeID]NodeID{}
	for peer, rs := range n.reach.reports {
		if _, ok := n.cs.Member(peer); !ok {
			delete(n.reach.reports, peer)
			continue
		}
		for from, rep := range rs {
			_, member := n.cs.Member(from)
			if !member || n.now-rep.at > reportFresh {
				delete(rs, from)
				continue
			}
			if from != n.id && n.now-n.lastAck[from] > int64(n.t.ElectionTicks) {
				continue // the leader cannot tell whose link is at fault
			}
			// The age as reported, not extrapolated: a report that is not
			// renewed may mean the link works again (a partition healed
			// just after it), and the removal of a reachable member on
			// an old report cost a second copy while a first was down.
			a := rep.age
			if a <= int64(n.t.FailTicks) {
				continue
			}
			votes[peer]++
			reports[from]++
			if a > ages[peer] || a == ages[peer] && from < by[peer] {
				ages[peer], by[peer] = a, from
			}
		}
	}
	for peer, v := range votes {
		if victim == 0 || v > votes[victim] || v == votes[victim] && (ages[peer] > ages[victim] || ages[peer] == ages[victim] && peer < victim) {
			victim = peer
		}
	}
	if victim == 0 {
		return 0, 0, 0
	}
	reporter, age = by[victim], ages[victim]
	if votes[victim] == 1 && reports[reporter] > 1 && reporter != n.id {
		return reporter, victim, age
	}
	return victim, reporter, age
}

// grayRemoval takes out of the epoch the member others cannot reach, one
// at a time and only while every other member is in.
func (n *Node) grayRemoval(pending int) {
	if pending > 0 || len(n.reach.reports) == 0 || n.cs.Missing() > 0 {
		return
	}
	victim, reporter, age := n.grayVictim()
	if victim == 0 || victim == n.id {
		return
	}
	m, ok := n.cs.Member(victim)
	if !ok {
		return
	}
	if at, ok := n.leaveProposed[victim]; ok && n.now-at < int64(n.t.RetryTicks) {
		return
	}
	if n.cs.Formatted && n.cs.Missing()+1 >= n.cs.MinCopies() {
		return
	}
	// Nor while another member is silent: it may be down without being
	// declared so yet, and with the victim out as well the cluster log
	// can lose its majority for good (a wiped voter and one gone for good
	// not yet noticed, a cut-off one taken out: two of four voters left).
	for _, o := range n.cs.Nodes {
		if o.ID != victim && o.ID != n.id && n.now-max(n.lastAck[o.ID], n.leaderSince) > int64(n.t.ElectionTicks) {
			return
		}
	}
	n.leaveProposed[victim] = n.now
	k := min(n.reach.outs[victim], grayBackoff)
	n.reach.outs[victim]++
	n.reach.outAt[victim] = n.now + int64(n.t.FailTicks)<<k
	delete(n.reach.reports, victim)
	n.note(fmt.Sprintf("node %d: node %d is unreachable from node %d for %d ticks: taking it out of the epoch (readmitted after %d ticks)",
		n.id, victim, reporter, age, int64(n.t.FailTicks)<<k))
	n.propose(&Cmd{Type: CmdLeave, NodeID: m.ID, Inc: m.Incarnation, Term: n.term(), Time: n.wall}, func(Result) {})
}

// grayOut reports whether a node taken out for a gray failure must still
// wait before it is admitted again.
func (n *Node) grayOut(id NodeID) bool {
	at, ok := n.reach.outAt[id]
	return ok && n.now < at
}
