package core

import "slices"

// RaftStatus is this node's view of the cluster log's election: what an
// operator needs to see why a cluster has no leader.
type RaftStatus struct {
	Term   uint64
	Lead   NodeID // 0: none known
	State  string // StateFollower, StateCandidate, StatePreCandidate or StateLeader
	Voters []NodeID
	// HeardLeader is the ticks since the leader was last heard (-1: never).
	HeardLeader int64
	// ElectionIn is the ticks until this node campaigns, if it is a voter
	// without a leader to hear.
	ElectionIn int
}

// RaftStatus returns the node's election state.
func (n *Node) RaftStatus() RaftStatus {
	st := n.rn.BasicStatus()
	voters := make([]NodeID, 0, len(n.conf.Voters))
	for _, v := range n.conf.Voters {
		voters = append(voters, NodeID(v))
	}
	slices.Sort(voters)
	heard := int64(-1)
	if n.heardLeader != 0 {
		heard = n.now - n.heardLeader
	}
	return RaftStatus{Term: st.Term, Lead: NodeID(st.Lead), State: st.RaftState.String(), Voters: voters,
		HeardLeader: heard, ElectionIn: n.electionTimeout - n.electionElapsed}
}
