package core

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// QuietTicks is how many ticks a driver may let pass between two runs of a
// quiet node (see Quiet). It keeps the leader's heartbeats (one per run,
// see coalesceHeartbeats) well inside the shortest election timeout of
// DefaultTiming: 4 ticks against 10.
const QuietTicks = 4

// Quiet reports whether nothing on the node waits for its clock but the
// cluster log's heartbeats and the periodic duties that may run late: it
// is a serving member with no timer or retry due within QuietTicks (the
// guards of operations that finished long ago wait for minutes), no peer request,
// proposal, join or configuration change outstanding, no client
// operation, recovery, refill or job under way, and a cluster log that
// has applied what it committed and, on the leader, replicated it to
// every follower.
//
// A driver may then deliver the node's ticks in bursts of up to
// QuietTicks, each burst just before the events that arrive, so that its
// clock is as current as ever whenever it decides anything; only what the
// ticks alone start (a heartbeat, a periodic scan) runs up to that much
// later. An idle node costs its machine a wake-up per burst instead of
// one per tick.
func (n *Node) Quiet() bool {
	if !n.serving || n.stopped || !n.cs.IsMember(n.id, n.self.Incarnation) {
		return false
	}
	soon := n.now + QuietTicks // a timer due later fires as late as one due then
	if len(n.timers) > 0 && n.timers[0].at <= soon || len(n.retries) > 0 && n.retries[0].at <= soon ||
		len(n.calls) > 0 || len(n.props) > 0 ||
		len(n.pendingJoins) > 0 || n.confPending != 0 || len(n.held) > 0 || len(n.diskCB) > 0 ||
		n.writesInFlight > 0 || n.listsDue != nil || len(n.reach.suspect) > 0 || len(n.leaseReq) > 0 ||
		len(n.refill) > 0 || len(n.barriers) > 0 || len(n.flattens) > 0 || len(n.revokes) > 0 ||
		len(n.jobs.builds) > 0 || len(n.jobs.reclaims) > 0 || len(n.builtWaits) > 0 {
		return false
	}
	g := &n.gw
	if len(g.ops) > 0 || len(g.subs) > 0 || len(g.wait) > 0 || len(g.switching) > 0 {
		return false
	}
	if r := n.rec; r != nil && (!r.finished || len(r.diverged) > 0 || !n.allDone() || n.gcLeft) {
		return false
	}
	return n.raftQuiet()
}

// raftQuiet reports whether the cluster log has nothing in flight: every
// committed entry applied and, on the leader, every follower's log as
// long as its own.
func (n *Node) raftQuiet() bool {
	if n.rn.HasReady() || n.applied < n.rn.BasicStatus().Commit {
		return false
	}
	if !n.isLeader {
		return true
	}
	last, err := n.storage.LastIndex()
	if err != nil {
		return false
	}
	caught := true
	n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if pr.Match < last {
			caught = false
		}
	})
	return caught
}

// coalesceHeartbeats drops every heartbeat of msgs but the last to each
// peer: ticks delivered in one burst (a quiet node's) queue a heartbeat
// round each, and the earlier ones say nothing the last does not. Raft
// takes them as lost. msgs is raft's and stays as it is.
func coalesceHeartbeats(msgs []raftpb.Message) []raftpb.Message {
	beats := 0
	for i := range msgs {
		if msgs[i].Type == raftpb.MsgHeartbeat {
			beats++
		}
	}
	if beats < 2 {
		return msgs
	}
	last := make(map[uint64]int, beats)
	for i := range msgs {
		if msgs[i].Type == raftpb.MsgHeartbeat {
			last[msgs[i].To] = i
		}
	}
	if len(last) == beats {
		return msgs
	}
	out := make([]raftpb.Message, 0, len(msgs)-beats+len(last))
	for i := range msgs {
		if msgs[i].Type == raftpb.MsgHeartbeat && last[msgs[i].To] != i {
			continue
		}
		out = append(out, msgs[i])
	}
	return out
}
